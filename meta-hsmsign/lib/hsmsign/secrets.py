"""What a secret looks like, defined once: the patterns and the one-variable check.

Standard library only, and all that BitBake's parse time needs: the layer calls
:func:`check_variable` for the variables of the datastore (``hsmsign.bitbake.checks``)
and ``redact`` (``hsmsign.uri.redact``, handed on here) on every command line and
output it shows. The leak scanner
(``hsmsign.audit``) builds on the same patterns for files, trees and archives.

Kinds of finding (``KINDS``, each with its ``ADVICE``):

- ``private-key``: PEM private keys of every flavour (PKCS#1, PKCS#8, SEC1 EC,
  encrypted, OpenSSH, PGP secret key blocks, PuTTY), also inside string literals;
- ``private-key-der``: raw DER private keys and PKCS#12 files;
- ``pin-value``: a PKCS#11 URI carrying a ``pin-value`` attribute (RFC 7512 section 2.4);
- ``pin-assignment``: PINs, passwords and passphrases assigned in configuration;
- ``symmetric-key``: hex or base64 of 128/192/256 bits assigned to a key-like name
  (``KEY``, ``AES``, ``IV``, ...), and one-line key files (swupdate's ``key iv``);
- ``key-file-variable``: variables that point a build at a private-key file
  (``UBOOT_SIGN_KEYDIR``, ``SWUPDATE_PRIVATE_KEY``, ``RAUC_KEY_FILE``, ...);
- ``known-public-key``: a public key or certificate whose private half is
  published (see :mod:`hsmsign.known_keys`); ``known-symmetric-key`` and
  ``weak-symmetric-key`` for published and patterned symmetric keys.

Patterns are assembled from pieces so that this file does not itself contain a
contiguous PEM private-key header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
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
PUBLIC_BLOCK = re.compile(
    re.escape(PEM_BEGIN)
    + rb"(PUBLIC KEY|RSA PUBLIC KEY|CERTIFICATE)"
    + re.escape(_DASHES)
    + rb"(.{16,16384}?)"
    + re.escape(_DASHES)
    + rb"END \1"
    + re.escape(_DASHES),
    re.S,
)
_B64_BODY = re.compile(rb"[A-Za-z0-9+/]{40}")
PUTTY_HEADER = re.compile(rb"PuTTY-User-Key-File-[23]: ")
URI_PIN_ATTR = b"pin-value" + b"="

# name = value, for BitBake, shell, kas/YAML, INI, JSON; and C's #define NAME value.
ASSIGNMENT = re.compile(
    r"""^[ \t]*(?:export[ \t]+|readonly[ \t]+|declare[ \t]+-x[ \t]+|set[ \t]+|-[ \t]+)?
        ["']?(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?:\[[^\]\n]*\])?(?::[A-Za-z0-9_\-:${}]+)?["']?
        [ \t]*(?P<op>\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=|:[ \t]|:$)
        [ \t]*(?P<value>[^\n]*?)[ \t]*,?[ \t]*$""",
    re.M | re.X,
)
DEFINE = re.compile(
    r"^[ \t]*\#[ \t]*define[ \t]+(?P<name>[A-Za-z_][A-Za-z0-9_]*)[ \t]+(?P<value>[^\n]*?)[ \t]*$", re.M
)
# Lines worth parsing as assignments hold one of these (searched in the lower-cased data).
_KEYWORDS = (
    b"pin",
    b"pass",
    b"pw",
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


def _finding(
    source: str, line: int, kind: str, excerpt: str, secret: bytes | str, detail: str = ""
) -> Finding:
    material = secret.encode("utf-8", "replace") if isinstance(secret, str) else secret
    fid = hashlib.sha256(kind.encode() + b"\0" + material).hexdigest()[:16]
    return Finding(
        source=source,
        line=line,
        kind=kind,
        excerpt=excerpt,
        advice=ADVICE[kind],
        id=fid,
        severity=SEVERITY.get(kind, "error"),
        detail=detail,
    )


def _redact_value(value: str) -> str:
    """Nothing of the value itself: only its length."""
    return f"[{len(value)} chars redacted]"



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
_CODE_CHARS = frozenset("()[]{}")


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
    if not _CODE_CHARS.isdisjoint(value):
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
    if _PIN_IN_URI.search(value):
        return _finding(source, line, "pin-value", f"{name} = {redact(value)}", value)
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



# RFC 7512: a pin-value is pchar / pct-encoded; anything else after "=" is not a URI
_PIN_IN_URI = re.compile(
    r"(pin-value" + "=" + r")([A-Za-z0-9%._~!$'*+,:@-]*[A-Za-z0-9%][A-Za-z0-9%._~!$'*+,:@-]*)"
)
def check_variable(name: str, value: object) -> Finding | None:
    """Check one BitBake datastore variable; the finding names the variable, never its value.

    Called by the layer at parse time for every variable; returns the first
    problem found, or None.
    """
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    source = f"variable {name}"
    if PRIVATE_KEY_HEADER.search(text.encode("utf-8", "replace")):
        return _finding(source, 0, "private-key", f"{name} holds a PEM private key", name + text)
    if URI_PIN_ATTR.decode() in text:
        return _finding(source, 0, "pin-value", f"{name} = {redact(text)[:160]}", name + text)
    return classify_assignment(name, text, source, 0, "=")

