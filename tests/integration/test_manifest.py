"""Signed manifests: one CMS signature over a deploy directory, checked by openssl and 'manifest verify'."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SoftHsm, cms_field_offset, openssl_cms_verify

DEV = ("--mode", "development")


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    d = tmp_path / "deploy"
    (d / "sub").mkdir(parents=True)
    (d / "rootfs.ext4").write_bytes(os.urandom(100_000))
    (d / "fitImage").write_bytes(os.urandom(30_000))
    (d / "sub" / "u-boot.bin").write_bytes(b"")
    return d


@pytest.fixture
def cert(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> Path:
    path = tmp_path / "signer.pem"
    assert (
        softhsm.run_cli(
            "cert", *DEV, "--uri", rsa2048, "--subject", "CN=manifest", "--output", str(path)
        ).returncode
        == 0
    )
    return path


def _sign(softhsm: SoftHsm, uri: str, cert: Path, deploy: Path) -> Path:
    files = [deploy / "rootfs.ext4", deploy / "fitImage", deploy / "sub" / "u-boot.bin"]
    out = deploy / "MANIFEST"
    done = softhsm.run_cli(
        "manifest", *DEV, "--uri", uri, "--cert", str(cert), "--output", str(out), *map(str, files)
    )
    assert done.returncode == 0, done.stderr
    return out


def test_manifest_sign_and_verify(softhsm: SoftHsm, rsa2048: str, cert: Path, deploy: Path) -> None:
    m = _sign(softhsm, rsa2048, cert, deploy)
    doc = json.loads(m.read_text())
    assert [f["path"] for f in doc["files"]] == ["fitImage", "rootfs.ext4", "sub/u-boot.bin"]
    sizes = {f["path"]: f["size"] for f in doc["files"]}
    assert sizes == {"fitImage": 30_000, "rootfs.ext4": 100_000, "sub/u-boot.bin": 0}
    ok = openssl_cms_verify(f"{m}.p7s", m, cert)
    assert ok.returncode == 0, ok.stderr
    v = softhsm.run_cli("manifest", "verify", "--cert", str(cert), str(m), "--json")
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["files"] == ["fitImage", "rootfs.ext4", "sub/u-boot.bin"]


def test_a_signer_certificate_openssl_cannot_find_is_refused(
    softhsm: SoftHsm, rsa2048: str, cert: Path, deploy: Path
) -> None:
    """The certificate in MANIFEST.p7s no longer names the signer (one bit of its serial):
    ``openssl cms -verify`` finds no signer, so ``manifest verify`` must not find one in
    ``--cert`` either."""
    m = _sign(softhsm, rsa2048, cert, deploy)
    sig = Path(f"{m}.p7s")
    der = bytearray(sig.read_bytes())
    der[cms_field_offset(bytes(der), "embedded-certificate-serial")] ^= 0x01
    sig.write_bytes(bytes(der))
    assert openssl_cms_verify(sig, m, cert).returncode != 0
    v = softhsm.run_cli("manifest", "verify", "--cert", str(cert), str(m))
    assert v.returncode == 6 and "not among the signature's own certificates" in v.stderr, v.stderr


def test_a_library_warning_is_one_line_of_hsmsign(
    softhsm: SoftHsm, rsa2048: str, cert: Path, deploy: Path, tmp_path: Path
) -> None:
    """cryptography warns when it loads a certificate whose serial number is not positive;
    the user sees one ``hsmsign: warning:`` line, not a library's file and source line."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    m = _sign(softhsm, rsa2048, cert, deploy)
    from asn1crypto import x509 as ax509

    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    der = bytearray(loaded.public_bytes(serialization.Encoding.DER))

    tbs = ax509.Certificate.load(bytes(der))["tbs_certificate"]
    serial = tbs["serial_number"].dump()
    der[bytes(der).find(tbs.dump()) + tbs.dump().find(serial) + 2] |= 0x80  # the serial turns negative
    negative = tmp_path / "negative-serial.der"
    negative.write_bytes(bytes(der))
    v = softhsm.run_cli("manifest", "verify", "--cert", str(negative), str(m))
    assert v.returncode == 6, v.stderr
    warnings = [ln for ln in v.stderr.splitlines() if ln.startswith("hsmsign: warning: ")]
    assert len(warnings) == 1 and "serial number" in warnings[0], v.stderr
    assert ".py" not in v.stderr and "Warning" not in v.stderr, v.stderr
    loud = softhsm.run_cli("-v", "manifest", "verify", "--cert", str(negative), str(m))
    assert "CryptographyDeprecationWarning" in loud.stderr, loud.stderr  # -v keeps Python's form


def test_manifest_detects_changes(
    softhsm: SoftHsm, rsa2048: str, ec256: str, cert: Path, deploy: Path, tmp_path: Path
) -> None:
    m = _sign(softhsm, rsa2048, cert, deploy)
    data = bytearray((deploy / "fitImage").read_bytes())
    data[100] ^= 1
    (deploy / "fitImage").write_bytes(bytes(data))
    v = softhsm.run_cli("manifest", "verify", "--cert", str(cert), str(m))
    assert v.returncode == 6
    assert "changed: fitImage" in v.stderr

    data[100] ^= 1
    (deploy / "fitImage").write_bytes(bytes(data))
    (deploy / "sub" / "u-boot.bin").unlink()
    v = softhsm.run_cli("manifest", "verify", "--cert", str(cert), str(m))
    assert v.returncode == 6 and "missing: sub/u-boot.bin" in v.stderr

    (deploy / "sub" / "u-boot.bin").write_bytes(b"")
    assert softhsm.run_cli("manifest", "verify", "--cert", str(cert), str(m)).returncode == 0
    # editing the manifest itself (e.g. to match a changed file) breaks the signature
    m.write_text(m.read_text().replace('"size": 30000', '"size": 30001'))
    v = softhsm.run_cli("manifest", "verify", "--cert", str(cert), str(m))
    assert v.returncode == 6 and "messageDigest" in v.stderr

    # a certificate for another key is not trusted
    m2 = _sign(softhsm, rsa2048, cert, deploy)
    other = tmp_path / "other.pem"
    assert (
        softhsm.run_cli(
            "cert", *DEV, "--uri", ec256, "--subject", "CN=other", "--output", str(other)
        ).returncode
        == 0
    )
    v = softhsm.run_cli("manifest", "verify", "--cert", str(other), str(m2))
    assert v.returncode == 6 and "not trusted" in v.stderr


def test_files_outside_base_refused(
    softhsm: SoftHsm, rsa2048: str, cert: Path, deploy: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"x")
    out = deploy / "MANIFEST"
    done = softhsm.run_cli(
        "manifest", *DEV, "--uri", rsa2048, "--cert", str(cert), "--output", str(out), str(outside)
    )
    assert done.returncode == 2
    assert "is not inside" in done.stderr
    assert not out.exists() and not Path(f"{out}.p7s").exists()


def test_what_is_not_a_regular_file_is_named_as_it_is(
    softhsm: SoftHsm, rsa2048: str, cert: Path, deploy: Path
) -> None:
    """Each input the manifest cannot list is said as what it is, and nothing is written."""
    fifo = deploy / "pipe"
    os.mkfifo(fifo)
    out = deploy / "MANIFEST"
    cases = {
        str(deploy / "missing.bin"): "missing.bin: no such file",
        "/dev/null": "/dev/null is a character device, not a file",
        str(fifo): "pipe is not a regular file (a pipe, socket or device)",
        str(deploy / "sub"): "sub is a directory",
    }
    for path, said in cases.items():
        done = softhsm.run_cli(
            "manifest", *DEV, "--uri", rsa2048, "--cert", str(cert), "--output", str(out),
            str(deploy / "fitImage"), path,
        )  # fmt: skip
        assert done.returncode == 2, (path, done.stderr)
        assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not out.exists() and not Path(f"{out}.p7s").exists()


_entry = st.fixed_dictionaries(
    {
        "path": st.one_of(
            st.text(max_size=12), st.sampled_from(["../x", "/etc/passwd", "a//b", "ok.bin", "a/./b"])
        ),
        "size": st.one_of(st.integers(-5, 1 << 40), st.booleans(), st.none()),
        "sha256": st.one_of(st.text(max_size=70), st.just("a" * 64)),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda files, fmt: json.dumps({"format": fmt, "hash": "sha256", "files": files}).encode(),
            st.lists(_entry, max_size=4),
            st.sampled_from(["hsmsign-manifest/1", "other"]),
        ),
    )
)
def test_fuzz_manifest_parse(data: bytes) -> None:
    from hsmsign.errors import VerificationError
    from hsmsign.formats import manifest

    try:
        entries = manifest.parse(data)
    except VerificationError:
        return
    for e in entries:
        assert not e.path.startswith("/") and ".." not in e.path.split("/")
        assert e.size >= 0 and len(e.sha256) == 64
