"""X.509 certificates and CSRs for token keys.

pyca/cryptography's ``CertificateBuilder`` and ``CertificateSigningRequestBuilder``
accept a Python object implementing ``RSAPrivateKey``/``EllipticCurvePrivateKey``
(checked with cryptography 48): ``hsmsign.keys.as_cryptography_key`` wraps the
token key, and the builder's one ``sign()`` call becomes one token operation.

A self-signed certificate is for development trust anchors (swupdate ``-k``, the
kernel's keyring for dm-verity in a test image); production certificates come
from a CA through ``csr``. What the verifiers need, and why each extension is set:

* swupdate (OpenSSL ``X509_PURPOSE_SMIME_SIGN`` by default, or ``codeSigning``
  with ``--cert-purpose codeSigning``): the extendedKeyUsage must name the
  purpose, keyUsage must allow digitalSignature.
* basicConstraints CA:FALSE and no keyCertSign (RFC 5280 4.2.1.3): OpenSSL 3.0
  and swupdate accept such a self-signed leaf as its own trust anchor (checked),
  and it cannot issue certificates that a verifier would take.
* The kernel finds keys by issuer+serial or subjectKeyIdentifier: both are set.
"""

from __future__ import annotations

import datetime
from typing import Any

from ..errors import ConfigError

EKU_NAMES = ("codeSigning", "emailProtection")
MAX_DAYS = 36525


def parse_subject(text: str) -> Any:
    """``CN=Acme firmware,O=Acme`` (RFC 4514, most significant last or first as written)."""
    from cryptography import x509

    text = text.strip()
    if text.startswith("/"):
        # OpenSSL's -subj form: /CN=x/O=y
        parts = [p for p in text.split("/") if p]
        text = ",".join(reversed(parts))
    if not text or "=" not in text:
        raise ConfigError(
            f"subject '{text}' is not a distinguished name", "e.g. --subject 'CN=Acme firmware,O=Acme'"
        )
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise ConfigError(
            f"subject '{text}' is not a valid distinguished name: {exc}",
            "e.g. --subject 'CN=Acme firmware,O=Acme' (escape commas inside values with \\,)",
        ) from exc
    if len(name) == 0:
        raise ConfigError("the subject is empty", "e.g. --subject 'CN=Acme firmware'")
    return name


def _eku(names: list[str]) -> Any:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    oids = {
        "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
        "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    }
    out = []
    for n in names:
        if n not in oids:
            raise ConfigError(f"extended key usage '{n}' is not known", f"use {' or '.join(EKU_NAMES)}")
        if oids[n] not in out:
            out.append(oids[n])
    return out


def _hash_for(signer: Any) -> Any:
    from cryptography.hazmat.primitives import hashes

    if signer.key_type == "ec" and signer.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


# How long before a signer certificate expires `hsmsign` starts to say so: an update is
# installed weeks after it is signed, and a device that checks certificate time refuses it
# from the expiry date on.
EXPIRY_WARNING_DAYS = 60


def validity_warnings(cert: Any, what: str, now: datetime.datetime | None = None) -> list[str]:
    """What to tell the signer about the validity period of ``cert`` (``what`` names it): not yet
    valid, expired, or expiring within ``EXPIRY_WARNING_DAYS``. Warnings, not refusals: RAUC and
    SWUpdate check certificate time through OpenSSL unless built or configured not to
    (``CONFIG_CMS_IGNORE_EXPIRED_CERTIFICATE``, ``use-bundle-signing-time``), and firmware and
    the kernel never do; the device's own check after signing (``rauc info``) decides."""
    now = now or _now()
    start, end = validity_period(cert)
    checks = "a device that checks certificate time (RAUC's and SWUpdate's default)"
    if now < start:
        return [
            f"{what} is not valid before {start:%Y-%m-%d %H:%M} UTC: {checks} refuses what it signs until "
            "then; is this machine's clock right?"
        ]
    if now >= end:
        return [
            f"{what} expired on {end:%Y-%m-%d}: {checks} refuses what it signs; renew it ('hsmsign cert', "
            "or 'hsmsign csr' for your CA) and give the devices the new certificate or its CA"
        ]
    left = end - now
    if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        days = -(-left // datetime.timedelta(days=1))  # started days: 9 days and 23 hours is 10
        return [
            f"{what} expires on {end:%Y-%m-%d}, in {days} day(s): from then on {checks} refuses what it "
            "signs, updates already shipped included; renew it and give the devices its successor in time"
        ]
    return []


def validity_period(cert: Any) -> tuple[datetime.datetime, datetime.datetime]:
    """(notBefore, notAfter) in UTC of a cryptography certificate (``*_utc`` since cryptography 42)."""
    start = getattr(cert, "not_valid_before_utc", None)
    end = getattr(cert, "not_valid_after_utc", None)
    if start is None or end is None:  # older cryptography: naive datetimes in UTC
        start = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
        end = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return start, end


def _now() -> datetime.datetime:
    # Not SOURCE_DATE_EPOCH: Yocto sets it to an old commit date, and a certificate whose validity
    # starts there would already have expired on the devices that check it.
    return datetime.datetime.now(tz=datetime.timezone.utc).replace(microsecond=0)


def self_signed(
    signer: Any,
    subject: str,
    *,
    days: int = 365,
    eku: list[str] | None = None,
    not_before: datetime.datetime | None = None,
) -> Any:
    """A self-signed certificate for the token key (one token signature)."""
    from cryptography import x509

    from ..keys import as_cryptography_key

    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"--days {days} is out of range", f"use 1..{MAX_DAYS}")
    name = parse_subject(subject)
    pub = signer.public_key()
    start = (not_before or _now()) - datetime.timedelta(minutes=5)
    ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _signing_key_usage(),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(_eku(eku or ["codeSigning", "emailProtection"])), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    cert = builder.sign(as_cryptography_key(signer), _hash_for(signer))
    _check_self_signature(cert)
    return cert


def _signing_key_usage() -> Any:
    """keyUsage of a signing-only key: digitalSignature, nothing else (critical where used)."""
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def csr(signer: Any, subject: str, *, eku: list[str] | None = None) -> Any:
    """A PKCS#10 request for the token key, to be signed by a real CA."""
    from cryptography import x509

    from ..keys import as_cryptography_key

    builder = x509.CertificateSigningRequestBuilder().subject_name(parse_subject(subject))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(_eku(eku)), critical=False)
    builder = builder.add_extension(
        _signing_key_usage(),
        critical=True,
    )
    req = builder.sign(as_cryptography_key(signer), _hash_for(signer))
    if not req.is_signature_valid:
        from ..errors import SigningError

        raise SigningError("the CSR's signature does not verify against the token key's public half")
    return req


def _check_self_signature(cert: Any) -> None:
    from ..errors import SigningError

    try:
        cert.verify_directly_issued_by(cert)
    except Exception as exc:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError
        raise SigningError("the new certificate's signature does not verify against the token key") from exc


def pem(obj: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(obj.public_bytes(serialization.Encoding.PEM))
