"""Public keys out of private-key material the scanner finds: PEM, DER, OpenSSH, certificates.

A small DER reader (standard library) that derives the SubjectPublicKeyInfo of RSA
and EC private keys, so the scanner can name a published key by its fingerprint
where pyca/cryptography is absent (BitBake's host Python, a bare CI image). Key
types the reader does not handle (Ed25519, EC keys stored without their point) go
through cryptography when it is importable.
"""

from __future__ import annotations

import base64
import binascii

from ..secrets import _DASHES

_DER_RSA_OID = bytes.fromhex("2a864886f70d010101")
_DER_EC_OID = bytes.fromhex("2a8648ce3d0201")
_DER_ED25519_OID = bytes.fromhex("2b6570")
_DER_ED448_OID = bytes.fromhex("2b6571")
_PKCS7_DATA_OID = bytes.fromhex("2a864886f70d010701")


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


