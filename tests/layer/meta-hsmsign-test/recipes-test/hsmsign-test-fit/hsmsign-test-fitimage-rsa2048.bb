# meta-hsmsign layer test: the kernel FIT, variant rsa2048 (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "rsa2048"
require hsmsign-test-variants.inc
require ${HSMSIGN_TEST_FIT_INC}
