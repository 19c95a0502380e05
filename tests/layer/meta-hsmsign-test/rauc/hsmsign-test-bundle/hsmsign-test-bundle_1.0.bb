SUMMARY = "A RAUC bundle made by meta-rauc's bundle class, signed through the token"
DESCRIPTION = "Only tests/layer/test_bitbake_rauc.py parses this. meta-rauc's do_bundle runs \
               rauc (the host's, through the rauc-native stand-in); meta-hsmsign gives it the \
               token key and checks the bundle."
LICENSE = "MIT"

inherit bundle

RAUC_BUNDLE_COMPATIBLE = "hsmsign-test"
RAUC_BUNDLE_VERSION = "1.0"
RAUC_BUNDLE_BUILD = "hsmsign-test-build"
RAUC_BUNDLE_FORMAT ?= "verity"
RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "hsmsign-test-rauc-rootfs"
RAUC_SLOT_rootfs[type] = "file"
RAUC_SLOT_rootfs[file] = "hsmsign-test-rootfs.img"
