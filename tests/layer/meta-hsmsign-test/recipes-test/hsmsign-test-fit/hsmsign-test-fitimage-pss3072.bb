# meta-hsmsign layer test: the kernel FIT, variant pss3072 (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "pss3072"
require hsmsign-test-variants.inc
require ${HSMSIGN_TEST_FIT_INC}
