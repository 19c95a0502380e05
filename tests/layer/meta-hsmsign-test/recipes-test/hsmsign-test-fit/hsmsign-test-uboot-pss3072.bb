# meta-hsmsign layer test: the stand-in U-Boot, variant pss3072 (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "pss3072"
require hsmsign-test-uboot.inc
