"""PKCS#11 URIs (RFC 7512): parsing, printing, percent-encoding and redaction.

Standard library only: BitBake imports this module at parse time.

A URI names a token and an object inside it, and may say how to load the module
and where the PIN comes from::

    pkcs11:token=acme-prod;object=fw-signing;type=private?pin-source=file:/run/hsm/pin

Path attributes (RFC 7512 section 2.3) are separated by ``;``, query attributes by
``&`` after ``?``. Values are percent-encoded UTF-8 except for the unreserved
characters and the few RFC 7512 allows in each component. Unknown path attributes
are kept (``unknown``); RFC 7512 says a URI with an attribute the implementation
does not understand matches nothing, so token and key lookup refuse them with an
error instead of matching too much. ``x-`` vendor attributes are kept but ignored.

``pin-value`` is parsed (so we can refuse it with a helpful message) but never
printed: :meth:`Pkcs11Uri.redacted` replaces it, and ``__str__`` is the redacted
form too. Use :meth:`Pkcs11Uri.format` with ``keep_secrets=True`` only to hand a
URI to a child process that needs it. A ``pin-source`` program is printed without
its arguments (``|/bin/echo 1234`` is a pin-value in disguise). An attribute that
only looks like a PIN (``pin_value=``, ``?pin-valueSECRET``, ``pin=``,
``password=``) is refused by the parser without showing its name or value;
:func:`pin_problems` lists every such problem of a URI's text for the policy
(``hsmsign.policy.check_uri``) and the layer's parse-time check.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from typing import Any, NamedTuple

from .errors import ConfigError, printable
from .frozen import Frozen

# Percent-encoding as urllib.parse's quote, unquote and unquote_to_bytes do it (a test holds
# them to urllib's results): urllib.parse, with the ipaddress module it imports, cost every cold
# start 0.003 s.
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_ALWAYS_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_ASCII_RUNS = re.compile("([\x00-\x7f]+)")


def unquote_to_bytes(text: str) -> bytes:
    """``%XX`` decoded; a '%' without two hex digits after it stays as it is."""
    parts = text.encode("utf-8").split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX_DIGITS and part[1] in _HEX_DIGITS:
            out.append(int(part[:2], 16))
            out += part[2:]
        else:
            out += b"%" + part
    return bytes(out)


def unquote(text: str, errors: str = "replace") -> str:
    """Percent-decoded text (UTF-8); characters outside ASCII stay as they are."""
    if "%" not in text:
        return text
    pieces = _ASCII_RUNS.split(text)
    out = [pieces[0]]
    for i in range(1, len(pieces), 2):
        out.append(unquote_to_bytes(pieces[i]).decode("utf-8", errors))
        out.append(pieces[i + 1])
    return "".join(out)


def quote(text: str, safe: str = "/") -> str:
    """UTF-8 percent-encoded, but for letters, digits, ``_.-~`` and the characters in ``safe``."""
    keep = _ALWAYS_SAFE | frozenset(safe.encode("ascii", "ignore"))
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode("utf-8"))


SCHEME = "pkcs11:"
REDACTED = "REDACTED"
ARGUMENTS_REDACTED = "[arguments redacted]"
HIDDEN_ATTRIBUTE = "[PIN-like attribute not shown]"

# Free text (command lines, logs, excerpts): what redact() removes. Every pattern runs in linear
# time (no nested quantifiers over the same characters).
_VALUE_CHARS = r"[^&;?#\s\"']*"
# pin-value in any spelling: PIN-VALUE, pin_value, pinvalue, pin%2Dvalue, "pin value", and with
# "=", "%3D" or nothing (pin-valueSECRET) before the value
_PIN_VALUE_TEXT = re.compile(
    r"(pin(?:[-_.]|%2d|%5f|%2e|\s)*value(?:\s*(?:=|%3d)\s*)?)(" + _VALUE_CHARS + ")", re.IGNORECASE
)
# pin=, --pin=, user-pin=, so_pin=, MKIMAGE_SIGN_PIN= ...
_PIN_EQ_TEXT = re.compile(
    r"((?<![a-z0-9])(?:user|so)?[-_]?pin\s*(?:=|%3d)\s*)(" + _VALUE_CHARS + ")", re.IGNORECASE
)
# pin-source=|PROGRAM ARGUMENTS: the arguments (up to the next '&', '#', newline or unquoted ')
_PIN_PROGRAM_TEXT = re.compile(
    r"(pin(?:[-_]|%2d|%5f)?source\s*(?:=|%3d)\s*(?:\||%7c))((?:'[^'\n]*'|[^&#'\n])*)", re.IGNORECASE
)
# a URI in free text ends at a quote or a space, except a space next to '=' or ':' (pin-code =1234)
_URI_IN_TEXT = re.compile(r"pkcs11:(?:[^\s'\"]|[ \t]+(?=[=:])|(?<=[=:])[ \t]+)*", re.IGNORECASE)


def redact(text: str) -> str:
    """Text (a URI, even a malformed one, a command line, a log) with every PIN removed.

    Removes the value of ``pin-value`` in any spelling (``PIN-VALUE``, ``pin_value``,
    ``pin%2Dvalue``, ``pin-valueSECRET``), of ``pin=``/``--pin=``/``so-pin=``, the
    arguments of a ``pin-source=|PROGRAM`` and, inside every ``pkcs11:`` URI in the text,
    each attribute that looks like a PIN (:func:`redact_uri`).

    The one redaction of a PIN in text: the layer's task output (``hsmsign.bitbake``),
    the leak scanner's excerpts (``hsmsign.secrets``) and this module's own messages.
    """
    text = _PIN_PROGRAM_TEXT.sub(lambda m: m.group(1) + _program_shown(unquote(m.group(2))), text)
    text = _PIN_VALUE_TEXT.sub(_keep_empty, text)
    text = _PIN_EQ_TEXT.sub(_keep_empty, text)
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def _keep_empty(m: re.Match[str]) -> str:
    return m.group(0) if not m.group(2) else m.group(1) + REDACTED


# ---------------------------------------------------------------------------- PIN-like attributes

# An attribute name that holds one of these (after decoding, case folding and dropping everything
# but letters and digits) names a PIN, a password or a secret: pin, PIN-VALUE, pin_value, pinvalue,
# pin%2Dvalue, "pin value", user-pin, so_pin, pincode, password, passphrase, pwd, secret ...
PIN_WORDS: tuple[str, ...] = ("pin", "pass", "pwd", "secret")

# pin-source programs whose arguments name where the PIN is kept instead of holding it; production
# accepts them with arguments (every other program: a path and nothing else). Matched by the
# program's file name and its first argument; docs/policy.md says why each is here.
PIN_PROGRAM_ALLOWLIST: dict[str, str] = {
    "hsmsign-remote": "pin",  # hsmsign-remote pin [SSH OPTIONS] [USER@]HOST: the PIN kept on the HSM host
    "systemd-creds": "cat",  # systemd-creds cat NAME: a credential of the running systemd unit
    "secret-tool": "lookup",  # secret-tool lookup ATTRIBUTE VALUE...: the libsecret keyring
}


def _normal_name(name: str) -> str:
    """``name`` as compared with PIN_WORDS: percent-decoded, NFKC, case-folded, letters and digits only."""
    for _ in range(3):  # pin%252Dvalue: encoded twice
        if "%" not in name:
            break
        name = unquote(name, errors="replace")
    name = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in name if c.isalnum())


def looks_like_pin_name(name: str) -> bool:
    """True for an attribute name that names a PIN or password, in any spelling or encoding."""
    normal = _normal_name(name)
    return any(word in normal for word in PIN_WORDS)


def pin_program_argv(source: str) -> list[str] | None:
    """The argv of a ``pin-source`` value ``|PROGRAM ARGS`` (split as a shell would, without running
    one); None if it cannot be split."""
    try:
        return shlex.split(source[1:] if source.startswith("|") else source)
    except ValueError:  # an unbalanced quote, a trailing backslash
        return None


def pin_program_allowed(argv: list[str]) -> bool:
    """A program with no arguments, or one on PIN_PROGRAM_ALLOWLIST with its subcommand and a name."""
    if len(argv) <= 1:
        return True
    sub = PIN_PROGRAM_ALLOWLIST.get(argv[0].rsplit("/", 1)[-1])
    return sub is not None and argv[1] == sub and len(argv) >= 3


def _program_shown(source: str) -> str:
    """A pin-source program (the text after ``|``) as messages show it: its path, never its arguments."""
    argv = pin_program_argv("|" + source)
    if argv is None:
        return "[program not shown: unbalanced quote]"
    if len(argv) <= 1:
        return source
    return f"{printable(argv[0], 120)} {ARGUMENTS_REDACTED}"


class PinProblem(NamedTuple):
    """A PIN in a URI, or a way to get one that policy refuses. ``message`` never holds the secret.

    ``kind``:

    * ``pin-value``: RFC 7512's pin-value; production refuses it, development accepts it;
    * ``pin-like``: an attribute that looks like a PIN but is not RFC 7512's (``pin_value=``,
      ``?pin-valueSECRET``, ``pin=``, ``password=``, a PIN attribute inside another value):
      production refuses it (policy), development as a bad URI (configuration);
    * ``program-arguments``: ``pin-source=|PROGRAM ARGS`` with arguments, the program not on
      PIN_PROGRAM_ALLOWLIST: the PIN may be in the arguments (``|/bin/echo 1234``); production
      refuses it, development warns;
    * ``program-unsplittable``: a ``pin-source`` program line that cannot be split (an unbalanced
      quote): a configuration error in every mode.
    """

    kind: str
    message: str
    hint: str

    @property
    def refused_in_development(self) -> bool:
        return self.kind in ("pin-like", "program-unsplittable")

    @property
    def warned_in_development(self) -> bool:
        return self.kind == "program-arguments"


_PIN_VALUE_HINT = (
    "put the PIN in a file readable only by the build user and use '?pin-source=file:/path/to/pin', or "
    "export it in an environment variable and pass --pin-env NAME (HSMSIGN_PIN_ENV=NAME); pin-value is "
    "accepted only with --mode development"
)
_PIN_LIKE_HINT = (
    "remove it: RFC 7512 names the PIN only with pin-source (and pin-value, development only); use "
    "'?pin-source=file:/path/to/pin' (mode 0600) or --pin-env NAME"
)


def _segments(text: str) -> list[tuple[int, int, str, bool]]:
    """(start, end, component, standard) of each attribute of a URI's text, even a malformed one.

    ``standard``: where RFC 7512 puts an attribute (after ';' in the path, '&' in the query); a
    ``NAME=VALUE`` after '&' in the path is inside the previous value (a forgotten '?').
    """
    start = len(SCHEME) if text[: len(SCHEME)].lower() == SCHEME else 0
    out: list[tuple[int, int, str, bool]] = []
    component, standard = "path", True
    i = start
    for j, c in enumerate(text[start:], start):
        if c in ";?&#":
            out.append((i, j, component, standard))
            if c in "?#" and component == "path":
                component = "query"
            standard = component == "query" or c != "&"
            i = j + 1
    out.append((i, len(text), component, standard))
    return [s for s in out if s[1] > s[0]]


def _segment_problem(
    part: str, component: str, index: int, standard: bool
) -> tuple[PinProblem | None, str] | None:
    """The PIN problem of one ``name=value`` (None: none) and how messages show it; None: nothing to hide."""
    name, eq, raw = part.partition("=")
    where = f"{component} attribute {index}"
    if standard and eq and name.lower() == "pin-value":
        message = (
            "the PKCS#11 URI carries a pin-value; a PIN written into a URI leaks into config, logs and "
            "`bitbake -e`"
        )
        return PinProblem("pin-value", message, _PIN_VALUE_HINT), f"{name}={REDACTED}"
    if standard and eq and name.lower() == "pin-source":
        value = unquote(raw, errors="replace").strip()
        if not value.startswith("|"):
            return None
        argv = pin_program_argv(value)
        if argv is None:
            return (
                PinProblem(
                    "program-unsplittable",
                    "PKCS#11 URI: the pin-source program line cannot be split into words (an unbalanced "
                    "quote or a trailing backslash); its text is not shown",
                    "write ?pin-source=|/path/to/program (percent-encode a space as %20, and close every "
                    "quote)",
                ),
                f"{name}=|[program not shown: unbalanced quote]",
            )
        if not argv:
            return (
                PinProblem(
                    "program-unsplittable",
                    "PKCS#11 URI: pin-source=| names no program",
                    "write ?pin-source=|/usr/local/bin/get-hsm-pin",
                ),
                part,
            )
        if len(argv) == 1:
            return None
        if pin_program_allowed(argv):  # allowed, but its arguments are still not shown
            return None, f"{name}=|{printable(argv[0], 120)} {ARGUMENTS_REDACTED}"
        program = printable(argv[0], 120)
        return (
            PinProblem(
                "program-arguments",
                f"pin-source=|{program} has arguments (not shown), which can carry the PIN itself and "
                "which every user of the host sees in ps: production runs a PIN program only as a path "
                "without arguments",
                "put the command into a script only you can change (chmod 700) and name it: "
                "?pin-source=|/usr/local/bin/get-hsm-pin; 'hsmsign-remote pin', 'systemd-creds cat' and "
                "'secret-tool lookup' may keep their arguments (docs/policy.md)",
            ),
            f"{name}=|{program} {ARGUMENTS_REDACTED}",
        )
    if looks_like_pin_name(name if eq else part):
        message = (
            f"the PKCS#11 URI has an attribute that looks like a PIN ({where}; its name and value are not "
            "shown): RFC 7512 knows no such attribute, and a PIN written into a URI leaks into config, "
            "logs and `bitbake -e`"
        )
        return PinProblem("pin-like", message, _PIN_LIKE_HINT), HIDDEN_ATTRIBUTE
    if eq and _value_hides_pin(raw):
        message = (
            f"the PKCS#11 URI hides a PIN-like attribute inside the value of '{printable(name.strip(), 40)}' "
            f"({where}; not shown), e.g. a missing '?' before the query"
        )
        return PinProblem("pin-like", message, _PIN_LIKE_HINT), f"{name}={REDACTED}"
    return None


def _value_hides_pin(raw: str) -> bool:
    """A value that, decoded, holds an attribute that looks like a PIN: ``NAME=...`` with a PIN-like
    NAME, or after a delimiter a first word that holds a PIN word (``k&userpinSECRET``, not
    ``R&D pins``). A value's start without '=' is a label (``object=pinned-key``)."""
    value = unquote(raw, errors="replace")
    for n, piece in enumerate(re.split(r"[;?&#]", value)):
        name, eq, _ = piece.partition("=")
        if eq:
            if looks_like_pin_name(name):
                return True
            continue
        if _normal_name(piece).startswith(("pinvalue", "pinsource")):
            return True
        if n and looks_like_pin_name((piece.split() or [""])[0]):
            return True
    return False


def _scan(text: str) -> tuple[list[PinProblem], str]:
    """Every PIN problem of a URI's text, and the text as messages may show it."""
    problems: list[PinProblem] = []
    shown: list[str] = []
    last = 0
    counts = {"path": 0, "query": 0}
    for start, end, component, standard in _segments(text):
        counts[component] += 1
        found = _segment_problem(text[start:end], component, counts[component], standard)
        if found is None:
            continue
        problem, replacement = found
        if problem is not None:
            problems.append(problem)
        shown.append(text[last:start] + replacement)
        last = end
    shown.append(text[last:])
    return problems, "".join(shown)


def pin_problems(uri: str | Pkcs11Uri) -> list[PinProblem]:
    """Problems with the PIN a URI (text, even malformed, or parsed) carries or how it gets one.

    Never raises. What each ``kind`` means in which mode: :class:`PinProblem`;
    ``hsmsign.policy.check_uri`` applies them (the CLI, ``doctor``, ``uri``, every token
    opening), and the layer's parse-time check calls this for every key URI variable.
    """
    if isinstance(uri, Pkcs11Uri):
        problems = _scan(uri.format(keep_secrets=True))[0]
        extra = (*uri.unknown, *uri.vendor)
        if any(looks_like_pin_name(name) for _, name, _ in extra) and not any(
            p.kind == "pin-like" for p in problems
        ):
            problems.append(
                PinProblem(
                    "pin-like", "the PKCS#11 URI has an attribute that looks like a PIN", _PIN_LIKE_HINT
                )
            )
        return problems
    if not isinstance(uri, str):
        return []
    return _scan(uri.strip())[0]


def redact_uri(text: str) -> str:
    """A URI's text (even a malformed one) as a message may show it.

    pin-value's value is REDACTED, a pin-source program keeps its path but not its arguments,
    and an attribute that looks like a PIN is replaced whole (its name may hold the PIN:
    ``?pin-valueSECRET``).
    """
    return _scan(text)[1]

# RFC 7512 section 2.3; printing follows this order (token first, then the object).
PATH_ATTRIBUTES: tuple[str, ...] = (
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
    "object",
    "id",
    "type",
)
QUERY_ATTRIBUTES: tuple[str, ...] = ("pin-source", "pin-value", "module-name", "module-path")
OBJECT_TYPES: tuple[str, ...] = ("public", "private", "cert", "secret-key", "data")
SECRET_QUERY_ATTRIBUTES: frozenset[str] = frozenset({"pin-value"})

# Characters left unencoded when printing (RFC 3986 unreserved plus what RFC 7512
# "pk11-path-res-avail" / "pk11-query-res-avail" allow). ';' '?' '&' '=' '/' are
# always encoded in values so the printed URI parses back to the same thing.
_PATH_SAFE = "-._~:[]@!$'()*+,"
_QUERY_SAFE = "-._~:[]@!$'()*+,/?|"

_ATTR_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LIB_VERSION = re.compile(r"[0-9]+(\.[0-9]+)?")  # fullmatch: ASCII digits, no trailing newline



def _decode(raw: str, where: str, secret: bool = False) -> bytes:
    bad = _PCT.search(raw)
    if bad:
        near = "" if secret else f" near '{printable(raw[bad.start() : bad.start() + 3])}'"
        raise ConfigError(
            f"PKCS#11 URI: bad percent-encoding in {where}{near}",
            "a '%' must be followed by two hex digits; write a literal '%' as %25",
        )
    return unquote_to_bytes(raw)


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"PKCS#11 URI: attribute '{name}' is not valid UTF-8 after percent-decoding",
            "only 'id' may hold arbitrary bytes; percent-encode text as UTF-8",
        ) from exc


class Pkcs11Uri(Frozen):
    """A parsed RFC 7512 URI. Text attributes are ``str``; ``id`` is ``bytes``.

    Immutable and compared by value, hashable (``hsmsign.frozen.Frozen``, not a dataclass:
    importing ``dataclasses`` cost every cold start 0.011 s); ``with_()`` makes a changed copy.
    """

    __slots__ = (
        "token",
        "manufacturer",
        "serial",
        "model",
        "library_manufacturer",
        "library_description",
        "library_version",
        "slot_description",
        "slot_manufacturer",
        "slot_id",
        "object",
        "id",
        "type",
        "pin_source",
        "pin_value",
        "module_name",
        "module_path",
        "unknown",
        "vendor",
    )

    token: str | None
    manufacturer: str | None
    serial: str | None
    model: str | None
    library_manufacturer: str | None
    library_description: str | None
    library_version: str | None
    slot_description: str | None
    slot_manufacturer: str | None
    slot_id: int | None
    object: str | None
    id: bytes | None
    type: str | None
    pin_source: str | None
    pin_value: str | None
    module_name: str | None
    module_path: str | None
    # (component, name, value) with component "path" or "query"
    unknown: tuple[tuple[str, str, str], ...]
    vendor: tuple[tuple[str, str, str], ...]

    def __init__(
        self,
        *,
        token: str | None = None,
        manufacturer: str | None = None,
        serial: str | None = None,
        model: str | None = None,
        library_manufacturer: str | None = None,
        library_description: str | None = None,
        library_version: str | None = None,
        slot_description: str | None = None,
        slot_manufacturer: str | None = None,
        slot_id: int | None = None,
        object: str | None = None,
        id: bytes | None = None,
        type: str | None = None,
        pin_source: str | None = None,
        pin_value: str | None = None,
        module_name: str | None = None,
        module_path: str | None = None,
        unknown: tuple[tuple[str, str, str], ...] = (),
        vendor: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        self._fill(locals())

    # ------------------------------------------------------------------ parse
    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse ``text``; raise ConfigError naming the bad part."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(
                "PKCS#11 URI is empty", 'set it, e.g. "pkcs11:token=acme-prod;object=fw-signing"'
            )
        text = text.strip()
        if text[: len(SCHEME)].lower() != SCHEME:
            raise ConfigError(
                f"not a PKCS#11 URI (must start with 'pkcs11:'): {_shorten(text)}",
                'write it as "pkcs11:token=TOKEN;object=KEY-LABEL" (RFC 7512)',
            )
        # a PIN where RFC 7512 has none (pin_value=, ?pin-valueSECRET, ...) or a pin-source program
        # line that cannot be split: refused before any message could show a part of it
        for problem in pin_problems(text):
            if problem.refused_in_development:
                raise ConfigError(problem.message, problem.hint)
        body = text[len(SCHEME) :]
        if "#" in body:
            raise ConfigError("PKCS#11 URI: '#' (a fragment) is not allowed", "percent-encode it as %23")
        path, sep, query = body.partition("?")
        values: dict[str, object] = {}
        unknown: list[tuple[str, str, str]] = []
        vendor: list[tuple[str, str, str]] = []

        for part in path.split(";") if path else []:
            if part == "":
                continue  # tolerate "pkcs11:;token=x" and a trailing ';'
            name, eq, raw = part.partition("=")
            if not eq:
                raise ConfigError(
                    f"PKCS#11 URI: path attribute '{_shorten(part)}' has no '='",
                    "path attributes are name=value pairs separated by ';'",
                )
            name = name.lower()
            if not _ATTR_NAME.match(name):
                raise ConfigError(f"PKCS#11 URI: '{_shorten(name)}' is not an attribute name")
            if name in QUERY_ATTRIBUTES:
                raise ConfigError(
                    f"PKCS#11 URI: '{name}' is a query attribute and belongs after '?'",
                    f"write ...;object=KEY?{name}=... (RFC 7512 section 2.3)",
                )
            decoded = _decode(raw, f"'{name}'")
            if name in values:
                raise ConfigError(f"PKCS#11 URI: path attribute '{name}' appears twice")
            if name == "id":
                values["id"] = decoded
            elif name in PATH_ATTRIBUTES:
                values[name] = _text(decoded, name)
            elif name.startswith("x-"):
                vendor.append(("path", name, _text(decoded, name)))
            else:
                unknown.append(("path", name, _text(decoded, name)))

        if sep:
            for part in query.split("&"):
                if part == "":
                    continue
                name, eq, raw = part.partition("=")
                name = name.lower()
                if not eq:
                    raise ConfigError(f"PKCS#11 URI: query attribute '{_shorten(name)}' has no '='")
                if name in PATH_ATTRIBUTES:
                    raise ConfigError(
                        f"PKCS#11 URI: '{name}' is a path attribute and belongs before '?'",
                        f"write pkcs11:{name}=...;... (RFC 7512 section 2.3)",
                    )
                decoded = _decode(raw, f"'{name}'", secret=name in SECRET_QUERY_ATTRIBUTES)
                if name in QUERY_ATTRIBUTES:
                    if name in values:
                        raise ConfigError(f"PKCS#11 URI: query attribute '{name}' appears twice")
                    values[name] = _text(decoded, name)
                elif name.startswith("x-"):
                    vendor.append(("query", name, _text(decoded, name)))
                else:
                    unknown.append(("query", name, _text(decoded, name)))

        if "type" in values and values["type"] not in OBJECT_TYPES:
            raise ConfigError(
                f"PKCS#11 URI: type={values['type']} is not one of {', '.join(OBJECT_TYPES)}",
            )
        if "slot-id" in values:
            raw_slot = str(values["slot-id"])
            if not (raw_slot.isascii() and raw_slot.isdigit()):  # int() also reads "١٢"; "²" fails it
                raise ConfigError(f"PKCS#11 URI: slot-id={_shorten(raw_slot)} is not a decimal number")
            values["slot-id"] = int(raw_slot)
        if "library-version" in values and not _LIB_VERSION.fullmatch(str(values["library-version"])):
            raise ConfigError(
                f"PKCS#11 URI: library-version={_shorten(str(values['library-version']))} is not M or M.N"
            )
        if "module-path" in values and not str(values["module-path"]).startswith("/"):
            raise ConfigError(
                "PKCS#11 URI: module-path must be an absolute path",
                "use module-name=NAME for a module p11-kit knows, or an absolute module-path",
            )
        kwargs = {k.replace("-", "_"): v for k, v in values.items()}
        return cls(unknown=tuple(unknown), vendor=tuple(vendor), **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ print
    def format(self, keep_secrets: bool = False) -> str:
        """Print the URI in canonical order; ``pin-value`` is redacted unless asked."""
        path: list[str] = []
        for name in PATH_ATTRIBUTES:
            value = getattr(self, name.replace("-", "_"))
            if value is None:
                continue
            if name == "id":
                path.append("id=" + "".join(f"%{b:02x}" for b in value))
            elif name == "slot-id":
                path.append(f"slot-id={value}")
            else:
                path.append(f"{name}={quote(str(value), safe=_PATH_SAFE)}")
        extra = (*self.vendor, *self.unknown)
        path.extend(f"{n}={quote(v, safe=_PATH_SAFE)}" for where, n, v in extra if where == "path")
        query: list[str] = []
        for name in QUERY_ATTRIBUTES:
            value = getattr(self, name.replace("-", "_"))
            if value is None:
                continue
            if name in SECRET_QUERY_ATTRIBUTES and not keep_secrets:
                value = REDACTED
            elif name == "pin-source" and not keep_secrets and str(value).startswith("|"):
                argv = pin_program_argv(str(value))
                if argv is None or len(argv) > 1:  # the path of the program, never its arguments
                    query.append(f"{name}=|{_program_shown(str(value)[1:])}")
                    continue
            query.append(f"{name}={quote(str(value), safe=_QUERY_SAFE)}")
        query.extend(f"{n}={quote(v, safe=_QUERY_SAFE)}" for where, n, v in extra if where == "query")
        if not keep_secrets:  # never built by parse(), which refuses them; a constructed URI may hold them
            path = [HIDDEN_ATTRIBUTE if looks_like_pin_name(a.partition("=")[0]) else a for a in path]
            query = [
                a if a.partition("=")[0] in QUERY_ATTRIBUTES or not looks_like_pin_name(a.partition("=")[0])
                else HIDDEN_ATTRIBUTE
                for a in query
            ]
        out = SCHEME + ";".join(path)
        if query:
            out += "?" + "&".join(query)
        return out

    def redacted(self) -> str:
        """The URI for messages and logs: ``pin-value`` REDACTED, a pin-source program without arguments."""
        return self.format(keep_secrets=False)

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:  # the redacted form: a repr ends up in logs and tracebacks too
        return f"Pkcs11Uri({self.redacted()!r})"

    def identity(self) -> str:
        """What names the key, without how to reach it: for task hashes and ledgers.

        Drops the query (PIN source, module) so that moving the PIN file or the
        module does not change the identity, but a different token or key does.
        """
        return self.with_(pin_source=None, pin_value=None, module_name=None, module_path=None).format()

    def with_(self, **changes: Any) -> Pkcs11Uri:
        """A copy with some attributes changed (``with_(object="uboot")``)."""
        values = {name: getattr(self, name) for name in self.__slots__}
        unknown = changes.keys() - values.keys()
        if unknown:
            raise TypeError(f"Pkcs11Uri has no attribute {sorted(unknown)[0]}")
        values.update(changes)
        return Pkcs11Uri(**values)

    @property
    def has_secret(self) -> bool:
        return self.pin_value is not None

    def describe_key(self) -> str:
        """Short human description of the object the URI names."""
        parts = []
        if self.object is not None:
            parts.append(f"object={self.object}")
        if self.id is not None:
            parts.append("id=" + self.id.hex())
        if self.type is not None:
            parts.append(f"type={self.type}")
        where = f" on token '{self.token}'" if self.token else ""
        return (", ".join(parts) or "any key") + where


def parse(text: str) -> Pkcs11Uri:
    """Parse a PKCS#11 URI (shorthand for ``Pkcs11Uri.parse``)."""
    return Pkcs11Uri.parse(text)


def _shorten(text: str, limit: int = 60) -> str:
    text = printable(redact(redact_uri(text)), 10 * limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."
