SUMMARY = "meta-hsmsign layer test: a swupdate bundle signed and encrypted through the token"
DESCRIPTION = "meta-swupdate's do_swuimage builds the bundle; hsmsign-swupdate signs \
               sw-description (CMS) and encrypts payload.bin with HSM_PKCS11_URI_ENCRYPT."
HOMEPAGE = "https://github.com/meta-hsmsign/meta-hsmsign"
BUGTRACKER = "https://github.com/meta-hsmsign/meta-hsmsign/issues"
CVE_PRODUCT = "hsmsign-test-swu"
SECTION = "devel"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://sw-description \
           file://payload.bin \
           file://plain.txt \
"

inherit swupdate

SWUPDATE_IMAGES_ENCRYPTED[payload.bin] = "1"

# The layer tests run offline and build no native recipe: the host's cpio and
# openssl do the work, and meta-swupdate's python-magic and zstd are not used here.
DEPENDS:remove = "cpio-native openssl-native python3-magic-native zstd-native"
# (no sysroot either, which would pull pseudo-native and its build chain)
deltask do_prepare_recipe_sysroot
do_patch[depends] = ""
POPULATESYSROOTDEPS:class-target = ""
# the bundle is the output: no packages (no rpm-native)
inherit nopackages
