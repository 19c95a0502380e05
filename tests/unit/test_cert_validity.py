"""The validity-period warnings for signer certificates (hsmsign.formats.x509.validity_warnings).

The certificate is made here with a throw-away in-memory key (no key file exists); the time is
given, so every branch is checked at its edges."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hsmsign.formats.x509 import EXPIRY_WARNING_DAYS, validity_warnings

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 1, 1, tzinfo=UTC)
END = datetime.datetime(2027, 1, 1, tzinfo=UTC)


def _cert() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "validity test")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(START)
        .not_valid_after(END)
        .sign(key, hashes.SHA256())
    )


def test_each_period_and_its_edges() -> None:
    cert = _cert()
    early = validity_warnings(cert, "rauc.pem", START - datetime.timedelta(seconds=1))
    assert len(early) == 1 and early[0].startswith("rauc.pem is not valid before 2026-01-01 00:00 UTC")
    assert "clock" in early[0]
    assert validity_warnings(cert, "rauc.pem", START) == []
    edge = END - datetime.timedelta(days=EXPIRY_WARNING_DAYS)
    assert validity_warnings(cert, "rauc.pem", edge) == []
    soon = validity_warnings(cert, "rauc.pem", edge + datetime.timedelta(seconds=1))
    expected = f"rauc.pem expires on 2027-01-01, in {EXPIRY_WARNING_DAYS} day(s)"
    assert len(soon) == 1 and soon[0].startswith(expected)
    assert "updates already shipped included" in soon[0]
    gone = validity_warnings(cert, "rauc.pem", END)
    assert len(gone) == 1 and gone[0].startswith("rauc.pem expired on 2027-01-01")
    assert "'hsmsign cert'" in gone[0] and "'hsmsign csr'" in gone[0]
