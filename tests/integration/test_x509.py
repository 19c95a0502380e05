"""Certificates and CSRs for token keys, checked by openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import SoftHsm

DEV = ("--mode", "development")


def _openssl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *argv], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("key", "key_type"), [("rsa2048", "rsa:2048"), ("ec256", "ec:secp256r1"), ("ec384", "ec:secp384r1")]
)
def test_self_signed_cert_openssl_verifies(softhsm: SoftHsm, tmp_path: Path, key: str, key_type: str) -> None:
    uri = softhsm.keygen(key, key_type)
    cert = tmp_path / "cert.pem"
    done = softhsm.run_cli(
        "cert",
        *DEV,
        "--uri",
        uri,
        "--subject",
        "CN=Acme firmware (dev),O=Acme",
        "--eku",
        "codeSigning",
        "--days",
        "30",
        "--output",
        str(cert),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert '"key_fingerprint"' in done.stdout
    # the certificate verifies as its own anchor (OpenSSL 3.0 has no codeSigning purpose to name here;
    # swupdate --cert-purpose codeSigning is checked in test_swupdate)
    v = _openssl("verify", "-CAfile", str(cert), str(cert))
    assert v.returncode == 0, v.stdout + v.stderr
    text = _openssl("x509", "-in", str(cert), "-noout", "-text").stdout
    assert "Code Signing" in text and "E-mail Protection" not in text
    subj = _openssl("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "RFC2253").stdout
    assert subj.strip() == "subject=CN=Acme firmware (dev),O=Acme"
    assert "Subject Key Identifier" in text
    assert "CA:FALSE" in text and "Digital Signature" in text and "Certificate Sign" not in text
    # the certificate carries exactly the token key's public half
    pub = tmp_path / "pub.pem"
    assert softhsm.run_cli("pubkey", *DEV, "--uri", uri, "--output", str(pub)).returncode == 0
    cert_pub = _openssl("x509", "-in", str(cert), "-noout", "-pubkey").stdout
    assert cert_pub.strip() == pub.read_text().strip()
    days = _openssl("x509", "-in", str(cert), "-noout", "-checkend", str(29 * 86400))
    assert days.returncode == 0
    assert _openssl("x509", "-in", str(cert), "-noout", "-checkend", str(31 * 86400)).returncode == 1


def test_default_eku_covers_both_swupdate_purposes(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    assert (
        softhsm.run_cli(
            "cert", *DEV, "--uri", rsa2048, "--subject", "/CN=x/O=y", "--output", str(cert)
        ).returncode
        == 0
    )
    text = _openssl("x509", "-in", str(cert), "-noout", "-text").stdout
    assert "Code Signing" in text and "E-mail Protection" in text
    subj = _openssl("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "RFC2253").stdout
    # OpenSSL's /CN=x/O=y lists RDNs in DER order; RFC 4514 prints them reversed (as 'openssl req -subj' does)
    assert subj.strip() == "subject=O=y,CN=x"
    assert _openssl("verify", "-CAfile", str(cert), "-purpose", "smimesign", str(cert)).returncode == 0


def test_csr_verifies(softhsm: SoftHsm, ec256: str, tmp_path: Path) -> None:
    csr = tmp_path / "req.csr"
    done = softhsm.run_cli(
        "csr",
        *DEV,
        "--uri",
        ec256,
        "--subject",
        "CN=Acme update signing,O=Acme",
        "--eku",
        "emailProtection",
        "--output",
        str(csr),
    )
    assert done.returncode == 0, done.stderr
    v = _openssl("req", "-in", str(csr), "-noout", "-verify", "-text")
    assert v.returncode == 0, v.stderr
    assert "E-mail Protection" in v.stdout
    assert "Acme update signing" in v.stdout


@pytest.mark.parametrize("subject", ["", "no-equals-sign", "CN=ok,,=bad", "XX=unknown-attr"])
def test_bad_subject_is_a_usage_error(softhsm: SoftHsm, rsa2048: str, tmp_path: Path, subject: str) -> None:
    out = tmp_path / "cert.pem"
    done = softhsm.run_cli("cert", *DEV, "--uri", rsa2048, "--subject", subject, "--output", str(out))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("hsmsign: error:") and "Traceback" not in done.stderr
    assert not out.exists()


def test_bad_days(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    out = tmp_path / "cert.pem"
    done = softhsm.run_cli(
        "cert", *DEV, "--uri", rsa2048, "--subject", "CN=x", "--days", "0", "--output", str(out)
    )
    assert done.returncode == 2
    assert "--days" in done.stderr
    assert not out.exists()


def test_old_source_date_epoch_does_not_backdate_certificates(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path
) -> None:
    cert = tmp_path / "cert.pem"
    done = softhsm.run_cli(
        "cert",
        *DEV,
        "--uri",
        rsa2048,
        "--subject",
        "CN=x",
        "--days",
        "10",
        "--output",
        str(cert),
        env={"SOURCE_DATE_EPOCH": "1000000000"},
    )  # 2001, as an old Yocto commit
    assert done.returncode == 0, done.stderr
    # valid now and for the next 9 days: validity starts at signing time, not at SOURCE_DATE_EPOCH
    assert _openssl("x509", "-in", str(cert), "-noout", "-checkend", str(9 * 86400)).returncode == 0
