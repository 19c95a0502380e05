# nooelint: oelint.bbclass.underscores - names fixed by the design (hsmsign-<artifact>, like oe-core's uboot-sign)
# hsmsign-rauc.bbclass: RAUC bundles signed through the token.
#
# Inherited by hsmsign.bbclass (INHERIT += "hsmsign"); acts only in recipes
# that inherit meta-rauc's bundle class. Key: HSM_PKCS11_URI_RAUC (defaults to
# HSM_PKCS11_URI). RAUC signs its bundles itself, and takes a PKCS#11 URI as its
# key through OpenSSL's pkcs11 engine (libp11): meta-rauc's do_bundle runs
#
#   rauc bundle --cert=${RAUC_CERT_FILE} --key=${RAUC_KEY_FILE} ...
#
# and this class sets RAUC_KEY_FILE to the key's URI without its PIN source or
# module (no key file exists). RAUC_CERT_FILE stays yours: the certificate of
# that key, a public file ('hsmsign cert --uri ... --output rauc.pem' makes one).
# For do_bundle only:
#   * prefunc hsmsign_rauc_prepare: 'hsmsign rauc preflight' opens the key under
#     the mode's policy (development keys, published keys, pinned fingerprints),
#     checks that RAUC_CERT_FILE belongs to it and that libp11-native can list the
#     token's keys (before 0.4.18 it cannot if one is Ed25519); then the module
#     (RAUC_PKCS11_MODULE), the PIN (RAUC_PKCS11_PIN) and libp11-native's engine
#     directory (OPENSSL_ENGINES) go into the task process's environment, where
#     rauc reads them: never into a variable, a run script or a log.
#   * do_bundle itself stays meta-rauc's, but for two details: RAUC_KEY_FILE quoted in its
#     'rauc convert' call (a URI's ';' would end the command there) and taken out of its
#     file-checksums (it names no file; its identity is in the task hash).
#   * postfunc hsmsign_rauc_check: every bundle do_bundle wrote (bundle.raucb,
#     casync-bundle.raucb) is checked by 'hsmsign rauc verify' (the signature
#     against HSMSIGN_RAUC_KEYRING and, for verity and crypt bundles, every
#     payload block against the signed dm-verity root hash, which 'rauc info'
#     does not read) and by rauc itself ('rauc info --keyring'), and gets its
#     ledger entry. A bundle that fails is deleted and the task fails: do_deploy
#     never sees it.
#
#   INHERIT += "hsmsign"
#   HSM_PKCS11_URI_RAUC = "pkcs11:token=acme-prod;object=rauc-signing"
#   RAUC_CERT_FILE = "/etc/acme/rauc-signing.pem"
#   HSMSIGN_RAUC_KEYRING = "/etc/acme/rauc-ca.pem"   # the device's keyring, if a CA issued the certificate
#
# Do not set RAUC_KEY_FILE: a key file stops the parse in production.

HSMSIGN_RAUC_KEYRING ??= ""
HSMSIGN_RAUC_KEYRING[doc] = "The keyring the devices hold (PEM, public): every bundle is checked against it after signing. Empty: RAUC_CERT_FILE itself (a self-signed certificate)."

HSMSIGN_RAUC_DEPENDS ??= "libp11-native cryptsetup-native"
HSMSIGN_RAUC_DEPENDS[doc] = "Native recipes do_bundle needs besides meta-rauc's: libp11-native (OpenSSL's pkcs11 engine for rauc-native; OPENSSL_ENGINES points at it) and cryptsetup-native (veritysetup, which checks every payload block), both from meta-oe. Empty: the host's."

hsmsign_rauc_prepare[doc] = "Prefunc of meta-rauc's do_bundle: check the key and RAUC_CERT_FILE, then put the token's module and PIN into rauc's environment."
python hsmsign_rauc_prepare() {
    cert = d.getVar("RAUC_CERT_FILE")
    if not cert or not os.path.isfile(cert):
        bb.fatal("meta-hsmsign: RAUC_CERT_FILE %s: rauc needs the certificate of the signing key. What to do: "
                 "hsmsign cert --uri \"$HSM_PKCS11_URI_RAUC\" --subject \"CN=...\" --output rauc.pem, and set "
                 "RAUC_CERT_FILE to that file" % ("is not set" if not cert else "names no file (%s)" % cert))
    preflight = ["rauc", "preflight", "--uri", hsmsign.bitbake.role_uri(d, "RAUC"), "--cert", cert]
    # libp11-native's version: a token with a key it cannot list (before 0.4.18, Ed25519) fails here, clearly
    libp11 = hsmsign.bitbake.libp11_version(d.getVar("STAGING_LIBDIR_NATIVE"))
    hsmsign_run(d, preflight + (["--libp11-version", libp11] if libp11 else []), "RAUC")
    try:
        env = hsmsign.bitbake.rauc_env(d, d.getVar("BB_ORIGENV", False), d.expand("${STAGING_LIBDIR_NATIVE}/engines-3"))
    except hsmsign.bitbake.TaskError as exc:
        bb.fatal(str(exc))
    os.environ.update(env)
    bb.note("meta-hsmsign: rauc signs with %s through %s%s" % (
        d.getVar("RAUC_KEY_FILE"), env["RAUC_PKCS11_MODULE"],
        " (engine in %s)" % env["OPENSSL_ENGINES"] if "OPENSSL_ENGINES" in env else ""))
}
hsmsign_rauc_prepare[vardepsexclude] = "BB_ORIGENV"

hsmsign_rauc_check[doc] = "Postfunc of meta-rauc's do_bundle: check every bundle (hsmsign rauc verify, rauc info --keyring) and record it; a failing bundle is deleted."
python hsmsign_rauc_check() {
    import subprocess
    os.environ.pop("RAUC_PKCS11_PIN", None)
    bundles = hsmsign.bitbake.rauc_bundles(d.getVar("B"))
    if not bundles:
        bb.fatal("meta-hsmsign: do_bundle wrote no bundle into %s" % d.getVar("B"))
    keyring = d.getVar("HSMSIGN_RAUC_KEYRING") or d.getVar("RAUC_CERT_FILE")
    rauc = d.expand("${STAGING_BINDIR_NATIVE}/rauc")
    uri = hsmsign.bitbake.role_uri(d, "RAUC")
    failed = None
    for bundle in bundles:
        try:
            hsmsign_run(d, ["rauc", "verify", "--cert", keyring, "--record", "--uri", uri, bundle], "RAUC")
        except bb.BBHandledException:
            failed = bundle
            break
        done = subprocess.run([rauc, "info", "--keyring=" + keyring, bundle], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = [l for l in hsmsign.bitbake.redact(done.stderr + done.stdout).splitlines() if l.strip()]
            bb.error("meta-hsmsign: rauc info --keyring=%s refuses %s:\n  %s" % (keyring, bundle, "\n  ".join(lines[-6:])))
            failed = bundle
            break
        bb.note("meta-hsmsign: %s checked by hsmsign and by rauc info against %s" % (os.path.basename(bundle), keyring))
    if failed:
        for bundle in bundles + [os.path.join(d.getVar("B"), "encrypted-bundle.raucb")]:
            if os.path.exists(bundle):
                os.unlink(bundle)
        bb.fatal("meta-hsmsign: %s failed its check after signing; the bundles were deleted, nothing is deployed" % failed)
}

# nooelint: oelint.task.noanonpython - the hooks depend on what the recipe inherits (inherits_class), known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d) or not bb.data.inherits_class("bundle", d):
        return
    if d.getVar("do_bundle", False) is None:
        bb.fatal("meta-hsmsign: %s inherits bundle but has no do_bundle: this meta-rauc is not supported "
                 "(see docs/rauc.md)" % d.getVar("PN"))
    key = hsmsign.bitbake.uri_identity(hsmsign.bitbake.role_uri(d, "RAUC"))
    theirs = d.getVar("RAUC_KEY_FILE") or ""
    if theirs.startswith("pkcs11:") and hsmsign.bitbake.uri_identity(theirs) != key:
        bb.warn("meta-hsmsign: %s: RAUC_KEY_FILE names %s, but bundles are signed with HSM_PKCS11_URI_RAUC's key "
                "%s; set HSM_PKCS11_URI_RAUC to the key you mean and leave RAUC_KEY_FILE unset"
                % (d.getVar("PN"), hsmsign.bitbake.uri_identity(theirs), key))
    d.setVar("RAUC_KEY_FILE", key)
    d.setVarFlag("RAUC_KEY_FILE", "vardepvalue", "${HSMSIGN_KEY_ID_RAUC}")
    # meta-rauc's 'rauc convert' call (casync bundles) has --key=${RAUC_KEY_FILE} unquoted: the ';' of
    # the key's URI would end the shell command there. Quote it, as its 'rauc bundle' call does.
    body = d.getVar("do_bundle", False) or ""
    if "--key=${RAUC_KEY_FILE}" in body:
        d.setVar("do_bundle", body.replace("--key=${RAUC_KEY_FILE}", '--key="${RAUC_KEY_FILE}"'))
    # RAUC_KEY_FILE names no file now: out of do_bundle's file checksums (BitBake would warn that it
    # cannot checksum 'pkcs11'); the key's identity is in the task hash through its vardepvalue
    checksums = d.getVarFlag("do_bundle", "file-checksums", False) or ""
    if "${RAUC_KEY_FILE}:False" in checksums:
        d.setVarFlag("do_bundle", "file-checksums", checksums.replace("${RAUC_KEY_FILE}:False", ""))
    hsmsign_hook_task(d, "do_bundle", "RAUC")
    d.appendVarFlag("do_bundle", "prefuncs", " hsmsign_rauc_prepare")
    d.appendVarFlag("do_bundle", "postfuncs", " hsmsign_rauc_check")
    d.appendVarFlag("do_bundle", "vardeps", " HSMSIGN_RAUC_KEYRING")
    d.appendVar("DEPENDS", " " + (d.getVar("HSMSIGN_RAUC_DEPENDS") or ""))
    keyring = d.getVar("HSMSIGN_RAUC_KEYRING")
    if keyring:
        d.appendVarFlag("do_bundle", "file-checksums", " %s:False" % keyring)
}
