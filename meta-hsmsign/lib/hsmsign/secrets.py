"""What a secret looks like, defined once: the patterns and the one-variable check.

Standard library only, and all that BitBake's parse time needs: the layer calls
:func:`check_variable` for the variables of the datastore (``hsmsign.bitbake.checks``)
and ``redact`` (``hsmsign.uri.redact``, handed on here) on every command line and
output it shows. The leak scanner
(``hsmsign.audit``) builds on the same patterns for files, trees and archives.

Kinds of finding (``KINDS``, each with its ``ADVICE``):

- ``private-key``: PEM private keys of every flavour (PKCS#1, PKCS#8, SEC1 EC,
  encrypted, OpenSSH, PGP secret key blocks, PuTTY) at any line width, also inside
  string literals and base64-encoded; SSH2 (RFC 4716), age and JWK private keys;
- ``private-key-der``: raw DER private keys and PKCS#12 files;
- ``pin-value``: a PKCS#11 URI carrying a ``pin-value`` attribute (RFC 7512 section 2.4);
- ``pin-assignment``: PINs, passwords and passphrases assigned in configuration;
- ``pin-argument``: PINs and passwords given to a tool on a command line;
- ``symmetric-key``: hex or base64 of 128/192/256 bits assigned to a key-like name
  (``KEY``, ``AES``, ``IV``, ...), and one-line key files (swupdate's ``key iv``);
- ``key-file-variable``: variables that point a build at a private-key file
  (``UBOOT_SIGN_KEYDIR``, ``SWUPDATE_PRIVATE_KEY``, ``RAUC_KEY_FILE``, ...);
- ``known-public-key``: a public key or certificate whose private half is
  published (see :mod:`hsmsign.known_keys`); ``known-symmetric-key`` and
  ``weak-symmetric-key`` for published and patterned symmetric keys.

Patterns are assembled from pieces so that this file does not itself contain a
contiguous PEM private-key header. Every pattern runs in time linear in its input
(no regex that can backtrack over a run), and a finding never carries the secret
or its length: its id is the kind and the place (:func:`location_id`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from . import known_keys
from .uri import redact  # the one pin-value redaction, for the layer and the scanner

# --- the patterns ---------------------------------------------------------

_DASHES = b"-" * 5
_PRIV = b"PRIVATE" + b" KEY"
PEM_BEGIN = _DASHES + b"BEGIN "
#: A PEM armour line that opens a private or secret key (any flavour).
PRIVATE_KEY_HEADER = re.compile(
    re.escape(PEM_BEGIN)
    + rb"((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |ANY |PGP |SSH2 ENCRYPTED )?"
    + _PRIV
    + rb"(?: BLOCK)?)"
    + re.escape(_DASHES)
)
#: A PEM armour line that opens a public key or certificate (checked against the published keys).
PUBLIC_HEADER = re.compile(
    re.escape(PEM_BEGIN) + rb"(PUBLIC KEY|RSA PUBLIC KEY|CERTIFICATE)" + re.escape(_DASHES)
)
PUTTY_HEADER = re.compile(rb"PuTTY-User-Key-File-[23]: ")
URI_PIN_ATTR = b"pin-value" + b"="

# name = value, for BitBake, shell, kas/YAML, INI, JSON; and C's #define NAME value.
# Only the head (name and operator) is a regex: the value is the rest of the line, stripped
# in Python (a lazy value followed by optional blanks backtracked cubically on long lines).
ASSIGNMENT = re.compile(
    r"""[ \t]*(?:export[ \t]+|readonly[ \t]+|declare[ \t]+-x[ \t]+|set[ \t]+|-[ \t]+)?
        ["']?(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?:\[[^\]\n]*\])?(?::[A-Za-z0-9_\-:${}]+)?["']?
        [ \t]*(?P<op>\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=|:[ \t]|:$)""",
    re.X,
)
DEFINE = re.compile(r"[ \t]*\#[ \t]*define[ \t]+(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:[ \t]+|$)")
# a "name": value pair anywhere in a line (compact JSON such as BitBake's sigdata); the string
# is the unrolled-loop form, linear also when it is not terminated
JSON_PAIR = re.compile(
    r'"(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,127})"[ \t]*:[ \t]*'
    r'(?P<value>"[^"\\\n]*(?:\\.[^"\\\n]*)*"|-?[0-9][0-9.eE+\-]{0,63})'
)
# Lines worth parsing as assignments hold one of these (searched in the lower-cased data; each
# is one pass over the data, so only what a name classification below can use).
_KEYWORDS = (
    b"pin",
    b"pass",
    b"secret",
    b"key",
    b"aes",
    b"iv",
    b"psk",
    b"dek",
    b"kek",
    b"huk",
    b"hmac",
    b"cipher",
    b"encrypt",
)
_HEX_VALUE = re.compile(r"^(?:0x)?([0-9A-Fa-f]{32}|[0-9A-Fa-f]{48}|[0-9A-Fa-f]{64})$")
_B64_VALUE = re.compile(r"^[A-Za-z0-9+/]{22,44}={0,2}$")
_KEY_FILE_LINE = re.compile(
    rb"^\s*([0-9A-Fa-f]{32}|[0-9A-Fa-f]{48}|[0-9A-Fa-f]{64})(?:\s+([0-9A-Fa-f]{32}))?\s*$"
)

# Key-file variables of oe-core, meta-swupdate and friends: with meta-hsmsign the key is a
# PKCS#11 URI, so a path to a private key here means a key on disk. The layer checks the
# directories' contents (KEYDIR_VARIABLES) and the files (KEYFILE_VARIABLES) at parse time.
KEYDIR_VARIABLES: tuple[str, ...] = ("UBOOT_SIGN_KEYDIR", "SPL_SIGN_KEYDIR", "FIT_SIGN_KEYDIR")
KEYFILE_VARIABLES: tuple[str, ...] = (
    "SWUPDATE_PRIVATE_KEY", "SWUPDATE_CMS_KEY", "SWUPDATE_PASSWORD_FILE", "SWUPDATE_AES_FILE",
    "UBOOT_SIGN_KEYFILE", "RAUC_KEY_FILE", "IMA_EVM_PRIVKEY",
)
# Variables that make a build read a private key or secret from a file (the scanner's list).
KEY_FILE_VARIABLES = frozenset(
    {*KEYDIR_VARIABLES, *KEYFILE_VARIABLES, "RAUC_KEY_PASSWORD", "SECURE_BOOT_SIGNING_KEY", "SIGNING_KEY",
     "MKIMAGE_SIGN_KEY"}
)
_KEY_FILE_SUFFIXES = (
    "_KEY_FILE", "_KEYFILE", "_PRIVATE_KEY", "_PRIVKEY", "_KEYDIR", "_PASSWORD_FILE", "_AES_FILE",
    "_PRIVATE_KEY_FILE", "_SIGNING_KEY",
)
_PIN_TOKENS = frozenset(
    {
        "PIN", "PINS", "SOPIN", "USERPIN", "PASSWORD", "PASSWD", "PASSPHRASE", "PASS", "PASSWORDS", "PSK",
    }
)
# nsswitch.conf's "passwd:" database, busybox's CONFIG_PWD applet, the shell's PWD
_NOT_PIN_NAMES = frozenset({"PWD", "OLDPWD", "PASS", "PASSES", "CONFIG_PWD"})
_NOT_PIN_LOWER = frozenset({"passwd", "shadow", "gshadow"})
_SECRET_TOKENS = frozenset({"SECRET", "SECRETKEY", "CLIENTSECRET"})
_SYMKEY_TOKENS = frozenset(
    {
        "KEY", "AES", "IV", "AESKEY", "ENCKEY", "SYMKEY", "HMAC", "CIPHER", "DEK", "KEK", "HUK",
        "ENCRYPTION", "SECRET",
    }
)
# Name tokens that make a value public or not a secret at all.
_PUBLIC_TOKENS = frozenset(
    {
        "PUB", "PUBLIC", "PUBKEY", "SHA", "SHA1", "SHA256", "SHA384", "SHA512", "MD5", "HASH", "DIGEST",
        "CHECKSUM", "SUM", "SHA256SUM", "MD5SUM", "FINGERPRINT", "FPR", "SRCREV", "ID", "UUID", "GUID",
        "URI", "URL", "NAME", "HINT", "ALGO", "TYPE", "SIZE", "LEN", "LENGTH", "BITS", "MODE", "ENABLE",
        "ENABLED", "CLASS", "SOURCE", "ENV", "VAR", "PROMPT", "PATH", "DIR", "FILE", "FILES", "MIN", "MAX",
        "POLICY", "RETRIES", "TRIES", "TIMEOUT", "FORMAT", "CERT", "CRT", "LABEL", "SLOT", "PINCTRL",
        "REQUIRED", "MAP", "LAYOUT", "BINDING", "BINDINGS", "HASHES", "SIG", "SIGNATURE", "KEYS", "OPTS",
        "ARGS", "FLAGS", "CMD", "COMMAND", "DEPENDS", "RDEPENDS", "MINLEN", "ATTR", "ATTRIBUTE", "FIELD",
        "OPTION", "PARAM", "MAXLEN", "HISTORY", "EXPIRE", "CHARS",
    }
)
_REFERENCE_PREFIXES = (
    "${", "$(", "$", "file:", "env:", "|", "/", "./", "~/", "@", "<", "{{", "%(", "vault:", "secret:", "!",
    "pkcs11:",
)
_PLACEHOLDER_VALUES = frozenset(
    {
        "y", "n", "m", "", "none", "null", "nil", "true", "false", "yes", "no", "0", "1", "prompt", "***",
        "****", "xxx", "xxxx", "redacted", "<redacted>", "unset", "undefined", "required", "optional", "-",
        "''", '""', "[]", "{}", "default", "ask",
    }
)

ADVICE = {
    "private-key": "move the key into a PKCS#11 token (hsmsign keygen / import), rotate it, and purge it "
    "from history, sstate and deploy; the build then needs only a pkcs11: URI",
    "private-key-der": "a DER private key or PKCS#12 file: import it into the token, rotate it, "
    "delete the file",
    "pin-value": "never put pin-value in a URI: use pin-source=file:PATH or --pin-env NAME read at run time",
    "pin-assignment": "remove the PIN/password from configuration; give it at run time from the CI secret "
    "store (--pin-env NAME or pin-source=file:PATH outside the build tree) and change it",
    "pin-argument": "a PIN or password on a command line is kept in run.do_* scripts, logs, shell history "
    "and ps output: pass it at run time (\"$HSM_PIN\" from the CI secret store, hsmsign's --pin-env NAME) "
    "and change it",
    "symmetric-key": "generate the AES key inside the token (hsmsign keygen --aes) and refer to it by URI; "
    "treat this key as leaked and rotate it",
    "key-file-variable": "this variable makes the build read a key from a file: set HSM_PKCS11_URI* instead "
    "and let meta-hsmsign sign with the token",
    "known-public-key": "this key's private half is published: anyone can sign with it. Generate a new key "
    "in the token and pin its fingerprint (HSMSIGN_PUBKEY_SHA256)",
    "known-symmetric-key": "this is a published example key: anyone can decrypt or forge with it; generate "
    "a new key in the token",
    "weak-symmetric-key": "this key has no randomness; generate a new key in the token",
    "unreadable": "the file could not be read; check permissions or scan it where it is readable",
    "spsdk-pin": "remove the PIN from the SPSDK signer string: use type=hsmsign with the key's URI and "
    "pin-source=file:PATH or pin_env=NAME (hsmsign imx), and change the PIN",
}
KINDS = tuple(ADVICE)
SEVERITY = {"key-file-variable": "warning", "unreadable": "warning"}


@dataclass(frozen=True)
class Finding:
    """One thing found. ``excerpt`` is redacted: it never holds the secret itself."""

    source: str
    line: int
    kind: str
    excerpt: str
    advice: str
    id: str
    severity: str = "error"
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def format(self) -> str:
        loc = f"{self.source}:{self.line}" if self.line else self.source
        text = f"{loc}: {self.kind}: {self.excerpt}"
        if self.detail:
            text += f"\n    {self.detail}"
        return text + f"\n    fix: {self.advice}\n    id: {self.id}"


REDACTED = "[redacted]"
# what an excerpt shows of a secret: nothing, not even its length (an older "[6 chars redacted]"
# told which PINs to try). _finding rewrites any such count that an excerpt still carries.
_COUNTED = re.compile(r"\[[0-9]+ [^\]\n]{0,40}?redacted\]")
ID_PREFIX = "loc-"


def location_id(kind: str, source: str, line: int) -> str:
    """A finding's id: the kind and the place (file relative to the scan's root, line).

    Nothing of the secret goes into it, so an id in a committed allowlist reveals
    nothing a guess could be checked against (an id made from a hash of a 6-digit
    PIN falls to a million guesses).
    """
    material = f"hsmsign-audit-id\0{kind}\0{source}\0{line}".encode("utf-8", "surrogateescape")
    return ID_PREFIX + hashlib.sha256(material).hexdigest()[:16]


def _finding(
    source: str, line: int, kind: str, excerpt: str, secret: object = None, detail: str = ""
) -> Finding:
    """A finding; ``secret`` is accepted for the callers' convenience and never used (see location_id)."""
    return Finding(
        source=source,
        line=line,
        kind=kind,
        excerpt=_COUNTED.sub(REDACTED, excerpt),
        advice=ADVICE[kind],
        id=location_id(kind, source, line),
        severity=SEVERITY.get(kind, "error"),
        detail=detail,
    )


def _redact_value(value: str) -> str:
    """Nothing of the value itself, not even its length."""
    return REDACTED


# --- name classification ----------------------------------------------------


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^A-Z0-9]+", name.upper()) if t]


def _is_key_file_variable(name: str) -> bool:
    upper = name.upper().replace("-", "_").replace(".", "_")
    if upper in KEY_FILE_VARIABLES:
        return True
    return upper.endswith(_KEY_FILE_SUFFIXES)


def _is_reference(value: str) -> bool:
    v = value.strip()
    return v.startswith(_REFERENCE_PREFIXES) or v.lower() in _PLACEHOLDER_VALUES


_STRING_PREFIX = re.compile(r"^[bBrRuUfF]{1,2}(?=[\"'])")
_CODE_CHARS = re.compile(r"[()\[\]{}]")


def _strip_value(raw: str) -> tuple[str, bool]:
    """The value without quotes or trailing comment, and whether it was a quoted literal."""
    v = _STRING_PREFIX.sub("", raw.strip())
    if v and v[0] in "\"'":
        q = v[0]
        end = v.find(q, 1)
        return (v[1:end] if end > 0 else v[1:]), True
    v = v.split(" #", 1)[0].rstrip(";").strip()
    return v, False


def _is_code(value: str, quoted: bool, name: str, op: str) -> bool:
    """A program expression (``pin = read_pin(path)``, ``self._pin = pin``), not a literal secret."""
    if quoted:
        return False
    if _CODE_CHARS.search(value):
        return True
    # a lower-case program variable assigned another variable: `pin = user_pin`
    return op == "=" and name != name.upper() and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", value) is not None


def _decode_symmetric(value: str) -> bytes | None:
    m = _HEX_VALUE.match(value)
    if m:
        return bytes.fromhex(m.group(1))
    if _B64_VALUE.match(value) and not value.isalpha() and not value.isdigit():
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) in (16, 24, 32):
            return raw
    return None


def classify_assignment(name: str, raw_value: str, source: str, line: int, op: str = "=") -> Finding | None:
    """The finding for ``name = value`` in any configuration syntax, or None."""
    value, quoted = _strip_value(raw_value)
    toks = _tokens(name)
    if not toks:
        return None
    upper = name.upper()
    if has_pin_value(value):
        hit = _PIN_ATTR_ANY_CASE.search(value)
        at = len(value[: hit.start()].encode()) if hit else 0
        return _finding(source, line, "pin-value", f"{name} = {pin_value_excerpt(value.encode(), at)}")
    if _is_code(value, quoted, name, op.strip()):
        return None
    if _is_key_file_variable(name):
        # BitBake/shell variables are upper case; a lower-case name is a program's own variable
        if name != upper or not value or value.lower() in _PLACEHOLDER_VALUES or value.startswith("pkcs11:"):
            return None
        return _finding(source, line, "key-file-variable", f"{name} = {value[:120]}", upper + "=" + value)
    tokset = set(toks)
    public = bool(tokset & _PUBLIC_TOKENS)
    # symmetric keys: a key-like name and 128/192/256 bits of hex/base64
    if (tokset & _SYMKEY_TOKENS or toks[-1].endswith("KEY")) and not public:
        raw = _decode_symmetric(value)
        if raw is not None:
            return _symmetric_finding(raw, f'{name} = "{_redact_value(value)}"', source, line)
    # PINs, passwords, passphrases, secrets
    pin_like = (tokset & _PIN_TOKENS and upper not in _NOT_PIN_NAMES and name not in _NOT_PIN_LOWER) or toks[
        -1
    ].endswith(("PIN", "PASSWORD"))
    secret_like = bool(tokset & _SECRET_TOKENS)
    if (pin_like or secret_like) and not public:
        if _is_reference(value) or len(value) > 256 or " " in value.strip():
            return None
        return _finding(
            source, line, "pin-assignment", f'{name} = "{_redact_value(value)}"', upper + "=" + value
        )
    return None


def _symmetric_finding(raw: bytes, excerpt: str, source: str, line: int) -> Finding:
    known = known_keys.lookup_symmetric(raw)
    if known is not None and known.kind == "symmetric":
        return _finding(
            source,
            line,
            "known-symmetric-key",
            excerpt,
            raw,
            detail=f"{known.description}; published in {known.where()}",
        )
    if known is not None:
        return _finding(source, line, "weak-symmetric-key", excerpt, raw, detail=known.description)
    return _finding(source, line, "symmetric-key", excerpt, raw)



# --- PINs in URIs ----------------------------------------------------------------

# RFC 7512: a pin-value is pchar / pct-encoded; anything else after "=" is not a URI. The
# attribute name in any case (hsmsign's URI parser lower-cases names). One character class
# and no nested quantifier: linear; a value counts when it holds a letter, digit or escape.
_PIN_VALUE_CLASS = r"[A-Za-z0-9%._~!$'*+,:@-]*"
_PIN_IN_URI = re.compile("(" + URI_PIN_ATTR.decode() + ")(" + _PIN_VALUE_CLASS + ")", re.IGNORECASE)
PIN_IN_URI_BYTES = re.compile(b"(" + URI_PIN_ATTR + b")(" + _PIN_VALUE_CLASS.encode() + b")", re.IGNORECASE)
_PIN_CHAR = re.compile(r"[A-Za-z0-9%]")
_PIN_CHAR_BYTES = re.compile(rb"[A-Za-z0-9%]")
_PIN_ATTR_ANY_CASE = re.compile(r"pin-value=", re.IGNORECASE)


def has_pin_value(text: str) -> bool:
    """Whether ``text`` holds a ``pin-value`` attribute (any case) with a value."""
    if "pin-value=" not in text.lower():
        return False
    return any(_PIN_CHAR.search(m.group(2)) for m in _PIN_IN_URI.finditer(text))


# "-value=" in any case: a search that starts with a literal "-" runs at memchr speed on
# bytes and on a memory-mapped image alike, without a lower-cased copy of the data
_VALUE_ATTR = re.compile(rb"-(?i:value)=")


def pin_value_matches(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each pin-value attribute that has a value, in any letter case."""
    for hit in _VALUE_ATTR.finditer(data):
        pos = hit.start() - 3
        if pos < 0 or bytes(data[pos : hit.start()]).lower() != b"pin":
            continue
        m = PIN_IN_URI_BYTES.match(data, pos)
        if m is not None and _PIN_CHAR_BYTES.search(m.group(2)):
            yield pos, m.end()


_URI_STOP = frozenset(b" \t\r\n\"'<>`")


def pin_value_excerpt(data: bytes, pos: int) -> str:
    """What a report shows for the pin-value at ``pos``: the URI up to it and ``[redacted]``.

    Nothing after the attribute is shown (the value's end is not certain in every
    syntax) and nothing before the URI (it may hold other secrets).
    """
    lo = max(0, pos - 512)
    window = bytes(data[lo:pos])
    start = window.lower().rfind(b"pkcs11:")
    prefix = ""
    if start >= 0 and not any(c in _URI_STOP for c in window[start:]):
        text = redact(window[start:].decode("utf-8", "replace"))
        prefix = _PIN_IN_URI.sub(lambda m: m.group(1) + REDACTED, text)
    return prefix + "pin-value=" + REDACTED


# --- PINs and passwords on command lines -----------------------------------------

# Tools that take a PIN or password as an option value; "-p" is a PIN only for some of them.
PIN_TOOLS: tuple[str, ...] = (
    "pkcs11-tool", "softhsm2-util", "p11tool", "sc-hsm-tool", "yubihsm-shell", "ykman", "tpm2_ptool",
    "pkcs15-init", "pkcs15-tool", "piv-tool", "sshpass",
)
_SHORT_PIN_TOOLS = frozenset({"pkcs11-tool", "yubihsm-shell", "sshpass"})
_OPTION_VALUE = r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s'";|&`)]+)"""
_TOOL_PIN_OPTION = re.compile(
    r"(?<![^\s'\"])(?P<opt>--(?:new-|set-|change-)?(?:so-|user-)?(?:pin|puk)|--sopin|--userpin|--password)"
    r"(?:=|[ \t]+)" + _OPTION_VALUE,
    re.IGNORECASE,
)
_SHORT_PIN_OPTION = re.compile(r"(?<!\S)(?P<opt>-p)(?:[ \t]+|(?=[^\s=-]))" + _OPTION_VALUE)
# options that carry a password whatever the tool: openssl's pass:, keytool's, gpg's (matched
# where a "pass" is found, so the search itself is a str.find)
_ANY_TOOL_PASSWORD = re.compile(
    r"(?P<opt>-pass(?:in|out|word)?[ \t]+[\"']?pass:|-(?:src|dest)?(?:store|key)pass[ \t]+"
    r"|--passphrase[ \t=]+)" + _OPTION_VALUE,
    re.IGNORECASE,
)
# the end of one command: a separator, an unescaped newline, or an escaped one in a string
_COMMAND_END = re.compile(r"[;|&`)]|(?<!\\)\n|\\n")
_MAX_COMMAND = 4096
_UPPER_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _option_secret(raw: str) -> bool:
    value = raw.strip()
    if value[:1] in "\"'" and value[-1:] == value[:1] and len(value) >= 2:
        value = value[1:-1]
    if not value or value.startswith(("-", "{", "%")) or "$" in value or _is_reference(value):
        return False
    # documentation placeholders: --pin PIN, --so-pin SO_PIN, --pin <pin>
    return _UPPER_PLACEHOLDER.fullmatch(value) is None


def pin_tools(low: str) -> list[tuple[int, str]]:
    """(offset, name) of each PIN-taking tool named in lower-cased ``low``, in order."""
    hits = []
    for name in PIN_TOOLS:
        p = low.find(name)
        while p >= 0:
            after = p + len(name)
            left_ok = p == 0 or low[p - 1] not in _WORD_CHARS
            if left_ok and (after == len(low) or low[after] not in _WORD_CHARS):
                hits.append((p, name))
            p = low.find(name, after)
    return sorted(hits)


def pin_arguments(text: str) -> Iterator[tuple[int, str]]:
    """(offset, excerpt) of each PIN or password given as an option value in ``text``.

    ``--pin``/``--so-pin``/``--puk``/``--password`` (and ``-p`` for pkcs11-tool,
    yubihsm-shell and sshpass) count when they follow one of the PKCS#11/HSM tools
    in the same command; openssl's ``pass:``, keytool's ``-storepass``/``-keypass``
    and ``--passphrase`` count anywhere. References (``"$PIN"``, ``file:``,
    ``env:``) and placeholders (``--pin PIN``) do not. Linear: each character is
    looked at by one tool's command at most.
    """
    low = text.lower()
    p = low.find("pass")
    while p >= 0:
        s = p
        while s > 0 and p - s < 16 and (low[s - 1].isalpha() or low[s - 1] == "-"):
            s -= 1
        if low.startswith("-", s) and (s == 0 or low[s - 1] in " \t\n'\""):
            m = _ANY_TOOL_PASSWORD.match(text, s)
            if m is not None and _option_secret(m.group("value")):
                yield s, f"{m.group('opt').strip()} {REDACTED}"
        p = low.find("pass", p + 4)
    tools = pin_tools(low)
    for i, (at, name) in enumerate(tools):
        start = at + len(name)
        limit = min(tools[i + 1][0] if i + 1 < len(tools) else len(text), start + _MAX_COMMAND)
        stop = _COMMAND_END.search(text, start, limit)
        end = stop.start() if stop else limit
        tool = text[at:start]
        options = [_TOOL_PIN_OPTION, _SHORT_PIN_OPTION] if name in _SHORT_PIN_TOOLS else [_TOOL_PIN_OPTION]
        for pattern in options:
            for m in pattern.finditer(text, start, end):
                if _option_secret(m.group("value")):
                    yield m.start("opt"), f"{tool} {m.group('opt')} {REDACTED}"


# --- key material beyond PEM: SSH2, age, JWK, base64-wrapped PEM ---------------------------

# RFC 4716 / ssh.com (PuTTYgen's "export ssh.com key"): four dashes and spaces. The public
# variant (RFC 4716) is not a secret; it is checked against the published keys.
SSH2_HEADER = re.compile(rb"-{3,5} ?BEGIN SSH2 (ENCRYPTED PRIVATE|PRIVATE|PUBLIC) KEY ?-{3,5}")
_SSH2_END = b"END SSH2 "
AGE_SECRET_KEY = re.compile(rb"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}")
_WS = b" \t\r\n"
_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]{40}")


def _looks_like_key_body(window: bytes) -> bool:
    """At least 40 base64 characters in a row once line breaks, blanks, quotes and ``\\n`` are gone."""
    flat = window.replace(b"\\n", b"").replace(b"\\r", b"").translate(None, _WS + b"\"'")
    return _B64_CHARS.search(flat) is not None


def ssh2_blocks(data: bytes) -> Iterator[tuple[int, str, bytes | None]]:
    """(offset, label, body) of each RFC 4716 / ssh.com key block with a body; ``body`` is decoded base64."""
    pos = data.find(b"BEGIN SSH2 ")
    while pos >= 0:
        m = SSH2_HEADER.search(data, max(0, pos - 6), pos + 48)
        if m is not None:
            end = data.find(_SSH2_END, m.end(), m.end() + 65536)
            stop = end if end >= 0 else min(len(data), m.end() + 4096)
            block = bytes(data[m.end() : stop])
            lines = []
            continued = False
            for ln in block.splitlines():
                s = ln.strip()
                if continued or b":" in s:  # RFC 4716 headers, continued with a trailing backslash
                    continued = s.endswith(b"\\")
                    continue
                lines.append(s)
            body = b"".join(lines).rstrip(b"-")
            if _B64_CHARS.search(body):
                try:
                    decoded: bytes | None = base64.b64decode(body + b"=" * (-len(body) % 4))
                except (binascii.Error, ValueError):
                    decoded = None
                yield m.start(), m.group(1).decode() + " KEY", decoded
        pos = data.find(b"BEGIN SSH2 ", pos + 1)


_JWK_MARKS = (b'"kty"', b'\\"kty\\"')
_JWK_WINDOW = 32768
_JSON = json.JSONDecoder()


def jwk_objects(data: bytes) -> Iterator[tuple[int, dict[str, object]]]:
    """(offset of its ``{``, object) of each JSON Web Key (RFC 7517), also inside a JSON string."""
    for mark in _JWK_MARKS:
        pos = data.find(mark)
        while pos >= 0:
            brace = data.rfind(b"{", max(0, pos - 4096), pos)
            nxt = pos + len(mark)
            if brace >= 0:
                window = bytes(data[brace : brace + _JWK_WINDOW])
                if mark.startswith(b"\\"):
                    window = window.replace(b'\\"', b'"')
                try:
                    obj, used = _JSON.raw_decode(window.decode("utf-8", "replace"))
                except ValueError:
                    obj, used = None, 0
                if isinstance(obj, dict) and isinstance(obj.get("kty"), str):
                    yield brace, obj
                    nxt = max(nxt, brace + min(used, len(window)))
            pos = data.find(mark, nxt)


def jwk_secret(obj: dict[str, object]) -> str | None:
    """'private' for an RSA/EC/OKP JWK with its private part, 'symmetric' for an oct key, else None."""
    kty = obj.get("kty")
    if kty in ("RSA", "EC", "OKP") and isinstance(obj.get("d"), str) and obj["d"]:
        return "private"
    if kty == "oct" and isinstance(obj.get("k"), str) and obj["k"]:
        return "symmetric"
    return None


def b64url(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


# base64 of "---": any base64 of text that holds "-----" holds it at a four-character boundary
_B64_DASHES = b"LS0t"
_B64_RUN_END = re.compile(rb"[^A-Za-z0-9+/=\s]")
_B64_MAX = 1 << 20


def base64_pems(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, decoded text from its PEM header on) of each base64 run that holds a PEM block.

    As in Kubernetes Secrets (``tls.key: LS0tLS1CRUdJTi...``), CI variables and
    ``base64 key.pem`` output, one line or wrapped. Only runs that decode to
    ``-----BEGIN`` are decoded in full (at most 1 MiB each): linear in the input.
    """
    pos = data.find(_B64_DASHES)
    while pos >= 0:
        head = bytes(data[pos : pos + 96]).translate(None, _WS)[:32]
        try:
            lead = binascii.a2b_base64(head[: len(head) // 4 * 4])
        except (binascii.Error, ValueError):
            lead = b""
        if not lead.lstrip(b"-").startswith(b"BEGIN "):
            pos = data.find(_B64_DASHES, pos + 4)
            continue
        stop = _B64_RUN_END.search(data, pos, pos + _B64_MAX)
        end = stop.start() if stop else min(len(data), pos + _B64_MAX)
        run = bytes(data[pos:end]).translate(None, _WS)
        pad = run.find(b"=")
        if pad >= 0:
            run = run[: pad + 2] if run[pad + 1 : pad + 2] == b"=" else run[: pad + 1]
        else:
            run = run[: len(run) // 4 * 4]
        try:
            decoded = binascii.a2b_base64(run)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded:
            yield pos, _DASHES + decoded.lstrip(b"-")
        pos = data.find(_B64_DASHES, max(end, pos + 4))


# --- assignments in a line ------------------------------------------------------------

_KEYWORDS_TEXT = tuple(k.decode() for k in _KEYWORDS)
_MAX_NESTED_LINES = 2000


def _has_keyword(text: str, extra: tuple[str, ...] = ()) -> bool:
    low = text.lower()
    for k in _KEYWORDS_TEXT + extra:
        if k in low:
            return True
    return False


def _keyword_lines(text: str) -> list[str]:
    """The lines of ``text`` that hold a keyword, in order (str.find per keyword, not per line)."""
    low = text.lower()
    starts: set[int] = set()
    for k in _KEYWORDS_TEXT:
        pos = low.find(k)
        while pos >= 0 and len(starts) < _MAX_NESTED_LINES:
            starts.add(low.rfind("\n", 0, pos) + 1)
            end = low.find("\n", pos)
            if end < 0:
                break
            pos = low.find(k, end)
    out = []
    for start in sorted(starts):
        end = text.find("\n", start)
        out.append(text[start : end if end >= 0 else len(text)])
    return out


def _rest(line: str, at: int) -> str:
    """The value after an assignment's operator, without blanks and one trailing comma."""
    value = line[at:].strip(" \t\r")
    if value.endswith(","):
        value = value[:-1].rstrip(" \t\r")
    return value


def line_assignments(line: str, nested: bool = True) -> Iterator[tuple[str, str, str, bool]]:
    """(name, raw value, operator, at line start) of each assignment in one line, whatever its length.

    The assignment the line starts with (BitBake, shell, YAML, INI, ``#define``), every
    ``"name": value`` pair in it (compact JSON: BitBake's sigdata), and the
    assignments in the lines of a JSON string value (a task's shell code in sigdata).
    Only the first is "at line start": sigdata keeps values unexpanded, so a
    key-file variable there (``${...}``) is not a configuration of its own.
    """
    m = ASSIGNMENT.match(line)
    if m is not None:
        yield m.group("name"), _rest(line, m.end()), m.group("op"), nested
    else:
        d = DEFINE.match(line)
        if d is not None:
            yield d.group("name"), _rest(line, d.end()), " ", nested
    if '"' not in line or ":" not in line:
        return
    for jm in JSON_PAIR.finditer(line):
        name, raw = jm.group("name"), jm.group("value")
        if not raw.startswith('"'):
            if _has_keyword(name):
                yield name, raw, ": ", False
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw[1:-1]
        if _has_keyword(name):
            yield name, '"' + value + '"', ": ", False
        if nested and "\n" in value and _has_keyword(value):
            for sub in value.split("\n")[:_MAX_NESTED_LINES]:
                if _has_keyword(sub):
                    yield from line_assignments(sub, nested=False)


# --- one variable at parse time ---------------------------------------------------------


def _key_material(name: str, text: str, source: str) -> Finding | None:
    """A private or secret key in a variable's value, in any form the scanner knows."""
    data = text.encode("utf-8", "replace")
    if PRIVATE_KEY_HEADER.search(data) or PUTTY_HEADER.search(data) or AGE_SECRET_KEY.search(data):
        return _finding(source, 0, "private-key", f"{name} holds a private key")
    if b"BEGIN SSH2 " in data:
        for _, label, _body in ssh2_blocks(data):
            if "PRIVATE" in label:
                return _finding(source, 0, "private-key", f"{name} holds an SSH2 {label.lower()}")
    if b"kty" in data:
        for _, obj in jwk_objects(data):
            what = jwk_secret(obj)
            if what == "private":
                return _finding(source, 0, "private-key", f"{name} holds a JWK {obj['kty']} private key")
            raw = b64url(obj.get("k")) if what == "symmetric" else None
            if raw:
                return _symmetric_finding(raw, f"{name} holds a JWK oct key {REDACTED}", source, 0)
    if _B64_DASHES in data:
        for _, decoded in base64_pems(data):
            if PRIVATE_KEY_HEADER.match(decoded):
                return _finding(source, 0, "private-key", f"{name} holds a base64-encoded PEM private key")
    return None


# what key material of each form holds, lower-cased: a cheap test before the patterns
_KEY_MARKS = ("begin", "putty-user-key-file-", "age-secret-key-1", "kty", "ls0t")


def check_variable(name: str, value: object) -> Finding | None:
    """Check one BitBake datastore variable; the finding names the variable, never its value.

    Called by the layer at parse time for every variable; returns the first
    problem found, or None. The value is checked with the scanner's patterns: key
    material in any form, ``pin-value`` in any case, the name and value as an
    assignment, PINs on command lines, and the assignments inside a multi-line
    value (a shell function, a here-document) or a JSON value.
    """
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    source = f"variable {name}"
    low = text.lower()
    if any(m in low for m in _KEY_MARKS):
        found = _key_material(name, text, source)
        if found is not None:
            return found
    hit = _PIN_ATTR_ANY_CASE.search(text) if "pin-value=" in low else None
    if hit is not None:
        excerpt = pin_value_excerpt(text.encode("utf-8", "replace"), len(text[: hit.start()].encode()))
        return _finding(source, 0, "pin-value", f"{name} = {excerpt}")
    found = classify_assignment(name, text, source, 0, "=")
    if found is not None:
        return found
    if not _has_keyword(text, PIN_TOOLS):
        return None
    for _, excerpt in pin_arguments(text):
        return _finding(source, 0, "pin-argument", f"{name}: {excerpt}")
    if "\n" in text or '"' in text:
        for line in _keyword_lines(text):
            for sub_name, raw, op, _ in line_assignments(line):
                found = classify_assignment(sub_name, raw, source, 0, op)
                if found is not None and found.kind not in ("key-file-variable", "pin-value"):
                    return found
    return None


def spsdk_pin_findings(data: bytes, source: str) -> list[Finding]:
    """PINs in NXP SPSDK signer strings (``type=pkcs11;...;pin=1234``, a ``pin-value`` attribute); see
    :mod:`hsmsign.nxp.signer`. Text only; a ``pin=$VAR`` or ``pin=/path`` reference is fine."""
    if b"type=" not in data or b"pin" not in data:
        return []
    from .nxp.signer import pin_findings

    text = data.decode("utf-8", "replace")
    return [
        _finding(source, f.line, "spsdk-pin", f.excerpt, f"{source}:{f.line}:{f.param}")
        for f in pin_findings(text)
    ]
