"""Task time: the signing child's environment and command, and what tasks read from other layers' output.

Standard library only, like the parse-time half (BitBake imports both with the
package). The PIN is read at task run time from the client's environment
(``BB_ORIGENV``) and handed to the child in its environment, never in argv, a
variable, a ``run.do_*`` script or sigdata.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from .. import roles, secrets
from ..errors import HsmsignError
from ..settings import LAYER_VARIABLES, Settings
from .checks import FIT_ROLES, Datastore, _env_get, _get, dev_home, mode, role_uri


class TaskError(Exception):
    """A signing step failed; the message is safe to print (no PIN)."""


def verity_root_hash(path: str) -> str:
    """The root hash in meta-oe's ``.verity-params`` (VERITY_ROOT_HASH=) or meta-security's
    ``.verity.env`` (ROOT_HASH=, from ``veritysetup format``); raises TaskError otherwise."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise TaskError(f"cannot read the dm-verity parameters {path}: {exc.strerror}") from exc
    for line in lines:
        key, _, value = line.strip().partition("=")
        value = value.strip().strip("'\"")
        if key in ("VERITY_ROOT_HASH", "ROOT_HASH") and re.fullmatch(r"[0-9a-fA-F]{64,128}", value):
            return value.lower()
    raise TaskError(
        f"no root hash (VERITY_ROOT_HASH= or ROOT_HASH=, 64+ hex digits) in {path}: "
        "the verity image class changed its output; report it with the file attached"
    )


def command(d: Datastore) -> list[str]:
    """``HSMSIGN_CMD`` split like a shell would (default: hsmsign from hsmsign-native)."""
    return shlex.split(_get(d, "HSMSIGN_CMD") or "hsmsign")


def child_env(d: Datastore, origenv: Any, role: str = "") -> dict[str, str]:
    """Variables to add to a signing child's environment.

    The PIN: when ``HSMSIGN_PIN_ENV`` names a variable, its value is read from
    the client's environment (``BB_ORIGENV``) here, at task run time, and put in
    the child's environment under the same name; ``hsmsign --pin-env NAME``
    (``HSMSIGN_PIN_ENV`` for the mkimage drop-in) reads it there. It never
    becomes a datastore variable, an argument or a line of a run script.

    The settings the child reads (mode, role, pinned fingerprints, FIT policy,
    ledger, module, PIN variable name) are a ``hsmsign.settings.Settings``: built
    here, handed over with ``to_env()``, read back with ``Settings.from_env()``.
    The pins go as the user wrote them (``HSMSIGN_PUBKEY_SHA256[_<ROLE>]``) with
    the role (``HSMSIGN_ROLE``), so the child applies the role's pin, and a FIT task
    also gets the FIT roles' URIs: one U-Boot task signs with two roles' keys.
    """
    uri = role_uri(d, role) if role else _get(d, "HSM_PKCS11_URI")
    fit = role in FIT_ROLES
    env: dict[str, str] = {}
    pin_env = _get(d, "HSMSIGN_PIN_ENV")
    handed_pin_env = ""
    if pin_env:
        pin = _env_get(origenv, pin_env)
        if pin is None:
            if "pin-source=" not in uri:
                raise TaskError(
                    f"HSMSIGN_PIN_ENV = {pin_env}, but {pin_env} is not set in the environment "
                    "BitBake was started from: export it (from the CI secret store) before "
                    "running bitbake/kas, or use ?pin-source=file:PATH in the URI"
                )
        else:
            env[pin_env] = pin
            handed_pin_env = pin_env
    try:
        settings = Settings(
            mode=mode(d),
            role=role.upper(),
            fingerprints={
                r.fingerprint_variable: _get(d, r.fingerprint_variable)
                for r in roles.ROLE_TABLE
                if _get(d, r.fingerprint_variable)
            },
            role_uris={r: role_uri(d, r) for r in FIT_ROLES if role_uri(d, r)} if fit else {},
            uri=uri,
            module=_get(d, "HSM_PKCS11_MODULE"),
            pin_env=handed_pin_env,
            ledger=_get(d, "HSMSIGN_LEDGER"),
            # read by 'hsmsign mkimage' (oe-core owns its command line) and 'hsmsign fit sign'
            fit_required=_get(d, LAYER_VARIABLES["fit_required"]) if fit else "",
            fit_required_mode=_get(d, LAYER_VARIABLES["fit_required_mode"]) if fit else "",
            fit_check_sign=_get(d, "HSMSIGN_FIT_CHECK_SIGN") if fit else "",
            # the real mkimage behind the drop-in: oe-core's own (uboot-mkimage from u-boot-tools-native)
            mkimage=_get(d, "UBOOT_MKIMAGE"),
        )
    except HsmsignError as exc:  # the parse-time checks name the variable; this is the last guard
        raise TaskError(exc.message + (f"; {exc.hint}" if exc.hint else "")) from exc
    env.update(settings.to_env())
    if mode(d) == "development":
        conf = _get(d, "HSMSIGN_SOFTHSM2_CONF") or _env_get(origenv, "SOFTHSM2_CONF") or ""
        if not conf:
            candidate = os.path.join(dev_home(d, origenv), "softhsm2.conf")
            conf = candidate if os.path.exists(candidate) else ""
        if conf:
            env["SOFTHSM2_CONF"] = conf
    elif _env_get(origenv, "SOFTHSM2_CONF"):
        # production refuses SoftHSM tokens anyway; pass it so the refusal is the policy's
        env["SOFTHSM2_CONF"] = str(_env_get(origenv, "SOFTHSM2_CONF"))
    for name in ("P11_KIT_SERVER_ADDRESS",):
        value = _env_get(origenv, name)
        if value:
            env[name] = value
    return env


RAUC_MODULE_ENV = "RAUC_PKCS11_MODULE"
RAUC_PIN_ENV = "RAUC_PKCS11_PIN"


def rauc_env(d: Datastore, origenv: Any, engines_dir: str = "") -> dict[str, str]:
    """What meta-rauc's ``rauc bundle`` (and ``rauc convert``) need to sign through the token.

    rauc loads OpenSSL's pkcs11 engine (libp11) for a ``pkcs11:`` key and configures it from
    its environment only: the module from ``RAUC_PKCS11_MODULE``, the PIN from
    ``RAUC_PKCS11_PIN``. Both come from the ``RAUC`` role's URI as hsmsign resolves them
    (module-path/module-name, ``HSM_PKCS11_MODULE``, else p11-kit-proxy; the PIN from its
    pin-source or from ``HSMSIGN_PIN_ENV`` in ``BB_ORIGENV``), read here at task run time and
    put into the task process's environment by the prefunc: never a variable, an argument
    or a line of a run script. ``engines_dir``: libp11-native's engine directory
    (``OPENSSL_ENGINES``, as meta-oe's signing.bbclass sets it), when it holds pkcs11.so.
    """
    from .. import pin as pinmod
    from ..token.modules import resolve_module
    from ..uri import Pkcs11Uri

    text = role_uri(d, "RAUC")
    if not text:
        raise TaskError(
            "HSM_PKCS11_URI_RAUC (or HSM_PKCS11_URI) is empty: set the key that signs RAUC bundles"
        )
    base = child_env(d, origenv, "RAUC")
    env: dict[str, str] = {
        name: base[name] for name in ("SOFTHSM2_CONF", "P11_KIT_SERVER_ADDRESS") if name in base
    }
    try:
        uri = Pkcs11Uri.parse(text)
        env[RAUC_MODULE_ENV] = resolve_module(uri, _get(d, "HSM_PKCS11_MODULE") or None)
        source = pinmod.pin_source_for(uri, _get(d, "HSMSIGN_PIN_ENV") or None, mode(d))
        if source.kind == "env":
            pin = base.get(source.where)
        else:
            pin = pinmod.read_pin(source, uri)
    except HsmsignError as exc:
        raise TaskError(exc.message + (f"; {exc.hint}" if exc.hint else "")) from exc
    if pin is not None:
        env[RAUC_PIN_ENV] = pin
    if engines_dir and os.path.isfile(os.path.join(engines_dir, "pkcs11.so")):
        env["OPENSSL_ENGINES"] = engines_dir
    return env


WARNING_PREFIXES = ("hsmsign: warning: ", "hsmsign: WARNING: ")


def warnings_of(stderr: str) -> list[str]:
    """hsmsign's warnings in what a command wrote to stderr (``hsmsign: warning: ...``), redacted:
    the classes show them with bb.warn, so a task that succeeds does not bury them in its log."""
    found = []
    for line in redact(stderr).splitlines():
        for prefix in WARNING_PREFIXES:
            if line.startswith(prefix) and line[len(prefix) :].strip():
                found.append(line[len(prefix) :].strip())
    return found


def libp11_version(libdir: str) -> str:
    """The version of the libp11 whose pkg-config file is in ``libdir``/pkgconfig (libp11-native's,
    in the recipe's native sysroot), or "" when it is not there (the host's engine)."""
    try:
        with open(os.path.join(libdir, "pkgconfig", "libp11.pc"), encoding="utf-8") as pc:
            for line in pc:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def rauc_bundles(b: str) -> list[str]:
    """The bundles meta-rauc's do_bundle left in ``${B}``: every one that carries a signature
    (bundle.raucb, casync-bundle.raucb); encrypted-bundle.raucb is the signed bundle encrypted
    for its recipients, which only a recipient can check."""
    names = ("bundle.raucb", "casync-bundle.raucb")
    return [os.path.join(b, n) for n in names if os.path.isfile(os.path.join(b, n))]


def redact(text: str) -> str:
    """Command lines and output as a task shows them: ``hsmsign.secrets.redact``."""
    return secrets.redact(text)


def run(
    d: Datastore,
    args: Sequence[str],
    role: str = "",
    origenv: Any = None,
    base_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    spsdk_python: str | None = None,
    shown: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``HSMSIGN_CMD ARGS`` with the child environment; raise TaskError on failure.

    ``shown``: how errors name the command (default: the whole command line; a long list of
    files is better summed up).

    With ``spsdk_python`` (HSMSIGN_SPSDK_PYTHON, the i.MX class) the command is the layer's
    hsmsign run by that Python instead (:func:`spsdk_command`). Every way the command can
    fail ends in one TaskError line naming what to fix (the variable that names the command
    when it cannot run), followed by the command's own error lines.
    """
    env = dict(os.environ if base_env is None else base_env)
    for name in Settings.names():  # the task's settings replace any inherited ones
        env.pop(name, None)
    env.update(child_env(d, origenv, role))
    if spsdk_python is not None:
        variable = "HSMSIGN_SPSDK_PYTHON"
        fix = "point HSMSIGN_SPSDK_PYTHON at the Python of a venv with SPSDK (docs/imx.md)"
        base, extra = spsdk_command(spsdk_python)
        env.pop("PYTHONHOME", None)
        env.update(extra)
    else:
        variable = "HSMSIGN_CMD"
        fix = "set HSMSIGN_CMD to a working hsmsign command"
        base = command(d)
    argv = base + list(args)
    if not argv:
        raise TaskError('HSMSIGN_CMD is empty: leave it unset (hsmsign from hsmsign-native) or set a command')
    shown = redact(shlex.join(argv) if shown is None else shown)
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise TaskError(
            f"{variable}: {argv[0]} not found (PATH of the task, or a missing interpreter): "
            + (
                "build hsmsign-native (the classes depend on it when HSMSIGN_CMD is 'hsmsign') or set "
                "HSMSIGN_CMD to a command that exists"
                if spsdk_python is None
                else fix
            )
        ) from exc
    except PermissionError as exc:
        raise TaskError(
            f"{variable}: {argv[0]} cannot be run by the build user ({exc.strerror}): make it and its "
            f"interpreter readable and executable, or {fix}"
        ) from exc
    except OSError as exc:
        raise TaskError(f"{variable}: {argv[0]} cannot be run ({exc.strerror or exc}): {fix}") from exc
    output = redact(done.stderr.strip() or done.stdout.strip())
    if done.returncode < 0:
        import signal

        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise TaskError(
            f"'{shown}' was killed by {name}: nothing was signed; if the build was not being "
            "stopped, check the machine's memory (OOM killer) and the token, then run the task again"
            + (f"\n{output}" if output else "")
        )
    if done.returncode != 0:
        raise TaskError(
            f"'{shown}' failed with exit code {done.returncode} "
            f"({_EXIT_FAMILY.get(done.returncode, 'see below')})"
            + (f":\n{output}" if output else "")
        )
    return done


# hsmsign's exit codes (hsmsign.errors.EXIT_CODES, docs/reference/exit-codes.md), named in task errors
_EXIT_FAMILY = {
    1: "internal error in hsmsign",
    2: "configuration error",
    3: "token error",
    4: "policy refusal",
    5: "signing error",
    6: "verification error",
    126: "HSMSIGN_CMD cannot be executed",
    127: "HSMSIGN_CMD or its interpreter not found",
    130: "interrupted",
}


# --- what tasks read from other layers' output ---------------------------------------------


def dmverity_inputs(deploy: str, staging: str, image: str, fstype: str) -> tuple[str, str]:
    """meta-security's dm-verity-img output: its ``.verity.env`` and the newest ``.verity`` image.

    Newer meta-security keeps the ``.env`` in ``STAGING_VERITY_DIR`` (``staging``), older
    next to the image in ``IMGDEPLOYDIR`` (``deploy``, the newest of them). Returns
    (params, image); raises TaskError when either is missing.
    """
    candidates = [os.path.join(staging or deploy, f"{image}.{fstype}.verity.env")]
    candidates += sorted(glob.glob(os.path.join(deploy, f"*.{fstype}.verity.env")), key=os.path.getmtime)
    params = next((p for p in candidates if os.path.isfile(p)), None)
    images = [p for p in glob.glob(os.path.join(deploy, f"*.{fstype}.verity")) if not os.path.islink(p)]
    if params is None or not images:
        raise TaskError(f"dm-verity-img left no {fstype}.verity image and .verity.env in {deploy}")
    return params, max(images, key=os.path.getmtime)


class SwupdateTokenAes:
    """meta-swupdate's three encryption helpers, answered by the token key (``do_swuimage`` prefunc).

    meta-swupdate reads the AES key from ``SWUPDATE_AES_FILE`` and passes it to
    ``openssl enc -K``; it has no hook for another encrypter, so for the run of
    ``do_swuimage`` the class puts these methods in place of
    ``swupdate_extract_keys``, ``swupdate_get_IV`` and ``swupdate_encrypt_file``
    (``overrides``; ``tests/layer/test_swupdate_helpers.py`` fails when meta-swupdate
    renames them). ``marker`` is what ``SWUPDATE_AES_FILE`` holds (the key's URI
    identity): no key file exists, and anything that asks for another is refused.
    """

    def __init__(
        self,
        marker: str,
        bundle_iv: str,
        per_file: bool,
        encrypt: Callable[[str, str, str], None],
        fail: Callable[[str], Any],
    ) -> None:
        self.marker = marker
        # the IV of sw-description and, where meta-swupdate has no per-file IV, of every file
        self.bundle_iv = bundle_iv or random_iv()
        self.per_file = per_file  # scarthgap's meta-swupdate has no swupdate_get_IV
        self._encrypt = encrypt  # (src, out, iv): 'hsmsign encrypt' with HSM_PKCS11_URI_ENCRYPT
        self._fail = fail  # bb.fatal

    def extract_keys(self, path: str) -> tuple[str, str]:
        """``swupdate_extract_keys(SWUPDATE_AES_FILE)``: no key leaves the token."""
        if path != self.marker:
            self._fail(
                f"hsmsign: meta-swupdate asked for AES key file {path}; with HSM_PKCS11_URI_ENCRYPT the key "
                "stays in the token (do not set SWUPDATE_AES_FILE)"
            )
        return self.marker, self.bundle_iv

    def get_iv(self, data: Any, s: Any, filename: str) -> str:
        """``swupdate_get_IV``: a fresh IV per file (as ``swupdate_get_unique_IV``), the device's
        IV for sw-description itself, and the bundle IV everywhere on scarthgap."""
        if filename == "sw-description" or not self.per_file:
            return self.bundle_iv
        iv = data.getVarFlag("SWUPDATE_IV", filename)
        if not iv:
            iv = random_iv()
            data.setVarFlag("SWUPDATE_IV", filename, iv)
        return str(iv)

    def encrypt_file(self, src: str, out: str, key: str, ivt: str) -> None:
        """``swupdate_encrypt_file``: the token encrypts (AES-CBC, PKCS#7 padding)."""
        if key != self.marker:
            self._fail(f"hsmsign: refusing to encrypt {src} with a key that is not the token's")
        self._encrypt(src, out, ivt)

    def overrides(self) -> dict[str, Callable[..., Any]]:
        """The names in BitBake's function context this replaces (for ``do_swuimage`` only)."""
        return {
            "swupdate_extract_keys": self.extract_keys,
            "swupdate_get_IV": self.get_iv,
            "swupdate_encrypt_file": self.encrypt_file,
        }


def random_iv() -> str:
    """A random AES-CBC IV as 32 hex digits (not secret; swupdate reads it from sw-description)."""
    import secrets as random_source  # the standard library's, not hsmsign.secrets

    return random_source.token_hex(16)


# --- kernel modules (hsmsign-modsign.bbclass) ------------------------------------------------

MODULE_SUFFIX = ".ko"
COMPRESSED_MODULE_SUFFIXES = (".ko.gz", ".ko.xz", ".ko.zst")
# oe-core's debug split (PACKAGE_DEBUG_SPLIT_STYLE ".debug" styles): debug info, not modules
DEBUG_DIRS = (".debug", ".debug-static")
MODSIGN_HASHES = ("sha256", "sha384", "sha512")


def kernel_modules(root: str) -> list[str]:
    """The kernel modules under ``root``, sorted (for stable logs): oe-core's rule, ``*.ko`` below
    a ``/lib/modules/`` directory, an ELF file, no symlink; and the compressed ones
    (``CONFIG_MODULE_COMPRESS_*``: ``.ko.gz``, ``.ko.xz``, ``.ko.zst``, as kernel-module-split
    names them), which ``hsmsign modsign`` signs inside and compresses again. The debug copies
    oe-core's debug split leaves in ``.debug/`` directories (the -dbg package) are no modules to
    load and are left unsigned."""
    modules: list[str] = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if name not in DEBUG_DIRS]
        if "/lib/modules/" not in top + "/":
            continue
        for name in files:
            path = os.path.join(top, name)
            if os.path.islink(path):
                continue
            if name.endswith(MODULE_SUFFIX):
                with open(path, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        modules.append(path)
            elif name.endswith(COMPRESSED_MODULE_SUFFIXES):
                modules.append(path)
    return sorted(modules)


def image_kernel_modules(root: str) -> list[str]:
    """:func:`kernel_modules` of an image's root filesystem, walking only ``lib/modules`` and
    ``usr/lib/modules`` (not the whole image). A path whose directories include a symlink is
    skipped: with usrmerge ``lib`` links to ``usr/lib`` (walked once, as ``usr/lib/modules``),
    and an absolute link would lead out of the image into the build host."""
    found: list[str] = []
    for rel in ("lib/modules", "usr/lib/modules"):
        parts = rel.split("/")
        paths = [os.path.join(root, *parts[: i + 1]) for i in range(len(parts))]
        if all(os.path.isdir(p) and not os.path.islink(p) for p in paths):
            found += kernel_modules(paths[-1])
    return sorted(found)


def batches(items: Sequence[str], size: int = 500) -> list[list[str]]:
    """``items`` in runs of ``size`` (one hsmsign process and token login per run, argv kept short)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def modsign_kconfig(cert: str, hash_alg: str, force: bool) -> list[str]:
    """The kernel configuration that builds in the certificate only: module signatures checked
    (``CONFIG_MODULE_SIG_FORCE`` when ``force``), the token's certificate in the trusted keyring,
    and no signing key: ``CONFIG_MODULE_SIG_KEY`` empty (the kernel build generates no
    ``certs/signing_key.pem``) and ``CONFIG_MODULE_SIG_ALL`` off (modules are signed by the layer
    after oe-core strips them)."""
    if hash_alg not in MODSIGN_HASHES:
        raise TaskError(f"HSMSIGN_MODULES_HASH '{hash_alg}' is not one of {', '.join(MODSIGN_HASHES)}")
    lines = [
        "CONFIG_MODULES=y",
        "CONFIG_MODULE_SIG=y",
        "CONFIG_MODULE_SIG_FORCE=y" if force else "# CONFIG_MODULE_SIG_FORCE is not set",
        "# CONFIG_MODULE_SIG_ALL is not set",
        'CONFIG_MODULE_SIG_KEY=""',
        "CONFIG_SYSTEM_TRUSTED_KEYRING=y",
        f'CONFIG_SYSTEM_TRUSTED_KEYS="{cert}"',
    ]
    for h in MODSIGN_HASHES:
        lines.append(
            f"CONFIG_MODULE_SIG_{h.upper()}=y"
            if h == hash_alg
            else f"# CONFIG_MODULE_SIG_{h.upper()} is not set"
        )
    return lines


def kconfig_mismatches(config_text: str, wanted: Sequence[str]) -> list[str]:
    """The lines of ``wanted`` that a kernel ``.config`` does not hold after olddefconfig."""
    have = set(config_text.splitlines())
    missing = []
    for line in wanted:
        if line.startswith("# ") and line.endswith(" is not set"):
            name = line[2:].split(" ", 1)[0]
            if any(h.startswith(name + "=") and not h.endswith("=n") for h in have):
                missing.append(line)
        elif line not in have:
            missing.append(line)
    return missing


def private_key_files(top: str) -> list[str]:
    """Files under ``top`` named like the kernel build's module signing key (``signing_key.pem``,
    ``signing_key.priv``): none may exist when the layer signs modules."""
    found = []
    for root, _dirs, files in os.walk(top):
        for name in files:
            if name in ("signing_key.pem", "signing_key.priv"):
                found.append(os.path.join(root, name))
    return sorted(found)


def modules_tar_args(source_date_epoch: str) -> list[str]:
    """``TAR_ARGS`` of oe-core's ``kernel_do_deploy`` (the same in scarthgap, wrynose and master):
    sorted names and mtimes clamped to ``SOURCE_DATE_EPOCH`` when it is set, owner and group 0."""
    args = ["--sort=name", "--clamp-mtime", f"--mtime=@{source_date_epoch}"] if source_date_epoch else []
    return args + ["--owner=0", "--group=0"]


def copy_times(src: str, dst: str) -> None:
    """Give every entry of the tree ``dst`` (a copy of ``src``) the access and modification
    times of its original, symlinks included: signing a module renames a new file into place,
    which changes the times of the module and of its directory, and tar records them."""

    def copy(origin: str, target: str) -> None:
        try:
            st = os.lstat(origin)
        except FileNotFoundError:
            return
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    for top, dirs, files in os.walk(dst, topdown=False):
        rel = os.path.relpath(top, dst)
        for name in files + dirs:
            copy(os.path.join(src, rel, name), os.path.join(top, name))
    copy(src, dst)


def write_modules_tarball(top: str, tarball: str, source_date_epoch: str) -> None:
    """``tar TAR_ARGS -c -C TOP lib | gzip -9n`` into ``tarball``, as ``kernel_do_deploy`` makes
    ``modules-*.tgz`` (:func:`modules_tar_args`), written atomically (``hsmsign.atomic``: a
    temporary file renamed over it, keeping the old tarball's mode): readers see the old tarball
    or the whole new one. Raises TaskError (the temporary file removed) when tar or gzip fails."""
    from .. import atomic
    from ..errors import HsmsignError

    argv = ["tar", *modules_tar_args(source_date_epoch), "-c", "-C", top, "lib"]
    try:
        with atomic.atomic_output(tarball) as out, tempfile.TemporaryFile() as tar_err:
            # tar's errors to a file: a pipe nobody reads while gzip runs could fill and stop tar
            tar = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=tar_err)
            gzip = subprocess.run(
                ["gzip", "-9n"], stdin=tar.stdout, stdout=out.fh, stderr=subprocess.PIPE, check=False
            )
            if tar.stdout is not None:
                tar.stdout.close()
            if tar.wait() != 0:
                tar_err.seek(0)
                raise TaskError(
                    f"'{shlex.join(argv)}' failed with exit code {tar.returncode}: "
                    + tar_err.read().decode(errors="replace").strip()
                )
            if gzip.returncode != 0:
                raise TaskError(
                    f"gzip -9n failed with exit code {gzip.returncode}: "
                    + gzip.stderr.decode(errors="replace").strip()
                )
    except HsmsignError as exc:
        raise TaskError(f"cannot write {tarball}: {exc.message}") from exc
    except OSError as exc:
        raise TaskError(f"cannot write {tarball}: {exc.strerror or exc}") from exc


# what a tarball of kernel modules is named like (tarfile opens these; .tar.zst through zstd)
MODULE_ARCHIVE_SUFFIXES = (".tgz", ".tar", ".tar.gz", ".tar.xz", ".tar.bz2", ".tbz2", ".txz", ".tar.zst")


def unsigned_modules_in_archives(folder: str, skip: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(archive, member) for every kernel module without a signature in the tar archives below
    ``folder`` (``MODULE_ARCHIVE_SUFFIXES``; symlinks and ``skip`` left out). A module is what
    :func:`kernel_modules` takes for one (``*.ko`` below ``lib/modules/``, an ELF file, or a
    compressed ``.ko.gz``/``.ko.xz``/``.ko.zst``), read as the kernel gets it (decompressed).
    Raises TaskError for an archive that cannot be read: a deploy step that fails closed must
    not wave through what it could not look into."""
    import tarfile

    from ..formats import modcompress, modsig

    skipped = {os.path.realpath(p) for p in skip}
    found: list[tuple[str, str]] = []
    packed: list[tuple[bytes, str, str]] = []  # compressed modules read, not yet checked

    def check(items: list[tuple[bytes, str, str]]) -> None:
        for (_data, _kind, what), module in zip(items, modcompress.decompress_many(items)):
            if isinstance(module, BaseException):
                raise module
            if not module.endswith(modsig.MAGIC):
                archive, _, member = what.partition("!")
                found.append((archive, member))
        items.clear()

    for top, _dirs, files in os.walk(folder):
        for name in sorted(files):
            path = os.path.join(top, name)
            if not name.endswith(MODULE_ARCHIVE_SUFFIXES) or os.path.islink(path):
                continue
            if os.path.realpath(path) in skipped:
                continue
            zstd = None
            packed.clear()
            try:
                if name.endswith(".tar.zst"):
                    zstd = subprocess.Popen(["zstd", "-d", "-c", "-q", path], stdout=subprocess.PIPE)
                    tar = tarfile.open(fileobj=zstd.stdout, mode="r|")
                else:
                    tar = tarfile.open(path, mode="r|*")
                with tar:
                    for member in tar:
                        parts = member.name.split("/")
                        if not member.isfile() or "/lib/modules/" not in "/" + member.name:
                            continue
                        if any(part in DEBUG_DIRS for part in parts):
                            continue
                        kind = modcompress.compression(member.name)
                        if not kind and not member.name.endswith(MODULE_SUFFIX):
                            continue
                        if member.size > modcompress.MAX_MODULE:
                            raise TaskError(
                                f"{path}: {member.name} has {member.size} bytes, more than a kernel "
                                f"module may ({modcompress.MAX_MODULE >> 20} MiB)"
                            )
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        if kind:
                            packed.append((data, kind, f"{path}!{member.name}"))
                            if len(packed) >= 32:  # .ko.zst: one zstd process for 32
                                check(packed)
                            continue
                        if data.startswith(b"\x7fELF") and not data.endswith(modsig.MAGIC):
                            found.append((path, member.name))
                check(packed)
                # a zstd stream cut or corrupt may still end on a tar member boundary
                if zstd is not None and zstd.wait() != 0:
                    raise TaskError(f"zstd exit {zstd.returncode}")
            except TaskError as exc:
                if str(exc).startswith(path):
                    raise
                raise TaskError(f"cannot read {path} to check its kernel modules: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - tarfile, zlib, lzma, bz2: whatever cannot be read fails
                reason = exc.message if isinstance(exc, HsmsignError) else str(exc) or type(exc).__name__
                raise TaskError(f"cannot read {path} to check its kernel modules: {reason}") from exc
            finally:
                if zstd is not None:
                    if zstd.stdout is not None:
                        zstd.stdout.close()
                    zstd.kill()
                    zstd.wait()
    return found


# --- NXP i.MX boot images (hsmsign-imx.bbclass) ----------------------------------------------

# meta-freescale's SoC overrides (MACHINEOVERRIDES) -> the boot ROM's format and SPSDK's AHAB
# family. The first one a machine has wins: i.MX 8DXL machines have mx8x, not mx8qxp.
IMX_SOCS: tuple[tuple[str, str, str], ...] = (
    ("mx8m-generic-bsp", "hab", ""),  # i.MX 8M Quad, Mini, Nano, Plus: HAB4
    ("mx8qm-generic-bsp", "ahab", "mimx8qm"),
    ("mx8dxl-generic-bsp", "ahab", "mimx8dxl"),
    ("mx8qxp-generic-bsp", "ahab", "mimx8qxp"),
    ("mx8dx-generic-bsp", "ahab", "mimx8qxp"),
    ("mx8ulp-generic-bsp", "ahab", "mimx8ulp"),
    ("mx91-generic-bsp", "ahab", "mimx9131"),
    ("mx93-generic-bsp", "ahab", "mimx9352"),
    ("mx943-generic-bsp", "ahab", "mimx94398"),
    ("mx95-generic-bsp", "ahab", "mimx9596"),
)
# the SPSDK signer string the generated configuration carries: 'hsmsign imx' replaces it with --uri
IMX_SIGNER_PLACEHOLDER = "type=hsmsign;uri_env=HSM_PKCS11_URI_IMX"
IMX_HAB_REFUSAL = (
    "{soc}: the boot ROM checks HAB, and SPSDK (what meta-hsmsign signs i.MX images with) builds HAB "
    "images for i.MX RT only, not the HAB4 CSF of i.MX 8M's imx-boot/flash.bin. Refusing to leave {pn}'s "
    "boot image unsigned. What to do: sign it with NXP's CST outside the build and set "
    'HSMSIGN_IMX_SIGN = "" to build it without a HAB signature on purpose (docs/imx.md)'
)


def imx_soc(overrides: str, family: str = "") -> tuple[str, str, str]:
    """(kind, SPSDK family, SoC override) for the machine's ``MACHINEOVERRIDES``.

    kind is ``ahab``, ``hab`` or ``""`` (no known i.MX SoC); ``family`` (HSMSIGN_IMX_FAMILY)
    replaces the default family of an AHAB SoC, and on an unknown machine it means AHAB.
    """
    have = set(overrides.split(":"))
    for override, kind, default in IMX_SOCS:
        if override in have:
            return kind, (family or default) if kind == "ahab" else "", override
    return ("ahab", family, "") if family else ("", "", "")


def imx_boot_images(
    s: str, machine: str, variant: str, uboot_config: str, targets: str
) -> list[tuple[str, str]]:
    """(path, target) of every image meta-freescale's imx-boot do_compile leaves in ``${S}``:
    ``imx-boot${BOOT_VARIANT}-${MACHINE}-<UBOOT_CONFIG type>.bin-<IMXBOOT_TARGETS target>``,
    the names its do_install and do_deploy read."""
    return [
        (os.path.join(s, f"imx-boot{variant}-{machine}-{kind}.bin-{target}"), target)
        for kind in uboot_config.split()
        for target in targets.split()
    ]


def imx_container_images(b: str, uboot_machine: str, uboot_config: str) -> list[tuple[str, str]]:
    """(path, target) of the ``flash.bin`` each U-Boot build of meta-freescale's imx-boot-container
    class leaves, paired in order as its do_deploy pairs UBOOT_MACHINE and UBOOT_CONFIG:
    ``${B}/<config>-<type>/flash.bin`` (wrynose and later) or ``${B}/<config>/flash.bin``
    (scarthgap), whichever exists; ``${B}/flash.bin`` without UBOOT_CONFIG."""
    configs, kinds = uboot_machine.split(), uboot_config.split()
    if not kinds:
        return [(os.path.join(b, "flash.bin"), "flash.bin")]
    found = []
    for config, kind in zip(configs, kinds):
        newer, older = os.path.join(b, f"{config}-{kind}", "flash.bin"), os.path.join(b, config, "flash.bin")
        found.append((older if os.path.isfile(older) and not os.path.isfile(newer) else newer, "flash.bin"))
    return found


def imx_mem_type(target: str, wanted: str = "") -> str:
    """SPSDK's memory type of an image: ``wanted`` (HSMSIGN_IMX_MEM_TYPE) or, by the imx-mkimage
    target's name, FlexSPI NOR (FCB before the containers) or a plain container set at offset 0
    (SD/eMMC images, which the card holds at 32 KiB: the file itself starts with the containers)."""
    if wanted:
        return wanted
    return "flexspi_nor" if "flexspi" in target else "serial_downloader"


def imx_srk_uris(sign_uri: str, srk_uris: str) -> tuple[list[str], int]:
    """The AHAB SRK table's four key URIs (HSMSIGN_IMX_SRK_URIS, in SRK order) and the index of
    the signing key among them (AHAB's used_srk_id), matched by URI identity."""
    uris = srk_uris.split()
    if len(uris) != 4:
        raise TaskError(
            f"HSMSIGN_IMX_SRK_URIS names {len(uris)} key(s): an AHAB SRK table holds 4 (SRK 0 to 3; "
            "the ones that do not sign are for revocation). Make four keys in the token and list "
            "their URIs there, HSM_PKCS11_URI_IMX among them"
        )
    wanted = _identity(sign_uri)
    for index, uri in enumerate(uris):
        if _identity(uri) == wanted:
            return uris, index
    raise TaskError(
        "HSM_PKCS11_URI_IMX is not one of HSMSIGN_IMX_SRK_URIS: the signing key must be in the SRK "
        "table (list it there, in its SRK slot)"
    )


def _identity(uri: str) -> str:
    from .checks import uri_identity

    return uri_identity(uri)


def imx_ahab_config(family: str, srk_public_keys: Sequence[str], used_srk: int) -> dict[str, Any]:
    """SPSDK's AHAB signing configuration (``nxpimage ahab get-template -s``'s required keys) for
    the OEM containers: the SRK table of the token keys' public halves, SRK ``used_srk`` signs."""
    return {
        "family": family,
        "revision": "latest",
        "srk_set": "oem",
        "used_srk_id": used_srk,
        "signer": IMX_SIGNER_PLACEHOLDER,
        "srk_table": {"srk_array": list(srk_public_keys)},
    }


def spsdk_command(python: str, lib: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run this layer's hsmsign with ``python``
    (HSMSIGN_SPSDK_PYTHON, a venv with SPSDK): ``python -m hsmsign`` with the layer's library
    first on the path, no user site and no PYTHONHOME of the build."""
    if not python:
        raise TaskError(
            "HSMSIGN_SPSDK_PYTHON is empty: i.MX images are signed through NXP's SPSDK, which no "
            "Yocto layer ships. Make a venv on the build host (python3 -m venv /opt/hsmsign-nxp && "
            "/opt/hsmsign-nxp/bin/pip install 'hsmsign[nxp]') and set HSMSIGN_SPSDK_PYTHON = "
            '"/opt/hsmsign-nxp/bin/python3" (docs/imx.md)'
        )
    if not os.path.isabs(python) or not os.access(python, os.X_OK):
        raise TaskError(
            f"HSMSIGN_SPSDK_PYTHON = {python}: not an absolute path the build user can run; point it "
            "at the Python of the venv with SPSDK (docs/imx.md)"
        )
    lib = lib or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [python, "-m", "hsmsign"], {"PYTHONPATH": lib, "PYTHONNOUSERSITE": "1"}


# what the SPSDK Python must import besides the standard library (a quick look: 0.3 s, not SPSDK's AHAB code)
_SPSDK_PROBE = "import spsdk, pkcs11, asn1crypto, cryptography"


def spsdk_check(python: str, lib: str | None = None) -> None:
    """HSMSIGN_SPSDK_PYTHON imports SPSDK, python-pkcs11, asn1crypto and cryptography; else one
    TaskError that names the variable."""
    argv, extra = spsdk_command(python, lib)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env.update(extra)
    try:
        done = subprocess.run(
            [argv[0], "-c", _SPSDK_PROBE], env=env, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise TaskError(f"HSMSIGN_SPSDK_PYTHON = {python} cannot be run ({exc.strerror or exc})") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TaskError(
            f"HSMSIGN_SPSDK_PYTHON = {python} cannot import SPSDK and hsmsign's dependencies ({last}): "
            f"install them into its venv ({os.path.dirname(python)}/pip install 'hsmsign[nxp]')"
        )


def imx_sign_images(
    d: Datastore, origenv: Any, images: Sequence[tuple[str, str]], workdir: str
) -> dict[str, Any]:
    """Sign ``images`` (path, imx-mkimage target) in place through the token, as AHAB wants them.

    In ``workdir``: the SRK table and fuse words of HSMSIGN_IMX_SRK_URIS (``hsmsign imx srk``,
    written as ``srk-table.bin`` and ``srk-fuses.txt``) and, unless HSMSIGN_IMX_CONFIG names
    the user's own, the SPSDK configuration made from the token keys' public halves. Each
    image is signed by ``hsmsign imx ahab sign`` (SPSDK's verification passes before it is
    written) and must carry the SRK hash of the table deployed next to it.
    """
    import json

    python = _get(d, "HSMSIGN_SPSDK_PYTHON")
    spsdk_check(python)
    sign_uri = role_uri(d, "IMX")
    if not sign_uri:
        raise TaskError("HSM_PKCS11_URI_IMX is empty: set the URI of the SRK key that signs")
    uris, used = imx_srk_uris(sign_uri, _get(d, "HSMSIGN_IMX_SRK_URIS"))
    config = _get(d, "HSMSIGN_IMX_CONFIG")
    family = imx_soc(_get(d, "MACHINEOVERRIDES"), _get(d, "HSMSIGN_IMX_FAMILY"))[1]
    if not config and not family:
        raise TaskError(
            "no SPSDK family for this machine: set HSMSIGN_IMX_FAMILY to the SoC's part "
            "('nxpimage ahab get-families' lists them, e.g. mimx9352)"
        )

    warned: list[str] = []

    def hsmsign(*args: str) -> dict[str, Any]:
        done = run(d, [*args, "--json"], "IMX", origenv, spsdk_python=python)
        warned.extend(w for w in warnings_of(done.stderr) if w not in warned)
        try:
            answer = json.loads(done.stdout)
        except ValueError as exc:
            shown = redact(done.stdout[:200])
            raise TaskError(f"hsmsign {' '.join(args[:2])} printed no JSON: {shown}") from exc
        return answer if isinstance(answer, dict) else {}

    os.makedirs(workdir, exist_ok=True)
    table = os.path.join(workdir, "srk-table.bin")
    fuses = os.path.join(workdir, "srk-fuses.txt")
    srk = hsmsign("imx", "srk", "--kind", "ahab", "--table", table, "--fuses", fuses, *uris)
    if not config:
        publics = []
        for index, pem in enumerate(srk.get("public_keys") or []):
            public = os.path.join(workdir, f"srk{index}.pem")
            with open(public, "w", encoding="utf-8") as fh:
                fh.write(str(pem))
            publics.append(public)
        config = os.path.join(workdir, "ahab-sign.json")
        with open(config, "w", encoding="utf-8") as fh:  # JSON is YAML: SPSDK reads it
            json.dump(imx_ahab_config(family, publics, used), fh, indent=1)
    signed = []
    for path, target in images:
        mem = imx_mem_type(target, _get(d, "HSMSIGN_IMX_MEM_TYPE"))
        result = hsmsign(
            "imx", "ahab", "sign", "--uri", sign_uri, "--config", config, "--mem-type", mem,
            "--output", path, path,
        )  # fmt: skip
        if result.get("srk_hash") != srk.get("srk_hash"):
            raise TaskError(
                f"{os.path.basename(path)} was signed with the SRK table of {config}, whose hash "
                f"{result.get('srk_hash')} is not the hash {srk.get('srk_hash')} of HSMSIGN_IMX_SRK_URIS' "
                "table: list the same keys in both, in the same order"
            )
        signed.append({"image": path, "containers": result.get("containers"), "mem_type": mem})
    return {
        "srk_hash": srk.get("srk_hash"),
        "fuse_words": srk.get("fuse_words"),
        "signed": signed,
        "warnings": warned,
    }
