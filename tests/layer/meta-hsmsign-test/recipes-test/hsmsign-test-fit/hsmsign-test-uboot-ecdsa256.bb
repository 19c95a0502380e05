# meta-hsmsign layer test: the stand-in U-Boot, variant ecdsa256 (hsmsign-test-variants.inc)
HSMSIGN_TEST_VARIANT = "ecdsa256"
require hsmsign-test-uboot.inc
