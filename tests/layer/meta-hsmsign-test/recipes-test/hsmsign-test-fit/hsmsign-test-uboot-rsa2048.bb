# meta-hsmsign layer test: the stand-in U-Boot, variant rsa2048 (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "rsa2048"
require hsmsign-test-uboot.inc
