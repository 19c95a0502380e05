# nooelint: oelint.bbclass.underscores - names fixed by the design (hsmsign-<artifact>, like oe-core's uboot-sign)
# hsmsign-fitimage.bbclass: the kernel fitImage signed through the token.
#
# Inherited by hsmsign.bbclass (INHERIT += "hsmsign"). Key:
# HSM_PKCS11_URI_FITIMAGE; the same key's public half goes into U-Boot's DTB
# (hsmsign-uboot). Turn FIT signing on as oe-core documents it:
#
#   KERNEL_IMAGETYPES += "fitImage"   # scarthgap: KERNEL_CLASSES += "kernel-fitimage"
#   UBOOT_SIGN_ENABLE = "1"
#   FIT_SIGN_ALG = "rsa3072"          # or ecdsa256 (hsmsign signs ECDSA too)
#
# scarthgap: kernel-fitimage.bbclass builds and signs the FIT in the kernel
# recipe (do_assemble_fitimage, do_assemble_fitimage_initramfs) through
# ${UBOOT_MKIMAGE_SIGN} -F -k KEYDIR -r: this class points it at
# 'hsmsign mkimage' with the URI as KEYDIR.
#
# wrynose and later: the recipe linux-yocto-fitimage (kernel-fit-image.bbclass,
# oe.fitimage) signs in do_compile and stops unless <keydir>/<name>.key and
# .crt exist. With no key files to give it, this class turns that step off
# (FIT_KERNEL_SIGN_ENABLE = "0", the FIT is built unsigned) and adds
# do_hsmsign_fitimage after do_compile, before do_install and do_deploy: it
# adds a signature node to every configuration, covering every image each one
# references, and signs with the token (RSA or ECDSA, FIT_SIGN_ALG,
# FIT_PAD_ALG). With FIT_SIGN_INDIVIDUAL = "1" the image signature nodes
# oe-core declared (key UBOOT_SIGN_IMG_KEYNAME) are signed with the same key.
# Before the FIT is written, U-Boot's fit_check_sign (HSMSIGN_FIT_CHECK_SIGN,
# from u-boot-tools-native) must accept every configuration.

HSMSIGN_FITIMAGE_FILE ??= "${B}/fitImage"
HSMSIGN_FITIMAGE_FILE[doc] = "wrynose and later: the FIT do_hsmsign_fitimage signs in place."

HSMSIGN_FITIMAGE_ARGS ??= ""
HSMSIGN_FITIMAGE_ARGS[doc] = "wrynose and later: extra arguments of 'hsmsign fit sign' (e.g. --comment TEXT)."

do_hsmsign_fitimage[doc] = "Sign the kernel FIT (wrynose and later) with the token key HSM_PKCS11_URI_FITIMAGE."
python do_hsmsign_fitimage() {
    import shlex
    fit = d.getVar("HSMSIGN_FITIMAGE_FILE")
    args = ["fit", "sign", "--uri", hsmsign.bitbake.role_uri(d, "FITIMAGE"),
            "--key-name", hsmsign.bitbake.key_name(d, "FITIMAGE"),
            "--algo", "%s,%s" % (d.getVar("FIT_HASH_ALG"), d.getVar("FIT_SIGN_ALG"))]
    if (d.getVar("FIT_SIGN_ALG") or "").startswith("rsa"):
        args += ["--padding", d.getVar("FIT_PAD_ALG") or "pkcs-1.5"]
    if bb.utils.to_boolean(d.getVar("FIT_SIGN_INDIVIDUAL")):
        args += ["--image-key-name", d.getVar("UBOOT_SIGN_IMG_KEYNAME")]
    args += shlex.split(d.getVar("HSMSIGN_FITIMAGE_ARGS") or "") + [fit]
    hsmsign_run(d, args, "FITIMAGE")
}
do_hsmsign_fitimage[vardeps] += "HSMSIGN_KEY_ID_FITIMAGE HSMSIGN_CMD FIT_SIGN_INDIVIDUAL UBOOT_SIGN_IMG_KEYNAME"

# nooelint: oelint.task.noanonpython - the hooks depend on what the recipe inherits (inherits_class), known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d):
        return
    if bb.data.inherits_class("kernel-fitimage", d):
        # scarthgap: oe-core calls ${UBOOT_MKIMAGE_SIGN} -k ${UBOOT_SIGN_KEYDIR}
        d.setVar("UBOOT_MKIMAGE_SIGN", "${HSMSIGN_CMD} mkimage")
        hsmsign_set_keydir(d, "UBOOT_SIGN_KEYDIR", "FITIMAGE")
        d.setVar("UBOOT_SIGN_KEYNAME", hsmsign.bitbake.key_name(d, "FITIMAGE"))
        d.setVar("UBOOT_SIGN_IMG_KEYNAME", hsmsign.bitbake.img_key_name(d))
        d.setVar("FIT_GENERATE_KEYS", "0")
        for task in ("do_assemble_fitimage", "do_assemble_fitimage_initramfs"):
            if d.getVar(task, False) is not None:
                hsmsign_hook_task(d, task, "FITIMAGE")
    elif bb.data.inherits_class("kernel-fit-image", d):
        # wrynose and later: sign after do_compile instead of oe.fitimage's key-file signer
        signing = bb.utils.to_boolean(d.getVar("FIT_KERNEL_SIGN_ENABLE") or d.getVar("UBOOT_SIGN_ENABLE"))
        d.setVar("FIT_KERNEL_SIGN_ENABLE", "0")
        d.setVar("FIT_GENERATE_KEYS", "0")
        d.setVar("UBOOT_SIGN_IMG_KEYNAME", hsmsign.bitbake.img_key_name(d))
        if signing:
            bb.build.addtask("do_hsmsign_fitimage", "do_install do_deploy", "do_compile", d)
            hsmsign_hook_task(d, "do_hsmsign_fitimage", "FITIMAGE")
}
