"""Authenticode signatures for UEFI Secure Boot: SpcIndirectDataContent in CMS SignedData.

The SignedData (PKCS#7, RFC 2315 shape as Windows and sbsign write it):

* ``contentInfo`` = SPC_INDIRECT_DATA_OBJID (1.3.6.1.4.1.311.2.1.4) carrying
  ``SpcIndirectDataContent`` = { SpcAttributeTypeAndOptionalValue
  { SPC_PE_IMAGE_DATAOBJ, SpcPeImageData { flags '', file <<<Obsolete>>> } },
  DigestInfo { sha256, Authenticode digest } } (bytes as sbsign and osslsigncode
  write them);
* one SignerInfo (issuer and serial), RSA PKCS#1 v1.5 with SHA-256, signed
  attributes contentType (the SPC OID), signingTime (``SOURCE_DATE_EPOCH``),
  SpcSpOpusInfo (empty) and messageDigest;
* messageDigest is the hash of the SpcIndirectDataContent's *value* octets,
  without its SEQUENCE tag and length (Authenticode's quirk; EDK2's
  ``Pkcs7Verify`` hands OpenSSL exactly those bytes as the content);
* the token signs the digest of the DER ``SET OF`` signed attributes: one token
  operation per image.

RSA only: UEFI firmware (EDK2 and what is derived from it) verifies RSA-2048 and
larger with SHA-256; ECDSA db entries are not portable.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import ConfigError, HsmsignError, SigningError, VerificationError, printable
from . import cms

if TYPE_CHECKING:
    import uuid

SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
SPC_SP_OPUS_INFO = "1.3.6.1.4.1.311.2.1.12"
SHA256_OID_DER = bytes.fromhex("0609608648016503040201")
CONTENT_TYPE_OID_DER = bytes.fromhex("06092a864886f70d010903")  # PKCS#9 contentType, 1.2.840.113549.1.9.3
# SpcPeImageData { flags BIT STRING '', file [0] { [2] { [0] BMPString "<<<Obsolete>>>" } } }
_OBSOLETE = "<<<Obsolete>>>".encode("utf-16-be")
_PE_IMAGE_DATA = (
    b"\x30"
    + bytes([3 + 4 + 2 + len(_OBSOLETE)])
    + b"\x03\x01\x00"
    + b"\xa0"
    + bytes([4 + len(_OBSOLETE)])
    + b"\xa2"
    + bytes([2 + len(_OBSOLETE)])
    + b"\x80"
    + bytes([len(_OBSOLETE)])
    + _OBSOLETE
)
HASHES = ("sha256",)
MIN_RSA_BITS = 2048

# EFI_CERT_X509_GUID (UEFI spec, "EFI_SIGNATURE_DATA"), as uuid.UUID(...).bytes_le
EFI_CERT_X509_GUID = bytes.fromhex("a159c0a5e494a74a87b5ab155c2bf072")


_tlv = cms._tlv


def _oid_der(dotted: str) -> bytes:
    from asn1crypto import core

    return bytes(core.ObjectIdentifier(dotted).dump())


def indirect_data_value(image_digest: bytes) -> bytes:
    """The value octets of SpcIndirectDataContent (what messageDigest hashes)."""
    if len(image_digest) != 32:
        raise ConfigError(f"a sha256 Authenticode digest has 32 bytes, not {len(image_digest)}")
    attr = _tlv(0x30, _oid_der(SPC_PE_IMAGE_DATA) + _PE_IMAGE_DATA)
    digest_info = _tlv(0x30, _tlv(0x30, SHA256_OID_DER + b"\x05\x00") + _tlv(0x04, image_digest))
    return attr + digest_info


def check_signer(signer: Any) -> None:
    """Firmware takes RSA-2048 and larger (SHA-256, PKCS#1 v1.5)."""
    if signer.key_type != "rsa":
        raise ConfigError(
            f"UEFI Secure Boot needs an RSA key; {signer.label} is {signer.key_type}",
            "use an RSA-2048/3072/4096 key for HSM_PKCS11_URI_UEFI",
        )
    if signer.key_size < MIN_RSA_BITS:
        raise ConfigError(f"RSA-{signer.key_size} is too small for Secure Boot", "use RSA-2048 or larger")


def sign(
    signer: Any,
    *,
    cert: Any,
    image_digest: bytes,
    extra_certs: Sequence[Any] = (),
    when: datetime.datetime | None = None,
) -> bytes:
    """DER ContentInfo(SignedData) over an Authenticode digest, one token operation."""
    from asn1crypto import algos, core, x509
    from asn1crypto import cms as acms

    from .. import keyformats
    from ..signing import verify_digest

    check_signer(signer)
    cms.check_cert_matches(cert, signer)
    value = indirect_data_value(image_digest)
    content_digest = hashlib.sha256(value).digest()

    a_cert = x509.Certificate.load(cms.certificate_der(cert))
    digest_algo = algos.DigestAlgorithm({"algorithm": "sha256", "parameters": core.Null()})
    sid = acms.SignerIdentifier(
        {
            "issuer_and_serial_number": acms.IssuerAndSerialNumber(
                {"issuer": a_cert.issuer, "serial_number": a_cert.serial_number}
            )
        }
    )
    attrs = [
        _attribute(CONTENT_TYPE_OID_DER, _oid_der(SPC_INDIRECT_DATA)),
        _attribute(_oid_der("1.2.840.113549.1.9.5"), cms._cms_time(when or cms.signing_time()).dump()),
        _attribute(_oid_der(SPC_SP_OPUS_INFO), b"\x30\x00"),
        _attribute(_oid_der("1.2.840.113549.1.9.4"), _tlv(0x04, content_digest)),
    ]
    body = b"".join(sorted(attrs))
    attr_der = _tlv(0x31, body)
    to_sign = hashlib.sha256(attr_der).digest()
    signature = signer.sign_digest(to_sign, "sha256", None)
    verify_digest(keyformats.rsa_public_of(signer) or signer.public_key(), signature, to_sign, "sha256", None)

    info = acms.SignerInfo(
        {
            "version": "v1",
            "sid": sid,
            "digest_algorithm": digest_algo,
            "signed_attrs": acms.CMSAttributes.load(attr_der),
            "signature_algorithm": algos.SignedDigestAlgorithm(
                {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}
            ),
            "signature": signature,
        }
    )
    certs = [a_cert] + [x509.Certificate.load(cms.certificate_der(c)) for c in extra_certs]
    # SignedData by hand around asn1crypto's parts: the encapsulated content is the SPC
    # structure (not id-data), [0] EXPLICIT around the SEQUENCE.
    content_info = _tlv(0x30, _oid_der(SPC_INDIRECT_DATA) + _tlv(0xA0, _tlv(0x30, value)))
    signed_data = _tlv(
        0x30,
        _tlv(0x02, b"\x01")
        + _tlv(0x31, digest_algo.dump())
        + content_info
        + _tlv(0xA0, b"".join(c.dump() for c in certs))
        + _tlv(0x31, info.dump()),
    )
    der = _tlv(0x30, _oid_der("1.2.840.113549.1.7.2") + _tlv(0xA0, signed_data))
    # read back what we wrote, with the verifier, before anyone sees it
    verify(der, image_digest=image_digest, trusted=[cert])
    return der


def _attribute(type_der: bytes, value_der: bytes) -> bytes:
    return _tlv(0x30, type_der + _tlv(0x31, value_der))


class AuthenticodeSignature(NamedTuple):
    """What ``verify`` found in one SignedData."""

    certificate: Any
    signing_time: datetime.datetime | None
    image_digest: bytes


def signed_digest(der: bytes) -> bytes:
    """The Authenticode digest a SignedData claims (its DigestInfo), without checking anything."""
    return _parse(der)[1]


def _tlv_at(buf: bytes, off: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER TLV at ``off`` (definite lengths only)."""
    tag = buf[off]
    first = buf[off + 1]
    if first < 0x80:
        if off + 2 + first > len(buf):
            raise ValueError("DER length past the end")
        return tag, off + 2, off + 2 + first
    n = first & 0x7F
    if n == 0 or n > 4:
        raise ValueError("indefinite or oversized DER length")
    length = int.from_bytes(buf[off + 2 : off + 2 + n], "big")
    start = off + 2 + n
    if start + length > len(buf):
        raise ValueError("DER length past the end")
    return tag, start, start + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, tlv start, contents start, end) of each TLV between ``start`` and ``end``."""
    out = []
    off = start
    while off < end:
        tag, c, e = _tlv_at(buf, off)
        if e > end:
            raise ValueError("a DER element runs past its parent")
        out.append((tag, off, c, e))
        off = e
    return out


def _parse(der: bytes) -> tuple[Any, bytes, bytes]:
    """(SignedData, claimed image digest, SpcIndirectDataContent value octets)."""
    from asn1crypto import cms as acms

    try:
        ci = acms.ContentInfo.load(der)
        if ci["content_type"].native != "signed_data":
            raise VerificationError("the Authenticode blob is not a PKCS#7 SignedData")
        sd = ci["content"]
        eci = sd["encap_content_info"].dump()
        # ContentInfo { OID, [0] EXPLICIT SpcIndirectDataContent }, read from the original bytes
        tag, c, e = _tlv_at(eci, 0)
        parts = _children(eci, c, e)
        if tag != 0x30 or len(parts) != 2 or parts[0][0] != 0x06 or parts[1][0] != 0xA0:
            raise VerificationError("the signed content is not a ContentInfo with SpcIndirectDataContent")
        if eci[parts[0][1] : parts[0][3]] != _oid_der(SPC_INDIRECT_DATA):
            raise VerificationError("the signed content is not SpcIndirectDataContent")
        tag, vc, ve = _tlv_at(eci, parts[1][2])
        if tag != 0x30 or ve != parts[1][3]:
            raise VerificationError("SpcIndirectDataContent is not one SEQUENCE")
        value = eci[vc:ve]
        spc = _children(eci, vc, ve)
        if len(spc) != 2:
            raise VerificationError("SpcIndirectDataContent does not have two fields")
        digest_info = _children(eci, spc[1][2], spc[1][3])
        algo = _children(eci, digest_info[0][2], digest_info[0][3])
        if eci[algo[0][1] : algo[0][3]] != SHA256_OID_DER:
            raise VerificationError("the Authenticode digest is not sha256", "sign with sha256")
        if digest_info[1][0] != 0x04:
            raise VerificationError("the Authenticode DigestInfo holds no OCTET STRING")
        claimed = eci[digest_info[1][2] : digest_info[1][3]]
        return sd, claimed, value
    except HsmsignError:
        raise
    except Exception as exc:  # noqa: BLE001 - asn1crypto raises ValueError, TypeError, KeyError, ...
        raise VerificationError(
            f"the Authenticode signature is malformed ({type(exc).__name__})",
            "the image's certificate table holds something that is not an Authenticode SignedData",
        ) from exc


def verify(der: bytes, *, image_digest: bytes, trusted: Sequence[Any]) -> AuthenticodeSignature:
    """Check one SignedData against the image's digest and the trusted certificates."""
    try:
        return _verify(der, image_digest, trusted)
    except HsmsignError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise VerificationError(
            f"the Authenticode signature is malformed ({type(exc).__name__})",
            "is the image's certificate table intact?",
        ) from exc


def _verify(der: bytes, image_digest: bytes, trusted: Sequence[Any]) -> AuthenticodeSignature:
    from .. import keyformats
    from ..signing import verify_digest

    sd, claimed, value = _parse(der)
    if claimed != image_digest:
        raise VerificationError(
            "the image does not match its signature (Authenticode digest differs)",
            "the file was changed after signing",
        )
    infos = sd["signer_infos"]
    if len(infos) != 1:
        raise VerificationError(f"the Authenticode signature has {len(infos)} signers, expected one")
    si = infos[0]
    if si["version"].native != "v1" or sd["version"].native != "v1":
        raise VerificationError(
            "the Authenticode signature is not version 1 (PKCS#7 SignedData)",
            "the image's certificate table is damaged; sign the image again",
        )
    if si["digest_algorithm"]["algorithm"].native != "sha256":
        raise VerificationError(
            f"digest algorithm {si['digest_algorithm']['algorithm'].native} is not sha256"
        )
    cms.check_listed_digests(sd, "sha256", ("sha256",))
    cms.check_signer_parameters(si)
    candidates: list[Any] = []
    for choice in sd["certificates"] or []:
        if choice.name == "certificate":
            candidates.append(cms.LazyCertificate(choice.chosen.dump()))
    # firmware (EDK2's Pkcs7Verify), sbverify and osslsigncode run OpenSSL's PKCS7_verify: the
    # signer's certificate must be in the signature, and a self-signed one must be db's as it is
    signer_cert = cms.signer_from_message(si["sid"], candidates)
    sattrs = si["signed_attrs"]
    if not len(sattrs):
        raise VerificationError("the Authenticode signature has no signed attributes")
    found = {a["type"].dotted: a["values"][0] for a in sattrs}
    ctype = found.get("1.2.840.113549.1.9.3")
    if ctype is None or ctype.dotted != SPC_INDIRECT_DATA:
        raise VerificationError("the signed attributes lack contentType SpcIndirectDataContent")
    md = found.get("1.2.840.113549.1.9.4")
    if md is None or md.native != hashlib.sha256(value).digest():
        raise VerificationError("messageDigest does not match the SpcIndirectDataContent")
    when = found["1.2.840.113549.1.9.5"].native if "1.2.840.113549.1.9.5" in found else None
    attr_der = b"\x31" + cms._der_len(len(sattrs.contents)) + sattrs.contents
    algo = si["signature_algorithm"]["algorithm"].native
    if algo not in ("rsassa_pkcs1v15", "sha256_rsa"):
        raise VerificationError(f"signature algorithm {algo} is not RSA PKCS#1 v1.5 (what firmware checks)")
    pub = keyformats.rsa_public_of(signer_cert)
    if pub is None:
        raise VerificationError("the signer certificate does not hold an RSA key")
    try:
        verify_digest(pub, si["signature"].native, hashlib.sha256(attr_der).digest(), "sha256", "pkcs1v15")
    except SigningError as exc:
        raise VerificationError("the Authenticode signature does not verify with the signer's key") from exc
    cms._check_trust(signer_cert, trusted, identity_if_self_signed=True)
    return AuthenticodeSignature(signer_cert, when, claimed)


def signature_list(certs: Sequence[Any], owner: uuid.UUID) -> bytes:
    """An EFI_SIGNATURE_LIST per certificate (EFI_CERT_X509_GUID), as efitools' cert-to-efi-sig-list.

    The input of db/KEK enrolment (``efi-updatevar -f``, KeyTool, virt-fw-vars); a
    platform owner signs it into an authenticated variable update with the KEK.
    """
    import struct

    out = b""
    for cert in certs:
        der = cms.certificate_der(cert)
        sig_size = 16 + len(der)
        out += EFI_CERT_X509_GUID + struct.pack("<III", 28 + sig_size, 0, sig_size)
        out += owner.bytes_le + der
    return out


def describe(cert: Any) -> str:
    return printable(cert.subject.rfc4514_string())
