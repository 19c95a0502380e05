# meta-hsmsign layer test: the stand-in U-Boot, variant individual (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "individual"
require hsmsign-test-uboot.inc
