SUMMARY = "Stand-in for meta-rauc's casync-native: the host's casync, built nowhere"
DESCRIPTION = "Only tests/layer/test_bitbake_rauc.py parses this (its local.conf adds it to \
               BBFILES and masks meta-rauc's recipes). It installs a wrapper for Debian's casync \
               where rauc convert finds it, on do_bundle's PATH (${STAGING_BINDIR_NATIVE})."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"
INHIBIT_DEFAULT_DEPS = "1"

inherit native

HSMSIGN_TEST_CASYNC ?= "/usr/bin/casync"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
	install -d ${D}${bindir}
	printf '#!/bin/sh\nexec %s "$@"\n' "${HSMSIGN_TEST_CASYNC}" > ${D}${bindir}/casync
	chmod 0755 ${D}${bindir}/casync
}
