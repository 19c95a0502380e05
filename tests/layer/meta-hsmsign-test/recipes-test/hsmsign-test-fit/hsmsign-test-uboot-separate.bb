# meta-hsmsign layer test: the stand-in U-Boot, variant separate (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "separate"
require hsmsign-test-uboot.inc
