SUMMARY = "Stand-in for meta-oe's libp11-native: its pkg-config file, for the host's engine"
DESCRIPTION = "Only tests/layer/test_bitbake_rauc.py parses this (its local.conf adds it to \
               BBFILES and masks meta-oe's recipes). It installs libp11.pc with the version of \
               the engine rauc loads (Debian's libengine-pkcs11-openssl), where hsmsign-rauc.bbclass \
               reads libp11-native's version: ${STAGING_LIBDIR_NATIVE}/pkgconfig. No engine: \
               rauc loads the host's."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"
INHIBIT_DEFAULT_DEPS = "1"

inherit native

HSMSIGN_TEST_LIBP11_VERSION ?= "0.4.12"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
	install -d ${D}${libdir}/pkgconfig
	printf 'prefix=%s\nlibdir=%s\n\nName: libp11\nDescription: stand-in\nVersion: %s\n' \
		"${prefix}" "${libdir}" "${HSMSIGN_TEST_LIBP11_VERSION}" > ${D}${libdir}/pkgconfig/libp11.pc
}
