"""Detached CMS SignedData (RFC 5652) around one token signature.

What ``openssl cms -sign -binary -outform DER -nosmimecap -signer CERT`` writes,
built here with asn1crypto so the private key can stay in the token:

* ContentInfo(signedData) with SignedData version 1, one digest algorithm,
  ``encapContentInfo`` = id-data *without* eContent (detached),
  the signer certificate (plus any chain certificates) in ``certificates``;
* one SignerInfo identified by issuer and serial number, with the signed
  attributes contentType (id-data), signingTime and messageDigest;
* the token signs the digest of the DER ``SET OF`` signed attributes: one
  token operation, whatever the size of the content.

``signed_attrs=False`` gives the shape of ``openssl smime -sign -noattr``: the
signature is over the content digest itself. The kernel's PKCS#7 parser
(``crypto/asymmetric_keys/pkcs7_verify.c``, used by dm-verity's
``root_hash_sig_key_desc`` and ``veritysetup open --root-hash-signature``)
accepts both shapes; cryptsetup's documentation uses ``-noattr``.

Algorithm identifiers as OpenSSL writes them (so an RSA PKCS#1 v1.5 signature is
byte-identical to OpenSSL's): SHA-2 digest algorithms without parameters, RSA PKCS#1 v1.5 ->
``rsaEncryption`` with NULL parameters, RSA-PSS -> ``rsassaPss`` with explicit parameters (salt =
digest length), ECDSA -> ``ecdsa-with-SHA256/384/512``.

The signed attributes are DER-sorted (X.690 11.6): OpenSSL re-encodes them
before checking the signature, so an unsorted SET would not verify.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..errors import ConfigError, VerificationError, printable
from ..settings import source_date_epoch

HASH_OIDS = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
DIGEST_SIZE = {"sha256": 32, "sha384": 48, "sha512": 64}


def signing_time() -> datetime.datetime:
    """Now, or ``SOURCE_DATE_EPOCH`` when set (reproducible builds)."""
    sde = source_date_epoch()
    if sde is not None:
        try:
            return datetime.datetime.fromtimestamp(sde, tz=datetime.timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise ConfigError(
                f"SOURCE_DATE_EPOCH={sde} is out of range", "unset it or give seconds since 1970"
            ) from exc
    return datetime.datetime.now(tz=datetime.timezone.utc).replace(microsecond=0)


def _cms_time(when: datetime.datetime) -> Any:
    """asn1crypto's Time of ``hsmsign.der.time`` (RFC 5652 11.3: UTCTime for 1950..2049,
    GeneralizedTime otherwise), the one place that rule is written."""
    from asn1crypto import cms

    from .. import der

    return cms.Time.load(der.time(when))


def load_certificate(data: bytes, what: str = "certificate") -> Any:
    """A cryptography ``x509.Certificate`` from PEM or DER bytes."""
    from cryptography import x509

    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(
            f"{what} is not a PEM or DER X.509 certificate",
            "create one with 'hsmsign cert' or get it from your CA",
        ) from exc


def load_certificates(data: bytes, what: str = "certificate file") -> list[Any]:
    """All certificates in a PEM bundle (or the one DER certificate)."""
    from cryptography import x509

    if b"-----BEGIN" not in data:
        return [load_certificate(data, what)]
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{what} holds no readable PEM certificate") from exc
    return list(certs)


def read_certificate_file(path: str, lazy: bool = False) -> Any:
    """The certificate in a PEM or DER file; ``lazy``: a :class:`LazyCertificate`."""
    from ..atomic import read_input

    if not os.path.exists(path):
        raise ConfigError(
            f"cannot read certificate {path}: No such file or directory",
            "create one with 'hsmsign cert --uri URI --subject CN=... --output CERT.pem'",
        )
    data = read_input(path, "certificate")
    if not lazy:
        return load_certificate(data, f"{path}")
    try:
        return LazyCertificate(_certificate_der(data))
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not a PEM or DER X.509 certificate",
            "create one with 'hsmsign cert' or get it from your CA",
        ) from exc


def _certificate_der(data: bytes) -> bytes:
    """The DER of the first certificate in PEM (as cryptography's loader picks it), or ``data``.

    RFC 7468: the first ``CERTIFICATE`` (or ``X509 CERTIFICATE``) block, its BEGIN and END
    labels the same, base64 between them in lines (spaces and tabs allowed, no empty line and
    no RFC 1421 headers, which no certificate has). ``ValueError`` otherwise."""
    if b"-----BEGIN" not in data:
        return data
    import binascii
    import re

    for block in re.finditer(rb"-----BEGIN ([A-Z0-9 ]+)-----[ \t\r\n]*(.*?)-----END \1-----", data, re.S):
        if block.group(1) not in (b"CERTIFICATE", b"X509 CERTIFICATE"):
            continue
        body = block.group(2).strip()
        if re.search(rb"\n[ \t\r]*\n", body):
            raise ValueError("an empty line or a header in the CERTIFICATE block")
        body = re.sub(rb"[ \t\r\n]", b"", body)
        # base64.b64decode(body, validate=True), without importing base64
        if not re.fullmatch(rb"[A-Za-z0-9+/]*={0,2}", body):
            raise ValueError("the CERTIFICATE block is not base64")
        try:
            return binascii.a2b_base64(body)
        except binascii.Error as exc:
            raise ValueError("the CERTIFICATE block is not base64") from exc
    raise ValueError("no CERTIFICATE block")


def read_certificate(der_bytes: bytes) -> tuple[bytes, bytes, bytes]:
    """(issuer, serial number, SubjectPublicKeyInfo) of a DER X.509 certificate, each as its
    DER element; ``ValueError`` unless it is one Certificate (RFC 5280 4.1) and nothing else.

    Read without asn1crypto (``hsmsign.der``); the issuer must be a Name (RDNs of type and
    value), the serial number an INTEGER in its fewest bytes."""
    from .. import der

    cert = der.whole(der_bytes, der.SEQUENCE)
    tbs, _algorithm, _signature = der.fields(der_bytes, cert, der.SEQUENCE, der.SEQUENCE, der.BIT_STRING)
    parts = der.children(der_bytes, tbs)
    if parts and parts[0].tag == 0xA0:  # [0] EXPLICIT version
        parts = parts[1:]
    wanted = (der.INTEGER, der.SEQUENCE, der.SEQUENCE, der.SEQUENCE, der.SEQUENCE, der.SEQUENCE)
    if tuple(p.tag for p in parts[:6]) != wanted:
        raise ValueError("not an X.509 TBSCertificate")
    serial, _sig_alg, issuer, _validity, _subject, spki = parts[:6]
    der.read_integer(der_bytes, serial)
    for rdn in der.children(der_bytes, issuer):
        if rdn.tag != der.SET:
            raise ValueError("an issuer name that is not a sequence of sets")
        for atv in der.children(der_bytes, rdn):
            if atv.tag != der.SEQUENCE or len(der.children(der_bytes, atv)) != 2:
                raise ValueError("an issuer name attribute that is not a type and a value")
            if der.children(der_bytes, atv)[0].tag != der.OID:
                raise ValueError("an issuer name attribute without a type")
    return der.raw(der_bytes, issuer), der.raw(der_bytes, serial), der.raw(der_bytes, spki)


class LazyCertificate:
    """An X.509 certificate that loads pyca/cryptography's X.509 module only when needed.

    Signing and checking one signature use a certificate's DER bytes, its public key and
    its issuer and serial number: :func:`read_certificate` (without asn1crypto) and
    cryptography's key loader give them, which spares ``hsmsign pe sign`` the import of
    ``cryptography.x509`` and asn1crypto. The fields read are checked when it is made
    (``ValueError`` otherwise); anything else (subject, ``verify_directly_issued_by``
    ...) comes from the full ``cryptography.x509.Certificate``, loaded on first use.
    """

    def __init__(self, der: bytes) -> None:
        from .. import keyformats

        _issuer, _serial, spki = read_certificate(der)  # checked here: a broken one fails now
        # an RSA key in the form cryptography writes: its numbers (keyformats.RsaPublicKey), and
        # cryptography's key made on first use; any other key is loaded by cryptography now
        self.rsa_public = keyformats.rsa_public_from_spki(spki)
        self._public_key: Any = None
        if self.rsa_public is None:
            from cryptography.exceptions import UnsupportedAlgorithm

            try:
                self._public_key = keyformats.load_der_public_key(spki)
            except UnsupportedAlgorithm as exc:
                raise ValueError(f"a public key of a type cryptography does not know ({exc})") from exc
        self.der = bytes(der)
        self._full: Any = None

    def public_bytes(self, encoding: Any) -> bytes:
        from .. import keyformats

        if encoding == keyformats.Encoding.DER:
            return self.der
        return bytes(self.x509().public_bytes(encoding))

    def public_key(self) -> Any:
        if self._public_key is None and self.rsa_public is not None:
            self._public_key = self.rsa_public.to_cryptography()
        return self._public_key

    def x509(self) -> Any:
        """The full ``cryptography.x509.Certificate``."""
        if self._full is None:
            from cryptography import x509

            try:
                self._full = x509.load_der_x509_certificate(self.der)
            except (ValueError, x509.InvalidVersion) as exc:
                raise VerificationError(f"a certificate is malformed: {printable(str(exc), 200)}") from exc
        return self._full

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.x509(), name)

    def __eq__(self, other: object) -> bool:
        if getattr(other, "public_bytes", None) is None:
            return NotImplemented
        return certificate_der(other) == self.der

    def __hash__(self) -> int:
        return hash(self.der)


def full_certificate(cert: Any) -> Any:
    """The ``cryptography.x509.Certificate`` of ``cert`` (a :class:`LazyCertificate` or one already)."""
    return cert.x509() if isinstance(cert, LazyCertificate) else cert


def certificate_der(cert: Any) -> bytes:
    """The DER of a certificate, a :class:`LazyCertificate` or cryptography's."""
    if isinstance(cert, LazyCertificate):
        return cert.der
    from .. import keyformats

    return bytes(cert.public_bytes(keyformats.Encoding.DER))


def _spki(public_key: Any) -> bytes:
    from .. import keyformats

    return public_key.public_bytes(keyformats.Encoding.DER, keyformats.PublicFormat.SubjectPublicKeyInfo)


def check_cert_matches(cert: Any, signer: Any) -> None:
    """The certificate must carry the token key's public half."""
    from .. import keyformats

    theirs, ours = keyformats.rsa_public_of(cert), keyformats.rsa_public_of(signer)
    if theirs is not None or ours is not None:
        same = theirs == ours  # RSA: the same numbers
    else:
        same = _spki(cert.public_key()) == _spki(signer.public_key())
    if not same:
        raise ConfigError(
            "the certificate does not belong to the token key (public keys differ)",
            "use the certificate made for this key ('hsmsign cert --uri ...'), or the key it names",
        )


def _signature_algorithm(signer: Any, hash_alg: str, scheme: str | None) -> Any:
    from asn1crypto import algos, core

    if signer.key_type == "rsa":
        if scheme == "pss":
            params = algos.RSASSAPSSParams(
                {
                    "hash_algorithm": {"algorithm": hash_alg},
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": hash_alg}},
                    "salt_length": DIGEST_SIZE[hash_alg],
                    "trailer_field": "trailer_field_bc",
                }
            )
            return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params})
        # rsaEncryption with NULL parameters (RFC 8017 A.1), as OpenSSL writes it
        return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()})
    if signer.key_type == "ec":
        return algos.SignedDigestAlgorithm({"algorithm": f"{hash_alg}_ecdsa"})
    raise ConfigError(f"{signer.key_type} keys cannot sign CMS here", "use an RSA or ECDSA key")


def _attr_set_der(attrs: list[Any]) -> bytes:
    """DER of ``SET OF Attribute`` with members sorted by their encoding (X.690 11.6)."""
    encoded = sorted(a.dump(force=True) for a in attrs)
    body = b"".join(encoded)
    return _tlv(0x31, body)


def sign_detached(
    signer: Any,
    *,
    cert: Any,
    content: bytes | None = None,
    content_digest: bytes | None = None,
    hash_alg: str = "sha256",
    scheme: str | None = None,
    signed_attrs: bool = True,
    include_certs: bool = True,
    extra_certs: Sequence[Any] = (),
    when: datetime.datetime | None = None,
    like_openssl: bool = False,
    like_kernel: bool = False,
) -> bytes:
    """DER ContentInfo(SignedData), detached, signed with one token operation.

    Give either ``content`` or its ``content_digest`` (streamed by the caller for
    large files). ``cert`` is a cryptography certificate for the token key. The result is
    verified before it is returned, also by the rules of the device's verifier when
    ``like_openssl`` or ``like_kernel`` says which (see ``verify_detached``).
    """
    from asn1crypto import algos, cms, x509

    from ..signing import ecdsa_raw_to_der

    hash_alg = hash_alg.lower()
    if hash_alg not in HASH_OIDS:
        raise ConfigError(f"hash '{hash_alg}' is not supported for CMS", "use sha256, sha384 or sha512")
    if signer.key_type != "rsa" and scheme not in (None, "ecdsa"):
        raise ConfigError(f"scheme '{scheme}' does not apply to a {signer.key_type} key")
    if (content is None) == (content_digest is None):
        raise ConfigError("give the content or its digest, not both")  # programming error guard
    if content_digest is None:
        assert content is not None  # noqa: S101 - checked above
        content_digest = hashlib.new(hash_alg, content).digest()
    if len(content_digest) != DIGEST_SIZE[hash_alg]:
        raise ConfigError(f"a {hash_alg} digest has {DIGEST_SIZE[hash_alg]} bytes, not {len(content_digest)}")
    check_cert_matches(cert, signer)

    a_cert = x509.Certificate.load(certificate_der(cert))
    # SHA-2 identifiers without parameters (RFC 5754 2), as OpenSSL writes them
    digest_algo = algos.DigestAlgorithm({"algorithm": hash_alg, "parameters": None})
    sid = cms.SignerIdentifier(
        {
            "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                {"issuer": a_cert.issuer, "serial_number": a_cert.serial_number}
            )
        }
    )

    if signed_attrs:
        attrs = [
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute({"type": "signing_time", "values": [_cms_time(when or signing_time())]}),
            cms.CMSAttribute({"type": "message_digest", "values": [content_digest]}),
        ]
        attr_der = _attr_set_der(attrs)
        to_sign = hashlib.new(hash_alg, attr_der).digest()
        # the [0] IMPLICIT form in SignerInfo is the same bytes with tag 0xA0
        signed = cms.CMSAttributes.load(attr_der)
    else:
        to_sign = content_digest
        signed = None

    raw = signer.sign_digest(to_sign, hash_alg, scheme if signer.key_type == "rsa" else None)
    signature = ecdsa_raw_to_der(raw) if signer.key_type == "ec" else raw

    info: dict[str, Any] = {
        "version": "v1",
        "sid": sid,
        "digest_algorithm": digest_algo,
        "signature_algorithm": _signature_algorithm(signer, hash_alg, scheme),
        "signature": signature,
    }
    if signed is not None:
        info["signed_attrs"] = signed
    certs: list[Any] = []
    if include_certs:
        certs = [a_cert] + [
            x509.Certificate.load(certificate_der(c)) for c in extra_certs
        ]
    sd: dict[str, Any] = {
        "version": "v1",
        "digest_algorithms": [digest_algo],
        "encap_content_info": {"content_type": "data"},
        "signer_infos": [cms.SignerInfo(info)],
    }
    if certs:
        sd["certificates"] = [cms.CertificateChoices({"certificate": c}) for c in certs]
    ci = cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData(sd)})
    der = ci.dump()
    # Check what we wrote through an independent parse (and our verifier) before anyone sees it.
    verify_detached(
        der,
        content_digest=content_digest,
        hash_alg=hash_alg,
        trusted=[cert],
        like_openssl=like_openssl,
        like_kernel=like_kernel,
    )
    return der


class CmsSignerResult(NamedTuple):
    """What ``verify_detached`` found: the signer certificate and the signing time (if signed)."""

    certificate: Any
    signing_time: datetime.datetime | None
    hash_alg: str


def parse(der: bytes) -> Any:
    """asn1crypto SignedData from DER (or PEM); VerificationError if malformed."""
    from asn1crypto import cms, pem

    try:
        if pem.detect(der):
            _, _, der = pem.unarmor(der)
        ci = cms.ContentInfo.load(der, strict=True)
        if ci["content_type"].native != "signed_data":
            raise VerificationError(f"the CMS object is {ci['content_type'].native}, not signed data")
        sd = ci["content"]
        sd.native  # noqa: B018 - forces a full parse now, so lazy parse errors surface here
        return sd
    except VerificationError:
        raise
    except Exception as exc:  # noqa: BLE001 - asn1crypto raises ValueError, TypeError, KeyError, ...
        raise VerificationError(
            "the signature file is not a DER CMS/PKCS#7 SignedData",
            "is it the .sig/.p7s file? DER, not PEM or base64",
        ) from exc


def verify_detached(
    der: bytes,
    *,
    content: bytes | None = None,
    content_digest: bytes | None = None,
    content_path: str | None = None,
    hash_alg: str | None = None,
    trusted: Sequence[Any] = (),
    like_openssl: bool = False,
    like_kernel: bool = False,
) -> CmsSignerResult:
    """Check a detached SignedData against content and trusted certificates.

    Trust: the signer certificate (from the message, or from ``trusted`` when the
    message carries none) must be one of ``trusted`` (same DER) or be directly
    issued by one of them. Every digest algorithm the SignedData lists must be one hsmsign
    accepts, the signer's among them.

    ``like_openssl``: also what OpenSSL's ``CMS_verify`` requires, which rauc, swupdate and
    ``openssl cms -verify`` run: the signer certificate is among the message's own, and
    a self-signed signer is one of ``trusted`` byte for byte (OpenSSL trusts a
    self-signed certificate only by its identity). The kernel finds the signer in its
    keyring and checks a certificate's signature, so module and dm-verity signatures
    leave the certificate out and are checked without it. This is hsmsign's own check;
    tests also run ``openssl cms -verify``. Malformed input raises ``VerificationError`` only.

    ``like_kernel``: also what the kernel's PKCS#7 parser requires (module signatures,
    dm-verity root-hash signatures): see ``check_kernel_rules``.
    """
    from ..errors import HsmsignError

    if like_openssl and like_kernel:
        raise ValueError("a signature is checked like OpenSSL or like the kernel, not both")
    try:
        return _verify_detached(
            der, content, content_digest, content_path, hash_alg, trusted, like_openssl, like_kernel
        )
    except HsmsignError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        # asn1crypto parses lazily: a malformed inner field surfaces when it is first read
        raise VerificationError(
            f"the CMS signature is malformed ({type(exc).__name__})",
            "is it the right .sig/.p7s file, complete and in DER?",
        ) from exc


def _verify_detached(
    der: bytes,
    content: bytes | None,
    content_digest: bytes | None,
    content_path: str | None,
    hash_alg: str | None,
    trusted: Sequence[Any],
    like_openssl: bool = False,
    like_kernel: bool = False,
) -> CmsSignerResult:
    from cryptography import x509

    from ..signing import hash_file, verify_digest

    sd = parse(der)
    infos = sd["signer_infos"]
    if len(infos) != 1:
        raise VerificationError(f"the CMS signature has {len(infos)} signers; hsmsign expects exactly one")
    si = infos[0]
    if like_kernel:
        check_kernel_rules(sd, si)
    h = si["digest_algorithm"]["algorithm"].native
    if h not in HASH_OIDS:
        raise VerificationError(f"the CMS digest algorithm {h} is not accepted", "sign with sha256/384/512")
    kind = sd["encap_content_info"]["content_type"].native
    if kind != "data":
        # OpenSSL (swupdate) and the kernel accept only id-data here, whatever the attributes say
        raise VerificationError(
            f"the CMS signature's content type is {printable(str(kind), 60)}, not id-data",
            "the signature is damaged; sign again",
        )
    check_listed_digests(sd, h, HASH_OIDS)
    if hash_alg is not None and h != hash_alg:
        raise VerificationError(f"the CMS signature uses {h}, expected {hash_alg}")
    if content_digest is None:
        if content is not None:
            content_digest = hashlib.new(h, content).digest()
        elif content_path is not None:
            content_digest = hash_file(content_path, h)
        else:
            raise ConfigError("nothing to verify the signature against")

    candidates: list[Any] = []
    for choice in sd["certificates"] or []:
        if choice.name == "certificate":
            try:
                candidates.append(x509.load_der_x509_certificate(choice.chosen.dump()))
            except (ValueError, x509.InvalidVersion) as exc:
                raise VerificationError(f"the CMS signature carries a malformed certificate: {exc}") from exc
    sid = si["sid"]
    if like_openssl:
        signer_cert = signer_from_message(sid, candidates)
    else:
        signer_cert = find_signer(sid, [*candidates, *trusted], exact=like_kernel)

    when = None
    sattrs = si["signed_attrs"]
    if sattrs.native is not None and len(sattrs):
        found: dict[str, Any] = {}
        for attr in sattrs:
            found[attr["type"].native] = attr["values"][0]
        if found.get("content_type") is None or found["content_type"].native != "data":
            raise VerificationError("the signed attributes lack contentType id-data")
        md = found.get("message_digest")
        if md is None or md.native != content_digest:
            raise VerificationError(
                "the content does not match the signature (messageDigest differs)",
                "the file was changed after signing, or this is another file's signature",
            )
        if found.get("signing_time") is not None:
            when = found["signing_time"].native
        # the signature covers the original bytes re-tagged as SET (RFC 5652 5.4), never a re-encoding
        attr_der = _tlv(0x31, sattrs.contents)
        signed_digest = hashlib.new(h, attr_der).digest()
    else:
        signed_digest = content_digest

    algo = si["signature_algorithm"]
    name = algo["algorithm"].native
    check_signer_parameters(si, signature_takes_parameters=name == "rsassa_pss")
    scheme: str | None = None
    sig = si["signature"].native
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    pub = signer_cert.public_key()
    if name in ("rsassa_pkcs1v15", f"{h}_rsa"):
        scheme = "pkcs1v15"
        ok_type = isinstance(pub, rsa.RSAPublicKey)
    elif name == "rsassa_pss":
        params = algo["parameters"]
        if (
            params["hash_algorithm"]["algorithm"].native != h
            or params["salt_length"].native != DIGEST_SIZE[h]
        ):
            raise VerificationError(
                "RSA-PSS parameters differ from the digest algorithm (hsmsign expects "
                "hash = MGF1 hash = digest algorithm, salt = digest length)"
            )
        scheme = "pss"
        ok_type = isinstance(pub, rsa.RSAPublicKey)
    elif name == f"{h}_ecdsa":
        ok_type = isinstance(pub, ec.EllipticCurvePublicKey)
    else:
        raise VerificationError(f"signature algorithm {name} is not accepted with {h}")
    if not ok_type:
        raise VerificationError(f"signature algorithm {name} does not match the certificate's key type")
    from ..errors import SigningError

    try:
        verify_digest(pub, sig, signed_digest, h, scheme, raw_ecdsa=False)
    except SigningError as exc:
        raise VerificationError(
            "the CMS signature does not verify with the signer certificate's key"
        ) from exc

    _check_trust(signer_cert, trusted, identity_if_self_signed=like_openssl)
    return CmsSignerResult(signer_cert, when, h)


def check_listed_digests(sd: Any, signer_digest: str, accepted: Any) -> None:
    """SignedData.digestAlgorithms: each one known, the signer's among them. OpenSSL hashes
    the content with each listed algorithm and fails on one it does not know, or on a
    list it cannot parse."""
    try:
        listed = [a["algorithm"].native for a in sd["digest_algorithms"]]
        if any(a["parameters"].native is not None for a in sd["digest_algorithms"]):
            raise ValueError("SHA-2 takes no parameters")  # a NULL or nothing; OpenSSL refuses others
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise VerificationError(
            f"the signature's list of digest algorithms is malformed ({type(exc).__name__})",
            "the signature is damaged; sign again",
        ) from exc
    if signer_digest not in listed or any(a not in accepted for a in listed):
        raise VerificationError(
            f"the signature lists digest algorithms {', '.join(printable(str(a), 40) for a in listed)}; "
            f"they must be ones hsmsign accepts and include the signer's ({signer_digest})",
            "the signature is damaged; sign again",
        )


def check_kernel_rules(sd: Any, si: Any) -> None:
    """The versions the kernel's PKCS#7 parser accepts (``pkcs7_note_signeddata_version`` and
    ``pkcs7_note_signerinfo_version`` in ``crypto/asymmetric_keys/pkcs7_parser.c``): SignedData
    version 1 with SignerInfo version 1 (signer named by issuer and serial), or 3 with 3 (by
    subject key identifier). The kernel refuses anything else (EINVAL or EBADMSG), so a module
    would not load and a dm-verity device would not open."""
    sd_version, si_version = sd["version"].contents, si["version"].contents
    if sd_version not in (b"\x01", b"\x03") or si_version not in (b"\x01", b"\x03"):
        raise VerificationError(
            f"the signature's SignedData version ({_int_text(sd_version)}) or SignerInfo version "
            f"({_int_text(si_version)}) is not 1 or 3, which is all the kernel accepts",
            "the signature is damaged; sign again",
        )
    expected = "issuer_and_serial_number" if si_version == b"\x01" else "subject_key_identifier"
    if sd_version != si_version or si["sid"].name != expected:
        raise VerificationError(
            f"the signature's versions do not match: SignedData {sd_version[0]}, SignerInfo "
            f"{si_version[0]} naming its signer by {si['sid'].name.replace('_', ' ')}; the kernel "
            "accepts 1, 1, issuer and serial number, or 3, 3, subject key identifier",
            "the signature is damaged; sign again",
        )


def _int_text(contents: bytes) -> str:
    return str(int.from_bytes(contents, "big", signed=True)) if 0 < len(contents) <= 8 else "malformed"


def check_signer_parameters(si: Any, *, signature_takes_parameters: bool = False) -> None:
    """A SignerInfo's digest algorithm takes no parameters (SHA-2: NULL or none), nor does its
    signature algorithm unless it is RSA-PSS; OpenSSL refuses a message where they do."""
    if si["digest_algorithm"]["parameters"].native is not None or (
        not signature_takes_parameters and si["signature_algorithm"]["parameters"].native is not None
    ):
        raise VerificationError(
            "the signer's algorithms carry parameters they do not take",
            "the signature is damaged; sign again",
        )


def signer_from_message(sid: Any, certificates: Sequence[Any]) -> Any:
    """The signer's certificate among the signature's own, where OpenSSL's CMS_verify and
    PKCS7_verify (rauc, swupdate, sbverify, UEFI firmware) look for it, and nowhere else."""
    try:
        return find_signer(sid, certificates)
    except VerificationError as exc:
        raise VerificationError(
            "the signer's certificate is not among the signature's own certificates",
            "OpenSSL on the device (rauc, swupdate, UEFI firmware) looks for the signer only there "
            "('signer certificate not found'); sign it again with its certificate",
        ) from exc


def _check_trust(cert: Any, trusted: Sequence[Any], *, identity_if_self_signed: bool = False) -> None:

    if not trusted:
        raise ConfigError("no trusted certificate given", "pass the certificate you trust (--cert CERT.pem)")
    der = certificate_der(cert)
    for anchor in trusted:
        if certificate_der(anchor) == der:
            return
    for anchor in trusted:
        try:
            full_certificate(cert).verify_directly_issued_by(full_certificate(anchor))
        except Exception:  # noqa: BLE001, S112 - ValueError/TypeError/InvalidSignature: try the next anchor
            continue
        if identity_if_self_signed and cert.issuer == cert.subject:
            raise VerificationError(
                f"the signer certificate ({printable(cert.subject.rfc4514_string())}) is self-signed and "
                "differs from the trusted certificate of that name and key",
                "OpenSSL on the device trusts a self-signed certificate only byte for byte "
                "('self-signed certificate'): the certificate in the signature was changed; sign again",
            )
        return
    raise VerificationError(
        f"the signer certificate ({printable(cert.subject.rfc4514_string())}) is not trusted",
        "it is neither one of the trusted certificates nor issued by one of them",
    )


def find_signer(sid: Any, candidates: Any, *, exact: bool = False) -> Any:
    """The certificate among ``candidates`` that a SignerInfo's ``sid`` names (issuer and
    serial, or subject key identifier); VerificationError when none does.

    OpenSSL compares issuer names as RFC 5280 does (case and spaces folded); ``exact`` compares
    the issuer's and the serial's encoded bytes, as the kernel looks a key up in its keyring
    (``asymmetric_key_generate_id`` from the raw issuer and serial)."""

    for c in candidates:
        ac = _asn1_certificate(certificate_der(c))
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            if exact:
                if (
                    ias["serial_number"].contents == ac["tbs_certificate"]["serial_number"].contents
                    and ias["issuer"].dump() == ac.issuer.dump()
                ):
                    return c
            # serial first and the issuer's bytes before asn1crypto's (costly) normalised comparison
            elif ias["serial_number"].native == ac.serial_number and (
                ias["issuer"].dump() == ac.issuer.dump() or ias["issuer"] == ac.issuer
            ):
                return c
        elif sid.name == "subject_key_identifier" and ac.key_identifier == sid.chosen.native:
            return c
    raise VerificationError(
        "the signer's certificate is neither in the signature nor among the trusted ones",
        "pass the signer certificate (--cert)",
    )


@functools.lru_cache(maxsize=64)
def _asn1_certificate(der: bytes) -> Any:
    """asn1crypto's view of a certificate, parsed once per process (batches verify with the same one)."""
    from asn1crypto import x509 as ax509

    return ax509.Certificate.load(der)


class DetachedSigner:
    """Many detached signatures without signed attributes or certificates, one key and certificate.

    What ``sign_detached(..., signed_attrs=False, include_certs=False)`` writes, byte for byte
    (tests compare them), for batches such as the modules of a kernel: the DER around the
    signature (signer identifier, algorithm identifiers) is built once, and the first signature
    is checked through ``verify_detached``; after that each signature is one token operation
    (which the token layer checks against the public key) and a few byte joins.
    """

    def __init__(self, signer: Any, cert: Any, hash_alg: str = "sha256") -> None:
        from asn1crypto import algos, cms

        hash_alg = hash_alg.lower()
        if hash_alg not in HASH_OIDS:
            raise ConfigError(f"hash '{hash_alg}' is not supported for CMS", "use sha256, sha384 or sha512")
        check_cert_matches(cert, signer)
        self.signer, self.cert, self.hash_alg = signer, cert, hash_alg
        a_cert = _asn1_certificate(certificate_der(cert))
        ias = cms.IssuerAndSerialNumber({"issuer": a_cert.issuer, "serial_number": a_cert.serial_number})
        self._digest_algo = algos.DigestAlgorithm({"algorithm": hash_alg, "parameters": None}).dump()
        self._signer_head = (
            b"\x02\x01\x01"  # version 1
            + ias.dump()
            + self._digest_algo
            + _signature_algorithm(signer, hash_alg, None).dump()
        )
        self._checked = False

    def sign(self, content_digest: bytes) -> bytes:
        """DER ContentInfo(SignedData) over a content digest: one token operation."""
        from ..signing import ecdsa_raw_to_der

        if len(content_digest) != DIGEST_SIZE[self.hash_alg]:
            raise ConfigError(f"a {self.hash_alg} digest has {DIGEST_SIZE[self.hash_alg]} bytes")
        raw = self.signer.sign_digest(content_digest, self.hash_alg, None)
        signature = ecdsa_raw_to_der(raw) if self.signer.key_type == "ec" else raw
        signer_info = _tlv(0x30, self._signer_head + _tlv(0x04, signature))
        signed_data = _tlv(
            0x30,
            b"\x02\x01\x01"  # version 1
            + _tlv(0x31, self._digest_algo)
            + _tlv(0x30, _ID_DATA)  # encapContentInfo: id-data, no eContent (detached)
            + _tlv(0x31, signer_info),
        )
        der = _tlv(0x30, _ID_SIGNED_DATA + _tlv(0xA0, signed_data))
        if not self._checked:
            # this shape is the kernel's (module signatures): checked by its rules too
            verify_detached(
                der,
                content_digest=content_digest,
                hash_alg=self.hash_alg,
                trusted=[self.cert],
                like_kernel=True,
            )
            self._checked = True
        return der


_ID_DATA = bytes.fromhex("06092a864886f70d010701")  # OID 1.2.840.113549.1.7.1
_ID_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")  # OID 1.2.840.113549.1.7.2


def _tlv(tag: int, body: bytes) -> bytes:
    from ..der import tlv

    return tlv(tag, body)
