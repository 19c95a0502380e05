"""dm-verity: tree by veritysetup, root hash signed through the token, checked by veritysetup and openssl."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SoftHsm, openssl_cms_verify, require

DEV = ("--mode", "development")


def _veritysetup() -> str:
    path = shutil.which("veritysetup") or (
        "/usr/sbin/veritysetup" if os.path.exists("/usr/sbin/veritysetup") else None
    )
    require(bool(path), "veritysetup", "apt-get install cryptsetup-bin", "HSMSIGN_REQUIRE_TOOLS")
    assert path
    return path


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    img = tmp_path / "rootfs.ext4"
    img.write_bytes(os.urandom(4096 * 300))
    return img


@pytest.fixture
def cert(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> Path:
    path = tmp_path / "verity.pem"
    done = softhsm.run_cli(
        "cert",
        *DEV,
        "--uri",
        rsa2048,
        "--subject",
        "CN=rootfs verity",
        "--eku",
        "codeSigning",
        "--output",
        str(path),
    )
    assert done.returncode == 0, done.stderr
    return path


_cms_verify = openssl_cms_verify


@pytest.mark.parametrize("signed_attrs", [False, True])
def test_verity_sign_checked_by_veritysetup_and_openssl(
    softhsm: SoftHsm, rsa2048: str, cert: Path, rootfs: Path, tmp_path: Path, signed_attrs: bool
) -> None:
    vs = _veritysetup()
    tree, roothash, sig = tmp_path / "rootfs.verity", tmp_path / "rootfs.roothash", tmp_path / "rootfs.p7s"
    argv = [
        "verity",
        "sign",
        *DEV,
        "--uri",
        rsa2048,
        "--cert",
        str(cert),
        "--image",
        str(rootfs),
        "--hash-tree",
        str(tree),
        "--root-hash-output",
        str(roothash),
        "--output",
        str(sig),
        "--json",
    ]
    if signed_attrs:
        argv.append("--signed-attrs")
    done = softhsm.run_cli(*argv)
    assert done.returncode == 0, done.stderr
    hexhash = roothash.read_bytes()
    # lowercase hex, no newline: the exact bytes the kernel checks the signature over
    assert len(hexhash) == 64 and hexhash == hexhash.lower().strip()
    assert hexhash.decode() in done.stdout
    ok = subprocess.run(
        [vs, "verify", str(rootfs), str(tree), hexhash.decode()], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert _cms_verify(sig, roothash, cert).returncode == 0
    # the kernel's PKCS#7 parser (pkcs7_sig_note_pkey_algo) takes rsaEncryption and ecdsa-with-SHA*, not PSS
    from asn1crypto import cms as acms

    si = acms.ContentInfo.load(sig.read_bytes())["content"]["signer_infos"][0]
    assert si["signature_algorithm"]["algorithm"].dotted == "1.2.840.113549.1.1.1"
    assert (si["signed_attrs"].native is not None and len(si["signed_attrs"]) == 3) == signed_attrs

    # one changed byte in the image: veritysetup verify fails
    data = bytearray(rootfs.read_bytes())
    data[4096 * 123 + 7] ^= 1
    rootfs.write_bytes(bytes(data))
    bad = subprocess.run(
        [vs, "verify", str(rootfs), str(tree), hexhash.decode()], capture_output=True, check=False
    )
    assert bad.returncode != 0
    # a different root hash (or one with a newline) does not match the signature
    other = tmp_path / "other.roothash"
    other.write_bytes(hexhash[:-1] + (b"0" if hexhash[-1:] != b"0" else b"1"))
    assert _cms_verify(sig, other, cert).returncode != 0
    other.write_bytes(hexhash + b"\n")
    assert _cms_verify(sig, other, cert).returncode != 0


def test_sign_given_root_hash(softhsm: SoftHsm, ec256: str, tmp_path: Path) -> None:
    cert = tmp_path / "ec.pem"
    assert (
        softhsm.run_cli(
            "cert", *DEV, "--uri", ec256, "--subject", "CN=ec verity", "--output", str(cert)
        ).returncode
        == 0
    )
    root = "ABCDEF0123456789" * 4
    sig = tmp_path / "rh.p7s"
    out = tmp_path / "rh"
    done = softhsm.run_cli(
        "verity",
        "sign",
        *DEV,
        "--uri",
        ec256,
        "--cert",
        str(cert),
        "--root-hash",
        root,
        "--root-hash-output",
        str(out),
        "--output",
        str(sig),
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == root.lower()
    assert _cms_verify(sig, out, cert).returncode == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--root-hash", "xyz"], "not a hex digest"),
        (["--root-hash", "ab" * 32, "--hash-tree", "t"], "--hash-tree goes with --image"),
    ],
)
def test_bad_root_hash_input(
    softhsm: SoftHsm, rsa2048: str, cert: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    sig = tmp_path / "rh.p7s"
    done = softhsm.run_cli(
        "verity", "sign", *DEV, "--uri", rsa2048, "--cert", str(cert), *args, "--output", str(sig)
    )
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert not sig.exists()


def test_bad_image_leaves_no_output(softhsm: SoftHsm, rsa2048: str, cert: Path, tmp_path: Path) -> None:
    _veritysetup()
    odd = tmp_path / "odd.img"
    odd.write_bytes(os.urandom(1000))
    tree, sig = tmp_path / "odd.verity", tmp_path / "odd.p7s"
    done = softhsm.run_cli(
        "verity",
        "sign",
        *DEV,
        "--uri",
        rsa2048,
        "--cert",
        str(cert),
        "--image",
        str(odd),
        "--hash-tree",
        str(tree),
        "--output",
        str(sig),
    )
    assert done.returncode == 2
    assert "512-byte sectors" in done.stderr
    assert not tree.exists() and not sig.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]


def test_veritysetup_open_with_signature(
    softhsm: SoftHsm, rsa2048: str, cert: Path, rootfs: Path, tmp_path: Path
) -> None:
    """The kernel's own check needs root, device-mapper and the certificate in a trusted keyring."""
    if os.geteuid() != 0 or not os.path.exists("/dev/mapper/control"):
        pytest.skip(
            "veritysetup open needs root and /dev/mapper/control (device-mapper); this kernel/container "
            "has none. The kernel check is the same PKCS#7 openssl cms -verify accepts above."
        )
    vs = _veritysetup()
    tree, roothash, sig = tmp_path / "t", tmp_path / "rh", tmp_path / "rh.p7s"
    assert (
        softhsm.run_cli(
            "verity",
            "sign",
            *DEV,
            "--uri",
            rsa2048,
            "--cert",
            str(cert),
            "--image",
            str(rootfs),
            "--hash-tree",
            str(tree),
            "--root-hash-output",
            str(roothash),
            "--output",
            str(sig),
        ).returncode
        == 0
    )
    name = f"hsmsign-test-{os.getpid()}"
    opened = subprocess.run(
        [vs, "open", str(rootfs), name, str(tree), roothash.read_text(), "--root-hash-signature", str(sig)],
        capture_output=True,
        text=True,
        check=False,
    )
    if opened.returncode != 0:
        # without our certificate in .secondary_trusted_keys the kernel must refuse: that is the point
        assert "signature" in (opened.stderr + opened.stdout).lower() or "key" in opened.stderr.lower()
        pytest.skip(f"kernel refused (certificate not in its trusted keyring): {opened.stderr.strip()[:200]}")
    subprocess.run([vs, "close", name], check=False)


def test_wrong_certificate_leaves_no_hash_tree(
    softhsm: SoftHsm, rsa2048: str, ec256: str, tmp_path: Path
) -> None:
    """The tree is renamed into place only with its signature: a failed signature leaves neither."""
    _veritysetup()
    other = tmp_path / "other.pem"
    made = softhsm.run_cli(
        "cert", *DEV, "--uri", ec256, "--subject", "CN=another key", "--output", str(other)
    )
    assert made.returncode == 0, made.stderr
    image = tmp_path / "rootfs.img"
    image.write_bytes(os.urandom(1 << 20))
    tree, sig = tmp_path / "rootfs.verity", tmp_path / "rootfs.p7s"
    done = softhsm.run_cli(
        "verity",
        "sign",
        *DEV,
        "--uri",
        rsa2048,
        "--cert",
        str(other),
        "--image",
        str(image),
        "--hash-tree",
        str(tree),
        "--output",
        str(sig),
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert not tree.exists() and not sig.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]
