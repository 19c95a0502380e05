# meta-hsmsign layer test: the kernel FIT, variant separate (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "separate"
require hsmsign-test-variants.inc
require ${HSMSIGN_TEST_FIT_INC}
