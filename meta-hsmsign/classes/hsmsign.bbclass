# hsmsign.bbclass: sign U-Boot, SPL, the kernel fitImage, the rootfs,
# swupdate and RAUC bundles and UEFI binaries with keys that never leave a PKCS#11 token.
#
# Switch it on for the whole build in local.conf (or a kas file):
#
#   INHERIT += "hsmsign"
#   HSM_PKCS11_URI = "pkcs11:token=acme-prod;object=fw-signing?pin-source=file:/run/secrets/hsm-pin"
#
# or, with the PIN in an environment variable of the shell that runs bitbake
# (read at task run time, never stored in a variable, sigdata or run script):
#
#   HSMSIGN_PIN_ENV = "HSM_PIN"
#
# Under kas prefer the PIN file: kas passes only the variables listed in its env:
# section, and those become datastore variables (see docs/ci-kas.md).
#
# Developer builds without an HSM (after 'hsmsign dev-init'):
#
#   INHERIT += "hsmsign"
#   HSMSIGN_MODE = "development"
#
# One key per artifact when you want them apart (each defaults as shown; the
# table is hsmsign.roles, and a unit test holds these lines against it):
#
#   HSM_PKCS11_URI_UBOOT    ??= "${HSM_PKCS11_URI}"        the U-Boot side: default of _FITIMAGE and _SPL
#   HSM_PKCS11_URI_SPL      ??= "${HSM_PKCS11_URI_UBOOT}"  U-Boot proper FIT checked by SPL
#   HSM_PKCS11_URI_FITIMAGE ??= "${HSM_PKCS11_URI_UBOOT}"  kernel fitImage; its public half goes into U-Boot's DTB
#   HSM_PKCS11_URI_MODULES  ??= "${HSM_PKCS11_URI_FITIMAGE}"  Linux kernel modules (appended PKCS#7)
#   HSM_PKCS11_URI_ROOTFS   ??= "${HSM_PKCS11_URI}"        dm-verity root hash, image signatures, manifest
#   HSM_PKCS11_URI_SWUPDATE ??= "${HSM_PKCS11_URI}"        sw-description
#   HSM_PKCS11_URI_RAUC     ??= "${HSM_PKCS11_URI}"        RAUC bundles (rauc signs through the token)
#   HSM_PKCS11_URI_UEFI     ??= "${HSM_PKCS11_URI}"        UEFI Secure Boot: UKIs, systemd-boot, GRUB
#   HSM_PKCS11_URI_IMX      ??= ""                         NXP i.MX boot image (signed only when set)
#   HSM_PKCS11_URI_ENCRYPT  ??= ""                         AES key (encryption only when set)
#
# U-Boot's DTB always holds the key that signs the kernel FIT: set
# HSM_PKCS11_URI_UBOOT to give the U-Boot side its own key, and
# HSM_PKCS11_URI_FITIMAGE only to split the kernel FIT key from the SPL key.
#
# Pin the public keys so a wrong token or key fails the signing task (exit 4,
# nothing written, in every mode) and a key change changes the task hashes:
#
#   HSMSIGN_PUBKEY_SHA256 = "<sha256 of the DER SubjectPublicKeyInfo>"   (hsmsign info)
#   HSMSIGN_PUBKEY_SHA256_FITIMAGE = "..."
#
# A role's pin is HSMSIGN_PUBKEY_SHA256_<ROLE>, else that of the role it
# defaults to (_SPL and _FITIMAGE: _UBOOT), else HSMSIGN_PUBKEY_SHA256; the AES
# key (_ENCRYPT) only by its own (hsmsign info prints its check-value fingerprint).
#
# This class holds the variables, the parse-time checks and the runner; it
# inherits one class per artifact (see the end of this file), each of which hooks only the
# recipes that build that artifact. Adding the layer without INHERIT changes no
# recipe. See docs/layer.md and docs/reference/variables.md.

HSMSIGN_ENABLE ??= "1"
HSMSIGN_ENABLE[doc] = "1: sign every artifact through the token. 0: build unsigned with a loud warning (development) or stop the parse (production)."

HSMSIGN_MODE ??= "production"
HSMSIGN_MODE[doc] = "production (default): refuse development tokens and keys, key-file variables and unsigned builds. development: SoftHSM development keys allowed, problems are warnings."

HSM_PKCS11_URI ??= "${@hsmsign.bitbake.dev_default_uri(d)}"
HSM_PKCS11_URI[doc] = "PKCS#11 URI (RFC 7512) of the default signing key, without PIN. In development mode it defaults to the token made by 'hsmsign dev-init'."

HSM_PKCS11_URI_UBOOT ??= "${HSM_PKCS11_URI}"
HSM_PKCS11_URI_UBOOT[doc] = "Key of the U-Boot side: the default of HSM_PKCS11_URI_FITIMAGE (the kernel FIT key, whose public half goes into U-Boot's control DTB) and of HSM_PKCS11_URI_SPL."

HSM_PKCS11_URI_SPL ??= "${HSM_PKCS11_URI_UBOOT}"
HSM_PKCS11_URI_SPL[doc] = "Key that signs the U-Boot proper FIT checked by SPL; its public half goes into SPL's DTB (oe-core SPL_SIGN_KEYDIR)."

HSM_PKCS11_URI_FITIMAGE ??= "${HSM_PKCS11_URI_UBOOT}"
HSM_PKCS11_URI_FITIMAGE[doc] = "Key that signs the kernel fitImage; its public half is the key U-Boot's control DTB holds (oe-core UBOOT_SIGN_KEYDIR). Defaults to HSM_PKCS11_URI_UBOOT."

HSM_PKCS11_URI_MODULES ??= "${HSM_PKCS11_URI_FITIMAGE}"
HSM_PKCS11_URI_MODULES[doc] = "Key that signs Linux kernel modules (the kernel's and module.bbclass recipes'); its certificate is built into the kernel (CONFIG_SYSTEM_TRUSTED_KEYS). Defaults to the kernel FIT key, HSM_PKCS11_URI_FITIMAGE."

HSM_PKCS11_URI_ROOTFS ??= "${HSM_PKCS11_URI}"
HSM_PKCS11_URI_ROOTFS[doc] = "Key that signs the dm-verity root hash, the detached image signatures and the image manifest."

HSM_PKCS11_URI_SWUPDATE ??= "${HSM_PKCS11_URI}"
HSM_PKCS11_URI_SWUPDATE[doc] = "Key that signs sw-description of swupdate bundles."

HSM_PKCS11_URI_RAUC ??= "${HSM_PKCS11_URI}"
HSM_PKCS11_URI_RAUC[doc] = "Key that signs RAUC bundles: meta-rauc's do_bundle runs rauc with it as RAUC_KEY_FILE, through OpenSSL's pkcs11 engine; its certificate is RAUC_CERT_FILE."

HSM_PKCS11_URI_UEFI ??= "${HSM_PKCS11_URI}"
HSM_PKCS11_URI_UEFI[doc] = "RSA key that Authenticode-signs UEFI binaries (UKIs, systemd-boot, GRUB) for Secure Boot; its certificate is the db entry (HSMSIGN_UEFI_CERT)."

HSM_PKCS11_URI_IMX ??= ""
HSM_PKCS11_URI_IMX[doc] = "SRK key that signs NXP i.MX boot images through SPSDK: the AHAB containers of imx-boot (i.MX 8/8X/9) or its HAB CSF. Its public half is in the SRK table whose hash is fused. Empty (default): i.MX boot images are not signed by the layer; never defaults to another key, because the SRK hash is burnt into fuses."

HSM_PKCS11_URI_ENCRYPT ??= ""
HSM_PKCS11_URI_ENCRYPT[doc] = "AES key in the token for swupdate image encryption; empty (default): no encryption. Never defaults to a signing key."

HSM_PKCS11_MODULE ??= ""
HSM_PKCS11_MODULE[doc] = "PKCS#11 module (.so) to load when the URI names none (module-path/module-name); empty: p11-kit-proxy."

HSMSIGN_PIN_ENV ??= ""
HSMSIGN_PIN_ENV[doc] = "NAME of an environment variable of the shell that starts BitBake that holds the PIN; read at task run time from BB_ORIGENV, never stored. Empty: the URI's pin-source."

HSMSIGN_PUBKEY_SHA256 ??= ""
HSMSIGN_PUBKEY_SHA256[doc] = "Pinned SHA-256 of the signing key's DER SubjectPublicKeyInfo (hsmsign info prints it); a wrong key stops the signing task in every mode. HSMSIGN_PUBKEY_SHA256_<ROLE> pins one role (and the roles that default to it). Part of the task hashes."

HSMSIGN_CMD ??= "hsmsign"
HSMSIGN_CMD[doc] = "Command that signs: 'hsmsign' from hsmsign-native (default), or a host command such as '/usr/bin/hsmsign' (then hsmsign-native is not built)."

HSMSIGN_UBOOT_REQUIRED ??= ""
HSMSIGN_UBOOT_REQUIRED[doc] = "required policy of the keys written into U-Boot's and SPL's DTBs: conf (U-Boot refuses configurations the key did not sign), image, none (development only: never enforced). Empty: as oe-core's mkimage -r (conf, image for FIT_SIGN_INDIVIDUAL image keys)."

HSMSIGN_UBOOT_REQUIRED_MODE ??= ""
HSMSIGN_UBOOT_REQUIRED_MODE[doc] = "required-mode of the DTBs' /signature node: all (every required key must verify; U-Boot's default when empty) or any (one is enough, e.g. during a key rotation)."

HSMSIGN_FIT_CHECK_SIGN ??= "uboot-fit_check_sign"
HSMSIGN_FIT_CHECK_SIGN[doc] = "U-Boot's fit_check_sign (from u-boot-tools-native): every FIT hsmsign signs is checked with it, configuration by configuration, before it is written. Empty: hsmsign's own check only."

HSMSIGN_LOCK ??= "1"
HSMSIGN_LOCK[doc] = "1: one signing task per token at a time (a lock file per token label). 0: no lock, for tokens that take parallel sessions."

HSMSIGN_LOCK_DIR ??= "${TMPDIR}"
HSMSIGN_LOCK_DIR[doc] = "Directory of the per-token lock files; share it between builds that share a token."

HSMSIGN_LEDGER ??= ""
HSMSIGN_LEDGER[doc] = "File the hash-chained signing ledger is appended to (outside TMPDIR to keep it); empty: no ledger."

HSMSIGN_DEV_HOME ??= ""
HSMSIGN_DEV_HOME[doc] = "Directory of the development token (hsmsign dev-init); empty: ~/.local/share/hsmsign/dev-token."

HSMSIGN_DEV_MODULE ??= ""
HSMSIGN_DEV_MODULE[doc] = "SoftHSM module of the development token; empty: the first libsofthsm2.so found."

# The key identity in task hashes: the URI without PIN source and module plus
# the pinned fingerprint and mode. [vardepvalue] makes the hash use the
# expanded identity, so a key change re-signs and a shared sstate mirror cannot
# hand out an artifact signed by another key; moving the PIN file does not.
HSMSIGN_KEY_ID_UBOOT = "${@hsmsign.bitbake.key_identity(d, 'UBOOT')}"
HSMSIGN_KEY_ID_UBOOT[vardepvalue] = "${HSMSIGN_KEY_ID_UBOOT}"
HSMSIGN_KEY_ID_SPL = "${@hsmsign.bitbake.key_identity(d, 'SPL')}"
HSMSIGN_KEY_ID_SPL[vardepvalue] = "${HSMSIGN_KEY_ID_SPL}"
HSMSIGN_KEY_ID_FITIMAGE = "${@hsmsign.bitbake.key_identity(d, 'FITIMAGE')}"
HSMSIGN_KEY_ID_FITIMAGE[vardepvalue] = "${HSMSIGN_KEY_ID_FITIMAGE}"
HSMSIGN_KEY_ID_MODULES = "${@hsmsign.bitbake.key_identity(d, 'MODULES')}"
HSMSIGN_KEY_ID_MODULES[vardepvalue] = "${HSMSIGN_KEY_ID_MODULES}"
HSMSIGN_KEY_ID_ROOTFS = "${@hsmsign.bitbake.key_identity(d, 'ROOTFS')}"
HSMSIGN_KEY_ID_ROOTFS[vardepvalue] = "${HSMSIGN_KEY_ID_ROOTFS}"
HSMSIGN_KEY_ID_SWUPDATE = "${@hsmsign.bitbake.key_identity(d, 'SWUPDATE')}"
HSMSIGN_KEY_ID_SWUPDATE[vardepvalue] = "${HSMSIGN_KEY_ID_SWUPDATE}"
HSMSIGN_KEY_ID_RAUC = "${@hsmsign.bitbake.key_identity(d, 'RAUC')}"
HSMSIGN_KEY_ID_RAUC[vardepvalue] = "${HSMSIGN_KEY_ID_RAUC}"
HSMSIGN_KEY_ID_UEFI = "${@hsmsign.bitbake.key_identity(d, 'UEFI')}"
HSMSIGN_KEY_ID_UEFI[vardepvalue] = "${HSMSIGN_KEY_ID_UEFI}"
HSMSIGN_KEY_ID_IMX = "${@hsmsign.bitbake.key_identity(d, 'IMX')}"
HSMSIGN_KEY_ID_IMX[vardepvalue] = "${HSMSIGN_KEY_ID_IMX}"
HSMSIGN_KEY_ID_ENCRYPT = "${@hsmsign.bitbake.key_identity(d, 'ENCRYPT')}"
HSMSIGN_KEY_ID_ENCRYPT[vardepvalue] = "${HSMSIGN_KEY_ID_ENCRYPT}"

# Parse-time checks of the base configuration (local.conf, kas, distro and the
# global classes), once: every variable and flag goes through the leak scanner's
# patterns (a PIN under any name, pin-value, private and symmetric keys, a
# pin-source program with arguments; functions, which are code, are left out);
# the hsmsign and key-file variables are checked in detail. Fatal problems stop
# the parse. 'bitbake -D -e' shows how many variables were checked and how long it took.
addhandler hsmsign_config_check
hsmsign_config_check[eventmask] = "bb.event.ConfigParsed"
hsmsign_config_check[doc] = "Parse-time check of the base configuration: no PIN, private key or key file; a warning when no key is set."
python hsmsign_config_check() {
    stats = {}
    problems = hsmsign.bitbake.check_config(e.data, None, stats)
    bb.debug(1, "meta-hsmsign: checked %d variables and %d flags (%d functions left out) in %.1f ms (CPU %.1f ms)"
             % (stats.get("variables", 0), stats.get("flags", 0), stats.get("functions", 0),
                1000 * stats.get("seconds", 0.0), 1000 * stats.get("cpu_seconds", 0.0)))
    fatal = [p for p in problems if p.fatal]
    for problem in problems:
        if not problem.fatal:
            bb.warn(problem.format())
    if fatal:
        bb.fatal("\n".join(p.format() for p in fatal))
}

# Per recipe: key-file variables a recipe sets itself (an image recipe setting
# SWUPDATE_PRIVATE_KEY), and secrets written into the recipe's own files (the recipe,
# its .bbappends, what they include); the base configuration's warnings came once above.
def hsmsign_recipe_check(d):
    if not hsmsign.bitbake.enabled(d):
        return
    fatal = [p for p in hsmsign.bitbake.check_key_files(d) if p.fatal]
    # a PIN, a private key or a published key written into the recipe, a .bbappend or an .inc
    for problem in hsmsign.bitbake.check_recipe_files(d, hsmsign.bitbake.mode(d) == "production"):
        if problem.fatal:
            fatal.append(problem)
        else:
            bb.warn(problem.format())
    for name in hsmsign.bitbake.KEYFILE_VARIABLES:
        problem = hsmsign.bitbake.check_value(name, d.getVar(name) or "", True)
        if problem is not None:
            fatal.append(problem)
    if fatal:
        bb.fatal("%s: %s" % (d.getVar("PN"), "\n".join(p.format() for p in fatal)))

# Point a key-directory variable of oe-core (UBOOT_SIGN_KEYDIR, SPL_SIGN_KEYDIR)
# at the role's URI. It holds the whole URI (pin-source, module-path), so its
# hash is the key's identity instead: moving the PIN file re-signs nothing.
def hsmsign_set_keydir(d, var, role):
    d.setVar(var, hsmsign.bitbake.role_uri(d, role))
    d.setVarFlag(var, "vardepvalue", "${HSMSIGN_KEY_ID_%s}" % role)

# Hook a task of another class: the environment prefunc, the per-token lock,
# the key identity in its hash and hsmsign-native in the sysroot.
def hsmsign_hook_task(d, task, role):
    d.appendVarFlag(task, "prefuncs", " hsmsign_prepare_env")
    d.appendVarFlag(task, "vardeps", " HSMSIGN_KEY_ID_%s HSMSIGN_CMD" % role)
    if role in hsmsign.bitbake.FIT_ROLES:
        d.appendVarFlag(task, "vardeps", " " + hsmsign.bitbake.FIT_VARDEPS)
    d.setVarFlag(task, "hsmsign_role", role)
    lock = hsmsign.bitbake.lockfile(d, role)
    if lock:
        d.appendVarFlag(task, "lockfiles", " " + lock)
    if d.getVar("HSMSIGN_CMD") == "hsmsign":
        d.appendVar("DEPENDS", " hsmsign-native")

# Task prefunc: put the signing environment (mode, module, SoftHSM config of the
# development token, and the PIN read from the client environment) into this
# task process's os.environ, where the shell or Python code of oe-core and
# meta-swupdate runs its mkimage/sign tool. The PIN thus reaches the child
# outside argv and is never written to the datastore or run.do_* scripts.
# BB_ORIGENV is excluded from the hash: it is the whole client environment
# (it changes with every shell and holds the PIN itself).
hsmsign_prepare_env[doc] = "Prefunc of signing tasks: token environment and the PIN (from BB_ORIGENV) into the task process, outside argv."
python hsmsign_prepare_env() {
    role = d.getVarFlag(d.getVar("BB_CURRENTTASK") and "do_" + d.getVar("BB_CURRENTTASK"), "hsmsign_role") or ""
    try:
        env = hsmsign.bitbake.child_env(d, d.getVar("BB_ORIGENV", False), role)
    except hsmsign.bitbake.TaskError as exc:
        bb.fatal(str(exc))
    os.environ.update(env)
}
hsmsign_prepare_env[vardepsexclude] = "BB_ORIGENV BB_CURRENTTASK"

# Run hsmsign from a Python task of this layer: HSMSIGN_CMD ARGS with the child
# environment (PIN from BB_ORIGENV, outside argv); fails the task on error. Its
# warnings become BitBake warnings (shown at the end of the build, not only in the log).
def hsmsign_run(d, args, role, cwd=None):
    try:
        done = hsmsign.bitbake.run(d, args, role, d.getVar("BB_ORIGENV", False), cwd=cwd)
    except hsmsign.bitbake.TaskError as exc:
        bb.fatal(str(exc))
    if done.stdout.strip():
        bb.note(done.stdout.strip())
    for warning in hsmsign.bitbake.warnings_of(done.stderr):
        bb.warn("meta-hsmsign: " + warning)
    return done
hsmsign_run[vardepsexclude] = "BB_ORIGENV"

# nooelint: oelint.task.noanonpython - the hooks depend on what the recipe inherits (inherits_class), known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d):
        return
    hsmsign_recipe_check(d)
}

# One class per artifact; each hooks only the recipes that build its artifact.
inherit hsmsign-uboot hsmsign-fitimage hsmsign-image hsmsign-swupdate hsmsign-rauc hsmsign-uefi hsmsign-modsign hsmsign-imx
