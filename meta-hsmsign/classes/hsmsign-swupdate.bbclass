# nooelint: oelint.bbclass.underscores - names fixed by the design (hsmsign-<artifact>, like oe-core's uboot-sign)
# hsmsign-swupdate.bbclass: swupdate bundles signed through the token.
#
# Inherited by hsmsign.bbclass (INHERIT += "hsmsign"); acts only in recipes
# that inherit meta-swupdate's swupdate-common (swupdate images). Key:
# HSM_PKCS11_URI_SWUPDATE. meta-swupdate's own hook is used:
#
#   SWUPDATE_SIGNING = "CUSTOM"
#   SWUPDATE_SIGN_TOOL = "hsmsign swupdate sign ... --output <dir>/sw-description.sig <dir>/sw-description"
#
# where <dir> is ${S} on scarthgap and ${WORKDIR} from wrynose on (where each
# release's do_swuimage looks for the signature). The signature type is
# HSMSIGN_SWUPDATE_MODE: cms (default, the signer certificate
# HSMSIGN_SWUPDATE_CERT is embedded) or rsa / rsa-pss. Before signing, hsmsign
# checks that every image in sw-description carries a sha256.
#
# In your swupdate image recipe keep SWUPDATE_SIGNING unset or set it to
# anything: this class sets CUSTOM. Do not set SWUPDATE_PRIVATE_KEY or
# SWUPDATE_CMS_KEY: they name key files and stop the parse in production.
#
# Encrypted images (SWUPDATE_IMAGES_ENCRYPTED) with a token AES key
# (HSM_PKCS11_URI_ENCRYPT): 'hsmsign encrypt' writes the encrypted file and
# prints the IV and sha256 for sw-description (docs/encryption.md); meta-swupdate's
# own encryption reads SWUPDATE_AES_FILE, a key file, which this layer refuses.

HSMSIGN_SWUPDATE_MODE ??= "cms"
HSMSIGN_SWUPDATE_MODE[doc] = "swupdate signature type: cms (default), rsa or rsa-pss; must match the swupdate build on the device (CONFIG_SIGALG_*)."

HSMSIGN_SWUPDATE_CERT ??= "${SWUPDATE_CMS_CERT}"
HSMSIGN_SWUPDATE_CERT[doc] = "Signer certificate (PEM) embedded in CMS signatures; defaults to meta-swupdate's SWUPDATE_CMS_CERT (a public file)."

HSMSIGN_SWUPDATE_DIR ??= "${@'${S}' if (d.getVar('LAYERSERIES_CORENAMES') or '').split()[:1] == ['scarthgap'] else '${WORKDIR}'}"
HSMSIGN_SWUPDATE_DIR[doc] = "Where do_swuimage keeps sw-description and expects sw-description.sig: ${S} on scarthgap, ${WORKDIR} from wrynose on."

def hsmsign_swupdate_tool(d):
    q = hsmsign.bitbake.quote
    workdir = d.getVar("HSMSIGN_SWUPDATE_DIR")
    sw_desc = os.path.join(workdir, "sw-description.plain" if d.getVar("SWUPDATE_ENCRYPT_SWDESC") else "sw-description")
    args = [d.getVar("HSMSIGN_CMD"), "swupdate", "sign",
            "--uri", q(hsmsign.bitbake.signing_uri(d, "SWUPDATE")),
            "--signing-mode", q(d.getVar("HSMSIGN_SWUPDATE_MODE"))]
    cert = d.getVar("HSMSIGN_SWUPDATE_CERT")
    if cert and d.getVar("HSMSIGN_SWUPDATE_MODE") == "cms":
        args += ["--cert", q(cert)]
    args += ["--output", q(os.path.join(workdir, "sw-description.sig")), q(sw_desc)]
    return " ".join(args)

# nooelint: oelint.task.noanonpython - the hooks depend on what the recipe inherits (inherits_class), known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d) or not bb.data.inherits_class("swupdate-common", d):
        return
    d.setVar("SWUPDATE_SIGNING", "CUSTOM")
    d.setVar("SWUPDATE_SIGN_TOOL", hsmsign_swupdate_tool(d))
    if d.getVar("do_swuimage", False) is not None:
        hsmsign_hook_task(d, "do_swuimage", "SWUPDATE")
}
