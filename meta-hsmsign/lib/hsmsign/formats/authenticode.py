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
SIGNED_DATA = "1.2.840.113549.1.7.2"
SIGNING_TIME = "1.2.840.113549.1.9.5"
MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
SHA256_OID_DER = bytes.fromhex("0609608648016503040201")
CONTENT_TYPE_OID_DER = bytes.fromhex("06092a864886f70d010903")  # PKCS#9 contentType, 1.2.840.113549.1.9.3
# AlgorithmIdentifiers as sbsign and osslsigncode write them: sha256 and rsaEncryption, NULL parameters
SHA256_ALGORITHM = b"\x30\x0d" + SHA256_OID_DER + b"\x05\x00"
RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")
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


def _oid_der(dotted: str) -> bytes:
    from .. import der

    return der.oid(dotted)


def indirect_data_value(image_digest: bytes) -> bytes:
    """The value octets of SpcIndirectDataContent (what messageDigest hashes)."""
    if len(image_digest) != 32:
        raise ConfigError(f"a sha256 Authenticode digest has 32 bytes, not {len(image_digest)}")
    from ..der import tlv

    attr = tlv(0x30, _oid_der(SPC_PE_IMAGE_DATA) + _PE_IMAGE_DATA)
    return attr + tlv(0x30, SHA256_ALGORITHM + tlv(0x04, image_digest))


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
    """DER ContentInfo(SignedData) over an Authenticode digest, one token operation.

    Written with ``hsmsign.der`` alone (no asn1crypto): a test holds it to asn1crypto's
    encoding of the same fields, and to sbverify, osslsigncode and OVMF."""
    from .. import der, keyformats
    from ..signing import verify_digest

    check_signer(signer)
    cms.check_cert_matches(cert, signer)
    value = indirect_data_value(image_digest)
    cert_der = cms.certificate_der(cert)
    issuer, serial, _spki = cms.read_certificate(cert_der)
    attrs = [
        _attribute(CONTENT_TYPE_OID_DER, _oid_der(SPC_INDIRECT_DATA)),
        _attribute(_oid_der(SIGNING_TIME), der.time(when or cms.signing_time())),
        _attribute(_oid_der(SPC_SP_OPUS_INFO), b"\x30\x00"),
        _attribute(_oid_der(MESSAGE_DIGEST), der.tlv(der.OCTET_STRING, hashlib.sha256(value).digest())),
    ]
    attrs_body = b"".join(sorted(attrs))  # DER SET OF: sorted (X.690 11.6)
    to_sign = hashlib.sha256(der.tlv(der.SET, attrs_body)).digest()
    signature = signer.sign_digest(to_sign, "sha256", None)
    verify_digest(keyformats.rsa_public_of(signer) or signer.public_key(), signature, to_sign, "sha256", None)

    signer_info = der.tlv(
        der.SEQUENCE,
        der.integer(1)
        + der.tlv(der.SEQUENCE, issuer + serial)  # IssuerAndSerialNumber
        + SHA256_ALGORITHM
        + der.tlv(0xA0, attrs_body)  # [0] IMPLICIT SET OF Attribute
        + RSA_ALGORITHM
        + der.tlv(der.OCTET_STRING, signature),
    )
    certs = cert_der + b"".join(cms.certificate_der(c) for c in extra_certs)
    # the encapsulated content is the SPC structure (not id-data), [0] EXPLICIT around the SEQUENCE
    content_info = der.tlv(
        der.SEQUENCE, _oid_der(SPC_INDIRECT_DATA) + der.tlv(0xA0, der.tlv(der.SEQUENCE, value))
    )
    signed_data = der.tlv(
        der.SEQUENCE,
        der.integer(1)
        + der.tlv(der.SET, SHA256_ALGORITHM)
        + content_info
        + der.tlv(0xA0, certs)
        + der.tlv(der.SET, signer_info),
    )
    out = der.tlv(der.SEQUENCE, _oid_der(SIGNED_DATA) + der.tlv(0xA0, signed_data))
    # read back what we wrote before anyone sees it
    check_signed(out, image_digest=image_digest, cert=cert)
    return out


def _attribute(type_der: bytes, value_der: bytes) -> bytes:
    from ..der import tlv

    return tlv(0x30, type_der + tlv(0x31, value_der))


def check_signed(blob: bytes, *, image_digest: bytes, cert: Any) -> None:
    """Check a signature :func:`sign` wrote (read back from the image) as what it must be.

    Every field of the shape ``sign`` writes, in strict DER (``hsmsign.der``), and each
    link a verifier follows: the SignedData holds the image's digest, messageDigest is the
    hash of that SpcIndirectDataContent, contentType names it, the signer is ``cert`` (by
    issuer and serial, and its certificate is the first in the signature), and the signature
    over the signed attributes verifies with ``cert``'s key. ``VerificationError`` otherwise.

    What ``hsmsign pe sign`` runs after writing, without asn1crypto; :func:`verify` (what
    ``pe verify`` runs on any image) reads every form a firmware reads. A test holds this
    check to refusing the signature with any one byte changed."""
    try:
        _check_signed(blob, image_digest, cert)
    except ValueError as exc:
        raise VerificationError(
            f"the Authenticode signature read back is malformed ({exc})",
            "the write went wrong or the token returned something unexpected; sign again",
        ) from exc


def _check_signed(blob: bytes, image_digest: bytes, cert: Any) -> None:
    from .. import der, keyformats
    from ..signing import verify_digest

    def expect(ok: bool, what: str) -> None:
        if not ok:
            raise VerificationError(
                f"the Authenticode signature read back is wrong: {what}",
                "the write went wrong or the token returned something unexpected; sign again",
            )

    top = der.whole(blob, der.SEQUENCE)
    ctype, explicit = der.fields(blob, top, der.OID, 0xA0)
    expect(der.raw(blob, ctype) == _oid_der(SIGNED_DATA), "not a SignedData")
    (sd,) = der.fields(blob, explicit, der.SEQUENCE)
    version, algos, eci, certs, infos = der.fields(
        blob, sd, der.INTEGER, der.SET, der.SEQUENCE, 0xA0, der.SET
    )
    expect(der.read_integer(blob, version) == 1, "SignedData version is not 1")
    expect(der.contents(blob, algos) == SHA256_ALGORITHM, "the digest algorithms are not sha256 alone")
    ctype, explicit = der.fields(blob, eci, der.OID, 0xA0)
    expect(der.raw(blob, ctype) == _oid_der(SPC_INDIRECT_DATA), "the content is not SpcIndirectDataContent")
    (spc,) = der.fields(blob, explicit, der.SEQUENCE)
    value = der.contents(blob, spc)
    expect(value == indirect_data_value(image_digest), "it does not hold the image's digest")
    cert_der = cms.certificate_der(cert)
    expect(blob[certs.start : certs.start + len(cert_der)] == cert_der, "the signer certificate is not first")
    for c in der.children(blob, certs):
        expect(c.tag == der.SEQUENCE, "a certificate is not a SEQUENCE")
    (si,) = der.fields(blob, infos, der.SEQUENCE)
    version, sid, digest_algo, attrs, sig_algo, sig = der.fields(
        blob, si, der.INTEGER, der.SEQUENCE, der.SEQUENCE, 0xA0, der.SEQUENCE, der.OCTET_STRING
    )
    issuer, serial, _spki = cms.read_certificate(cert_der)
    expect(der.read_integer(blob, version) == 1, "SignerInfo version is not 1")
    expect(der.contents(blob, sid) == issuer + serial, "the signer is named by another certificate's issuer")
    expect(der.raw(blob, digest_algo) == SHA256_ALGORITHM, "the signer's digest algorithm is not sha256")
    expect(der.raw(blob, sig_algo) == RSA_ALGORITHM, "the signature algorithm is not rsaEncryption")
    found: dict[bytes, bytes] = {}
    previous = b""
    for attr in der.children(blob, attrs):
        expect(attr.tag == der.SEQUENCE, "a signed attribute is not a SEQUENCE")
        kind, values = der.fields(blob, attr, der.OID, der.SET)
        (one,) = der.children(blob, values)
        expect(der.raw(blob, kind) not in found, "a signed attribute is there twice")
        expect(der.raw(blob, attr) >= previous, "the signed attributes are not in DER order")
        previous = der.raw(blob, attr)
        found[der.raw(blob, kind)] = der.raw(blob, one)
    spc_oid = _oid_der(SPC_INDIRECT_DATA)
    expect(found.get(CONTENT_TYPE_OID_DER) == spc_oid, "contentType is not SpcIndirectDataContent")
    digest = der.tlv(der.OCTET_STRING, hashlib.sha256(value).digest())
    expect(found.get(_oid_der(MESSAGE_DIGEST)) == digest, "messageDigest is not the content's hash")
    public = keyformats.rsa_public_of(cert)
    expect(public is not None, "the certificate holds no RSA key")
    signed = hashlib.sha256(b"\x31" + blob[attrs.offset + 1 : attrs.end]).digest()  # as the SET OF it is
    try:
        verify_digest(public, der.contents(blob, sig), signed, "sha256", "pkcs1v15")
    except SigningError as exc:
        raise VerificationError(
            "the Authenticode signature read back does not verify with the certificate's key",
            "the token key and the certificate differ, or the token returned a wrong signature",
        ) from exc


class AuthenticodeSignature(NamedTuple):
    """What ``verify`` found in one SignedData."""

    certificate: Any
    signing_time: datetime.datetime | None
    image_digest: bytes


def signed_digest(blob: bytes) -> bytes:
    """The Authenticode digest a SignedData claims (its DigestInfo), without checking anything."""
    return _parse(blob)[1]


def _parse(blob: bytes) -> tuple[Any, bytes, bytes]:
    """(SignedData, claimed image digest, SpcIndirectDataContent value octets)."""
    from asn1crypto import cms as acms

    from .. import der

    try:
        ci = acms.ContentInfo.load(blob)
        if ci["content_type"].native != "signed_data":
            raise VerificationError("the Authenticode blob is not a PKCS#7 SignedData")
        sd = ci["content"]
        eci = sd["encap_content_info"].dump()
        # ContentInfo { OID, [0] EXPLICIT SpcIndirectDataContent }, read from the original bytes
        # (lengths as BER allows them: firmware's OpenSSL reads them so)
        top = der.element(eci, 0, strict=False)
        parts = der.children(eci, top, strict=False)
        if top.tag != 0x30 or len(parts) != 2 or parts[0].tag != 0x06 or parts[1].tag != 0xA0:
            raise VerificationError("the signed content is not a ContentInfo with SpcIndirectDataContent")
        if der.raw(eci, parts[0]) != _oid_der(SPC_INDIRECT_DATA):
            raise VerificationError("the signed content is not SpcIndirectDataContent")
        seq = der.element(eci, parts[1].start, strict=False)
        if seq.tag != 0x30 or seq.end != parts[1].end:
            raise VerificationError("SpcIndirectDataContent is not one SEQUENCE")
        value = der.contents(eci, seq)
        spc = der.children(eci, seq, strict=False)
        if len(spc) != 2:
            raise VerificationError("SpcIndirectDataContent does not have two fields")
        digest_info = der.children(eci, spc[1], strict=False)
        algo = der.children(eci, digest_info[0], strict=False)
        if der.raw(eci, algo[0]) != SHA256_OID_DER:
            raise VerificationError("the Authenticode digest is not sha256", "sign with sha256")
        if digest_info[1].tag != 0x04:
            raise VerificationError("the Authenticode DigestInfo holds no OCTET STRING")
        claimed = der.contents(eci, digest_info[1])
        return sd, claimed, value
    except HsmsignError:
        raise
    except Exception as exc:  # noqa: BLE001 - asn1crypto raises ValueError, TypeError, KeyError, ...
        raise VerificationError(
            f"the Authenticode signature is malformed ({type(exc).__name__})",
            "the image's certificate table holds something that is not an Authenticode SignedData",
        ) from exc


def verify(blob: bytes, *, image_digest: bytes, trusted: Sequence[Any]) -> AuthenticodeSignature:
    """Check one SignedData against the image's digest and the trusted certificates."""
    try:
        return _verify(blob, image_digest, trusted)
    except HsmsignError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise VerificationError(
            f"the Authenticode signature is malformed ({type(exc).__name__})",
            "is the image's certificate table intact?",
        ) from exc


def _verify(blob: bytes, image_digest: bytes, trusted: Sequence[Any]) -> AuthenticodeSignature:
    from .. import der, keyformats
    from ..signing import verify_digest

    sd, claimed, value = _parse(blob)
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
    attr_der = der.tlv(der.SET, sattrs.contents)
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
