"""Pinned fingerprints against a real SoftHSM token: every signing path, every mode, doctor agrees."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SoftHsm, tool
from tests.integration.test_fit import build_fit, control_dtb, dropin_env, tools  # noqa: F401 - fixture

MODES = {
    "development": {"HSMSIGN_MODE": "development"},
    # production refuses SoftHSM unless told otherwise: the pin is what is under test here
    "production": {"HSMSIGN_MODE": "production", "HSMSIGN_ALLOW_SOFTWARE_TOKEN": "1"},
}


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs.ext4"
    path.write_bytes(b"rootfs" * 1000)
    return path


def fingerprint(softhsm: SoftHsm, uri: str) -> str:
    done = softhsm.run_cli("info", "--uri", uri, "--mode", "development", "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["fingerprint"])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_role_pin_refuses_another_key_in_every_mode_and_doctor_agrees(
    softhsm: SoftHsm, rsa2048: str, ec256: str, artifact: Path, tmp_path: Path, mode: str
) -> None:
    rsa_fp, ec_fp = fingerprint(softhsm, rsa2048), fingerprint(softhsm, ec256)
    out = tmp_path / "sig"
    base = {**MODES[mode], "HSMSIGN_ROLE": "ROOTFS", "HSMSIGN_PUBKEY_SHA256": rsa_fp}

    def sign(**env: str) -> subprocess.CompletedProcess[str]:
        return softhsm.run_cli("sign", "--uri", rsa2048, "-o", str(out), str(artifact), env={**base, **env})

    def doctor(**env: str) -> subprocess.CompletedProcess[str]:
        return softhsm.run_cli("doctor", "--uri", rsa2048, "--json", env={**base, **env})

    # the role's own pin wins over the global one, which would pass
    wrong = sign(HSMSIGN_PUBKEY_SHA256_ROOTFS=ec_fp)
    assert wrong.returncode == 4, wrong.stderr
    first = wrong.stderr.splitlines()[0]
    assert "HSMSIGN_PUBKEY_SHA256_ROOTFS" in first and ec_fp in first and rsa_fp in first
    assert "hint:" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not out.exists()
    checks = {c["check"]: c for c in json.loads(doctor(HSMSIGN_PUBKEY_SHA256_ROOTFS=ec_fp).stdout)["checks"]}
    assert checks["policy"]["ok"] is False and "HSMSIGN_PUBKEY_SHA256_ROOTFS" in checks["policy"]["detail"]
    assert doctor(HSMSIGN_PUBKEY_SHA256_ROOTFS=ec_fp).returncode == 4

    # another role's pin does not apply; the global one does
    right = sign(HSMSIGN_PUBKEY_SHA256_SWUPDATE=ec_fp)
    assert right.returncode == 0, right.stderr
    assert out.exists()
    healthy = doctor(HSMSIGN_PUBKEY_SHA256_SWUPDATE=ec_fp)
    assert healthy.returncode == 0, healthy.stdout
    assert "pinned by HSMSIGN_PUBKEY_SHA256" in healthy.stdout

    # SPL and FITIMAGE fall back to the UBOOT pin, as their URIs fall back to the UBOOT key
    spl = softhsm.run_cli(
        "sign", "--role", "spl", "--uri", rsa2048, "-o", str(tmp_path / "spl.sig"), str(artifact),
        env={**base, "HSMSIGN_PUBKEY_SHA256_UBOOT": ec_fp},
    )  # fmt: skip
    assert spl.returncode == 4 and "HSMSIGN_PUBKEY_SHA256_UBOOT" in spl.stderr, spl.stderr


def test_mkimage_dropin_pins_each_key_by_the_role_its_uri_belongs_to(
    softhsm: SoftHsm, tools: Path, tmp_path: Path  # noqa: F811 - the fixture imported above
) -> None:
    """oe-core's U-Boot task (role SPL) also writes the kernel FIT key into u-boot.dtb: that key
    is held to the FITIMAGE pin, found by its URI."""
    fit_uri = softhsm.keygen("fit-dev", "rsa:2048")
    spl_uri = softhsm.keygen("spl-dev", "rsa:2048")
    fit_fp, spl_fp = fingerprint(softhsm, fit_uri), fingerprint(softhsm, spl_uri)
    image = build_fit(tools, tmp_path, "declared.its")
    original = image.read_bytes()
    dtb = control_dtb(tmp_path)
    dtb_before = dtb.read_bytes()
    k = f"pkcs11:token={softhsm.token_label};object=fit-dev"
    task = {
        "HSMSIGN_ROLE": "SPL",
        "HSM_PKCS11_URI_FITIMAGE": k + f"?module-path={softhsm.module}",
        "HSM_PKCS11_URI_SPL": f"pkcs11:token={softhsm.token_label};object=spl-dev",
        "HSMSIGN_PUBKEY_SHA256_SPL": spl_fp,
    }

    def dropin(**env: str) -> subprocess.CompletedProcess[str]:
        image.write_bytes(original)
        return softhsm.run_cli(
            "mkimage", "-F", "-k", k, "-K", str(dtb), "-r", str(image),
            env=dropin_env(softhsm, tools, **task, **env),
        )  # fmt: skip

    # the task's role (SPL) pins another key, but -k is the FITIMAGE key: its pin applies
    wrong = dropin(HSMSIGN_PUBKEY_SHA256_FITIMAGE=spl_fp)
    assert wrong.returncode == 4, wrong.stderr
    assert "HSMSIGN_PUBKEY_SHA256_FITIMAGE" in wrong.stderr and fit_fp in wrong.stderr
    assert image.read_bytes() == original and dtb.read_bytes() == dtb_before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-")]
    good = dropin(HSMSIGN_PUBKEY_SHA256_FITIMAGE=fit_fp)
    assert good.returncode == 0, good.stderr
    assert image.read_bytes() != original and dtb.read_bytes() != dtb_before


def test_aes_key_pinned_by_its_check_value(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    uri = softhsm.keygen("aes-pinned", "aes:256")
    info = softhsm.run_cli("info", "--uri", uri, "--mode", "development", "--json")
    assert info.returncode == 0, info.stderr
    fp = json.loads(info.stdout)["fingerprint"]
    assert len(fp) == 64 and fp == fingerprint(softhsm, uri)  # stable
    plain = tmp_path / "plain"
    plain.write_bytes(b"firmware" * 100)
    out = tmp_path / "enc"

    def encrypt(**env: str) -> subprocess.CompletedProcess[str]:
        return softhsm.run_cli(
            "encrypt", "--uri", uri, "--in", str(plain), "--out", str(out),
            env={"HSMSIGN_MODE": "development", "HSMSIGN_ROLE": "ENCRYPT", **env},
        )  # fmt: skip

    # the global pin names a signing key: it never applies to the AES key
    assert encrypt(HSMSIGN_PUBKEY_SHA256=fingerprint(softhsm, rsa2048)).returncode == 0
    out.unlink()
    wrong = encrypt(HSMSIGN_PUBKEY_SHA256_ENCRYPT="00" * 32)
    assert wrong.returncode == 4 and "HSMSIGN_PUBKEY_SHA256_ENCRYPT" in wrong.stderr, wrong.stderr
    assert not out.exists()
    right = encrypt(HSMSIGN_PUBKEY_SHA256_ENCRYPT=fp)
    assert right.returncode == 0, right.stderr


@pytest.mark.parametrize("key", ["rsa2048", "ec256"])
def test_the_fingerprint_is_openssls_sha256_of_the_public_key(
    softhsm: SoftHsm, key: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """What pins are made of: SHA-256 of the DER SubjectPublicKeyInfo, as OpenSSL encodes the key
    (an RSA key's is made from its numbers without cryptography, hsmsign.keyformats.RsaPublicKey)."""
    uri = request.getfixturevalue(key)
    cert = tmp_path / "key.pem"
    done = softhsm.run_cli(
        "cert", "--mode", "development", "--uri", uri, "--subject", "CN=fingerprint", "--output", str(cert)
    )
    assert done.returncode == 0, done.stderr
    openssl = tool("openssl", "openssl")
    pem = subprocess.run(
        [openssl, "x509", "-in", str(cert), "-pubkey", "-noout"], capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        [openssl, "pkey", "-pubin", "-outform", "DER"], input=pem, capture_output=True, check=True
    ).stdout
    assert fingerprint(softhsm, uri) == hashlib.sha256(der).hexdigest()
