# nooelint: oelint.bbclass.underscores - names fixed by the design (hsmsign-<artifact>, like oe-core's uboot-sign)
# hsmsign-image.bbclass: the rootfs signed through the token.
#
# Inherited by hsmsign.bbclass (INHERIT += "hsmsign"); acts only in image
# recipes. Key: HSM_PKCS11_URI_ROOTFS.
#
#   * dm-verity: with meta-oe's verity image type (IMAGE_CLASSES +=
#     "image_types_verity", IMAGE_FSTYPES += "verity"), do_hsmsign_verity runs
#     after do_image_verity and before do_image_complete. It reads the root
#     hash from <image>.verity-params and writes <image>.verity.roothash and
#     its detached PKCS#7 signature <image>.verity.roothash.p7s, the format
#     the kernel checks (CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG;
#     'veritysetup open --root-hash-signature', systemd root-hash-signature=).
#   * dm-verity with meta-security's dm-verity-img (IMAGE_CLASSES +=
#     "dm-verity-img", DM_VERITY_IMAGE, DM_VERITY_IMAGE_TYPE): do_hsmsign_dmverity
#     runs after do_image_<DM_VERITY_IMAGE_TYPE> (which writes the .verity image
#     and its .verity.env) and before do_image_complete; it signs ROOT_HASH the
#     same way, next to the .verity image in IMGDEPLOYDIR.
#   * every image file of the build (IMGDEPLOYDIR) gets a detached signature
#     (<file>.sig, DER) and one signed manifest
#     (<image>.hsmsign-manifest.json + .p7s: path, size, sha256 of each file),
#     written at the start of do_image_complete, before the files are deployed.
#
# The signer certificate (in the PKCS#7 signatures) is HSMSIGN_ROOTFS_CERT; when
# empty, a self-signed one is made from the token key (development).

HSMSIGN_ROOTFS_CERT ??= ""
HSMSIGN_ROOTFS_CERT[doc] = "PEM certificate of the rootfs key (the one the kernel keyring trusts); empty: a self-signed one from the token key, deployed as <image>.hsmsign-rootfs.pem."

HSMSIGN_IMAGE_SIGN ??= "1"
HSMSIGN_IMAGE_SIGN[doc] = "1: detached signature of every image file and the signed manifest. 0: only the dm-verity root hash."

HSMSIGN_IMAGE_SKIP ??= "*.sig *.p7s *.verity-params *.verity-info *.manifest *.testdata.json *.qemuboot.conf *.spdx.* *.hsmsign-*"
HSMSIGN_IMAGE_SKIP[doc] = "Glob patterns of IMGDEPLOYDIR files that get no detached signature (they are still listed in the manifest unless signatures)."

def hsmsign_rootfs_cert(d):
    cert = d.getVar("HSMSIGN_ROOTFS_CERT")
    if cert:
        return cert
    cert = os.path.join(d.getVar("IMGDEPLOYDIR"), d.getVar("IMAGE_NAME") + ".hsmsign-rootfs.pem")
    if not os.path.exists(cert):
        hsmsign_run(d, ["cert", "--uri", hsmsign.bitbake.role_uri(d, "ROOTFS"),
                        "--subject", "CN=%s rootfs (meta-hsmsign)" % d.getVar("DISTRO"),
                        "--eku", "codeSigning", "--output", cert], "ROOTFS")
    return cert

# Sign a dm-verity root hash read from params (meta-oe .verity-params or
# meta-security .verity.env); write <real>.roothash and <real>.roothash.p7s and,
# when link is given, symlinks <link>.roothash[.p7s] to them.
def hsmsign_sign_root_hash(d, params, real, link=None):
    try:
        root_hash = hsmsign.bitbake.verity_root_hash(params)
    except hsmsign.bitbake.TaskError as exc:
        bb.fatal("meta-hsmsign: %s" % exc)
    hsmsign_run(d, ["verity", "sign", "--uri", hsmsign.bitbake.role_uri(d, "ROOTFS"),
                    "--root-hash", root_hash, "--cert", hsmsign_rootfs_cert(d),
                    "--root-hash-output", real + ".roothash",
                    "--output", real + ".roothash.p7s"], "ROOTFS")
    if link:
        for suffix in (".roothash", ".roothash.p7s"):
            if os.path.lexists(link + suffix):
                os.remove(link + suffix)
            os.symlink(os.path.basename(real) + suffix, link + suffix)

do_hsmsign_verity[doc] = "Sign the dm-verity root hash of meta-oe's verity image (detached PKCS#7) with HSM_PKCS11_URI_ROOTFS."
python do_hsmsign_verity() {
    image = d.getVar("VERITY_INPUT_IMAGE")
    real = os.path.realpath(image)
    hsmsign_sign_root_hash(d, image + ".verity-params", real + ".verity", image + ".verity")
}
do_hsmsign_verity[vardeps] += "HSMSIGN_KEY_ID_ROOTFS HSMSIGN_CMD"

do_hsmsign_dmverity[doc] = "Sign the dm-verity root hash of meta-security's dm-verity-img image (detached PKCS#7) with HSM_PKCS11_URI_ROOTFS."
python do_hsmsign_dmverity() {
    # which .verity.env and .verity image: hsmsign.bitbake.dmverity_inputs (unit-tested)
    try:
        params, real = hsmsign.bitbake.dmverity_inputs(
            d.getVar("IMGDEPLOYDIR"), d.getVar("STAGING_VERITY_DIR") or "",
            d.getVar("DM_VERITY_IMAGE"), d.getVar("DM_VERITY_IMAGE_TYPE"))
    except hsmsign.bitbake.TaskError as exc:
        bb.fatal("meta-hsmsign: %s" % exc)
    hsmsign_sign_root_hash(d, params, real)
}
do_hsmsign_dmverity[vardeps] += "HSMSIGN_KEY_ID_ROOTFS HSMSIGN_CMD"

hsmsign_image_sign[doc] = "Prefunc of do_image_complete: detached signature of every image file and the signed manifest."
python hsmsign_image_sign() {
    import fnmatch
    if d.getVar("HSMSIGN_IMAGE_SIGN") != "1":
        return
    deploy = d.getVar("IMGDEPLOYDIR")
    skip = (d.getVar("HSMSIGN_IMAGE_SKIP") or "").split()
    uri = hsmsign.bitbake.role_uri(d, "ROOTFS")
    files = []
    for name in sorted(os.listdir(deploy)):
        path = os.path.join(deploy, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        files.append(path)
        if not any(fnmatch.fnmatch(name, pattern) for pattern in skip):
            hsmsign_run(d, ["sign", "--uri", uri, "--output", path + ".sig", path], "ROOTFS")
    if not files:
        return
    manifest = os.path.join(deploy, d.getVar("IMAGE_NAME") + ".hsmsign-manifest.json")
    hsmsign_run(d, ["manifest", "--uri", uri, "--cert", hsmsign_rootfs_cert(d),
                    "--output", manifest] + files, "ROOTFS")
    for target in (manifest, manifest + ".p7s"):
        link = os.path.join(deploy, d.getVar("IMAGE_LINK_NAME") + ".hsmsign-manifest.json" + target[len(manifest):])
        if d.getVar("IMAGE_LINK_NAME") and not os.path.lexists(link):
            os.symlink(os.path.basename(target), link)
}
hsmsign_image_sign[vardeps] += "HSMSIGN_KEY_ID_ROOTFS HSMSIGN_CMD"

# Task wiring. do_image_verity is added by image_types_verity's anonymous
# Python, which may run after ours: addtask only records the dependency names,
# and BitBake resolves them once every anonymous function has run.
# nooelint: oelint.task.noanonpython - whether the recipe is an image with a verity type is known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d) or not bb.data.inherits_class("image", d):
        return
    fstypes = (d.getVar("IMAGE_FSTYPES") or "").split()
    if "verity" in fstypes and bb.data.inherits_class("image_types_verity", d):
        bb.build.addtask("do_hsmsign_verity", "do_image_complete", "do_image_verity", d)
        hsmsign_hook_task(d, "do_hsmsign_verity", "ROOTFS")
    verity_image = d.getVar("DM_VERITY_IMAGE") or ""
    verity_type = (d.getVar("DM_VERITY_IMAGE_TYPE") or "").strip()
    if (bb.data.inherits_class("dm-verity-img", d) and verity_image and verity_type
            and d.getVar("PN").endswith(verity_image)):
        bb.build.addtask("do_hsmsign_dmverity", "do_image_complete",
                         "do_image_%s" % verity_type.replace("-", "_"), d)
        hsmsign_hook_task(d, "do_hsmsign_dmverity", "ROOTFS")
    if d.getVar("HSMSIGN_IMAGE_SIGN") == "1":
        hsmsign_hook_task(d, "do_image_complete", "ROOTFS")
        d.appendVarFlag("do_image_complete", "prefuncs", " hsmsign_image_sign")
}
