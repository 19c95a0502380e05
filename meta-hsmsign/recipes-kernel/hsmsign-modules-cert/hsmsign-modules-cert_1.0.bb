# nooelint: oelint.var.mandatoryvar.SRC_URI, oelint.var.bbclassextend - nothing is fetched (the certificate comes from the token or HSMSIGN_MODULES_CERT); target only
SUMMARY = "Kernel module signing certificate of the meta-hsmsign modules key"
DESCRIPTION = "Deploys the certificate the kernel is built with (CONFIG_SYSTEM_TRUSTED_KEYS) \
               and that every module signature names (HSMSIGN_MODULES_CERT, or a self-signed \
               one made from HSM_PKCS11_URI_MODULES in development mode) as \
               hsmsign-modules.pem and .der. No private key is involved."
# nooelint: oelint.vars.homepageping - no network in CI; the project page
HOMEPAGE = "https://github.com/meta-hsmsign/meta-hsmsign"
BUGTRACKER = "https://github.com/meta-hsmsign/meta-hsmsign/issues"
CVE_PRODUCT = "hsmsign"
SECTION = "kernel"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - generated files only, MIT like the layer
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit deploy nopackages

do_configure[noexec] = "1"
do_install[noexec] = "1"

python do_compile() {
    import ssl
    b = d.getVar("B")
    pem = os.path.join(b, "hsmsign-modules.pem")
    given = d.getVar("HSMSIGN_MODULES_CERT")
    if given:
        with open(given, "rb") as fh:
            data = fh.read()
        text = data.decode("ascii") if b"-----BEGIN CERTIFICATE-----" in data else ssl.DER_cert_to_PEM_cert(data)
        with open(pem, "w", encoding="ascii") as fh:
            fh.write(text)
    else:
        if d.getVar("HSMSIGN_MODE") != "development":
            bb.fatal("meta-hsmsign: set HSMSIGN_MODULES_CERT to the certificate of HSM_PKCS11_URI_MODULES "
                     "(a self-signed one is made in development mode only): hsmsign cert --uri URI "
                     "--subject 'CN=... kernel modules' --days 3650 --output modules.pem")
        hsmsign_run(d, ["cert", "--uri", hsmsign.bitbake.role_uri(d, "MODULES"),
                        "--subject", d.getVar("HSMSIGN_MODULES_CERT_SUBJECT"),
                        "--days", "3650", "--output", pem], "MODULES")
    with open(pem, encoding="ascii") as fh:
        der = ssl.PEM_cert_to_DER_cert(fh.read())
    with open(os.path.join(b, "hsmsign-modules.der"), "wb") as fh:
        fh.write(der)
}
do_compile[vardeps] += "HSMSIGN_MODULES_CERT_ID HSMSIGN_MODULES_CERT_SUBJECT HSMSIGN_MODE"
do_compile[cleandirs] = "${B}"

do_deploy() {
    install -m 0644 ${B}/hsmsign-modules.pem ${B}/hsmsign-modules.der ${DEPLOYDIR}/
}
addtask deploy after do_compile before do_build

# nooelint: oelint.task.noanonpython - the token hook (environment, lock, hsmsign-native) needs hsmsign.bbclass
python () {
    if not bb.data.inherits_class("hsmsign", d) or not hsmsign.bitbake.enabled(d):
        raise bb.parse.SkipRecipe("meta-hsmsign is not enabled (INHERIT += \"hsmsign\")")
    hsmsign_hook_task(d, "do_compile", "MODULES")
}
