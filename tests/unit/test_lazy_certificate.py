"""``cms.LazyCertificate``: what ``hsmsign pe sign`` reads its certificate with, without
cryptography's X.509 module, answers as ``cryptography.x509.Certificate`` does."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hsmsign.errors import ConfigError, VerificationError
from hsmsign.formats import cms


def _cert(subject: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, issuer: str,
          signer: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, ca: bool) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def chain() -> tuple[x509.Certificate, x509.Certificate]:
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, "test CA", ca_key, ca=True)
    return ca, _cert("test db", leaf_key, "test CA", ca_key, ca=False)


def test_it_answers_as_cryptography_does(
    chain: tuple[x509.Certificate, x509.Certificate], tmp_path: Path
) -> None:
    _, leaf = chain
    der = leaf.public_bytes(serialization.Encoding.DER)
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    # as `openssl x509 -text` writes it: text first, and a key block before the certificate
    path = tmp_path / "db.pem"
    path.write_bytes(
        b"Certificate:\n    Data: ...\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n" + pem
    )
    for lazy in (cms.LazyCertificate(der), cms.read_certificate_file(str(path), lazy=True)):
        assert isinstance(lazy, cms.LazyCertificate)
        assert lazy.public_bytes(serialization.Encoding.DER) == der
        assert lazy.public_bytes(serialization.Encoding.PEM) == pem
        assert lazy.public_key() == leaf.public_key()
        assert lazy.subject == leaf.subject and lazy.serial_number == leaf.serial_number
        assert lazy == leaf and hash(lazy) == hash(cms.LazyCertificate(der))
        assert cms.full_certificate(lazy) == leaf


def test_trust_by_issuance_with_lazy_certificates(chain: tuple[x509.Certificate, x509.Certificate]) -> None:
    ca, leaf = chain
    lazy_ca = cms.LazyCertificate(ca.public_bytes(serialization.Encoding.DER))
    lazy_leaf = cms.LazyCertificate(leaf.public_bytes(serialization.Encoding.DER))
    for anchor in (ca, lazy_ca):
        cms._check_trust(lazy_leaf, [anchor])  # issued by the anchor: trusted
    cms._check_trust(lazy_leaf, [lazy_leaf])  # the anchor itself
    with pytest.raises(VerificationError, match=r"\(CN=test CA\) is not trusted"):
        cms._check_trust(lazy_ca, [lazy_leaf])


@pytest.mark.parametrize(
    "content",
    [
        b"garbage\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"\x30\x03\x02\x01\x01",
    ],
)
def test_what_is_no_certificate_is_one_config_error(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="is not a PEM or DER X.509 certificate"):
        cms.read_certificate_file(str(path), lazy=True)


def test_an_rsa_certificate_holds_its_numbers() -> None:
    """An RSA key (what Secure Boot signs with) is read without cryptography: its numbers, the
    same key cryptography gives on first use, and a token key matches it by those numbers."""
    key = rsa.generate_private_key(65537, 2048)
    other = rsa.generate_private_key(65537, 2048)
    cert = _cert("test db", key, "test db", key, ca=False)
    lazy = cms.LazyCertificate(cert.public_bytes(serialization.Encoding.DER))
    numbers = key.public_key().public_numbers()
    assert lazy.rsa_public is not None and (lazy.rsa_public.n, lazy.rsa_public.e) == (numbers.n, numbers.e)
    assert lazy.public_key() == key.public_key()
    cms.check_cert_matches(lazy, key)
    cms.check_cert_matches(cert, key)
    for certificate in (lazy, cert):
        with pytest.raises(ConfigError, match="does not belong to the token key"):
            cms.check_cert_matches(certificate, other)
    with pytest.raises(ConfigError, match="does not belong to the token key"):
        cms.check_cert_matches(lazy, ec.generate_private_key(ec.SECP256R1()))
