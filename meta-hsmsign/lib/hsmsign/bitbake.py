"""The BitBake side of meta-hsmsign: the only module that knows BitBake datastores.

Standard library only: BitBake imports it at parse time (``addpylib``) with the
host Python, where python-pkcs11 and cryptography are absent. The classes call
these functions as ``hsmsign.bitbake.NAME(d, ...)``. A datastore here is anything
with ``getVar(name, expand=True)`` (BitBake's ``d``, or the dict-backed one the
unit tests use); nothing here imports ``bb``: what to do with a problem (fatal,
warn) is the class's decision.

What this module owns:

* the role URIs (``HSM_PKCS11_URI_<ROLE>``) and the key identity that goes into
  task hashes: the URI without PIN source or module (``Pkcs11Uri.identity``)
  and the pinned public-key fingerprint (``HSMSIGN_PUBKEY_SHA256[_<ROLE>]``);
* the parse-time checks: no ``pin-value``, no private key, no key-file
  variable, a well-formed URI, a sane mode;
* the child environment of a signing step: the PIN is read at task run time
  from the client's environment (``BB_ORIGENV``) and handed to the child in its
  environment, never in argv, a variable, a ``run.do_*`` script or sigdata;
* the signing command (``HSMSIGN_CMD``) and the per-token lock file.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import roles, secrets
from .errors import HsmsignError
from .settings import ENV_NAME, LAYER_VARIABLES, MODES, Settings, required_problems

# the key roles and their fallbacks: hsmsign.roles (one table for the library, classes and docs)
ROLES: tuple[str, ...] = roles.ROLES
FIT_ROLES: tuple[str, ...] = roles.FIT_ROLES  # tasks that sign FITs for U-Boot and SPL
# what a FIT signing task's output depends on besides the key (its [vardeps])
FIT_VARDEPS = " ".join([*LAYER_VARIABLES.values(), "HSMSIGN_FIT_CHECK_SIGN"])

KEYDIR_VARIABLES = secrets.KEYDIR_VARIABLES
KEYFILE_VARIABLES = secrets.KEYFILE_VARIABLES
# Variables that generate private keys into the build tree.
KEYGEN_VARIABLES: tuple[str, ...] = ("FIT_GENERATE_KEYS", "UBOOT_FIT_GENERATE_KEYS", "SPL_GENERATE_KEYS")

# The leak scanner's own patterns (hsmsign.secrets, standard library only): one definition of a secret.
_PIN_VALUE = re.compile(re.escape(secrets.URI_PIN_ATTR.decode()), re.IGNORECASE)


def _has_private_key(text: str) -> bool:
    return secrets.PRIVATE_KEY_HEADER.search(text.encode("utf-8", "replace")) is not None

_SHA256 = re.compile(r"^(?:sha256:)?[0-9a-fA-F]{64}$")
SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


class Datastore(Protocol):
    def getVar(self, name: str, expand: bool = True) -> Any: ...  # noqa: N802 - BitBake's API


@dataclass(frozen=True)
class Problem:
    """One configuration problem; ``fatal`` stops the parse, else a warning."""

    variable: str
    message: str
    fix: str
    fatal: bool = True

    def format(self) -> str:
        return f"meta-hsmsign: {self.variable}: {self.message}\n  what to do: {self.fix}"


class TaskError(Exception):
    """A signing step failed; the message is safe to print (no PIN)."""


class DictData:
    """A minimal dict-backed datastore (tests, and tools outside BitBake)."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(values or {})

    def getVar(self, name: str, expand: bool = True) -> Any:  # noqa: N802 - BitBake's API
        value = self.values.get(name)
        if value is None or not expand:
            return value
        return re.sub(r"\$\{([A-Za-z0-9_\-]+)\}", lambda m: self.getVar(m.group(1)) or "", value)

    def keys(self) -> list[str]:
        return list(self.values)


def _get(d: Datastore, name: str) -> str:
    value = d.getVar(name)
    return "" if value is None else str(value).strip()


# --- mode, enable, role URIs --------------------------------------------------


def mode(d: Datastore) -> str:
    """``HSMSIGN_MODE``; anything unknown counts as production (fail closed)."""
    value = _get(d, "HSMSIGN_MODE") or "production"
    return value if value in MODES else "production"


def enabled(d: Datastore) -> bool:
    return _get(d, "HSMSIGN_ENABLE") not in ("0", "no", "false", "False", "")


def role_uri(d: Datastore, role: str) -> str:
    """The URI a role signs with: ``HSM_PKCS11_URI_<ROLE>``, else its fallback's (``hsmsign.roles``).

    The class defaults chain the variables the same way (``??=``); this covers
    datastores without them. ``ENCRYPT`` has no fallback: an AES key is never the
    signing key.
    """
    for r in roles.chain(role):
        value = _get(d, r.variable)
        if value:
            return value
    return ""


def _parse_uri(text: str) -> Any:
    from .uri import Pkcs11Uri

    return Pkcs11Uri.parse(text)


def uri_identity(text: str) -> str:
    """The URI without PIN source, PIN value or module: what names the key."""
    if not text:
        return ""
    try:
        return str(_parse_uri(text).identity())
    except Exception:  # noqa: BLE001 - a broken URI is reported by check_config
        # never fall back to the raw text: it may hold a pin-value
        return "invalid-uri:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def pin_variable(d: Datastore, role: str) -> str:
    """The pin variable that applies to a role: its own, else its fallback's, ..., or ""."""
    for r in roles.chain(role):
        if _get(d, r.pin_variable):
            return r.pin_variable
    return ""


def pubkey_pin(d: Datastore, role: str) -> str:
    """The role's pinned fingerprint(s), lower-case hex: ``HSMSIGN_PUBKEY_SHA256_<ROLE>``, else the
    fallback role's (``_SPL`` and ``_FITIMAGE`` fall back to ``_UBOOT``), else ``HSMSIGN_PUBKEY_SHA256``."""
    name = pin_variable(d, role)
    return _get(d, name).lower().replace("sha256:", "") if name else ""


def key_identity(d: Datastore, role: str) -> str:
    """What goes into the task hash of a signing task: a key change re-signs.

    URI identity plus the pinned fingerprint; PIN source and module are left out
    on purpose (moving the PIN file must not rebuild, and a shared sstate mirror
    must not serve an artifact signed by another key).
    """
    ident = uri_identity(role_uri(d, role)) or "no-key"
    pin = pubkey_pin(d, role)
    return f"{ident} pubkey-sha256={pin or 'unpinned'} mode={mode(d)}"


def key_name(d: Datastore, role: str) -> str:
    """The FIT ``key-name-hint`` of a role: the URI's ``object=`` label, else ``hsmsign-<role>``."""
    text = role_uri(d, role)
    label = ""
    if text:
        try:
            label = str(getattr(_parse_uri(text), "object", "") or "")
        except Exception:  # noqa: BLE001 - reported by check_config
            label = ""
    return label or "hsmsign-" + role.lower()


def signing_uri(d: Datastore, role: str) -> str:
    """The URI handed to a signing child (pin-value is refused at parse time)."""
    return role_uri(d, role)


# --- development token ------------------------------------------------------------


def _env_get(env: Any, name: str) -> str | None:
    if env is None:
        return None
    if isinstance(env, Mapping):
        value = env.get(name)
    else:  # BitBake's BB_ORIGENV is a small datastore
        value = env.getVar(name, False)
    return None if value is None else str(value)


def dev_home(d: Datastore, origenv: Any = None) -> str:
    """Where ``hsmsign dev-init`` keeps the development token (outside TMPDIR)."""
    explicit = _get(d, "HSMSIGN_DEV_HOME") or (_env_get(origenv, "HSMSIGN_DEV_HOME") or "")
    if explicit:
        return explicit
    base = _env_get(origenv, "XDG_DATA_HOME") or ""
    if not base:
        home = _env_get(origenv, "HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "share")
    return os.path.join(base, "hsmsign", "dev-token")


def softhsm_module() -> str:
    for path in SOFTHSM_MODULES:
        if os.path.exists(path):
            return path
    found = sorted(glob.glob("/usr/lib/*/softhsm/libsofthsm2.so"))
    return found[0] if found else SOFTHSM_MODULES[0]


def dev_default_uri(d: Datastore, origenv: Any = None) -> str:
    """The development token's default key URI, or "" outside development mode.

    Used as the default of ``HSM_PKCS11_URI`` so ``HSMSIGN_MODE = "development"``
    alone signs with the token ``hsmsign dev-init`` made.
    """
    if _get(d, "HSMSIGN_MODE") != "development":
        return ""
    home = dev_home(d, origenv)
    module = _get(d, "HSMSIGN_DEV_MODULE") or softhsm_module()
    return (
        "pkcs11:token=hsmsign-dev;object=dev-signing"
        f"?module-path={module}&pin-source=file:{os.path.join(home, 'user-pin')}"
    )


# --- parse-time checks ------------------------------------------------------------------


def check_value(name: str, value: str, prod: bool) -> Problem | None:
    """Secrets in one variable's value: a PIN in a URI, a private key, a symmetric key."""
    if not value:
        return None
    if _PIN_VALUE.search(value):
        return Problem(
            name,
            "holds a PKCS#11 URI with pin-value: the PIN would be stored in sigdata, "
            "run.do_* scripts and 'bitbake -e'",
            "remove pin-value and use ?pin-source=file:/run/secrets/hsm-pin (outside the build "
            'tree) or HSMSIGN_PIN_ENV = "NAME" with the PIN in environment variable NAME',
        )
    if _has_private_key(value):
        return Problem(
            name,
            "holds a PEM private key",
            "delete it from the configuration, treat the key as leaked (rotate it) and generate "
            "the new key inside the token: hsmsign keygen",
        )
    # no guard around the scanner: a bug in it stops the parse instead of skipping the check
    finding = secrets.check_variable(name, value)
    if finding is not None and finding.kind != "key-file-variable":
        return Problem(name, f"{finding.kind}: {finding.excerpt}", finding.advice, fatal=prod)
    return None


def _private_keys_in(directory: str) -> list[str]:
    if not directory or directory.startswith("pkcs11:") or not os.path.isdir(directory):
        return []
    found = []
    candidates = glob.glob(os.path.join(directory, "*.key")) + glob.glob(os.path.join(directory, "*.pem"))
    for path in sorted(candidates):
        try:
            with open(path, "rb") as fh:
                head = fh.read(65536)
        except OSError:
            continue
        if path.endswith(".key") or secrets.PRIVATE_KEY_HEADER.search(head):
            found.append(os.path.basename(path))
    return found


def check_key_files(d: Datastore) -> list[Problem]:
    """Key-file variables: fatal in production, warnings in development."""
    prod = mode(d) == "production"
    problems: list[Problem] = []
    for name in KEYDIR_VARIABLES:
        keys = _private_keys_in(_get(d, name))
        if keys:
            problems.append(
                Problem(
                    name,
                    f"points at a directory with private key files ({', '.join(keys[:4])})",
                    f"with meta-hsmsign the key stays in the token: remove {name} from your "
                    "configuration (the hsmsign classes set it to the token URI), move the keys "
                    "into a token (hsmsign keygen) and delete the files",
                    fatal=prod,
                )
            )
    for name in KEYFILE_VARIABLES:
        value = _get(d, name)
        if value and not value.startswith("pkcs11:"):
            problems.append(
                Problem(
                    name,
                    f"names a key or secret file ({value[:120]})",
                    f"remove {name}: with meta-hsmsign the key is a PKCS#11 URI "
                    "(HSM_PKCS11_URI_SWUPDATE, HSM_PKCS11_URI_ENCRYPT) and never a file",
                    fatal=prod,
                )
            )
    for name in KEYGEN_VARIABLES:
        if _get(d, name) == "1":
            problems.append(
                Problem(
                    name,
                    "generates private keys into the build tree",
                    f'set {name} = "0"; generate keys inside the token with hsmsign keygen',
                    fatal=prod,
                )
            )
    return problems


def check_config(d: Datastore, names: Sequence[str] | None = None) -> list[Problem]:
    """All parse-time checks; ``names``: the variables to scan for secrets.

    The class scans every variable of the base configuration once (local.conf,
    kas, distro) and only the key variables of each recipe (speed).
    """
    prod = mode(d) == "production"
    problems: list[Problem] = []
    raw_mode = _get(d, "HSMSIGN_MODE")
    if raw_mode and raw_mode not in MODES:
        problems.append(
            Problem("HSMSIGN_MODE", f"unknown mode '{raw_mode}'", 'set "development" or "production"')
        )
    scan = list(names) if names is not None else []
    for role in ("",) + tuple("_" + r for r in ROLES):
        for name in ("HSM_PKCS11_URI" + role, "HSMSIGN_PUBKEY_SHA256" + role):
            if name not in scan:
                scan.append(name)
    for name in scan:
        try:
            value = _get(d, name)
        except Exception:  # noqa: BLE001, S112 - a variable that does not expand is not ours to judge
            continue
        problem = check_value(name, value, prod)
        if problem is not None:
            problems.append(problem)
    for role in ("",) + tuple("_" + r for r in ROLES):
        name = "HSM_PKCS11_URI" + role
        text = _get(d, name)
        if text and not _PIN_VALUE.search(text):
            try:
                _parse_uri(text)
            except Exception as exc:  # noqa: BLE001
                problems.append(
                    Problem(
                        name,
                        f"is not a valid PKCS#11 URI: {exc}",
                        "see RFC 7512; 'hsmsign uri URI' checks one",
                    )
                )
        pin = _get(d, "HSMSIGN_PUBKEY_SHA256" + role)
        if pin and not _SHA256.match(pin):
            problems.append(
                Problem(
                    "HSMSIGN_PUBKEY_SHA256" + role,
                    "is not a SHA-256 fingerprint (64 hex digits)",
                    "hsmsign info --uri URI prints the key's fingerprint",
                )
            )
    if enabled(d):
        problems.extend(check_key_files(d))
        if not _get(d, "HSM_PKCS11_URI") and not any(role_uri(d, r) for r in ROLES):
            hint = (
                "run 'hsmsign dev-init' (development) or set HSM_PKCS11_URI in local.conf"
                if not prod
                else 'set HSM_PKCS11_URI = "pkcs11:token=...;object=..." in local.conf or your kas file'
            )
            problems.append(Problem("HSM_PKCS11_URI", "is empty: nothing can be signed", hint, fatal=False))
        problems.extend(check_fit_policy(d, prod))
        pin_env = _get(d, "HSMSIGN_PIN_ENV")
        if pin_env and not ENV_NAME.match(pin_env):
            problems.append(
                Problem("HSMSIGN_PIN_ENV", "must be the NAME of an environment variable", "e.g. HSM_PIN")
            )
    else:
        problems.append(
            Problem(
                "HSMSIGN_ENABLE",
                "is 0: U-Boot, kernel FIT, rootfs and swupdate bundles are built UNSIGNED",
                'production builds must sign: remove HSMSIGN_ENABLE = "0"',
                fatal=prod,
            )
        )
    return problems


def check_fit_policy(d: Datastore, prod: bool) -> list[Problem]:
    """``HSMSIGN_UBOOT_REQUIRED`` / ``_MODE``: the ``required`` policy of keys in U-Boot's DTBs."""
    variables = {
        "required": LAYER_VARIABLES["fit_required"],
        "required-mode": LAYER_VARIABLES["fit_required_mode"],
    }
    return [
        Problem(variables[p.setting], p.message, p.fix, fatal=prod or not p.production_only)
        for p in required_problems(_get(d, variables["required"]), _get(d, variables["required-mode"]))
    ]


def img_key_name(d: Datastore) -> str:
    """Image signatures' ``key-name-hint`` (FIT_SIGN_INDIVIDUAL): UBOOT_SIGN_IMG_KEYNAME, else <conf>-img."""
    return _get(d, "UBOOT_SIGN_IMG_KEYNAME") or key_name(d, "FITIMAGE") + "-img"


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


# --- run time: environment, command, lock -----------------------------------------------


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
                r.pin_variable: _get(d, r.pin_variable) for r in roles.ROLE_TABLE if _get(d, r.pin_variable)
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


def token_label(uri: str) -> str:
    try:
        parsed = _parse_uri(uri)
    except Exception:  # noqa: BLE001
        return ""
    return str(getattr(parsed, "token", "") or getattr(parsed, "serial", "") or "")


def lockfile(d: Datastore, role: str) -> str:
    """The ``[lockfiles]`` entry of a signing task: one lock per token.

    Empty when ``HSMSIGN_LOCK`` is "0" (tokens that take parallel sessions).
    """
    if _get(d, "HSMSIGN_LOCK") in ("0", "no", "false"):
        return ""
    lockdir = _get(d, "HSMSIGN_LOCK_DIR") or _get(d, "TMPDIR")
    label = token_label(role_uri(d, role)) or "default"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:48]
    return os.path.join(lockdir, f"hsmsign-token-{safe}.lock") if lockdir else ""


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
) -> subprocess.CompletedProcess[str]:
    """Run ``HSMSIGN_CMD ARGS`` with the child environment; raise TaskError on failure.

    Every way the command can fail ends in one TaskError line naming what to fix
    (``HSMSIGN_CMD`` when it cannot run), followed by the command's own error lines.
    """
    env = dict(os.environ if base_env is None else base_env)
    for name in Settings.names():  # the task's settings replace any inherited ones
        env.pop(name, None)
    env.update(child_env(d, origenv, role))
    argv = command(d) + list(args)
    if not argv:
        raise TaskError('HSMSIGN_CMD is empty: leave it unset (hsmsign from hsmsign-native) or set a command')
    shown = redact(shlex.join(argv))
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise TaskError(
            f"HSMSIGN_CMD: {argv[0]} not found (PATH of the task, or a missing interpreter): build "
            "hsmsign-native (the classes depend on it when HSMSIGN_CMD is 'hsmsign') or set HSMSIGN_CMD "
            "to a command that exists"
        ) from exc
    except PermissionError as exc:
        raise TaskError(
            f"HSMSIGN_CMD: {argv[0]} cannot be run by the build user ({exc.strerror}): make it and its "
            "interpreter readable and executable, or set HSMSIGN_CMD to another command"
        ) from exc
    except OSError as exc:
        raise TaskError(
            f"HSMSIGN_CMD: {argv[0]} cannot be run ({exc.strerror or exc}): set HSMSIGN_CMD to a working "
            "hsmsign command"
        ) from exc
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


def quote(text: str) -> str:
    """Shell-quote a value for the command strings other layers run with a shell."""
    return shlex.quote(text)
