# nooelint: oelint.bbclass.underscores - names fixed by the design (hsmsign-<artifact>, like oe-core's uboot-sign)
# hsmsign-uefi.bbclass: UEFI Secure Boot binaries signed through the token.
#
# Inherited by hsmsign.bbclass (INHERIT += "hsmsign"). Key: HSM_PKCS11_URI_UEFI
# (defaults to HSM_PKCS11_URI); 'hsmsign pe sign' writes an Authenticode
# signature (one token operation) and checks it before the file gets its name.
# No UKI_SB_KEY file and no sbsign are used.
#
#   * systemd-boot (oe-core recipe systemd-boot, every release):
#     do_hsmsign_uefi after do_compile, before do_install and do_deploy, signs
#     systemd-boot<arch>.efi in ${B} (src/boot/efi/ on scarthgap, src/boot/ from
#     wrynose on), so the package and the deployed file are the signed binary.
#     The linux*.efi.stub files stay unsigned: they are ukify's input.
#   * GRUB (oe-core recipe grub-efi): do_hsmsign_uefi after do_mkimage, before
#     do_install and do_deploy, signs ${B}/${GRUB_IMAGE_PREFIX}${GRUB_IMAGE}.
#   * UKIs (oe-core uki.bbclass, wrynose and later; scarthgap has none): a
#     postfunc of do_uki signs ${DEPLOY_DIR_IMAGE}/${UKI_FILENAME} in place.
#     Leave UKI_SB_KEY unset (hsmsign refuses key files).
#   * The db certificate: the recipe hsmsign-uefi-db deploys it as
#     hsmsign-uefi-db.pem, .der and .esl (EFI_SIGNATURE_LIST for enrolment);
#     every hooked task depends on it.
#
#   INHERIT += "hsmsign"
#   HSM_PKCS11_URI_UEFI = "pkcs11:token=acme-prod;object=secure-boot-db"
#   HSMSIGN_UEFI_CERT = "/etc/acme/secure-boot-db.pem"   # the certificate enrolled in db
#
# Which of them are signed: HSMSIGN_UEFI_SIGN (default all three).

HSMSIGN_UEFI_SIGN ??= "systemd-boot grub-efi uki"
HSMSIGN_UEFI_SIGN[doc] = "What is Authenticode-signed with HSM_PKCS11_URI_UEFI: systemd-boot, grub-efi, uki (oe-core's uki.bbclass images). Empty: nothing."

HSMSIGN_UEFI_CERT ??= ""
HSMSIGN_UEFI_CERT[doc] = "PEM or DER certificate of HSM_PKCS11_URI_UEFI's key, the one enrolled in db; it goes into every signature and is deployed by hsmsign-uefi-db. Empty: hsmsign-uefi-db makes a self-signed one from the token key (development mode only)."

HSMSIGN_UEFI_CERT_SUBJECT ??= "CN=${@d.getVar('DISTRO') or 'Yocto'} Secure Boot db (meta-hsmsign development)"
HSMSIGN_UEFI_CERT_SUBJECT[doc] = "Subject of the self-signed db certificate made when HSMSIGN_UEFI_CERT is empty."

HSMSIGN_UEFI_OWNER_GUID ??= ""
HSMSIGN_UEFI_OWNER_GUID[doc] = "SignatureOwner GUID in the deployed EFI signature list (hsmsign-uefi-db.esl); empty: one derived from the certificate."

HSMSIGN_UEFI_DB ?= "${DEPLOY_DIR_IMAGE}/hsmsign-uefi-db.pem"
HSMSIGN_UEFI_DB[doc] = "The db certificate the signing tasks put into the signatures: what hsmsign-uefi-db deployed."

# the EFI binaries a recipe's do_hsmsign_uefi signs (paths under ${B})
def hsmsign_uefi_targets(d):
    import glob
    pn = d.getVar("PN")
    b = d.getVar("B")
    if pn == "systemd-boot":
        found = sorted(glob.glob(os.path.join(b, "src", "boot", "systemd-boot*.efi"))
                       + glob.glob(os.path.join(b, "src", "boot", "efi", "systemd-boot*.efi")))
    elif pn == "grub-efi":
        found = [os.path.join(b, d.getVar("GRUB_IMAGE_PREFIX") + d.getVar("GRUB_IMAGE"))]
    else:
        found = []
    return [p for p in found if os.path.isfile(p) and not os.path.islink(p)]

def hsmsign_uefi_sign(d, path):
    hsmsign_run(d, ["pe", "sign", "--uri", hsmsign.bitbake.role_uri(d, "UEFI"),
                    "--cert", d.getVar("HSMSIGN_UEFI_DB"), "--output", path, path], "UEFI")

do_hsmsign_uefi[doc] = "Authenticode-sign the recipe's EFI binaries (systemd-boot, GRUB) with HSM_PKCS11_URI_UEFI before they are installed and deployed."
python do_hsmsign_uefi() {
    targets = hsmsign_uefi_targets(d)
    if not targets:
        bb.fatal("meta-hsmsign: %s left no EFI binary to sign in %s" % (d.getVar("PN"), d.getVar("B")))
    for path in targets:
        hsmsign_uefi_sign(d, path)
}

hsmsign_uefi_sign_uki[doc] = "Postfunc of uki.bbclass's do_uki: Authenticode-sign the deployed UKI with HSM_PKCS11_URI_UEFI."
python hsmsign_uefi_sign_uki() {
    uki = os.path.join(d.getVar("DEPLOY_DIR_IMAGE"), d.getVar("UKI_FILENAME"))
    if not os.path.isfile(uki):
        bb.fatal("meta-hsmsign: do_uki wrote no %s" % uki)
    hsmsign_uefi_sign(d, uki)
}

# nooelint: oelint.task.noanonpython - the hooks depend on the recipe (PN, inherited classes), known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d):
        return
    wanted = (d.getVar("HSMSIGN_UEFI_SIGN") or "").split()
    pn = d.getVar("PN")
    task = None
    if pn == "systemd-boot" and "systemd-boot" in wanted:
        bb.build.addtask("do_hsmsign_uefi", "do_install do_deploy", "do_compile", d)
        task = "do_hsmsign_uefi"
    elif pn == "grub-efi" and "grub-efi" in wanted:
        bb.build.addtask("do_hsmsign_uefi", "do_install do_deploy", "do_mkimage", d)
        task = "do_hsmsign_uefi"
    elif bb.data.inherits_class("uki", d) and "uki" in wanted:
        if d.getVar("UKI_SB_KEY"):
            bb.fatal("meta-hsmsign: UKI_SB_KEY names a key file; remove it, the UKI is signed with HSM_PKCS11_URI_UEFI")
        d.appendVarFlag("do_uki", "postfuncs", " hsmsign_uefi_sign_uki")
        task = "do_uki"
    if task is None:
        return
    hsmsign_hook_task(d, task, "UEFI")
    d.appendVarFlag(task, "depends", " hsmsign-uefi-db:do_deploy")
    # the certificate in every signature: its bytes are in the task hash
    d.appendVarFlag(task, "vardeps", " HSMSIGN_UEFI_CERT_ID")
}

# What the signatures carry besides the key: the db certificate, by content when
# it is a file given by the user; a self-made one follows from the key identity.
def hsmsign_uefi_cert_id(d):
    import hashlib
    path = d.getVar("HSMSIGN_UEFI_CERT")
    if not path:
        return "self-signed"
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return "missing:" + path

HSMSIGN_UEFI_CERT_ID = "${@hsmsign_uefi_cert_id(d)}"
HSMSIGN_UEFI_CERT_ID[vardepvalue] = "${HSMSIGN_UEFI_CERT_ID}"
