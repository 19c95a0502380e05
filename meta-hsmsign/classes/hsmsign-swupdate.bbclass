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
# HSMSIGN_SWUPDATE_CERT is embedded) or rsa / rsa-pss. Before do_swuimage runs, a
# prefunc ('hsmsign swupdate preflight') checks the key under the mode's policy, the
# signature type and the certificate (which must belong to the key; one near its
# expiry is a BitBake warning); before signing, hsmsign checks that every image in
# sw-description carries a sha256.
#
# In your swupdate image recipe keep SWUPDATE_SIGNING unset or set it to
# anything: this class sets CUSTOM. Do not set SWUPDATE_PRIVATE_KEY or
# SWUPDATE_CMS_KEY: they name key files and stop the parse in production.
#
# Encrypted images with the token's AES key: set HSM_PKCS11_URI_ENCRYPT and
# use meta-swupdate's own switches (SWUPDATE_IMAGES_ENCRYPTED[<file>] = "1",
# SWUPDATE_ENCRYPT_SWDESC). meta-swupdate would read the key from
# SWUPDATE_AES_FILE and pass it to 'openssl enc -K' on the command line; it has
# no hook for another encrypter. So, for the run of do_swuimage only, a prefunc
# answers its three helpers instead (swupdate_extract_keys, swupdate_get_IV,
# swupdate_encrypt_file): every file is encrypted by the token through
# 'hsmsign encrypt' (AES-256-CBC, PKCS#7 padding, as swupdate decrypts), with a
# fresh random IV per file that $swupdate_get_IV(<file>) puts into
# sw-description. SWUPDATE_AES_FILE holds the key's URI (no file exists); if
# anything else of meta-swupdate tries to open it, the build stops.

HSMSIGN_SWUPDATE_MODE ??= "cms"
HSMSIGN_SWUPDATE_MODE[doc] = "swupdate signature type: cms (default), rsa or rsa-pss; must match the swupdate build on the device (CONFIG_SIGALG_*)."

HSMSIGN_SWUPDATE_CERT ??= "${SWUPDATE_CMS_CERT}"
HSMSIGN_SWUPDATE_CERT[doc] = "Signer certificate (PEM) embedded in CMS signatures; defaults to meta-swupdate's SWUPDATE_CMS_CERT (a public file)."

HSMSIGN_SWUPDATE_DIR ??= "${@'${S}' if (d.getVar('LAYERSERIES_CORENAMES') or '').split()[:1] == ['scarthgap'] else '${WORKDIR}'}"
HSMSIGN_SWUPDATE_DIR[doc] = "Where do_swuimage keeps sw-description and expects sw-description.sig: ${S} on scarthgap, ${WORKDIR} from wrynose on."

HSMSIGN_SWUPDATE_IVT ??= ""
HSMSIGN_SWUPDATE_IVT[doc] = "IV (32 hex digits, not secret) for token encryption where the device takes it from its AES key file: an encrypted sw-description (SWUPDATE_ENCRYPT_SWDESC needs it) and, on scarthgap, every image. Empty: a random IV per bundle, @@HSMSIGN_SWUPDATE_IVT@@ in sw-description."

# Prefunc of do_swuimage when HSM_PKCS11_URI_ENCRYPT is set and the recipe
# encrypts: meta-swupdate's key-file helpers answered by the token (see above).
hsmsign_swupdate_token_aes[doc] = "Prefunc of do_swuimage: meta-swupdate's encryption helpers encrypt through the token key HSM_PKCS11_URI_ENCRYPT."
python hsmsign_swupdate_token_aes() {
    hsmsign_swupdate_use_token(d)
}

# The helpers themselves (key-file refusal, IVs, encryption) are hsmsign.bitbake.SwupdateTokenAes,
# unit-tested; a layer test fails when meta-swupdate renames the functions they replace. They stay
# an override of BitBake's function context: a bbappend cannot reach every swupdate image recipe.
def hsmsign_swupdate_use_token(d):
    uri = hsmsign.bitbake.role_uri(d, "ENCRYPT")
    context = bb.utils.get_context()
    helpers = hsmsign.bitbake.SwupdateTokenAes(
        d.getVar("SWUPDATE_AES_FILE"), d.getVar("HSMSIGN_SWUPDATE_IVT") or "",
        # scarthgap's meta-swupdate has no swupdate_get_IV: every file gets the bundle IV there
        "swupdate_get_IV" in context,
        lambda src, out, iv: hsmsign_run(d, ["encrypt", "--uri", uri, "--in", src, "--out", out, "--iv", iv],
                                         "ENCRYPT"),
        bb.fatal)
    d.setVar("HSMSIGN_SWUPDATE_IVT", helpers.bundle_iv)
    context.update(helpers.overrides())

def hsmsign_swupdate_encryption(d):
    """Hook token encryption into do_swuimage when the recipe asks meta-swupdate to encrypt."""
    flags = d.getVarFlags("SWUPDATE_IMAGES_ENCRYPTED") or {}
    files = sorted(f for f, v in flags.items() if v == "1" and not f.startswith("_"))
    if not files and not d.getVar("SWUPDATE_ENCRYPT_SWDESC"):
        return
    if not hsmsign.bitbake.role_uri(d, "ENCRYPT"):
        if not d.getVar("SWUPDATE_AES_FILE"):
            bb.fatal("%s: SWUPDATE_IMAGES_ENCRYPTED / SWUPDATE_ENCRYPT_SWDESC ask for encryption, but no key "
                     "is set. What to do: create an AES key in the token (hsmsign keygen --type aes:256 --uri ...) "
                     "and set HSM_PKCS11_URI_ENCRYPT to its URI" % d.getVar("PN"))
        return
    if d.getVar("SWUPDATE_ENCRYPT_SWDESC") and not d.getVar("HSMSIGN_SWUPDATE_IVT"):
        bb.fatal("%s: SWUPDATE_ENCRYPT_SWDESC with the token key needs HSMSIGN_SWUPDATE_IVT: the IV of the "
                 "AES key file on the device (swupdate -K), which decrypts sw-description with it" % d.getVar("PN"))
    d.setVar("SWUPDATE_AES_FILE", hsmsign.bitbake.uri_identity(hsmsign.bitbake.role_uri(d, "ENCRYPT")))
    d.appendVarFlag("do_swuimage", "prefuncs", " hsmsign_swupdate_token_aes")
    d.appendVarFlag("do_swuimage", "vardeps", " HSMSIGN_KEY_ID_ENCRYPT HSMSIGN_SWUPDATE_IVT")
    lock = hsmsign.bitbake.lockfile(d, "ENCRYPT")
    if lock and lock != hsmsign.bitbake.lockfile(d, "SWUPDATE"):
        d.appendVarFlag("do_swuimage", "lockfiles", " " + lock)

hsmsign_swupdate_preflight[doc] = "Prefunc of do_swuimage: check the key (policy, pins), the signature type and the signer certificate before meta-swupdate builds and signs; warnings (a certificate near its expiry) become BitBake warnings."
python hsmsign_swupdate_preflight() {
    mode = d.getVar("HSMSIGN_SWUPDATE_MODE")
    args = ["swupdate", "preflight", "--uri", hsmsign.bitbake.role_uri(d, "SWUPDATE"), "--signing-mode", mode]
    cert = d.getVar("HSMSIGN_SWUPDATE_CERT")
    if cert and mode == "cms":
        args += ["--cert", cert]
    hsmsign_run(d, args, "SWUPDATE")
}

# nooelint: oelint.task.noanonpython - the hooks depend on what the recipe inherits (inherits_class), known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d) or not bb.data.inherits_class("swupdate-common", d):
        return
    d.setVar("SWUPDATE_SIGNING", "CUSTOM")
    d.setVar("SWUPDATE_SIGN_TOOL", hsmsign.bitbake.swupdate_sign_tool(d))
    if d.getVar("do_swuimage", False) is not None:
        hsmsign_hook_task(d, "do_swuimage", "SWUPDATE")
        d.appendVarFlag("do_swuimage", "prefuncs", " hsmsign_swupdate_preflight")
        hsmsign_swupdate_encryption(d)
}
