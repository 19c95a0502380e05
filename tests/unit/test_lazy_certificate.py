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


def _pem_variants(pem: bytes) -> dict[str, bytes]:
    body = pem.split(b"\n", 1)[1].rsplit(b"-----END", 1)[0]
    return {
        "as written": pem,
        "CRLF": pem.replace(b"\n", b"\r\n"),
        "X509 CERTIFICATE": pem.replace(b"CERTIFICATE", b"X509 CERTIFICATE"),
        "TRUSTED CERTIFICATE": pem.replace(b"CERTIFICATE", b"TRUSTED CERTIFICATE"),
        "one line": b"-----BEGIN CERTIFICATE-----\n"
        + body.replace(b"\n", b"")
        + b"\n-----END CERTIFICATE-----\n",
        "spaces after BEGIN": pem.replace(b"-----\n", b"-----  \n", 1),
        "a tab in a line": pem.replace(b"M", b"\tM", 1),
        "indented": b"\n".join(b"  " + line for line in pem.split(b"\n")),
        "no final newline": pem.rstrip(),
        "text before": b"subject=CN = x\n" + pem,
        "text after": pem + b"garbage",
        "two certificates": pem + pem,
        "BEGIN line runs on": pem.replace(b"-----\n", b"-----", 1),
        "not base64": pem.replace(b"M", b"*", 2),
        "an empty line": pem.replace(b"\n", b"\n\n", 2),
        "END of another label": pem.replace(b"END CERTIFICATE", b"END X509 CERTIFICATE"),
        "padding missing": pem.replace(b"=\n", b"\n"),
        "lower-case label": pem.replace(b"BEGIN CERTIFICATE", b"BEGIN certificate"),
        "a header": pem.replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n\n", 1),
    }


# forms cryptography reads that the lazy reader refuses (with a clear error): no certificate has them
STRICTER = {"a header"}


def test_pem_is_read_as_cryptography_reads_it(chain: tuple[x509.Certificate, x509.Certificate],
                                              tmp_path: Path) -> None:  # fmt: skip
    """Where cryptography reads a certificate from PEM, the lazy reader reads the same DER (or, in
    the forms in STRICTER, refuses it); where cryptography refuses, so does the lazy reader."""
    _, leaf = chain
    pem, der = leaf.public_bytes(serialization.Encoding.PEM), leaf.public_bytes(serialization.Encoding.DER)
    path = tmp_path / "cert.pem"
    for name, content in _pem_variants(pem).items():
        path.write_bytes(content)
        try:
            theirs: bytes | None = x509.load_pem_x509_certificate(content).public_bytes(
                serialization.Encoding.DER
            )
        except ValueError:
            theirs = None
        try:
            ours: bytes | None = cms.read_certificate_file(str(path), lazy=True).der
        except ConfigError as exc:
            assert "is not a PEM or DER X.509 certificate" in exc.message, name
            ours = None
        if name in STRICTER:
            assert theirs == der and ours is None, name
        else:
            assert ours == theirs, name
        assert theirs in (der, None), name


def test_issuer_serial_and_key_are_read_as_asn1crypto_reads_them(
    chain: tuple[x509.Certificate, x509.Certificate],
) -> None:
    from asn1crypto import x509 as ax509

    key = rsa.generate_private_key(65537, 2048)
    certs = [*chain, _cert("rsa db", key, "rsa db", key, ca=False)]
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        theirs = ax509.Certificate.load(der)["tbs_certificate"]
        issuer, serial, spki = cms.read_certificate(der)
        assert issuer == theirs["issuer"].dump()
        assert serial == theirs["serial_number"].dump()
        assert spki == theirs["subject_public_key_info"].dump()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d + b"\x00", "not one DER element"),
        (lambda d: d[:-1], "past the end"),
        (lambda d: b"\x31" + d[1:], "not one DER element"),
    ],
)
def test_a_broken_certificate_is_refused(change: object, words: str) -> None:
    key = rsa.generate_private_key(65537, 2048)
    der = _cert("rsa db", key, "rsa db", key, ca=False).public_bytes(serialization.Encoding.DER)
    with pytest.raises(ValueError, match=words):
        cms.read_certificate(change(der))  # type: ignore[operator]
