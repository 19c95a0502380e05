# nooelint: oelint.bbclass.underscores - names fixed by the design (hsmsign-<artifact>, like oe-core's uboot-sign)
# hsmsign-imx.bbclass: NXP i.MX boot images signed through the token, with NXP's SPSDK.
#
# Inherited by hsmsign.bbclass (INHERIT += "hsmsign"), like the other artifact
# classes: it hooks meta-freescale's recipes by what they are, so the layer
# needs no bbappend and no dependency on meta-freescale. Key: HSM_PKCS11_URI_IMX,
# the SRK that signs. Nothing happens until it is set: it has no default, because
# the SRK table's hash is burnt into the SoC's fuses and is chosen on purpose.
#
#   * imx-boot (meta-freescale, every release): do_hsmsign_imx after do_compile,
#     before do_install and do_deploy, signs every
#     ${S}/imx-boot${BOOT_VARIANT}-${MACHINE}-<UBOOT_CONFIG>.bin-<IMXBOOT_TARGETS>
#     in place, so the package, the deployed image and the imx-boot link are
#     the signed image.
#   * U-Boot recipes that inherit meta-freescale's imx-boot-container (U-Boot
#     builds flash.bin itself): the same task signs ${B}/<config>-<type>/flash.bin
#     before do_deploy.
#   * The SRK table and its fuse words are deployed next to the image:
#     ${HSMSIGN_IMX_SRK_NAME}-table.bin and ${HSMSIGN_IMX_SRK_NAME}-fuses.txt.
#
# AHAB (i.MX 8QM/8QXP/8DXL/8ULP, 91, 93, 94, 95): 'hsmsign imx ahab sign' signs
# the OEM containers (NXP's own stay as they are), SPSDK's verification passing
# before the image is written. HAB (i.MX 8M): SPSDK builds no HAB4 CSF for
# 8M, so do_hsmsign_imx stops the build rather than leave the boot image
# unsigned; set HSMSIGN_IMX_SIGN = "" to build it without a HAB signature.
#
# SPSDK is in no Yocto layer: HSMSIGN_SPSDK_PYTHON names the Python of a venv
# on the build host with 'hsmsign[nxp]' installed; the task runs this layer's
# hsmsign with it. Unset or broken, the task stops (nothing is left unsigned).
#
#   INHERIT += "hsmsign"
#   HSM_PKCS11_URI_IMX = "pkcs11:token=acme-prod;object=imx-srk0"
#   HSMSIGN_IMX_SRK_URIS = "pkcs11:token=acme-prod;object=imx-srk0 pkcs11:token=acme-prod;object=imx-srk1 \
#                           pkcs11:token=acme-prod;object=imx-srk2 pkcs11:token=acme-prod;object=imx-srk3"
#   HSMSIGN_SPSDK_PYTHON = "/opt/hsmsign-nxp/bin/python3"

HSMSIGN_IMX_SIGN ??= "imx-boot imx-boot-container"
HSMSIGN_IMX_SIGN[doc] = "What is signed with HSM_PKCS11_URI_IMX: imx-boot (meta-freescale's imx-boot images), imx-boot-container (flash.bin of U-Boot recipes with meta-freescale's imx-boot-container). Empty: nothing (the boot ROM then checks no signature of ours)."

HSMSIGN_SPSDK_PYTHON ??= ""
HSMSIGN_SPSDK_PYTHON[doc] = "Absolute path of a Python on the build host with SPSDK, python-pkcs11 and asn1crypto (a venv with pip install 'hsmsign[nxp]'); the i.MX signing task runs this layer's hsmsign with it. Empty: the task stops."

HSMSIGN_IMX_SRK_URIS ??= ""
HSMSIGN_IMX_SRK_URIS[doc] = "Space-separated URIs (a pin-source, never a PIN) of the 4 SRK keys, in SRK order, whose table is put into the images and whose hash is fused; HSM_PKCS11_URI_IMX must be one of them (it signs), the others are for revocation. Required: the task stops without them."

HSMSIGN_IMX_FAMILY ??= ""
HSMSIGN_IMX_FAMILY[doc] = "SPSDK family of the SoC (nxpimage ahab get-families), e.g. mimx9352. Empty: from the machine's SoC override (mx93: mimx9352, mx95: mimx9596, mx8qxp: mimx8qxp, ...)."

HSMSIGN_IMX_CONFIG ??= ""
HSMSIGN_IMX_CONFIG[doc] = "Your own SPSDK AHAB signing configuration (nxpimage ahab get-template -s), for what the generated one does not set (SRK revocation, fuse and software versions); its SRK table must be that of HSMSIGN_IMX_SRK_URIS. Empty: one made from the SRK keys."

HSMSIGN_IMX_MEM_TYPE ??= ""
HSMSIGN_IMX_MEM_TYPE[doc] = "SPSDK memory type of the images. Empty: flexspi_nor for *flexspi* targets, else serial_downloader (the containers at offset 0, as imx-mkimage writes SD/eMMC images)."

HSMSIGN_IMX_SRK_NAME ??= "${PN}-srk"
HSMSIGN_IMX_SRK_NAME[doc] = "Deployed SRK files: <name>-table.bin (the SRK table in the images) and <name>-fuses.txt (the SRK hash fuse words)."

HSMSIGN_IMX_WORKDIR = "${WORKDIR}/hsmsign-imx"

# the images a recipe's do_hsmsign_imx signs: (path, imx-mkimage target)
def hsmsign_imx_images(d):
    if bb.data.inherits_class("imx-boot-container", d):
        return hsmsign.bitbake.imx_container_images(d.getVar("B"), d.getVar("UBOOT_MACHINE") or "",
                                                    d.getVar("UBOOT_CONFIG") or "")
    return hsmsign.bitbake.imx_boot_images(d.getVar("S"), d.getVar("MACHINE"), d.getVar("BOOT_VARIANT") or "",
                                           d.getVar("UBOOT_CONFIG") or "", d.getVar("IMXBOOT_TARGETS") or "")

do_hsmsign_imx[doc] = "Sign the i.MX boot images (AHAB containers) through the token with HSM_PKCS11_URI_IMX before they are installed and deployed; write the SRK table and fuse words."
do_hsmsign_imx[cleandirs] = "${HSMSIGN_IMX_WORKDIR}"
python do_hsmsign_imx() {
    kind, family, soc = hsmsign.bitbake.imx_soc(d.getVar("MACHINEOVERRIDES") or "", d.getVar("HSMSIGN_IMX_FAMILY") or "")
    pn = d.getVar("PN")
    if kind == "hab":
        bb.fatal("meta-hsmsign: " + hsmsign.bitbake.IMX_HAB_REFUSAL.format(soc=soc, pn=pn))
    images = hsmsign_imx_images(d)
    missing = [path for path, _target in images if not os.path.isfile(path) or os.path.islink(path)]
    if not images or missing:
        bb.fatal("meta-hsmsign: %s left no boot image %s to sign: its do_compile names them otherwise "
                 "(meta-freescale changed?); nothing was signed" % (pn, " ".join(missing)))
    try:
        done = hsmsign.bitbake.imx_sign_images(d, d.getVar("BB_ORIGENV", False), images, d.getVar("HSMSIGN_IMX_WORKDIR"))
    except hsmsign.bitbake.TaskError as exc:
        bb.fatal("meta-hsmsign: %s" % exc)
    for warning in done["warnings"]:
        bb.warn("meta-hsmsign: " + warning)
    for item in done["signed"]:
        bb.note("signed %s AHAB container(s) of %s (%s)" % (item["containers"], item["image"], item["mem_type"]))
    bb.note("SRK hash %s; fuse words %s" % (done["srk_hash"], " ".join(done["fuse_words"] or [])))
}
do_hsmsign_imx[vardepsexclude] = "BB_ORIGENV"

hsmsign_imx_deploy_srk[doc] = "Postfunc of do_deploy: the SRK table and fuse words of the signed images into DEPLOYDIR."
python hsmsign_imx_deploy_srk() {
    import shutil
    work = d.getVar("HSMSIGN_IMX_WORKDIR")
    deploydir = d.getVar("DEPLOYDIR")
    name = d.getVar("HSMSIGN_IMX_SRK_NAME")
    for src, dst in (("srk-table.bin", name + "-table.bin"), ("srk-fuses.txt", name + "-fuses.txt")):
        if not os.path.isfile(os.path.join(work, src)):
            bb.fatal("meta-hsmsign: do_hsmsign_imx left no %s in %s" % (src, work))
        shutil.copyfile(os.path.join(work, src), os.path.join(deploydir, dst))
}

# nooelint: oelint.task.noanonpython - the hooks depend on the recipe (PN, inherited classes), known only after parsing
python () {
    # only with a key chosen for it: the SRK table's hash is burnt into fuses, so the layer never
    # picks the general signing key for it
    if not hsmsign.bitbake.enabled(d) or not d.getVar("HSM_PKCS11_URI_IMX"):
        return
    wanted = (d.getVar("HSMSIGN_IMX_SIGN") or "").split()
    if d.getVar("PN") == "imx-boot" and "imx-boot" in wanted:
        bb.build.addtask("do_hsmsign_imx", "do_install do_deploy", "do_compile", d)
    elif bb.data.inherits_class("imx-boot-container", d) and "imx-boot-container" in wanted:
        bb.build.addtask("do_hsmsign_imx", "do_install do_deploy", "do_compile", d)
    else:
        return
    d.appendVarFlag("do_deploy", "postfuncs", " hsmsign_imx_deploy_srk")
    # the key identity, the SRK table's keys and what shapes the signature are in the task hash
    # (do_compile too: the task signs what do_compile made, never an image it signed before)
    for task in ("do_compile", "do_hsmsign_imx"):
        d.appendVarFlag(task, "vardeps", " HSMSIGN_KEY_ID_IMX HSMSIGN_IMX_SRK_ID HSMSIGN_IMX_CONFIG_ID"
                        " HSMSIGN_IMX_FAMILY HSMSIGN_IMX_MEM_TYPE HSMSIGN_SPSDK_PYTHON")
    d.setVarFlag("do_hsmsign_imx", "hsmsign_role", "IMX")
    lock = hsmsign.bitbake.lockfile(d, "IMX")
    if lock:
        d.appendVarFlag("do_hsmsign_imx", "lockfiles", " " + lock)
}

# The SRK keys by identity (no PIN source, no module) and the user's SPSDK configuration by content
def hsmsign_imx_srk_id(d):
    return " ".join(hsmsign.bitbake.uri_identity(u) for u in (d.getVar("HSMSIGN_IMX_SRK_URIS") or "").split())

def hsmsign_imx_config_id(d):
    import hashlib
    path = d.getVar("HSMSIGN_IMX_CONFIG")
    if not path:
        return "generated"
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return "missing:" + path

HSMSIGN_IMX_SRK_ID = "${@hsmsign_imx_srk_id(d)}"
HSMSIGN_IMX_SRK_ID[vardepvalue] = "${HSMSIGN_IMX_SRK_ID}"
HSMSIGN_IMX_CONFIG_ID = "${@hsmsign_imx_config_id(d)}"
HSMSIGN_IMX_CONFIG_ID[vardepvalue] = "${HSMSIGN_IMX_CONFIG_ID}"
