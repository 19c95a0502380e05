"""Private keys in DER at any offset, and public keys out of what the scanner finds.

Covers PEM bodies, DER (PKCS#1, SEC1, DSA, PKCS#8, encrypted PKCS#8, PKCS#12),
OpenSSH keys and certificates.

A small DER reader (standard library) that derives the SubjectPublicKeyInfo of RSA
and EC private keys, so the scanner can name a published key by its fingerprint
where pyca/cryptography is absent (BitBake's host Python, a bare CI image). Key
types the reader does not handle (Ed25519, EC keys stored without their point) go
through cryptography when it is importable.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator

from ..der import tlv
from ..secrets import _DASHES

_DER_RSA_OID = bytes.fromhex("2a864886f70d010101")
_DER_EC_OID = bytes.fromhex("2a8648ce3d0201")
_DER_ED25519_OID = bytes.fromhex("2b6570")
_DER_ED448_OID = bytes.fromhex("2b6571")
_PKCS7_DATA_OID = bytes.fromhex("2a864886f70d010701")
_KEY_ALGORITHMS = {
    _DER_RSA_OID: "RSA",
    bytes.fromhex("2a864886f70d01010a"): "RSA-PSS",
    _DER_EC_OID: "EC",
    bytes.fromhex("2a8648ce380401"): "DSA",
    _DER_ED25519_OID: "Ed25519",
    _DER_ED448_OID: "Ed448",
    bytes.fromhex("2b656e"): "X25519",
    bytes.fromhex("2b656f"): "X448",
    bytes.fromhex("2a811ccf55018d2d"): "SM2",
}


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


def _rsa_spki(n_tlv: bytes, e_tlv: bytes) -> bytes:
    alg = tlv(0x30, tlv(0x06, _DER_RSA_OID) + b"\x05\x00")
    return tlv(0x30, alg + tlv(0x03, b"\x00" + tlv(0x30, n_tlv + e_tlv)))


def _ec_spki(curve_oid_tlv: bytes, point: bytes) -> bytes:
    alg = tlv(0x30, tlv(0x06, _DER_EC_OID) + curve_oid_tlv)
    return tlv(0x30, alg + tlv(0x03, b"\x00" + point))


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
            return tlv(0x30, tlv(0x30, tlv(0x06, _DER_ED25519_OID)) + tlv(0x03, b"\x00" + pk))
        if kind.startswith(b"ecdsa-sha2-"):
            curve, pos = _ssh_string(blob, pos)
            point, _ = _ssh_string(blob, pos)
            oid = _SSH_CURVES.get(curve)
            return _ec_spki(oid, point) if oid else None
        if kind == b"ssh-rsa":
            e, pos = _ssh_string(blob, pos)
            n, _ = _ssh_string(blob, pos)
            return _rsa_spki(tlv(0x02, n), tlv(0x02, e))
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


# --- DER private keys anywhere in a blob ---------------------------------------------

# A private key's SEQUENCE starts with its version INTEGER (0, 1, or 3 for PKCS#12) and the
# first field's tag (INTEGER for PKCS#1 and DSA, OCTET STRING for SEC1, SEQUENCE for
# PKCS#8 and PKCS#12); the SEQUENCE header before it (2, 3 or 4 bytes, 32 bytes to
# 32 KiB long) is checked for each hit. In random data a hit is expected once per
# several GiB; each one is parsed strictly.
_DER_VERSION = re.compile(rb"\x02\x01[\x00\x01\x03][\x02\x04\x30]")


def _der_starts(buf: bytes) -> Iterator[int]:
    for m in _DER_VERSION.finditer(buf):
        v = m.start()
        if v >= 2 and buf[v - 2] == 0x30 and 0x20 <= buf[v - 1] < 0x80:
            yield v - 2
        elif v >= 3 and buf[v - 3] == 0x30 and buf[v - 2] == 0x81 and buf[v - 1] >= 0x80:
            yield v - 3
        elif v >= 4 and buf[v - 4] == 0x30 and buf[v - 3] == 0x82 and 0 < buf[v - 2] < 0x80:
            yield v - 4


# EncryptedPrivateKeyInfo has no version: it is found by its encryption algorithm
# (PBES2, or the PKCS#12 PBE algorithms) and parsed back from there.
_PKCS_ARC = bytes.fromhex("2a864886f70d01")  # 1.2.840.113549.1, then 5.13 (PBES2) or 12.1.n (PKCS#12 PBE)
_ENCRYPTED_KEY_ALG = re.compile(rb"\x05\x0d|\x0c\x01[\x01-\x06]")


def _strict_children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]] | None:
    """Like ``_children``, but every element lies inside [start, end) and they fill it exactly."""
    out = []
    pos = start
    try:
        while pos < end:
            tag, vs, ve = _tlv(buf, pos)
            if ve > end or tag & 0x1F == 0x1F:
                return None
            out.append((tag, pos, vs, ve))
            pos = ve
    except ValueError:
        return None
    return out if pos == end else None


def _int(buf: bytes, kid: tuple[int, int, int, int]) -> int:
    return int.from_bytes(buf[kid[2] : kid[3]], "big")


def _random_looking(secret: bytes) -> bool:
    """A private scalar or seed: few zero bytes, many distinct ones, no DER inside.

    Not a template or code that happens to follow a DER header in a program.
    """
    return (
        len(secret) >= 16
        and secret.count(0) * 8 <= len(secret) + 8
        and len(set(secret)) * 5 >= len(secret) * 3
        and _DER_VERSION.search(secret) is None
    )


def _rsa_ok(buf: bytes, kids: list[tuple[int, int, int, int]]) -> bool:
    """version 0, then n, e, d, p, q, ...: the modulus is the product of the primes."""
    tags = [k[0] for k in kids]
    return (
        tags == [0x02] * 9
        and buf[kids[0][2] : kids[0][3]] == b"\x00"
        and kids[1][3] - kids[1][2] >= 64
        and _int(buf, kids[1]) == _int(buf, kids[4]) * _int(buf, kids[5])
    )


def _sec1_ok(buf: bytes, kids: list[tuple[int, int, int, int]]) -> bool:
    """version 1, the private scalar, then only the optional [0] curve and [1] public point."""
    tags = [k[0] for k in kids]
    return (
        len(kids) >= 2
        and buf[kids[0][2] : kids[0][3]] == b"\x01"
        and tags[1] == 0x04
        and len(kids) <= 4
        and all(t in (0xA0, 0xA1) for t in tags[2:])
        and kids[1][3] - kids[1][2] <= 72
        and _random_looking(buf[kids[1][2] : kids[1][3]])
    )


def _pkcs8_inner_ok(buf: bytes, alg: bytes, start: int, end: int) -> bool:
    """The OCTET STRING of a PrivateKeyInfo holds a key of the algorithm it names."""
    if alg in (_DER_RSA_OID, bytes.fromhex("2a864886f70d01010a")):
        try:
            tag, vs, ve = _tlv(buf, start)
        except ValueError:
            return False
        kids = _strict_children(buf, vs, ve) if tag == 0x30 and ve == end else None
        return bool(kids) and _rsa_ok(buf, kids)  # type: ignore[arg-type]
    if alg == _DER_EC_OID:
        try:
            tag, vs, ve = _tlv(buf, start)
        except ValueError:
            return False
        kids = _strict_children(buf, vs, ve) if tag == 0x30 and ve == end else None
        return bool(kids) and _sec1_ok(buf, kids)  # type: ignore[arg-type]
    try:  # EdDSA, X25519/X448: an OCTET STRING; DSA: an INTEGER; others: the bytes as they are
        tag, vs, ve = _tlv(buf, start)
        secret = buf[vs:ve] if tag in (0x02, 0x04) and ve == end else buf[start:end]
    except ValueError:
        secret = buf[start:end]
    return _random_looking(secret.lstrip(b"\x00"))


def der_private_key_at(buf: bytes, pos: int) -> tuple[str, int] | None:
    """(what, end) when a DER private key (or PKCS#12 bundle) starts at ``pos``.

    Parsed strictly (definite lengths that nest and fill exactly), and checked for what
    a real key has: an RSA modulus that is the product of its primes, a DSA public value
    that matches the private one, a private scalar that looks random. So a DER template
    in a program (the header a library puts before a raw key) is not taken for a key.
    """
    try:
        tag, vs, ve = _tlv(buf, pos)
    except ValueError:
        return None
    kids = _strict_children(buf, vs, ve) if tag == 0x30 else None
    if not kids or len(kids) < 2 or kids[0][0] != 0x02 or kids[0][3] - kids[0][2] != 1:
        return None
    version = buf[kids[0][2]]
    tags = [k[0] for k in kids]
    if _rsa_ok(buf, kids):
        return "RSA private key (PKCS#1)", ve
    if version == 0 and tags == [0x02] * 6 and kids[1][3] - kids[1][2] >= 64:
        p, g, y, x = (_int(buf, kids[i]) for i in (1, 3, 4, 5))
        if p > 3 and 1 < x < p and pow(g, x, p) == y:
            return "DSA private key", ve
        return None
    if _sec1_ok(buf, kids):
        return "EC private key (SEC1)", ve
    if version in (0, 1) and len(kids) >= 3 and tags[1] == 0x30 and tags[2] == 0x04:
        alg = _strict_children(buf, kids[1][2], kids[1][3])
        extras_ok = len(kids) <= 5 and all(t in (0x80, 0x81, 0xA0, 0xA1) for t in tags[3:])
        if alg and alg[0][0] == 0x06 and extras_ok:
            oid = buf[alg[0][2] : alg[0][3]]
            if _pkcs8_inner_ok(buf, oid, kids[2][2], kids[2][3]):
                name = _KEY_ALGORITHMS.get(oid, "")
                return f"{name} private key (PKCS#8)".lstrip(), ve
        return None
    if version == 3 and tags[1] == 0x30 and _PKCS7_DATA_OID in buf[kids[1][2] : kids[1][2] + 16]:
        return "PKCS#12 bundle", ve
    return None


def _encrypted_key_before(buf: bytes, oid_pos: int) -> tuple[int, int] | None:
    """(start, end) of an EncryptedPrivateKeyInfo whose algorithm OID is at ``oid_pos``."""
    for inner_len in (2, 3, 4):
        inner = oid_pos - inner_len
        for outer_len in (2, 3, 4):
            start = inner - outer_len
            if start < 0 or buf[start] != 0x30 or buf[inner] != 0x30:
                continue
            try:
                _, vs, ve = _tlv(buf, start)
            except ValueError:
                continue
            if vs != inner:
                continue
            kids = _strict_children(buf, vs, ve)
            if kids and [k[0] for k in kids] == [0x30, 0x04] and kids[1][3] - kids[1][2] >= 32:
                return start, ve
    return None


def find_der_private_keys(buf: bytes, max_candidates: int) -> tuple[list[tuple[int, int, str]], int]:
    """DER private keys at any offset: ([(start, end, what)], candidates parsed).

    At most ``max_candidates`` candidates are parsed, so hostile input cannot make the
    search slow; a key found is skipped over (a PKCS#8 key holds a PKCS#1 one).
    """
    hits: list[tuple[int, int, str]] = []
    tried = 0
    for start in _der_starts(buf):
        if tried >= max_candidates:
            break
        if hits and start < hits[-1][1]:
            continue
        tried += 1
        found = der_private_key_at(buf, start)
        if found is not None:
            hits.append((start, found[1], found[0]))
    arc = buf.find(_PKCS_ARC)
    while arc >= 0:
        oid = arc - 2
        m = _ENCRYPTED_KEY_ALG.match(buf, arc + len(_PKCS_ARC))
        if m is not None and oid >= 0 and buf[oid] == 0x06 and buf[oid + 1] == m.end() - arc:
            if tried >= max_candidates:
                break
            tried += 1
            span = _encrypted_key_before(buf, oid)
            if span is not None and not any(s <= span[0] < e for s, e, _ in hits):
                hits.append((span[0], span[1], "encrypted private key (PKCS#8)"))
        arc = buf.find(_PKCS_ARC, arc + 1)
    return sorted(hits), tried
