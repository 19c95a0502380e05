# nooelint: oelint.var.mandatoryvar.SRC_URI, oelint.var.bbclassextend - nothing is fetched (the certificate comes from the token or HSMSIGN_UEFI_CERT); target only
SUMMARY = "UEFI Secure Boot db certificate of the meta-hsmsign UEFI key"
DESCRIPTION = "Deploys the certificate that every Authenticode signature of the build carries \
               (HSMSIGN_UEFI_CERT, or a self-signed one made from HSM_PKCS11_URI_UEFI in \
               development mode) as hsmsign-uefi-db.pem, .der and .esl (EFI_SIGNATURE_LIST) \
               for enrolment in db."
# nooelint: oelint.vars.homepageping - no network in CI; the project page
HOMEPAGE = "https://github.com/meta-hsmsign/meta-hsmsign"
BUGTRACKER = "https://github.com/meta-hsmsign/meta-hsmsign/issues"
CVE_PRODUCT = "hsmsign"
SECTION = "bootloaders"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - generated files only, MIT like the layer
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit deploy nopackages

do_configure[noexec] = "1"
do_install[noexec] = "1"

python do_compile() {
    import shutil
    import ssl
    b = d.getVar("B")
    pem = os.path.join(b, "hsmsign-uefi-db.pem")
    given = d.getVar("HSMSIGN_UEFI_CERT")
    if given:
        with open(given, "rb") as fh:
            data = fh.read()
        if b"-----BEGIN CERTIFICATE-----" in data:
            text = data.decode("ascii")
        else:
            text = ssl.DER_cert_to_PEM_cert(data)
        with open(pem, "w", encoding="ascii") as fh:
            fh.write(text)
    else:
        if d.getVar("HSMSIGN_MODE") != "development":
            bb.fatal("meta-hsmsign: set HSMSIGN_UEFI_CERT to the db certificate of HSM_PKCS11_URI_UEFI "
                     "(a self-signed one is made in development mode only): hsmsign cert --uri URI "
                     "--subject 'CN=... Secure Boot db' --eku codeSigning --days 3650 --output db.pem")
        hsmsign_run(d, ["cert", "--uri", hsmsign.bitbake.role_uri(d, "UEFI"),
                        "--subject", d.getVar("HSMSIGN_UEFI_CERT_SUBJECT"),
                        "--eku", "codeSigning", "--days", "3650", "--output", pem], "UEFI")
    with open(pem, encoding="ascii") as fh:
        der = ssl.PEM_cert_to_DER_cert(fh.read())
    with open(os.path.join(b, "hsmsign-uefi-db.der"), "wb") as fh:
        fh.write(der)
    esl = ["pe", "esl", "--cert", pem, "--output", os.path.join(b, "hsmsign-uefi-db.esl")]
    if d.getVar("HSMSIGN_UEFI_OWNER_GUID"):
        esl += ["--owner", d.getVar("HSMSIGN_UEFI_OWNER_GUID")]
    hsmsign_run(d, esl, "UEFI")
}
do_compile[vardeps] += "HSMSIGN_UEFI_CERT_ID HSMSIGN_UEFI_CERT_SUBJECT HSMSIGN_UEFI_OWNER_GUID HSMSIGN_MODE"
do_compile[cleandirs] = "${B}"

do_deploy() {
    install -m 0644 ${B}/hsmsign-uefi-db.pem ${B}/hsmsign-uefi-db.der ${B}/hsmsign-uefi-db.esl ${DEPLOYDIR}/
}
addtask deploy after do_compile before do_build

# nooelint: oelint.task.noanonpython - the token hook (environment, lock, hsmsign-native) needs hsmsign.bbclass
python () {
    if not bb.data.inherits_class("hsmsign", d) or not hsmsign.bitbake.enabled(d):
        raise bb.parse.SkipRecipe("meta-hsmsign is not enabled (INHERIT += \"hsmsign\")")
    hsmsign_hook_task(d, "do_compile", "UEFI")
}
