SUMMARY = "Sign boot and update artifacts with keys kept in a PKCS#11 token"
DESCRIPTION = "The hsmsign command run by the meta-hsmsign classes, built from \
               the layer's own lib/hsmsign (the sources addpylib loads at parse time)."
# nooelint: oelint.vars.homepageping - no network in CI; the project page
HOMEPAGE = "https://github.com/meta-hsmsign/meta-hsmsign"
BUGTRACKER = "https://github.com/meta-hsmsign/meta-hsmsign/issues"
CVE_PRODUCT = "hsmsign"
SECTION = "devel"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - the sources are the layer's own library, MIT like the layer
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# cryptography and asn1crypto from oe-core; python-pkcs11 (0.7, imports cached_property) from meta-python
DEPENDS = "python3-asn1crypto-native python3-cached-property-native python3-cryptography-native python3-native python3-pkcs11-native"

# The library lives in the layer itself (meta-hsmsign/lib/hsmsign), one source
# of truth with the parse-time addpylib; the recipe fetches it from there.
# nooelint: oelint.vars.fileextrapaths, oelint.vars.outofcontext - sources are in the layer's lib/, not next to the recipe
FILESEXTRAPATHS:prepend := "${THISDIR}/../../lib:"
SRC_URI = "file://hsmsign;subdir=hsmsign-src"

# scarthgap unpacks into WORKDIR, later releases into UNPACKDIR
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/hsmsign-src"

# nooelint: oelint.var.inheritdevtool.native - a native-only recipe (no BBCLASSEXTEND); native is inherited last as oe-core requires
inherit python3native native

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${PYTHON_SITEPACKAGES_DIR}
    cp -R --no-preserve=ownership ${S}/hsmsign ${D}${PYTHON_SITEPACKAGES_DIR}/
    find ${D}${PYTHON_SITEPACKAGES_DIR}/hsmsign -name __pycache__ -prune -exec rm -rf {} +
    # Byte-compiled by the release's Python. The tasks that run under pseudo (do_install,
    # do_rootfs, do_image_*) have PYTHONDONTWRITEBYTECODE=1, and without this every hsmsign
    # call there compiled its modules again (0.02 - 0.03 s a call). checked-hash: a .pyc is
    # used only while its source is the one it was compiled from.
    ${PYTHON} -m compileall -q --invalidation-mode checked-hash ${D}${PYTHON_SITEPACKAGES_DIR}/hsmsign
    install -d ${D}${bindir}
    # nativepython3 (python3-native) sees the native site-packages with
    # python-pkcs11 and cryptography; the host python3 does not
    printf '%s\n' '#!/usr/bin/env nativepython3' 'from hsmsign.launch import console_main' \
        'console_main()' > ${D}${bindir}/hsmsign
    chmod 0755 ${D}${bindir}/hsmsign
}
