# meta-hsmsign layer test: the kernel FIT, variant ecdsa256 (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "ecdsa256"
require hsmsign-test-variants.inc
require ${HSMSIGN_TEST_FIT_INC}
