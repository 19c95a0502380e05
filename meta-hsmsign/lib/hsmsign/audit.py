"""Leak audit: find key material and secrets where they must never be.

Scans text and binary content (layers, setup scripts, kas files, ``bitbake -e``
dumps, sigdata, logs, deploy directories, unpacked root filesystems, tar and
cpio archives) for:

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

Standard library only at module level: the layer imports :func:`check_variable`
at BitBake parse time to refuse secrets in the datastore. pyca/cryptography is
used, when importable, only to derive the public half of key types the small
DER reader here does not handle (Ed25519, EC keys stored without their point).

Patterns are assembled from pieces so that this file does not itself contain a
contiguous PEM private-key header.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import fnmatch
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

from . import known_keys

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

# Variables that make a build read a private key or secret from a file.
KEY_FILE_VARIABLES = frozenset(
    {
        "UBOOT_SIGN_KEYDIR",
        "SPL_SIGN_KEYDIR",
        "UBOOT_SIGN_KEYFILE",
        "FIT_SIGN_KEYDIR",
        "SWUPDATE_PRIVATE_KEY",
        "SWUPDATE_PASSWORD_FILE",
        "SWUPDATE_AES_FILE",
        "SWUPDATE_CMS_KEY",
        "RAUC_KEY_FILE",
        "RAUC_KEY_PASSWORD",
        "IMA_EVM_PRIVKEY",
        "SECURE_BOOT_SIGNING_KEY",
        "SIGNING_KEY",
        "MKIMAGE_SIGN_KEY",
    }
)
_KEY_FILE_SUFFIXES = (
    "_KEY_FILE",
    "_KEYFILE",
    "_PRIVATE_KEY",
    "_PRIVKEY",
    "_KEYDIR",
    "_PASSWORD_FILE",
    "_AES_FILE",
    "_PRIVATE_KEY_FILE",
    "_SIGNING_KEY",
)
_PIN_TOKENS = frozenset(
    {
        "PIN",
        "PINS",
        "SOPIN",
        "USERPIN",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "PASS",
        "PASSWORDS",
        "PSK",
    }
)
# nsswitch.conf's "passwd:" database, busybox's CONFIG_PWD applet, the shell's PWD
_NOT_PIN_NAMES = frozenset({"PWD", "OLDPWD", "PASS", "PASSES", "CONFIG_PWD"})
_NOT_PIN_LOWER = frozenset({"passwd", "shadow", "gshadow"})
_SECRET_TOKENS = frozenset({"SECRET", "SECRETKEY", "CLIENTSECRET"})
_SYMKEY_TOKENS = frozenset(
    {
        "KEY",
        "AES",
        "IV",
        "AESKEY",
        "ENCKEY",
        "SYMKEY",
        "HMAC",
        "CIPHER",
        "DEK",
        "KEK",
        "HUK",
        "ENCRYPTION",
        "SECRET",
    }
)
# Name tokens that make a value public or not a secret at all.
_PUBLIC_TOKENS = frozenset(
    {
        "PUB",
        "PUBLIC",
        "PUBKEY",
        "SHA",
        "SHA1",
        "SHA256",
        "SHA384",
        "SHA512",
        "MD5",
        "HASH",
        "DIGEST",
        "CHECKSUM",
        "SUM",
        "SHA256SUM",
        "MD5SUM",
        "FINGERPRINT",
        "FPR",
        "SRCREV",
        "ID",
        "UUID",
        "GUID",
        "URI",
        "URL",
        "NAME",
        "HINT",
        "ALGO",
        "TYPE",
        "SIZE",
        "LEN",
        "LENGTH",
        "BITS",
        "MODE",
        "ENABLE",
        "ENABLED",
        "CLASS",
        "SOURCE",
        "ENV",
        "VAR",
        "PROMPT",
        "PATH",
        "DIR",
        "FILE",
        "FILES",
        "MIN",
        "MAX",
        "POLICY",
        "RETRIES",
        "TRIES",
        "TIMEOUT",
        "FORMAT",
        "CERT",
        "CRT",
        "LABEL",
        "SLOT",
        "PINCTRL",
        "REQUIRED",
        "MAP",
        "LAYOUT",
        "BINDING",
        "BINDINGS",
        "HASHES",
        "SIG",
        "SIGNATURE",
        "KEYS",
        "OPTS",
        "ARGS",
        "FLAGS",
        "CMD",
        "COMMAND",
        "DEPENDS",
        "RDEPENDS",
        "MINLEN",
        "ATTR",
        "ATTRIBUTE",
        "FIELD",
        "OPTION",
        "PARAM",
        "MAXLEN",
        "HISTORY",
        "EXPIRE",
        "CHARS",
    }
)
_REFERENCE_PREFIXES = (
    "${",
    "$(",
    "$",
    "file:",
    "env:",
    "|",
    "/",
    "./",
    "~/",
    "@",
    "<",
    "{{",
    "%(",
    "vault:",
    "secret:",
    "!",
    "pkcs11:",
)
_PLACEHOLDER_VALUES = frozenset(
    {
        "y",
        "n",
        "m",
        "",
        "none",
        "null",
        "nil",
        "true",
        "false",
        "yes",
        "no",
        "0",
        "1",
        "prompt",
        "***",
        "****",
        "xxx",
        "xxxx",
        "redacted",
        "<redacted>",
        "unset",
        "undefined",
        "required",
        "optional",
        "-",
        "''",
        '""',
        "[]",
        "{}",
        "default",
        "ask",
    }
)

_DER_RSA_OID = bytes.fromhex("2a864886f70d010101")
_DER_EC_OID = bytes.fromhex("2a8648ce3d0201")
_DER_ED25519_OID = bytes.fromhex("2b6570")
_DER_ED448_OID = bytes.fromhex("2b6571")
_PKCS7_DATA_OID = bytes.fromhex("2a864886f70d010701")

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


# --- a tiny DER reader, enough to find a public key ---------------------------


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``pos``."""
    if pos + 2 > len(buf):
        raise ValueError("short")
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(buf):
            raise ValueError("bad length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    if pos + length > len(buf):
        raise ValueError("overrun")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, value start, value end) of each element in [start, end)."""
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = _tlv(buf, pos)
        out.append((tag, pos, vs, ve))
        pos = ve
    return out


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(ln)]) + ln + value


def _rsa_spki(n_tlv: bytes, e_tlv: bytes) -> bytes:
    alg = _der(0x30, _der(0x06, _DER_RSA_OID) + b"\x05\x00")
    return _der(0x30, alg + _der(0x03, b"\x00" + _der(0x30, n_tlv + e_tlv)))


def _ec_spki(curve_oid_tlv: bytes, point: bytes) -> bytes:
    alg = _der(0x30, _der(0x06, _DER_EC_OID) + curve_oid_tlv)
    return _der(0x30, alg + _der(0x03, b"\x00" + point))


def _spki_from_rsa_private(buf: bytes, start: int, end: int) -> bytes | None:
    kids = _children(buf, start, end)
    if len(kids) < 3 or any(k[0] != 0x02 for k in kids[:3]):
        return None
    n, e = kids[1], kids[2]
    return _rsa_spki(buf[n[1] : n[3]], buf[e[1] : e[3]])


def _spki_from_ec_private(buf: bytes, start: int, end: int, curve_tlv: bytes | None) -> bytes | None:
    kids = _children(buf, start, end)
    point = None
    for tag, _es, vs, ve in kids:
        if tag == 0xA0 and curve_tlv is None:
            curve_tlv = buf[vs:ve]
        elif tag == 0xA1:
            t2, bs, be = _tlv(buf, vs)
            if t2 == 0x03 and be > bs + 1:
                point = buf[bs + 1 : be]
    if curve_tlv is None or point is None:
        return None
    return _ec_spki(curve_tlv, point)


def spki_from_private_der(der: bytes) -> bytes | None:
    """The DER SubjectPublicKeyInfo of a DER private key (PKCS#1, SEC1 or PKCS#8), or None.

    RSA and EC keys that carry their public point are handled here without any
    third-party module; other types use pyca/cryptography when it is importable.
    """
    try:
        tag, vs, ve = _tlv(der, 0)
        if tag != 0x30:
            return None
        kids = _children(der, vs, ve)
        if len(kids) >= 3 and kids[0][0] == 0x02 and kids[1][0] == 0x30 and kids[2][0] == 0x04:
            # PKCS#8 PrivateKeyInfo: version, AlgorithmIdentifier, OCTET STRING(private key)
            alg = _children(der, kids[1][2], kids[1][3])
            oid = der[alg[0][2] : alg[0][3]] if alg and alg[0][0] == 0x06 else b""
            inner_tag, ivs, ive = _tlv(der, kids[2][2])
            if oid == _DER_RSA_OID and inner_tag == 0x30:
                return _spki_from_rsa_private(der, ivs, ive)
            if oid == _DER_EC_OID and inner_tag == 0x30 and len(alg) > 1:
                curve = der[alg[1][1] : alg[1][3]]
                spki = _spki_from_ec_private(der, ivs, ive, curve)
                if spki is not None:
                    return spki
        elif len(kids) >= 9 and all(k[0] == 0x02 for k in kids[:9]):
            return _spki_from_rsa_private(der, vs, ve)
        elif len(kids) >= 2 and kids[0][0] == 0x02 and kids[1][0] == 0x04:
            spki = _spki_from_ec_private(der, vs, ve, None)
            if spki is not None:
                return spki
    except ValueError:
        return None
    return _spki_with_cryptography(der)


def _spki_with_cryptography(der: bytes) -> bytes | None:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover - parse-time use without cryptography
        return None
    try:
        key = serialization.load_der_private_key(der, password=None)
        return key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except Exception:  # noqa: BLE001 - anything unparsable is simply "unknown"
        return None


_SSH_CURVES = {
    b"nistp256": bytes.fromhex("06082a8648ce3d030107"),
    b"nistp384": bytes.fromhex("06052b81040022"),
    b"nistp521": bytes.fromhex("06052b81040023"),
}


def _ssh_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise ValueError("short")
    n = int.from_bytes(buf[pos : pos + 4], "big")
    if pos + 4 + n > len(buf):
        raise ValueError("overrun")
    return buf[pos + 4 : pos + 4 + n], pos + 4 + n


def spki_from_ssh_public_blob(blob: bytes) -> bytes | None:
    """The DER SubjectPublicKeyInfo of an SSH wire-format public key (RFC 4253, 5656, 8709)."""
    try:
        kind, pos = _ssh_string(blob, 0)
        if kind == b"ssh-ed25519":
            pk, _ = _ssh_string(blob, pos)
            return _der(0x30, _der(0x30, _der(0x06, _DER_ED25519_OID)) + _der(0x03, b"\x00" + pk))
        if kind.startswith(b"ecdsa-sha2-"):
            curve, pos = _ssh_string(blob, pos)
            point, _ = _ssh_string(blob, pos)
            oid = _SSH_CURVES.get(curve)
            return _ec_spki(oid, point) if oid else None
        if kind == b"ssh-rsa":
            e, pos = _ssh_string(blob, pos)
            n, _ = _ssh_string(blob, pos)
            return _rsa_spki(_der(0x02, n), _der(0x02, e))
    except ValueError:
        return None
    return None


def spki_from_openssh_private(body: bytes) -> bytes | None:
    """An OpenSSH private key file keeps its public key in clear (PROTOCOL.key): also when encrypted."""
    magic = b"openssh-key-v1\0"
    if not body.startswith(magic):
        return None
    try:
        pos = len(magic)
        for _ in range(3):  # ciphername, kdfname, kdfoptions
            _, pos = _ssh_string(body, pos)
        if int.from_bytes(body[pos : pos + 4], "big") < 1:
            return None
        blob, _ = _ssh_string(body, pos + 4)
    except ValueError:
        return None
    return spki_from_ssh_public_blob(blob)


def spki_from_certificate_der(der: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo element of an X.509 certificate, or None."""
    try:
        _, vs, ve = _tlv(der, 0)
        tbs_tag, tvs, tve = _tlv(der, vs)
        if tbs_tag != 0x30:
            return None
        fields = _children(der, tvs, tve)
        idx = 6 if fields and fields[0][0] == 0xA0 else 5
        tag, es, _, fe = fields[idx]
        return der[es:fe] if tag == 0x30 else None
    except (ValueError, IndexError):
        return None


def _pem_body(block: bytes) -> bytes | None:
    """base64-decoded body of one PEM block; None when encrypted or not base64."""
    lines = block.splitlines()
    body = []
    for ln in lines[1:]:
        s = ln.strip()
        if s.startswith(_DASHES):
            break
        if b":" in s:  # RFC 1421 headers: Proc-Type / DEK-Info mean encrypted
            if s.startswith(b"Proc-Type") and b"ENCRYPTED" in s:
                return None
            continue
        body.append(s)
    try:
        return base64.b64decode(b"".join(body), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- redaction --------------------------------------------------------------


def _redact_value(value: str) -> str:
    """Nothing of the value itself: only its length."""
    return f"[{len(value)} chars redacted]"


def _line_of(data: bytes, pos: int) -> int:
    if isinstance(data, bytes):
        return data.count(b"\n", 0, pos) + 1
    # an mmap of a big image: count in slices rather than copying everything before pos
    lines = 1
    step = 16 << 20
    for start in range(0, pos, step):
        lines += data[start : min(pos, start + step)].count(b"\n")
    return lines


def _line_text(data: bytes, pos: int, limit: int = 160) -> str:
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    if end < 0:
        end = len(data)
    return data[start : min(end, start + limit)].decode("utf-8", "replace").strip()


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
    if any(c in _CODE_CHARS for c in value):
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
        return _finding(source, line, "pin-value", f"{name} = {_redact_uri(value)}", value)
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


def _redact_uri(text: str) -> str:
    return _PIN_IN_URI.sub(lambda m: m.group(1) + "****", text)


# --- public entry points ------------------------------------------------------


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
        return _finding(source, 0, "pin-value", f"{name} = {_redact_uri(text)[:160]}", name + text)
    return classify_assignment(name, text, source, 0, "=")


def scan_text(text: str, source: str = "<text>") -> list[Finding]:
    """Scan a text (a file's content, a ``bitbake -e`` dump, a log)."""
    return scan_bytes(text.encode("utf-8", "replace"), source)


def scan_bytes(data: bytes, source: str, *, depth: int = 0) -> list[Finding]:
    """Scan one blob: text or binary; archives are opened and their members scanned."""
    findings: list[Finding] = []
    if data[:4] == ZSTD_MAGIC and not shutil.which("zstd"):
        return [_finding(source, 0, "unreadable", "zstd stream not opened: install zstd", source)]
    members = _archive_members(data, source, depth)
    if members is not None:
        for member_source, member_data in members:
            findings.extend(scan_bytes(member_data, member_source, depth=depth + 1))
        return findings
    findings.extend(_scan_pem(data, source))
    findings.extend(_scan_pin_value(data, source))
    findings.extend(_scan_ssh_public(data, source))
    is_text = b"\0" not in data[:8192]
    if is_text:
        findings.extend(_scan_assignments(data, source))
        findings.extend(_scan_key_file_content(data, source))
    else:
        findings.extend(_scan_der(data, source))
    return _dedupe(findings)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, int, str]] = set()
    out = []
    for f in sorted(findings, key=lambda f: f.line):
        k = (f.source, f.line, f.id)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


def _scan_pem(data: bytes, source: str) -> list[Finding]:
    out: list[Finding] = []
    pos = data.find(PEM_BEGIN)
    while pos >= 0:
        m = PRIVATE_KEY_HEADER.match(data, pos)
        if m is not None and _B64_BODY.search(data[m.end() : m.end() + 240]) is None:
            m = None  # the header alone (a regex, a doc): no key follows it
        if m is not None:
            label = m.group(1).decode()
            end = data.find(_DASHES + b"END ", m.end())
            block = data[pos : end + 64] if end >= 0 else data[pos : pos + 8192]
            detail = ""
            spki = None
            body = _pem_body(block) if end >= 0 else None
            if body is not None and "OPENSSH" in label:
                spki = spki_from_openssh_private(body)
            elif body is not None and "PGP" not in label:
                spki = spki_from_private_der(body)
            if spki is not None:
                detail = _known_detail(spki) or f"public key sha256 {hashlib.sha256(spki).hexdigest()}"
            size = (end - m.end()) if end >= 0 else 0
            out.append(
                _finding(
                    source,
                    _line_of(data, pos),
                    "private-key",
                    f"{_DASHES.decode()}BEGIN {label}{_DASHES.decode()} [{size} bytes redacted]",
                    body if body else block[:4096],
                    detail=detail,
                )
            )
        else:
            pm = PUBLIC_BLOCK.match(data, pos)
            if pm is not None:
                f = _public_block_finding(pm.group(0), pm.group(1).decode(), source, _line_of(data, pos))
                if f is not None:
                    out.append(f)
        pos = data.find(PEM_BEGIN, pos + 1)
    for m in PUTTY_HEADER.finditer(data):
        out.append(
            _finding(
                source,
                _line_of(data, m.start()),
                "private-key",
                "PuTTY private key file",
                data[m.start() : m.start() + 2048],
            )
        )
    return out


_SSH_PUBLIC_LINE = re.compile(
    rb"(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) (AAAA[A-Za-z0-9+/]+=*)"
)
_SSH_PUBLIC_PREFIX = (b"ssh-ed25519 ", b"ssh-rsa ", b"ecdsa-sha2-nistp")


def _scan_ssh_public(data: bytes, source: str) -> list[Finding]:
    """OpenSSH public keys (authorized_keys, *.pub, known_hosts) whose private half is published."""
    out: list[Finding] = []
    for prefix in _SSH_PUBLIC_PREFIX:
        pos = data.find(prefix)
        while pos >= 0:
            m = _SSH_PUBLIC_LINE.match(data, pos)
            if m is not None:
                try:
                    blob = base64.b64decode(m.group(1))
                except (binascii.Error, ValueError):
                    blob = b""
                spki = spki_from_ssh_public_blob(blob) if blob else None
                known = known_keys.lookup_spki_der(spki) if spki else None
                if known is not None and spki is not None:
                    fp = hashlib.sha256(spki).hexdigest()
                    out.append(
                        _finding(
                            source,
                            _line_of(data, pos),
                            "known-public-key",
                            f"{m.group(0).split(b' ')[0].decode()} key with sha256 {fp[:16]}…",
                            fp,
                            detail=f"{known.description}, found in {known.where()}",
                        )
                    )
            pos = data.find(prefix, pos + 1)
    return out


def _known_detail(spki: bytes) -> str | None:
    known = known_keys.lookup_spki_der(spki)
    if known is None:
        return None
    return f"PUBLISHED KEY: {known.description}, found in {known.where()}"


def _public_block_finding(block: bytes, label: str, source: str, line: int) -> Finding | None:
    body = _pem_body(block)
    if body is None:
        return None
    if label == "PUBLIC KEY":
        spki: bytes | None = body
    elif label == "RSA PUBLIC KEY":
        try:
            _, vs, ve = _tlv(body, 0)
            kids = _children(body, vs, ve)
            spki = _rsa_spki(body[kids[0][1] : kids[0][3]], body[kids[1][1] : kids[1][3]])
        except (ValueError, IndexError):
            return None
    else:
        spki = spki_from_certificate_der(body)
    if spki is None:
        return None
    known = known_keys.lookup_spki_der(spki)
    if known is None:
        return None
    fp = hashlib.sha256(spki).hexdigest()
    return _finding(
        source,
        line,
        "known-public-key",
        f"{label} with sha256 {fp[:16]}…",
        fp,
        detail=f"{known.description}, found in {known.where()}",
    )


def _scan_pin_value(data: bytes, source: str) -> list[Finding]:
    out = []
    pos = data.find(URI_PIN_ATTR)
    while pos >= 0:
        text = _line_text(data, pos)
        m = _PIN_IN_URI.search(text)
        if m is not None and m.group(2):
            out.append(_finding(source, _line_of(data, pos), "pin-value", _redact_uri(text), text))
        pos = data.find(URI_PIN_ATTR, pos + 1)
    return out


def _candidate_lines(lowered: bytes) -> list[int]:
    """Start offsets of the lines that hold a keyword (bytes.find per keyword: memchr speed)."""
    starts: set[int] = set()
    for kw in _KEYWORDS:
        pos = lowered.find(kw)
        while pos >= 0:
            starts.add(lowered.rfind(b"\n", 0, pos) + 1)
            end = lowered.find(b"\n", pos)
            if end < 0:
                break
            pos = lowered.find(kw, end)
    return sorted(starts)


def _scan_assignments(data: bytes, source: str) -> list[Finding]:
    """Assignments to secret-like names. Only lines holding a keyword are parsed (fast on big logs)."""
    out = []
    line_no = 1
    counted = 0
    n = len(data)
    for ls in _candidate_lines(data.lower()):
        le = data.find(b"\n", ls)
        if le < 0:
            le = n
        line_no += data.count(b"\n", counted, ls)
        counted = ls
        line = data[ls:le].decode("utf-8", "replace")
        am = ASSIGNMENT.match(line) or DEFINE.match(line)
        if am is None:
            continue
        op = am.groupdict().get("op") or " "
        f = classify_assignment(am.group("name"), am.group("value"), source, line_no, op)
        if f is not None and f.kind != "pin-value":  # pin-value is found by its own scan
            out.append(f)
    return out


def _scan_key_file_content(data: bytes, source: str) -> list[Finding]:
    """A small file holding only ``KEY [IV]`` in hex (swupdate's -K key file, OpenSSL -K)."""
    if len(data) > 512:
        return []
    m = _KEY_FILE_LINE.match(data)
    if m is None:
        return []
    raw = bytes.fromhex(m.group(1).decode())
    return [
        _symmetric_finding(
            raw, f"key file: {m.group(1)[:2].decode()}…[{len(m.group(1))} hex redacted]", source, 1
        )
    ]


def _scan_der(data: bytes, source: str) -> list[Finding]:
    """A file (or archive member) that is itself a DER private key or PKCS#12."""
    if len(data) < 64 or len(data) > 65536 or data[0] != 0x30:
        return []
    try:
        _, vs, ve = _tlv(data, 0)
        if ve != len(data):
            return []
        kids = _children(data, vs, ve)
    except ValueError:
        return []
    if (
        len(kids) >= 2
        and kids[0][0] == 0x02
        and data[kids[0][2] : kids[0][3]] == b"\x03"
        and kids[1][0] == 0x30
    ):
        inner = data[kids[1][2] : kids[1][3]]
        if _PKCS7_DATA_OID in inner[:16]:
            return [_finding(source, 0, "private-key-der", "PKCS#12 file [redacted]", data)]
    spki = spki_from_private_der(data)
    if spki is None:
        return []
    detail = _known_detail(spki) or f"public key sha256 {hashlib.sha256(spki).hexdigest()}"
    return [
        _finding(
            source, 0, "private-key-der", f"DER private key [{len(data)} bytes redacted]", data, detail=detail
        )
    ]


# --- archives -----------------------------------------------------------------

MAX_MEMBER = 512 * 1024 * 1024
MAX_DEPTH = 3


def _archive_members(data: bytes, source: str, depth: int) -> Iterator[tuple[str, bytes]] | None:
    if depth >= MAX_DEPTH or len(data) < 6:
        return None
    head = data[:6]
    if head[:2] == b"\x1f\x8b":
        return _decompressed(gzip.decompress, data, source, depth)
    if head[:3] == b"BZh":
        return _decompressed(bz2.decompress, data, source, depth)
    if head == b"\xfd7zXZ\x00":
        return _decompressed(lzma.decompress, data, source, depth)
    if head[:4] == ZSTD_MAGIC and shutil.which("zstd"):
        return _decompressed(_zstd_decompress, data, source, depth)
    if head in (b"070701", b"070702", b"070707"):
        return _cpio_members(data, source)
    if len(data) > 512 and data[257:262] == b"ustar":
        return _tar_members(data, source)
    return None


def _decompressed(
    fn: Callable[[bytes], bytes], data: bytes, source: str, depth: int
) -> Iterator[tuple[str, bytes]] | None:
    """The decompressed stream as one member (``file.gz!``); scan_bytes looks inside it again."""
    try:
        inner = fn(data)
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return None
    return iter([(source + "!", inner)])


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_decompress(data: bytes) -> bytes:
    """zstd (BitBake's sigdata/siginfo, .tar.zst) through the zstd tool: no stdlib module before 3.14."""
    try:
        done = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, timeout=300, check=False)
    except subprocess.SubprocessError as exc:
        raise OSError(str(exc)) from exc
    if done.returncode != 0:
        raise OSError(done.stderr.decode("utf-8", "replace").strip() or "zstd failed")
    return done.stdout


def _tar_members(data: bytes, source: str) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for ti in tf:
                if not ti.isfile() or ti.size > MAX_MEMBER:
                    continue
                fh = tf.extractfile(ti)
                if fh is not None:
                    yield f"{source.rstrip('!')}!{ti.name}", fh.read()
    except (tarfile.TarError, OSError, EOFError):
        return


def _cpio_members(data: bytes, source: str) -> Iterator[tuple[str, bytes]]:
    """newc/crc (070701/070702) and odc (070707) cpio, as the kernel and Yocto write them."""
    pos = 0
    base = source.rstrip("!")
    while pos + 6 <= len(data):
        magic = data[pos : pos + 6]
        try:
            if magic in (b"070701", b"070702"):
                hdr = data[pos : pos + 110]
                if len(hdr) < 110:
                    return
                mode = int(hdr[14:22], 16)
                fsize = int(hdr[54:62], 16)
                nsize = int(hdr[94:102], 16)
                name_start = pos + 110
                name = data[name_start : name_start + nsize - 1].decode("utf-8", "replace")
                dstart = (name_start + nsize + 3) & ~3
                dend = dstart + fsize
                pos = (dend + 3) & ~3
            elif magic == b"070707":
                hdr = data[pos : pos + 76]
                if len(hdr) < 76:
                    return
                mode = int(hdr[18:24], 8)
                nsize = int(hdr[59:65], 8)
                fsize = int(hdr[65:76], 8)
                name_start = pos + 76
                name = data[name_start : name_start + nsize - 1].decode("utf-8", "replace")
                dstart = name_start + nsize
                dend = dstart + fsize
                pos = dend
            else:
                return
        except ValueError:
            return
        if name == "TRAILER!!!":
            return
        if stat.S_ISREG(mode) and fsize:
            yield f"{base}!{name}", data[dstart:dend]


# --- files, trees, allowlists -------------------------------------------------------


class Allowlist:
    """Reviewed findings that are not reported.

    One entry per line (``#`` starts a comment)::

        id 3f2a9c0d1e2b4a5c                 # a finding's id, wherever it appears
        path tests/fixtures/*               # every finding under a path (fnmatch glob)
        path docs/*.md pin-assignment       # only findings of these kinds under a path
    """

    def __init__(self, ids: Iterable[str] = (), paths: Iterable[tuple[str, frozenset[str]]] = ()) -> None:
        self.ids = set(ids)
        self.paths = list(paths)

    @classmethod
    def load(cls, path: str) -> Allowlist:
        from .errors import ConfigError

        ids: list[str] = []
        paths: list[tuple[str, frozenset[str]]] = []
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise ConfigError(
                f"cannot read allowlist {path}: {exc.strerror}", "check the --allowlist path"
            ) from exc
        for n, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if parts[0] == "id" and len(parts) == 2:
                ids.append(parts[1].lower())
            elif parts[0] == "path" and len(parts) >= 2:
                kinds = frozenset(parts[2:])
                unknown = kinds - set(KINDS)
                if unknown:
                    raise ConfigError(
                        f"{path}:{n}: unknown finding kind {sorted(unknown)[0]!r}",
                        f"kinds are: {', '.join(KINDS)}",
                    )
                paths.append((parts[1], kinds))
            else:
                raise ConfigError(
                    f"{path}:{n}: cannot read allowlist entry {line!r}",
                    "write 'id <finding id>' or 'path <glob> [kind ...]'",
                )
        return cls(ids, paths)

    def allows(self, f: Finding) -> bool:
        if f.id in self.ids:
            return True
        file_part = f.source.split("!", 1)[0]
        for glob, kinds in self.paths:
            if (fnmatch.fnmatch(file_part, glob) or fnmatch.fnmatch(f.source, glob)) and (
                not kinds or f.kind in kinds
            ):
                return True
        return False


SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".ruff_cache", ".pytest_cache", ".mypy_cache"})
MMAP_THRESHOLD = 64 * 1024 * 1024


def iter_files(paths: Iterable[str]) -> Iterator[str]:
    """Regular files under the given paths (files and directories; symlinks are not followed)."""
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if os.path.isfile(full) and not os.path.islink(full):
                        yield full
        else:
            yield p


def scan_file(path: str) -> list[Finding]:
    """Scan one file (archives included). Devices, FIFOs and sockets are not read."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return [_finding(path, 0, "unreadable", "not a regular file: not read", path)]
        size = st.st_size
        if size >= MMAP_THRESHOLD and not _looks_compressed_or_archive(path):
            import mmap

            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _scan_large(mm, path)  # type: ignore[arg-type]
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return [_finding(path, 0, "unreadable", f"cannot read: {exc.strerror}", path)]
    return scan_bytes(data, path)


def _looks_compressed_or_archive(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512)
    return (
        head[:2] == b"\x1f\x8b"
        or head[:3] == b"BZh"
        or head[:6] == b"\xfd7zXZ\x00"
        or head[:5] == b"07070"
        or head[:4] == ZSTD_MAGIC
    )


def _scan_large(mm: bytes, path: str) -> list[Finding]:
    """Big raw images (ext4, wic): only the byte-level scans, without copying the file."""
    return _dedupe(_scan_pem(mm, path) + _scan_pin_value(mm, path) + _scan_ssh_public(mm, path))


def scan_paths(paths: Iterable[str], allowlist: Allowlist | None = None) -> tuple[list[Finding], int, int]:
    """Scan files and trees; (findings not allowlisted, files scanned, bytes scanned)."""
    out: list[Finding] = []
    nfiles = 0
    nbytes = 0
    for path in iter_files(paths):
        nfiles += 1
        try:
            nbytes += os.path.getsize(path)
        except OSError:
            pass
        for f in scan_file(path):
            if allowlist is None or not allowlist.allows(f):
                out.append(f)
    return out, nfiles, nbytes
