"""Parse time: what the classes ask while BitBake parses, and the checks that stop a bad configuration.

Standard library only (BitBake imports it with the host Python, where python-pkcs11
and cryptography are absent; ``tests/unit/test_parse_time.py`` holds it to that).
A datastore here is anything with ``getVar(name, expand=True)`` (BitBake's ``d``,
or ``DictData``); nothing here imports ``bb``: what to do with a problem (fatal,
warn) is the class's decision.

* the role URIs (``HSM_PKCS11_URI_<ROLE>``) and the key identity that goes into
  task hashes: the URI without PIN source or module (``Pkcs11Uri.identity``)
  and the pinned public-key fingerprint (``HSMSIGN_PUBKEY_SHA256[_<ROLE>]``);
* the parse-time checks: every variable of the base configuration through the
  leak scanner's patterns (``hsmsign.secrets.check_variable``: a PIN under any name,
  ``pin-value``, private and symmetric keys, published keys), a ``pin-source``
  program with arguments, key-file variables, a well-formed URI, a sane mode;
* the FIT key names, the per-token lock file, the development token's default URI;
* the command line meta-swupdate runs as ``SWUPDATE_SIGN_TOOL``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import glob
import hashlib
import os
import re
import shlex
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import devtoken, known_keys, roles, secrets
from ..errors import HsmsignError
from ..settings import ENV_NAME, LAYER_VARIABLES, MODES, required_problems
from ..uri import Pkcs11Uri, pin_program_allowed

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

# Findings that stop the parse in both modes: the secret is in the datastore, hence in
# sigdata, run.do_* scripts and 'bitbake -e', whatever token it opens.
_FATAL_IN_BOTH_MODES = frozenset({"pin-value", "private-key", "private-key-der"})
# What each kind of finding says at parse time (never the value, nor its length).
_KIND_MESSAGES = {
    "pin-assignment": "holds a PIN, password or passphrase",
    "symmetric-key": "holds a symmetric key (128, 192 or 256 bits in hex or base64)",
    "known-symmetric-key": "holds a published example key: anyone can decrypt or forge with it",
    "weak-symmetric-key": "holds a patterned symmetric key with no randomness",
    "private-key-der": "holds a DER private key",
    "known-public-key": "holds a public key whose private half is published",
}
_STORED = "; the datastore ends up in sigdata, run.do_* scripts and 'bitbake -e'"

_PIN_SOURCE_WINDOW = 512  # characters: a URI's start before the attribute, the program after it
_PIN_SOURCE_MAX = 64  # programs with a space, quote or escape that one value may hold
# pin-source=|PROGRAM (the pipe may be percent-encoded) and the program's first word
_PIN_SOURCE_PROGRAM = re.compile(r"pin-source=[ \t]*(?:\||%7c)[ \t]*([^&\s\"'\\]*)", re.IGNORECASE)
_NOT_PLAIN = re.compile(r"[\s\"'\\]")
_OVERRIDE = re.compile(r":[^\[]*")  # NAME:override[flag] -> NAME[flag]


def pin_program_with_arguments(text: str) -> bool:
    """Whether ``text`` holds a PKCS#11 URI whose ``pin-source=|PROGRAM`` has arguments
    (other than those of ``hsmsign.uri.PIN_PROGRAM_ALLOWLIST``, which name where the PIN is kept).

    ``pin-source=|/bin/echo 1234`` is a ``pin-value`` in disguise: the arguments
    are stored wherever the URI is (the datastore, sigdata, run scripts) and sit in
    the program's argv, which every process can read. A program path alone (quoted
    when it has spaces) passes. The value is split as ``hsmsign.pin`` runs it (percent
    decoding, then ``shlex``); one that does not split (an unterminated quote) counts.
    The URI ends at the quote that opens it (a URI inside a quoted command line),
    else at the end of the line; the attribute at the next ``&``.

    Linear time: a program path alone costs its length; the others look at most
    ``_PIN_SOURCE_WINDOW`` characters back and forth, and a value with more than
    ``_PIN_SOURCE_MAX`` of them counts as one with arguments (no configuration has
    that many).
    """
    slow = 0
    for found in _PIN_SOURCE_PROGRAM.finditer(text):
        word = urllib.parse.unquote(found.group(1))
        after = text[found.end() : found.end() + 1]
        if after in ("", "&", "\n") and not _NOT_PLAIN.search(word):
            continue  # a program path alone: the common case
        slow += 1
        if slow > _PIN_SOURCE_MAX:
            return True
        start = found.start(1)
        command = text[start : start + _PIN_SOURCE_WINDOW].split("\n", 1)[0].split("&", 1)[0]
        before = text[max(0, found.start() - _PIN_SOURCE_WINDOW) : found.start()].rsplit("\n", 1)[-1]
        scheme = before.lower().rfind("pkcs11:")
        if scheme > 0 and before[scheme - 1] in "\"'":
            command = command.split(before[scheme - 1], 1)[0]
        command = urllib.parse.unquote(command).strip()
        if not command:
            continue  # names no program: not a secret (hsmsign reports it when it runs)
        try:
            argv = shlex.split(command)
        except ValueError:
            return True
        # the programs production accepts with arguments (they name where the PIN is kept):
        # the same rule as hsmsign.uri.pin_program_allowed, so the parse and the signing agree
        if not pin_program_allowed(argv):
            return True
    return False


# Words of the hex/base64 alphabet long enough to be 128 bits (each character looked at once).
_KEY_WORD = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{22,}={0,2}")
_HEX_LENGTHS = (32, 48, 64)
_B64_LENGTHS = (24, 32, 44)


def published_symmetric_key(text: str) -> known_keys.KnownKey | None:
    """A published example symmetric key (``hsmsign.known_keys``) anywhere in ``text``, or None.

    Whatever the variable's name: hex (``0x`` allowed) or base64 of 128, 192 or
    256 bits, as a word of its own (the whole value, a word of a command line, one
    half of a ``KEY IV`` pair), that is on the list is that key, since a random
    value never is. Patterned keys (all zero, ascending bytes) are left to the
    name-based check: as a checksum placeholder they are no key.
    """
    for found in _KEY_WORD.finditer(text):
        word = found.group()
        if word[:2] in ("0x", "0X") and len(word) - 2 in _HEX_LENGTHS:
            word = word[2:]
        raw: bytes | None = None
        if len(word) in _HEX_LENGTHS:
            try:
                raw = bytes.fromhex(word)
            except ValueError:
                raw = None
        if raw is None and len(word) in _B64_LENGTHS:
            try:
                raw = base64.b64decode(word, validate=True)
            except (binascii.Error, ValueError):
                raw = None
        if raw is not None and len(raw) in (16, 24, 32):
            known = known_keys.lookup_symmetric(raw)
            if known is not None and known.kind == "symmetric":
                return known
    return None


class Datastore(Protocol):
    def getVar(self, name: str, expand: bool = True) -> Any: ...  # noqa: N802 - BitBake's API

    def keys(self) -> Iterable[str]: ...


@dataclass(frozen=True)
class Problem:
    """One configuration problem; ``fatal`` stops the parse, else a warning."""

    variable: str
    message: str
    fix: str
    fatal: bool = True

    def format(self) -> str:
        return f"meta-hsmsign: {self.variable}: {self.message}\n  what to do: {self.fix}"


class DictData:
    """A minimal dict-backed datastore (tests, and tools outside BitBake); ``flags``: NAME -> {FLAG: text}."""

    def __init__(
        self, values: Mapping[str, Any] | None = None, flags: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        self.values: dict[str, Any] = dict(values or {})
        self.flags: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (flags or {}).items()}

    def getVar(self, name: str, expand: bool = True) -> Any:  # noqa: N802 - BitBake's API
        value = self.values.get(name)
        if value is None or not expand or not isinstance(value, str):
            return value
        return re.sub(r"\$\{([A-Za-z0-9_\-]+)\}", lambda m: self.getVar(m.group(1)) or "", value)

    def getVarFlag(self, name: str, flag: str, expand: bool = True) -> Any:  # noqa: N802 - BitBake's API
        return self.flags.get(name, {}).get(flag)

    def getVarFlags(self, name: str) -> dict[str, Any] | None:  # noqa: N802 - BitBake's API
        return dict(self.flags[name]) if self.flags.get(name) else None

    def keys(self) -> list[str]:
        return list(self.values)


def _get(d: Datastore, name: str) -> str:
    value = d.getVar(name)
    return "" if value is None else str(value).strip()


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
    return Pkcs11Uri.parse(text)


def uri_identity(text: str) -> str:
    """The URI without PIN source, PIN value or module: what names the key."""
    if not text:
        return ""
    try:
        return str(_parse_uri(text).identity())
    except HsmsignError:  # a broken URI is reported by check_config
        # never fall back to the raw text: it may hold a pin-value
        return "invalid-uri:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_variable(d: Datastore, role: str) -> str:
    """The pin variable that applies to a role: its own, else its fallback's, ..., or ""."""
    for r in roles.chain(role):
        if _get(d, r.fingerprint_variable):
            return r.fingerprint_variable
    return ""


def pubkey_fingerprint(d: Datastore, role: str) -> str:
    """The role's pinned fingerprint(s), lower-case hex: ``HSMSIGN_PUBKEY_SHA256_<ROLE>``, else the
    fallback role's (``_SPL`` and ``_FITIMAGE`` fall back to ``_UBOOT``), else ``HSMSIGN_PUBKEY_SHA256``."""
    name = fingerprint_variable(d, role)
    return _get(d, name).lower().replace("sha256:", "") if name else ""


def key_identity(d: Datastore, role: str) -> str:
    """What goes into the task hash of a signing task: a key change re-signs.

    URI identity plus the pinned fingerprint; PIN source and module are left out
    on purpose (moving the PIN file must not rebuild, and a shared sstate mirror
    must not serve an artifact signed by another key).
    """
    ident = uri_identity(role_uri(d, role)) or "no-key"
    pin = pubkey_fingerprint(d, role)
    return f"{ident} pubkey-sha256={pin or 'unpinned'} mode={mode(d)}"


def key_name(d: Datastore, role: str) -> str:
    """The FIT ``key-name-hint`` of a role: the URI's ``object=`` label, else ``hsmsign-<role>``."""
    text = role_uri(d, role)
    label = ""
    if text:
        try:
            label = str(getattr(_parse_uri(text), "object", "") or "")
        except HsmsignError:  # reported by check_config
            label = ""
    return label or "hsmsign-" + role.lower()


def img_key_name(d: Datastore) -> str:
    """Image signatures' ``key-name-hint`` (FIT_SIGN_INDIVIDUAL): UBOOT_SIGN_IMG_KEYNAME, else <conf>-img."""
    return _get(d, "UBOOT_SIGN_IMG_KEYNAME") or key_name(d, "FITIMAGE") + "-img"


def _env_get(env: Any, name: str) -> str | None:
    if env is None:
        return None
    if isinstance(env, Mapping):
        value = env.get(name)
    else:  # BitBake's BB_ORIGENV is a small datastore
        value = env.getVar(name, False)
    return None if value is None else str(value)


def dev_home(d: Datastore, origenv: Any = None) -> str:
    """Where ``hsmsign dev-init`` keeps the development token (outside TMPDIR): ``devtoken.dev_home``."""
    explicit = _get(d, "HSMSIGN_DEV_HOME") or (_env_get(origenv, "HSMSIGN_DEV_HOME") or "")
    return devtoken.dev_home(explicit, lambda name: _env_get(origenv, name))


def dev_default_uri(d: Datastore, origenv: Any = None) -> str:
    """The development token's default key URI, or "" outside development mode.

    Used as the default of ``HSM_PKCS11_URI`` so ``HSMSIGN_MODE = "development"``
    alone signs with the token ``hsmsign dev-init`` made.
    """
    if _get(d, "HSMSIGN_MODE") != "development":
        return ""
    home = dev_home(d, origenv)
    module = _get(d, "HSMSIGN_DEV_MODULE") or devtoken.softhsm_module() or devtoken.SOFTHSM_MODULES[0]
    return (
        "pkcs11:token=hsmsign-dev;object=dev-signing"
        f"?module-path={module}&pin-source=file:{os.path.join(home, 'user-pin')}"
    )


def check_value(name: str, value: str, prod: bool) -> Problem | None:
    """Secrets in one variable's value: the leak scanner's patterns (``hsmsign.secrets``).

    ``name`` is what the message names (``NAME``, ``NAME:override``, ``NAME[flag]``);
    the patterns judge the name without its override, so ``:machine-name`` cannot
    make a PIN look like a public name. A PIN in a URI, a private key and a
    ``pin-source`` program with arguments stop the parse in both modes; the other
    findings (a PIN or password under any name, symmetric keys, published keys) in
    production, and are warnings in development. The message never holds the value.
    """
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
    if pin_program_with_arguments(value):
        return Problem(
            name,
            "holds a PKCS#11 URI whose pin-source=|PROGRAM has arguments: they are a PIN in disguise, "
            "stored in sigdata, run.do_* scripts and 'bitbake -e', and readable in the program's "
            "command line by every process",
            "point pin-source at a program path alone that prints the PIN "
            "(?pin-source=|/usr/local/bin/get-hsm-pin), or use ?pin-source=file:/run/secrets/hsm-pin "
            'or HSMSIGN_PIN_ENV = "NAME"',
        )
    # no guard around the scanner: a bug in it stops the parse instead of skipping the check
    finding = secrets.check_variable(_OVERRIDE.sub("", name, count=1), value)
    if finding is None or finding.kind == "key-file-variable":  # key files: check_key_files
        return _published_key_problem(name, value, prod)
    message = _KIND_MESSAGES.get(finding.kind, f"holds a secret ({finding.kind})")
    if finding.kind == "known-symmetric-key" and finding.detail:
        message += f" ({finding.detail})"
    return Problem(
        name, message + _STORED, finding.advice, fatal=prod or finding.kind in _FATAL_IN_BOTH_MODES
    )


def _raw(d: Datastore, name: str) -> Any:
    try:
        return d.getVar(name, False)
    except Exception:  # noqa: BLE001 - a datastore that cannot give the raw value: nothing to scan
        return None


def scan_datastore(d: Datastore, prod: bool, stats: dict[str, float] | None = None) -> list[Problem]:
    """Every variable of ``d`` (``d.keys()``) and its flags through :func:`check_value`.

    What is left out, by what it is and never by its name:

    * values that are not text (nor their flags): BitBake's own bookkeeping
      (``__BBTASKS``, the inherit cache) and ``BB_ORIGENV``, the environment BitBake
      was started from, where ``HSMSIGN_PIN_ENV``'s PIN is meant to be;
    * functions (flag ``func``: shell and Python task code of the classes and
      recipes): they are code, not configuration. A value reaches them through
      ``${VAR}``, and that variable is scanned; a stock class's code may name a
      development PIN (meta-oe's signing.bbclass puts a ``pin-value`` into the URI of its
      build-time SoftHSM token). ``hsmsign audit`` scans the layers' files, code
      included.

    A variable's expanded value is checked (what tasks see; a ``${@...}`` or
    ``${A}`` cannot hide the secret), in a copy of the datastore (``createCopy``)
    so that inline Python changes nothing; its raw value when it does not expand at
    this point. Flags are checked raw (``SIGNING_PKCS11_URI[fit]`` is meta-oe's
    way to give a URI). ``stats`` gets the counts, the seconds taken and the CPU seconds.
    """
    start, cpu_start = time.monotonic(), time.process_time()
    problems: list[Problem] = []
    checked = flags_checked = functions = 0
    get_flags = getattr(d, "getVarFlags", None)
    get_flag = getattr(d, "getVarFlag", None)
    # Expansion runs inline Python that may set variables (bb.fetch2.get_autorev marks
    # __BBAUTOREV_SEEN, and every recipe would then stop with "AUTOREV/SRCPV set too
    # late"): expand in BitBake's copy-on-write copy, never in the configuration itself.
    copy = getattr(d, "createCopy", None)
    expanding: Datastore = copy() if copy is not None else d
    for name in list(d.keys()):
        raw = _raw(d, name)
        if raw is not None and not isinstance(raw, str):
            continue
        if get_flag is not None and get_flag(name, "func", False):
            functions += 1
            continue
        if raw is not None:  # None: a variable with flags only (SIGNING_PKCS11_URI[fit] = ...)
            try:
                value = expanding.getVar(name)
            except Exception:  # noqa: BLE001 - BitBake's ExpansionError (no bb import here): the raw text
                value = raw
            checked += 1
            problem = check_value(name, "" if value is None else str(value), prod)
            if problem is not None:
                problems.append(problem)
        flags = get_flags(name) if get_flags is not None else None
        for flag, flag_value in (flags or {}).items():
            if isinstance(flag_value, str) and flag_value:
                flags_checked += 1
                problem = check_value(f"{name}[{flag}]", flag_value, prod)
                if problem is not None:
                    problems.append(problem)
    if stats is not None:
        stats.update(
            variables=checked, flags=flags_checked, functions=functions, seconds=time.monotonic() - start,
            cpu_seconds=time.process_time() - cpu_start,
        )  # fmt: skip
    return problems


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


# An assignment line of a recipe, a .bbappend or an .inc: NAME[flag] OP "value" (after the
# backslash continuations are joined). Linear: no nested quantifiers.
_ASSIGNMENT = re.compile(
    r"^[ \t]*(?:export[ \t]+)?([A-Za-z0-9_${}@\-:+.~/]+(?:\[[A-Za-z0-9_\-.]+\])?)[ \t]*"
    r"(?:\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)[ \t]*([\"'])(.*)\2[ \t]*$"
)
# recipe files already read in this parser process: path -> (mtime, size, findings)
_RECIPE_FILE_CACHE: dict[str, tuple[float, int, list[tuple[int, str, str]]]] = {}


def recipe_value_problem(name: str, value: str, prod: bool) -> Problem | None:
    """What stops a parse when a recipe file holds it: a PIN in a URI, a private key, a PIN
    program with arguments (both modes), a published key (production; a warning in development).

    Narrower than :func:`check_value` on purpose: the names that only look like a PIN or a
    password (oe-core's own builder recipe has a BUILDER_PASSWORD) are judged for the
    configuration the user writes, not for every recipe of every layer.
    """
    if not value:
        return None
    if _PIN_VALUE.search(value) or _has_private_key(value) or pin_program_with_arguments(value):
        return check_value(name, value, prod)
    return _published_key_problem(name, value, prod)


def _published_key_problem(name: str, value: str, prod: bool) -> Problem | None:
    """A published example key anywhere in ``value``: fatal in production, else a warning."""
    known = published_symmetric_key(value)
    if known is None:
        return None
    return Problem(
        name,
        f"{_KIND_MESSAGES['known-symmetric-key']} ({known.description}; published in {known.where()})"
        + _STORED,
        secrets.ADVICE["known-symmetric-key"],
        fatal=prod,
    )


def _recipe_file_findings(path: str) -> list[tuple[int, str, str]]:
    """(line, variable, value) of every quoted assignment in a recipe file, read once per
    parser process while the file is unchanged."""
    try:
        st = os.stat(path)
        cached = _RECIPE_FILE_CACHE.get(path)
        if cached is not None and cached[0] == st.st_mtime and cached[1] == st.st_size:
            return cached[2]
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return []
    found: list[tuple[int, str, str]] = []
    buf, first = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not buf:
            first = number
        if line.endswith("\\"):
            buf += line[:-1]
            continue
        line, buf = buf + line, ""
        match = _ASSIGNMENT.match(line)
        if match is not None and match.group(3):
            found.append((first, match.group(1), match.group(3)))
    _RECIPE_FILE_CACHE[path] = (st.st_mtime, st.st_size, found)
    return found


def recipe_files(d: Datastore) -> list[str]:
    """The files a recipe's own text comes from: the recipe, its .bbappends and what they
    include or require (not classes: they are code, which 'hsmsign audit' scans; not
    configuration files: the parse-time check of the base configuration covers them)."""
    files = [_get(d, "FILE") or ""]
    files += (_get(d, "__BBAPPEND") or "").split()
    depends = d.getVar("__depends", False) or []
    for entry in depends:
        path = entry[0] if isinstance(entry, (tuple, list)) else str(entry)
        if not path.endswith((".bbclass", ".conf")):
            files.append(path)
    return list(dict.fromkeys(f for f in files if f))  # each once, in order


def check_recipe_files(d: Datastore, prod: bool) -> list[Problem]:
    """Secrets written into a recipe, a .bbappend or an included file (see
    :func:`recipe_value_problem`); each problem names the file, the line and the variable."""
    problems: list[Problem] = []
    for path in recipe_files(d):
        for line, name, value in _recipe_file_findings(path):
            problem = recipe_value_problem(name, value, prod)
            if problem is not None:
                problems.append(dataclasses.replace(problem, variable=f"{path}:{line}: {problem.variable}"))
    return problems


# the variable that names the token key instead of each key-file variable
_KEYFILE_ROLE = {
    "SWUPDATE_PRIVATE_KEY": "HSM_PKCS11_URI_SWUPDATE",
    "SWUPDATE_CMS_KEY": "HSM_PKCS11_URI_SWUPDATE",
    "SWUPDATE_PASSWORD_FILE": "HSM_PKCS11_URI_SWUPDATE",
    "SWUPDATE_AES_FILE": "HSM_PKCS11_URI_ENCRYPT",
    "UBOOT_SIGN_KEYFILE": "HSM_PKCS11_URI_UBOOT",
    "RAUC_KEY_FILE": "HSM_PKCS11_URI_RAUC",
}


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
            instead = _KEYFILE_ROLE.get(name, "HSM_PKCS11_URI")
            problems.append(
                Problem(
                    name,
                    f"names a key or secret file ({value[:120]})",
                    f"remove {name}: with meta-hsmsign the key is a PKCS#11 URI ({instead}) and never a file",
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


def check_config(
    d: Datastore, names: Sequence[str] | None = None, stats: dict[str, float] | None = None
) -> list[Problem]:
    """All parse-time checks of a configuration.

    ``names``: the variables to scan for secrets; None (the class at
    ``ConfigParsed``): every variable of ``d`` and its flags (:func:`scan_datastore`),
    with the counts and time in ``stats``. The hsmsign variables are checked in
    detail either way.
    """
    prod = mode(d) == "production"
    problems: list[Problem] = []
    raw_mode = _get(d, "HSMSIGN_MODE")
    if raw_mode and raw_mode not in MODES:
        problems.append(
            Problem("HSMSIGN_MODE", f"unknown mode '{raw_mode}'", 'set "development" or "production"')
        )
    scan: list[str] = []
    if names is None:
        problems.extend(scan_datastore(d, prod, stats))  # the hsmsign variables among them
    else:
        scan = list(names)
        for role in ("",) + tuple("_" + r for r in ROLES):
            for name in ("HSM_PKCS11_URI" + role, "HSMSIGN_PUBKEY_SHA256" + role):
                if name not in scan:
                    scan.append(name)
    for name in scan:
        try:
            value = _get(d, name)
        except Exception:  # noqa: BLE001, S112 - BitBake's ExpansionError (no bb import here): a
            continue  # variable that does not expand is reported by BitBake itself, not ours to judge
        problem = check_value(name, value, prod)
        if problem is not None:
            problems.append(problem)
    for role in ("",) + tuple("_" + r for r in ROLES):
        name = "HSM_PKCS11_URI" + role
        text = _get(d, name)
        if text and not _PIN_VALUE.search(text):
            try:
                _parse_uri(text)
            except HsmsignError as exc:
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


def token_label(uri: str) -> str:
    try:
        parsed = _parse_uri(uri)
    except HsmsignError:  # reported by check_config
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


def quote(text: str) -> str:
    """Shell-quote a value for the command strings other layers run with a shell."""
    return shlex.quote(text)


def swupdate_sign_tool(d: Datastore) -> str:
    """``SWUPDATE_SIGN_TOOL``: the command meta-swupdate runs (through a shell) to sign sw-description.

    ``HSMSIGN_SWUPDATE_DIR`` is where do_swuimage keeps sw-description and expects
    sw-description.sig (``${S}`` on scarthgap, ``${WORKDIR}`` from wrynose on); with an
    encrypted sw-description the plain one is signed. Every value is shell-quoted.
    """
    workdir = _get(d, "HSMSIGN_SWUPDATE_DIR")
    plain = "sw-description.plain" if _get(d, "SWUPDATE_ENCRYPT_SWDESC") else "sw-description"
    signing_mode = _get(d, "HSMSIGN_SWUPDATE_MODE")
    args = [_get(d, "HSMSIGN_CMD"), "swupdate", "sign", "--uri", quote(role_uri(d, "SWUPDATE")),
            "--signing-mode", quote(signing_mode)]
    cert = _get(d, "HSMSIGN_SWUPDATE_CERT")
    if cert and signing_mode == "cms":
        args += ["--cert", quote(cert)]
    args += ["--output", quote(os.path.join(workdir, "sw-description.sig"))]
    args += [quote(os.path.join(workdir, plain))]
    return " ".join(args)
