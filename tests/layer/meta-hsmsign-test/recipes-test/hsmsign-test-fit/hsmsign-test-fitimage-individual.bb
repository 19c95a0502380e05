# meta-hsmsign layer test: the kernel FIT, variant individual (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "individual"
require hsmsign-test-variants.inc
require ${HSMSIGN_TEST_FIT_INC}
