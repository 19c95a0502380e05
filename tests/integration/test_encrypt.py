"""AES-256-CBC through a token key: decrypted by openssl enc -d and installed by swupdate -K."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SoftHsm
from tests.integration.swupdate_run import run_swupdate, swupdate_path

DEV = ("--mode", "development")


@pytest.fixture(scope="module")
def aes_test_key(softhsm: SoftHsm) -> tuple[str, bytes]:
    """An AES-256 key made EXTRACTABLE for this test only, so openssl and swupdate can be given its value."""
    from hsmsign import token
    from pkcs11 import Attribute

    uri = softhsm.keygen("aes-extractable-test", "aes:256", extractable=True)
    with token.open_secret_key(uri, mode="development") as aes:
        value = bytes(aes._key[Attribute.VALUE])
    assert len(value) == 32
    return uri, value


def _key_failing_the_padding(ciphertext: bytes) -> bytes:
    """A wrong AES-256 key under which the image's last block does not end in PKCS#7 padding.

    About one random key in 256 decrypts the last block to a valid padding, and swupdate then
    installs garbage and succeeds: a test expecting the refusal failed in 0.4 % of its runs."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    previous, last = ciphertext[-32:-16], ciphertext[-16:]
    while True:
        key = os.urandom(32)
        decryptor = Cipher(algorithms.AES(key), modes.CBC(previous)).decryptor()
        block = decryptor.update(last) + decryptor.finalize()
        pad = block[-1]
        if not 1 <= pad <= 16 or block[-pad:] != bytes([pad]) * pad:
            return key


def _encrypt(softhsm: SoftHsm, uri: str, src: Path, dst: Path, *extra: str) -> dict:
    done = softhsm.run_cli(
        "encrypt", *DEV, "--uri", uri, "--in", str(src), "--out", str(dst), "--json", *extra
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, (3 << 20) + 5])
def test_openssl_decrypts(
    softhsm: SoftHsm, aes_test_key: tuple[str, bytes], tmp_path: Path, size: int
) -> None:
    uri, key = aes_test_key
    plain = tmp_path / "image.bin"
    plain.write_bytes(os.urandom(size))
    enc = tmp_path / "image.bin.enc"
    info = _encrypt(softhsm, uri, plain, enc)
    data = enc.read_bytes()
    assert len(data) == (size // 16 + 1) * 16  # PKCS#7 padding always adds 1..16 bytes
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(info["ivt"]) == 32
    dec = subprocess.run(
        ["openssl", "enc", "-d", "-aes-256-cbc", "-K", key.hex(), "-iv", info["ivt"], "-in", str(enc)],
        capture_output=True,
        check=False,
    )
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == plain.read_bytes()


def test_fixed_iv_and_fresh_ivs(softhsm: SoftHsm, aes_test_key: tuple[str, bytes], tmp_path: Path) -> None:
    uri, key = aes_test_key
    plain = tmp_path / "p"
    plain.write_bytes(b"A" * 100)
    iv = "5f" * 16
    a = _encrypt(softhsm, uri, plain, tmp_path / "a", "--iv", iv)
    b = _encrypt(softhsm, uri, plain, tmp_path / "b")
    c = _encrypt(softhsm, uri, plain, tmp_path / "c")
    assert a["ivt"] == iv
    assert b["ivt"] != c["ivt"]  # random by default
    assert (tmp_path / "b").read_bytes() != (tmp_path / "c").read_bytes()
    ref = subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", "-K", key.hex(), "-iv", iv, "-in", str(plain)],
        capture_output=True,
        check=True,
    ).stdout
    assert (tmp_path / "a").read_bytes() == ref


def test_swupdate_K_installs_decrypted_image(
    softhsm: SoftHsm, aes_test_key: tuple[str, bytes], rsa2048: str, tmp_path: Path
) -> None:
    from hsmsign.formats import swupdate as swu

    swupdate_path()  # skips (or fails in CI) without swupdate
    uri, key = aes_test_key
    plain = tmp_path / "rootfs.img"
    plain.write_bytes(os.urandom(300_000) + b"end of rootfs")
    enc = tmp_path / "rootfs.img.enc"
    info = _encrypt(softhsm, uri, plain, enc)
    target = tmp_path / "target.bin"
    target.write_bytes(b"")
    desc = tmp_path / "sw-description"
    desc.write_bytes(
        swu.render_description(
            version="2.0",
            hardware=["1.0"],
            images=[
                {
                    "filename": enc.name,
                    "path": str(enc),
                    "type": "raw",
                    "device": str(target),
                    "encrypted": True,
                    "ivt": info["ivt"],
                }
            ],
        )
    )
    assert info["sha256"] in desc.read_text()  # sw-description's sha256 is over the ciphertext
    cert = tmp_path / "signer.pem"
    assert (
        softhsm.run_cli(
            "cert", *DEV, "--uri", rsa2048, "--subject", "CN=enc", "--output", str(cert)
        ).returncode
        == 0
    )
    bundle = tmp_path / "update.swu"
    done = softhsm.run_cli(
        "swupdate",
        "bundle",
        *DEV,
        "--uri",
        rsa2048,
        "--cert",
        str(cert),
        "--sw-description",
        str(desc),
        "--output",
        str(bundle),
        str(enc),
    )
    assert done.returncode == 0, done.stderr
    keyfile = tmp_path / "aes.key"  # the device's -K file: KEY IVT (the image's ivt takes precedence)
    keyfile.write_text(f"{key.hex()} {os.urandom(16).hex()}\n")
    run = ["-H", "board:1.0", "-i", str(bundle), "-k", str(cert), "-K", str(keyfile), "-m", "-M"]
    inst = run_swupdate(run, tmp_path)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    assert target.read_bytes() == plain.read_bytes()

    # another key: swupdate must not install the plaintext
    target.write_bytes(b"")
    keyfile.write_text(f"{_key_failing_the_padding(enc.read_bytes()).hex()} {os.urandom(16).hex()}\n")
    inst = run_swupdate(run, tmp_path)
    assert inst.returncode != 0
    assert target.read_bytes() != plain.read_bytes()


def test_bounded_memory(softhsm: SoftHsm, aes_test_key: tuple[str, bytes], tmp_path: Path) -> None:
    """Peak RSS does not grow with the file: 64 MiB costs no more than 1 MiB, give or take a few chunks.

    Compared with a 1 MiB run in the same setting, since the baseline (Python, cryptography, and SoftHSM,
    which keeps every object of the shared test token in memory) depends on what ran before.
    """
    uri, _ = aes_test_key

    def peak_kib(mib: int) -> int:
        path = tmp_path / f"in-{mib}.img"
        with open(path, "wb") as fh:
            for _ in range(mib):
                fh.write(os.urandom(1 << 20))
        code = (
            "import resource, sys\n"
            "from hsmsign.cli import main\n"
            f"rc = main(['encrypt', '--mode', 'development', '--uri', {uri!r}, '--in', {str(path)!r}, "
            f"'--out', {str(path) + '.enc'!r}])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "sys.exit(rc)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=softhsm.env,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert os.path.getsize(str(path) + ".enc") == (mib << 20) + 16
        return int(done.stdout.strip().splitlines()[-1])

    small, big = peak_kib(1), peak_kib(64)
    assert big - small < 24 * 1024, f"peak RSS {big} KiB for 64 MiB against {small} KiB for 1 MiB"


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--iv", "1234"], 2, "32 hex digits"),
        (["--iv", "00" * 16, "--mode", "production"], 4, "published example or a pattern"),
    ],
)
def test_bad_iv(
    softhsm: SoftHsm,
    aes_test_key: tuple[str, bytes],
    tmp_path: Path,
    extra: list[str],
    code: int,
    needle: str,
) -> None:
    uri, _ = aes_test_key
    plain = tmp_path / "p"
    plain.write_bytes(b"x")
    out = tmp_path / "p.enc"
    argv = ["encrypt", "--uri", uri, "--in", str(plain), "--out", str(out), *extra]
    if "--mode" not in extra:
        argv[1:1] = list(DEV)
    done = softhsm.run_cli(*argv)
    assert done.returncode == code, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_signing_key_is_not_an_encryption_key(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    plain = tmp_path / "p"
    plain.write_bytes(b"x")
    out = tmp_path / "p.enc"
    done = softhsm.run_cli("encrypt", *DEV, "--uri", rsa2048, "--in", str(plain), "--out", str(out))
    assert done.returncode == 3, done.stderr
    assert "secret key" in done.stderr
    assert not out.exists()
    same = softhsm.run_cli("encrypt", *DEV, "--uri", rsa2048, "--in", str(plain), "--out", str(plain))
    assert same.returncode == 2 and "is also --in: writing it would replace it" in same.stderr
