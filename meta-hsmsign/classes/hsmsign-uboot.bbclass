# nooelint: oelint.bbclass.underscores - names fixed by the design (hsmsign-<artifact>, like oe-core's uboot-sign)
# hsmsign-uboot.bbclass: U-Boot and SPL FITs signed through the token.
#
# Inherited by hsmsign.bbclass (INHERIT += "hsmsign"); acts only in recipes
# that inherit oe-core's uboot-sign (u-boot). oe-core does all FIT work with
# ${UBOOT_MKIMAGE_SIGN} ... -k KEYDIR [-K DTB -r] in do_uboot_assemble_fitimage;
# this class points UBOOT_MKIMAGE_SIGN at 'hsmsign mkimage' (mkimage's own
# command line, -k a PKCS#11 URI) and the key directories at the token, so:
#
#   * the kernel FIT key (HSM_PKCS11_URI_FITIMAGE) goes into U-Boot's control
#     DTB, marked required ("conf"; HSMSIGN_UBOOT_REQUIRED and
#     HSMSIGN_UBOOT_REQUIRED_MODE change the policy);
#   * the U-Boot FIT (UBOOT_FITIMAGE_ENABLE = "1") is signed with
#     HSM_PKCS11_URI_SPL and that public key goes into SPL's DTB
#     (SPL_SIGN_ENABLE = "1");
#   * every FIT the drop-in signs is checked with U-Boot's fit_check_sign
#     (HSMSIGN_FIT_CHECK_SIGN) before it is written; oe-core then checks the
#     U-Boot FIT against SPL's DTB and the kernel key against u-boot.dtb again.
#
# You still choose what to sign with oe-core's switches, e.g. in local.conf:
#
#   UBOOT_SIGN_ENABLE = "1"          # kernel FIT key into u-boot.dtb
#   UBOOT_FITIMAGE_ENABLE = "1"      # U-Boot proper as a FIT checked by SPL
#   SPL_SIGN_ENABLE = "1"
#   FIT_SIGN_ALG = "rsa3072"         # UBOOT_FIT_SIGN_ALG for the U-Boot FIT
#
# Works the same on scarthgap (U-Boot tools 2024.01, URI without 'pkcs11:')
# and wrynose (2024.04+, full URI): the drop-in accepts both.

HSMSIGN_UBOOT_TASKS ??= "do_uboot_assemble_fitimage do_deploy"
HSMSIGN_UBOOT_TASKS[doc] = "Tasks of uboot-sign recipes that call UBOOT_MKIMAGE_SIGN and get the token environment, lock and key identity."

# nooelint: oelint.task.noanonpython - the hooks depend on what the recipe inherits (inherits_class), known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d) or not bb.data.inherits_class("uboot-sign", d):
        return
    d.setVar("UBOOT_MKIMAGE_SIGN", "${HSMSIGN_CMD} mkimage")
    hsmsign_set_keydir(d, "UBOOT_SIGN_KEYDIR", "FITIMAGE")
    d.setVar("UBOOT_SIGN_KEYNAME", hsmsign.bitbake.key_name(d, "FITIMAGE"))
    hsmsign_set_keydir(d, "SPL_SIGN_KEYDIR", "SPL")
    d.setVar("SPL_SIGN_KEYNAME", hsmsign.bitbake.key_name(d, "SPL"))
    # FIT_SIGN_INDIVIDUAL: the image key node (required "image") next to the configuration key
    d.setVar("UBOOT_SIGN_IMG_KEYNAME", hsmsign.bitbake.img_key_name(d))
    # keys are never generated into the build tree
    d.setVar("UBOOT_FIT_GENERATE_KEYS", "0")
    d.setVar("SPL_GENERATE_KEYS", "0")
    d.setVar("FIT_GENERATE_KEYS", "0")
    # concat_dtb and uboot_fitimage_assemble add keys to the DTBs do_compile
    # made, in place: keep do_compile's copies and start every signing run from
    # them, so a key rotation leaves exactly the configured keys in the DTBs
    d.appendVarFlag("do_compile", "postfuncs", " hsmsign_uboot_keep_dtbs")
    d.prependVarFlag("do_uboot_assemble_fitimage", "prefuncs", "hsmsign_uboot_restore_dtbs ")
    for task in (d.getVar("HSMSIGN_UBOOT_TASKS") or "").split():
        if d.getVar(task, False) is not None:
            hsmsign_hook_task(d, task, "SPL")
            d.appendVarFlag(task, "vardeps", " HSMSIGN_KEY_ID_FITIMAGE UBOOT_SIGN_IMG_KEYNAME")
}

# The control DTBs of U-Boot and SPL as do_compile left them (UBOOT_CONFIG builds: one per config)
def hsmsign_uboot_dtbs(d):
    b = d.getVar("B")
    dirs = [os.path.join(b, c) for c in (d.getVar("UBOOT_MACHINE") or "").split()] if d.getVar("UBOOT_CONFIG") else [b]
    names = [d.getVar("UBOOT_DTB_BINARY") or ""]
    if d.getVar("SPL_DTB_BINARY"):
        names.append(os.path.join(d.getVar("SPL_DIR") or "", d.getVar("SPL_DTB_BINARY")))
    return [os.path.join(base, name) for base in dirs for name in names if name]

hsmsign_uboot_keep_dtbs[doc] = "Postfunc of do_compile: keep the DTBs as built (<dtb>.hsmsign-orig) for the signing task to start from."
python hsmsign_uboot_keep_dtbs() {
    import shutil
    for path in hsmsign_uboot_dtbs(d):
        if os.path.exists(path):
            shutil.copyfile(path, path + ".hsmsign-orig")
}

hsmsign_uboot_restore_dtbs[doc] = "Prefunc of do_uboot_assemble_fitimage: start from do_compile's DTBs, without keys of an earlier run."
python hsmsign_uboot_restore_dtbs() {
    import shutil
    for path in hsmsign_uboot_dtbs(d):
        if os.path.exists(path + ".hsmsign-orig"):
            shutil.copyfile(path + ".hsmsign-orig", path)
}
