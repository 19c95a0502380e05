"""Kernel module signatures: ``hsmsign modsign`` against kmod's modinfo, openssl cms, the
kernel's own ``scripts/sign-file`` (byte for byte) and the kernel itself (QEMU boot).

Modules for the format tests are ELF relocatable objects made with gcc at test time, with a
``.modinfo`` section as a real module has (kmod reads it). The boot test uses a real module
built against the cached test kernel (``scripts/build-modsign-kernel``). Every key lives in
the session's SoftHSM token, except the scratch key of the sign-file comparison, which is
made at test time in a temporary directory and imported into the token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SoftHsm, cms_field_offset, openssl_cms_verify, require, tool

DEV = ("--mode", "development")
MAGIC = b"~Module signature appended~\n"
SIGN_FILE = Path("/usr/lib/linux-kbuild-6.1/scripts/sign-file")
SPY = Path("/usr/lib/x86_64-linux-gnu/pkcs11-spy.so")
MODULE_C = r"""
static const char modinfo[] __attribute__((section(".modinfo"), used, aligned(1))) =
    "license=GPL\0name=%(name)s\0vermagic=6.1.0 SMP mod_unload \0";
int %(name)s_value = %(value)d;
int %(name)s_get(void) { return %(name)s_value; }
"""


@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten small ELF modules (gcc -c), kept pristine: tests copy them."""
    gcc = tool("gcc", "gcc")
    out = tmp_path_factory.mktemp("modules")
    for i in range(10):
        src = out / f"m{i}.c"
        src.write_text(MODULE_C % {"name": f"m{i}", "value": i})
        subprocess.run([gcc, "-c", "-O1", str(src), "-o", str(out / f"m{i}.ko")], check=True)
        src.unlink()
    return out


def _key(
    softhsm: SoftHsm, tmp: pytest.TempPathFactory, label: str, key_type: str, cn: str
) -> tuple[str, Path]:
    uri = softhsm.keygen(label, key_type)
    cert = tmp.mktemp(label) / "cert.pem"
    done = softhsm.run_cli("cert", *DEV, "--uri", uri, "--subject", f"CN={cn}", "--output", str(cert))
    assert done.returncode == 0, done.stderr
    return uri, cert


@pytest.fixture(scope="module")
def rsa_key(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return _key(softhsm, tmp_path_factory, "modsign-rsa", "rsa:2048", "hsmsign test modules")


@pytest.fixture(scope="module")
def other_key(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return _key(softhsm, tmp_path_factory, "modsign-other", "rsa:2048", "another modules key")


def _copy(src_dir: Path, dest: Path, names: list[str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        shutil.copyfile(src_dir / name, dest / name)
        out.append(dest / name)
    return out


def _sign(softhsm: SoftHsm, key: tuple[str, Path], *argv: str) -> subprocess.CompletedProcess[str]:
    return softhsm.run_cli("modsign", *DEV, "--uri", key[0], "--cert", str(key[1]), *argv)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Module body and PKCS#7, as the kernel's mod_verify_sig cuts them (written independently here)."""
    assert data.endswith(MAGIC)
    info = data[-len(MAGIC) - 12 : -len(MAGIC)]
    assert info[:8] == b"\x00\x00\x02\x00\x00\x00\x00\x00", info.hex()  # algo, hash, PKEY_ID_PKCS7, lens, pad
    sig_len = int.from_bytes(info[8:], "big")
    end = len(data) - len(MAGIC) - 12
    return data[: end - sig_len], data[end - sig_len : end]


def _modinfo(path: Path, field: str) -> str:
    modinfo = tool("modinfo", "kmod")
    done = subprocess.run([modinfo, "-F", field, str(path.resolve())], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _cert_serial(cert: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-serial"], capture_output=True, text=True, check=True
    ).stdout
    return out.strip().split("=", 1)[1].upper()


def _check_independently(module: Path, cert: Path, cn: str, hash_alg: str, pristine: bytes) -> None:
    """kmod's modinfo, openssl cms -verify, and the body is the original module byte for byte."""
    data = module.read_bytes()
    body, pkcs7 = _split(data)
    assert body == pristine
    assert data.count(MAGIC) == 1
    sig = module.with_suffix(".p7s")
    content = module.with_suffix(".body")
    sig.write_bytes(pkcs7)
    content.write_bytes(body)
    done = openssl_cms_verify(sig, content, cert, certfile=cert)
    assert done.returncode == 0, done.stderr
    # what sign-file writes: no certificates in the PKCS#7 (the kernel has it), no signed attributes
    printed = subprocess.run(
        ["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(sig)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"signedAttrs:\s*<ABSENT>", printed), printed
    assert re.search(r"certificates:\s*<ABSENT>", printed), printed
    sig.unlink()
    content.unlink()
    assert _modinfo(module, "signer") == cn
    assert _modinfo(module, "sig_hashalgo") == hash_alg
    assert _modinfo(module, "sig_id") == "PKCS#7"
    assert _modinfo(module, "sig_key").replace(":", "") == _cert_serial(cert).lstrip("0") or _modinfo(
        module, "sig_key"
    ).replace(":", "") == _cert_serial(cert)


def _spy_counts(log: Path) -> tuple[int, int, int]:
    text = log.read_text(errors="replace")
    calls = re.findall(r"^\d+: (C_\w+)", text, re.M)
    # one signature is C_SignInit then C_Sign (twice: the length, then the bytes)
    return calls.count("C_Login"), calls.count("C_SignInit"), calls.count("C_OpenSession")


def test_many_modules_one_process_one_login(
    softhsm: SoftHsm, rsa_key: tuple[str, Path], modules_dir: Path, tmp_path: Path
) -> None:
    names = [f"m{i}.ko" for i in range(10)]
    mods = _copy(modules_dir, tmp_path, names)
    uri = rsa_key[0]
    env = {}
    if SPY.exists():  # OpenSC's PKCS#11 spy between hsmsign and SoftHSM counts the token calls
        uri = uri.replace(f"module-path={softhsm.module}", f"module-path={SPY}")
        env = {"PKCS11SPY": softhsm.module, "PKCS11SPY_OUTPUT": str(tmp_path / "spy.log")}
    done = softhsm.run_cli(
        "modsign", *DEV, "--uri", uri, "--cert", str(rsa_key[1]), "--json", *map(str, mods), env=env
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [m["module"] for m in report["modules"]] == [str(m) for m in mods]
    assert report["mechanism"] == "modsig-sha256-rsa-pkcs1v15"
    if env:
        logins, signs, sessions = _spy_counts(tmp_path / "spy.log")
        assert (logins, signs) == (1, len(mods)), (logins, signs, sessions)
    for mod in mods[:3]:  # the independent tools on a few; hsmsign's own check on all of them below
        _check_independently(
            mod, rsa_key[1], "hsmsign test modules", "sha256", (modules_dir / mod.name).read_bytes()
        )
    done = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), *map(str, mods))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK: {len(mods)} modules signed by CN=hsmsign test modules")


def test_a_batch_of_several_commits_lands_with_one_ledger_entry_per_module(
    softhsm: SoftHsm, rsa_key: tuple[str, Path], modules_dir: Path, tmp_path: Path
) -> None:
    """More modules than one commit takes (modsign.CHUNK, renamed and recorded together while the
    next ones are signed): every module signed once, one ledger entry each, in order, on an intact
    chain, with the hash of the body that was signed."""
    from hsmsign.commands import modsign

    count = 2 * modsign.CHUNK + 3
    dest = tmp_path / "mods"
    dest.mkdir()
    mods, bodies = [], {}
    for i in range(count):
        mod = dest / f"n{i:03d}.ko"
        shutil.copyfile(modules_dir / f"m{i % 10}.ko", mod)
        mods.append(mod)
        bodies[str(mod)] = mod.read_bytes()
    ledger = tmp_path / "ledger.jsonl"
    done = softhsm.run_cli(
        "modsign", *DEV, "--uri", rsa_key[0], "--cert", str(rsa_key[1]), "--ledger", str(ledger),
        "--json", *map(str, mods),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [m["module"] for m in json.loads(done.stdout)["modules"]] == [str(m) for m in mods]
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["artifact"] for e in entries] == [str(m) for m in mods]
    assert [e["seq"] for e in entries] == list(range(1, count + 1))
    for entry in entries:
        assert entry["kind"] == "modsign"
        assert entry["sha256"] == hashlib.sha256(bodies[entry["artifact"]]).hexdigest()
    for mod in mods:
        data = mod.read_bytes()
        assert data.count(MAGIC) == 1 and data.startswith(bodies[str(mod)])
    assert softhsm.run_cli("ledger", "verify", "--ledger", str(ledger)).returncode == 0
    done = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), *map(str, mods))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("key_type", "hash_alg"), [("ec:secp256r1", "sha256"), ("ec:secp384r1", "sha384")])
def test_ecdsa_keys(
    softhsm: SoftHsm,
    modules_dir: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    key_type: str,
    hash_alg: str,
) -> None:
    key = _key(softhsm, tmp_path_factory, f"modsign-{key_type[3:]}", key_type, f"modules {key_type}")
    (mod,) = _copy(modules_dir, tmp_path, ["m1.ko"])
    out = tmp_path / "m1.signed.ko"
    done = _sign(softhsm, key, "--hash", hash_alg, "--output", str(out), str(mod))
    assert done.returncode == 0, done.stderr
    assert mod.read_bytes() == (modules_dir / "m1.ko").read_bytes()  # --output leaves the input alone
    _check_independently(out, key[1], f"modules {key_type}", hash_alg, mod.read_bytes())


def test_resigning_replaces_the_signature_never_adds_one(
    softhsm: SoftHsm,
    rsa_key: tuple[str, Path],
    other_key: tuple[str, Path],
    modules_dir: Path,
    tmp_path: Path,
) -> None:
    (mod,) = _copy(modules_dir, tmp_path, ["m2.ko"])
    assert _sign(softhsm, other_key, str(mod)).returncode == 0
    done = _sign(softhsm, rsa_key, str(mod))
    assert done.returncode == 0, done.stderr
    assert "were signed already" in done.stderr and "1 re-signed" in done.stdout
    first = mod.read_bytes()
    assert first.count(MAGIC) == 1
    assert _sign(softhsm, rsa_key, str(mod)).returncode == 0
    assert mod.read_bytes() == first  # RSA PKCS#1 v1.5 is deterministic: signing again changes nothing
    _check_independently(
        mod, rsa_key[1], "hsmsign test modules", "sha256", (modules_dir / "m2.ko").read_bytes()
    )


def test_signature_by_another_key_is_named(
    softhsm: SoftHsm,
    rsa_key: tuple[str, Path],
    other_key: tuple[str, Path],
    modules_dir: Path,
    tmp_path: Path,
) -> None:
    good, bad = _copy(modules_dir, tmp_path, ["m3.ko", "m4.ko"])
    assert _sign(softhsm, rsa_key, str(good)).returncode == 0
    assert _sign(softhsm, other_key, str(bad)).returncode == 0
    done = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), str(good), str(bad))
    assert done.returncode == 6
    lines = done.stderr.strip().splitlines()
    assert lines[0] == (
        f"hsmsign: error: {bad} is signed by another key (issuer Common Name: another modules key, serial "
        f"{_cert_serial(other_key[1]).lstrip('0').lower()}), not by the given certificate"
    ), lines
    assert "Traceback" not in done.stderr


def test_bad_inputs_fail_with_one_line_and_sign_nothing(
    softhsm: SoftHsm, rsa_key: tuple[str, Path], modules_dir: Path, tmp_path: Path
) -> None:
    good, other = _copy(modules_dir, tmp_path, ["m5.ko", "m6.ko"])
    pristine = good.read_bytes()
    text = tmp_path / "notes.ko"
    text.write_bytes(b"not a module\n")
    cut = tmp_path / "cut.ko"
    cut.write_bytes(pristine[: len(pristine) // 2])
    exe = tmp_path / "true.ko"
    shutil.copyfile(tool("true", "coreutils"), exe)
    cases = {
        text: f"{text} is not an ELF file",
        cut: f"{cut}: truncated ELF module",
        exe: f"{exe} is an ELF file of type 3, not a relocatable kernel module",
    }
    for bad, message in cases.items():
        before = bad.read_bytes()
        done = _sign(softhsm, rsa_key, str(good), str(bad), str(other))
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[0].startswith(f"hsmsign: error: {message}"), done.stderr
        assert "Traceback" not in done.stderr
        # a bad file in the batch: nothing was signed, nothing left behind
        assert good.read_bytes() == pristine and bad.read_bytes() == before
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]
    # a signed module cut inside its signature
    assert _sign(softhsm, rsa_key, str(other)).returncode == 0
    signed = other.read_bytes()
    cut_sig = tmp_path / "cutsig.ko"
    cut_sig.write_bytes(signed[: len(pristine) + 5] + signed[-40:])
    done = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), str(cut_sig))
    assert done.returncode == 2 and "truncated or corrupt module signature" in done.stderr, done.stderr
    # one byte changed in the body
    flipped = tmp_path / "flipped.ko"
    flipped.write_bytes(signed[:100] + bytes([signed[100] ^ 1]) + signed[101:])
    done = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), str(flipped))
    assert done.returncode == 6 and "does not verify" in done.stderr, done.stderr
    unsigned = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), str(good))
    assert unsigned.returncode == 6 and "is not signed" in unsigned.stderr
    two = _sign(softhsm, rsa_key, "--output", str(tmp_path / "x.ko"), str(good), str(other))
    assert two.returncode == 2 and "--output takes one module" in two.stderr


# what the kernel's scripts/Makefile.modinst runs to compress a module (Linux 6.1)
KERNEL_COMPRESS = {
    ".ko.gz": (["gzip", "-n", "-f"], ["gzip", "-d", "-c"], b"\x1f\x8b"),
    ".ko.xz": (["xz", "--check=crc32", "--lzma2=dict=1MiB", "-f"], ["xz", "-d", "-c"], b"\xfd7zXZ\x00"),
    ".ko.zst": (["zstd", "-T0", "--rm", "-f", "-q"], ["zstd", "-d", "-c", "-q"], b"\x28\xb5\x2f\xfd"),
}


def _kernel_compress(module: Path, suffix: str) -> Path:
    """``module`` compressed in place as modules_install does (the tool appends the suffix)."""
    argv = KERNEL_COMPRESS[suffix][0]
    subprocess.run([tool(argv[0], argv[0]), *argv[1:], str(module)], check=True)
    out = module.with_name(module.name[: -len(".ko")] + suffix)
    assert out.exists() and not module.exists()
    return out


def _decompressed(path: Path, suffix: str) -> bytes:
    argv = KERNEL_COMPRESS[suffix][1]
    return subprocess.run(
        [tool(argv[0], argv[0]), *argv[1:], str(path)], capture_output=True, check=True
    ).stdout


def _kmod_reads(suffix: str) -> bool:
    """Whether this machine's kmod was built to open ``suffix`` (Debian 12's has no zlib)."""
    features = subprocess.run([tool("kmod", "kmod"), "--version"], capture_output=True, text=True).stdout
    need = {".ko.gz": "+ZLIB", ".ko.xz": "+XZ", ".ko.zst": "+ZSTD"}[suffix]
    return need in features.split()


def test_compressed_modules_are_signed_inside_and_compressed_as_the_kernel_does(
    softhsm: SoftHsm, rsa_key: tuple[str, Path], modules_dir: Path, tmp_path: Path
) -> None:
    """CONFIG_MODULE_COMPRESS_*: the signature covers the uncompressed module (what kmod hands the
    kernel, and what the kernel decompresses itself with CONFIG_MODULE_DECOMPRESS), and the
    result is compressed again with modules_install's settings."""
    pristine = (modules_dir / "m8.ko").read_bytes()
    (plain,) = _copy(modules_dir, tmp_path / "plain", ["m8.ko"])
    assert _sign(softhsm, rsa_key, str(plain)).returncode == 0
    reference = plain.read_bytes()  # what hsmsign (and sign-file, byte for byte) makes of the .ko
    packed = []
    for suffix in KERNEL_COMPRESS:
        (mod,) = _copy(modules_dir, tmp_path / suffix.strip("."), ["m8.ko"])
        packed.append(_kernel_compress(mod, suffix))
    done = _sign(softhsm, rsa_key, *map(str, packed))
    assert done.returncode == 0, done.stderr
    assert "signed 3 modules" in done.stdout
    first = {}
    for path in packed:
        suffix = "." + path.name.split(".", 1)[1]
        data = path.read_bytes()
        assert data.startswith(KERNEL_COMPRESS[suffix][2]), (path, data[:8])
        # the stock decompressor gives exactly the signed plain module: body, PKCS#7, trailer
        assert _decompressed(path, suffix) == reference
        body, _pkcs7 = _split(reference)
        assert body == pristine
        if _kmod_reads(suffix):
            assert _modinfo(path, "signer") == "hsmsign test modules"
            assert _modinfo(path, "sig_hashalgo") == "sha256"
        first[path] = data
    # the kernel's own xz settings: CRC32 (its decompressor checks no other) and a 1 MiB dictionary
    xz_path = next(p for p in packed if p.name.endswith(".xz"))
    listed = subprocess.run(["xz", "--robot", "-lvv", str(xz_path)], capture_output=True, text=True).stdout
    assert "\tCRC32\t" in listed and "--lzma2=dict=1MiB" in listed, listed
    verified = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), *map(str, packed))
    assert verified.returncode == 0, verified.stderr
    assert "OK: 3 modules signed by CN=hsmsign test modules" in verified.stdout
    # signing again replaces the signature inside: the same bytes (deterministic signature and
    # compression), never a second signature
    again = _sign(softhsm, rsa_key, *map(str, packed))
    assert again.returncode == 0 and "3 re-signed" in again.stdout, again.stderr
    for path in packed:
        assert path.read_bytes() == first[path]
    # one byte of the module changed inside the compression: refused like a plain module
    flipped = tmp_path / "flipped.ko.xz"
    bad = bytearray(reference)
    bad[100] ^= 1
    flipped.write_bytes(
        subprocess.run(["xz", "-c", "--check=crc32"], input=bytes(bad), capture_output=True).stdout
    )
    done = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), str(flipped))
    assert done.returncode == 6 and "does not verify" in done.stderr, done.stderr


def test_zstd_modules_are_signed_in_one_batch_as_the_kernel_compresses_them(
    softhsm: SoftHsm, rsa_key: tuple[str, Path], modules_dir: Path, tmp_path: Path
) -> None:
    """Many .ko.zst modules go through a few zstd processes, not one per module, and each comes
    out as the kernel's own zstd command makes it from the signed module, byte for byte."""
    names = [f"m{i}.ko" for i in range(10)]
    plain = _copy(modules_dir, tmp_path / "plain", names)
    assert _sign(softhsm, rsa_key, *map(str, plain)).returncode == 0
    reference = {p.name: p.read_bytes() for p in plain}  # hsmsign (= sign-file) on the plain modules
    expected = {}
    for p in plain:  # what modules_install makes of each signed module
        expected[p.name] = _kernel_compress(p, ".ko.zst").read_bytes()
    packed = [_kernel_compress(m, ".ko.zst") for m in _copy(modules_dir, tmp_path / "zst", names)]
    done = _sign(softhsm, rsa_key, *map(str, packed))
    assert done.returncode == 0, done.stderr
    assert "signed 10 modules" in done.stdout
    for path in packed:
        name = path.name[: -len(".zst")]
        assert _decompressed(path, ".ko.zst") == reference[name]
        assert path.read_bytes() == expected[name], name
    verified = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), *map(str, packed))
    assert verified.returncode == 0 and "OK: 10 modules signed" in verified.stdout, verified.stderr
    # a module cut short among them: its own error, and no module changes
    fresh = [_kernel_compress(m, ".ko.zst") for m in _copy(modules_dir, tmp_path / "bad", names)]
    fresh[6].write_bytes(fresh[6].read_bytes()[:-20])
    before = [p.read_bytes() for p in fresh]
    done = _sign(softhsm, rsa_key, *map(str, fresh))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"hsmsign: error: {fresh[6]}: corrupt zstd data"), done.stderr
    assert [p.read_bytes() for p in fresh] == before
    verify_bad = softhsm.run_cli(
        "modsign", "verify", "--cert", str(rsa_key[1]), *map(str, packed), str(fresh[6])
    )
    assert verify_bad.returncode == 2 and f"{fresh[6]}: corrupt zstd data" in verify_bad.stderr


def test_bad_compressed_modules_fail_with_one_line_and_sign_nothing(
    softhsm: SoftHsm, rsa_key: tuple[str, Path], modules_dir: Path, tmp_path: Path
) -> None:
    (good,) = _copy(modules_dir, tmp_path, ["m9.ko"])
    pristine = good.read_bytes()
    xz = _kernel_compress(_copy(modules_dir, tmp_path / "x", ["m9.ko"])[0], ".ko.xz")
    packed = xz.read_bytes()
    cut = tmp_path / "cut.ko.xz"
    cut.write_bytes(packed[: len(packed) // 2])
    wrong = tmp_path / "wrong.ko.xz"
    wrong.write_bytes(subprocess.run(["gzip", "-n", "-c"], input=pristine, capture_output=True).stdout)
    trailing = tmp_path / "trailing.ko.xz"
    trailing.write_bytes(packed + b"junk")
    text = tmp_path / "notes.ko.gz"
    text.write_bytes(
        subprocess.run(["gzip", "-n", "-c"], input=b"not a module\n", capture_output=True).stdout
    )
    cases = {
        cut: f"{cut}: corrupt xz data (the stream is cut short)",
        wrong: f"{wrong} is named as xz data but is not xz data",
        trailing: f"{trailing}: corrupt xz data (4 bytes follow the compressed stream)",
        text: f"{text} is not an ELF file",
    }
    for bad, message in cases.items():
        before = bad.read_bytes()
        done = _sign(softhsm, rsa_key, str(good), str(bad))
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[0].startswith(f"hsmsign: error: {message}"), done.stderr
        assert "Traceback" not in done.stderr
        assert good.read_bytes() == pristine and bad.read_bytes() == before
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]
    done = _sign(softhsm, rsa_key, "--output", str(tmp_path / "out.ko"), str(xz))
    assert done.returncode == 2 and "differ in their compression suffix" in done.stderr, done.stderr
    assert xz.read_bytes() == packed and not (tmp_path / "out.ko").exists()
    done = _sign(softhsm, rsa_key, "--output", str(tmp_path / "out.ko.xz"), str(xz))
    assert done.returncode == 0, done.stderr
    assert xz.read_bytes() == packed  # --output: the input stays as it was
    assert _split(_decompressed(tmp_path / "out.ko.xz", ".ko.xz"))[0] == pristine


def test_byte_identical_to_the_kernels_sign_file(softhsm: SoftHsm, modules_dir: Path, tmp_path: Path) -> None:
    """RSA PKCS#1 v1.5 is deterministic: the same key signs the same bytes as scripts/sign-file."""
    require(
        SIGN_FILE.exists(),
        "the kernel's sign-file",
        "apt-get install linux-kbuild-6.1",
        env="HSMSIGN_REQUIRE_TOOLS",
    )
    util = tool("softhsm2-util", "softhsm2")
    key = tmp_path / "scratch.key"
    cert = tmp_path / "scratch.pem"
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=scratch modules key", "-outform", "PEM"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    pin = softhsm.pin_file.read_text().strip()
    subprocess.run(
        [util, "--import", str(key), "--token", softhsm.token_label, "--label", "modsign-scratch",
         "--id", "5c7a", "--pin", pin],
        check=True,
        capture_output=True,
        env=softhsm.env,
    )  # fmt: skip
    theirs, ours = (
        _copy(modules_dir, tmp_path / "a", ["m7.ko"])[0],
        _copy(modules_dir, tmp_path / "b", ["m7.ko"])[0],
    )
    subprocess.run([str(SIGN_FILE), "sha256", str(key), str(cert), str(theirs)], check=True)
    key.unlink()
    done = softhsm.run_cli(
        "modsign", *DEV, "--uri", softhsm.uri("modsign-scratch"), "--cert", str(cert), str(ours)
    )
    assert done.returncode == 0, done.stderr
    assert ours.read_bytes() == theirs.read_bytes()
    assert theirs.read_bytes().count(MAGIC) == 1


def test_prepared_signer_writes_what_sign_detached_writes(
    softhsm: SoftHsm, rsa_key: tuple[str, Path]
) -> None:
    """cms.DetachedSigner (batches) and cms.sign_detached (one signature) give the same bytes."""
    import hashlib

    from hsmsign import token
    from hsmsign.formats import cms

    cert = cms.read_certificate_file(str(rsa_key[1]))
    for hash_alg in ("sha256", "sha512"):
        digest = hashlib.new(hash_alg, b"module body").digest()
        with token.open_key(rsa_key[0], mode="development") as key:
            batch = cms.DetachedSigner(key, cert, hash_alg)
            first, second = batch.sign(digest), batch.sign(digest)
            single = cms.sign_detached(
                key,
                cert=cert,
                content_digest=digest,
                hash_alg=hash_alg,
                signed_attrs=False,
                include_certs=False,
            )
        assert first == second == single
        assert cms.verify_detached(second, content=b"module body", trusted=[cert]).hash_alg == hash_alg


# ----------------------------------------------------------------------------- the kernel


# INIT ends with a reboot: QEMU's -no-reboot turns it into QEMU's exit (tinyconfig has no ACPI,
# so a power-off only halts the CPU and QEMU would run until the timeout)
KERNEL_CACHE = Path(
    os.environ.get("HSMSIGN_TEST_MODSIGN_KERNEL")
    or Path(os.environ.get("HSMSIGN_CACHE") or Path.home() / ".cache" / "hsmsign") / "modsign-kernel"
)
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
for f in %(files)s; do
    m=${f%%%%.*}
    if /bin/busybox insmod /$f 2>/tmp/err; then echo "RESULT $m loaded"
    else echo "RESULT $m refused: $(/bin/busybox cat /tmp/err)"; fi
done
/bin/busybox reboot -f
"""


@pytest.fixture
def test_module() -> bytes:
    """The unsigned module built with the cached test kernel (``scripts/build-modsign-kernel``)."""
    if not (KERNEL_CACHE / "vmlinux").exists():
        # not part of HSMSIGN_REQUIRE_TOOLS: the kernel is built by hand once per machine
        if os.environ.get("HSMSIGN_REQUIRE_MODSIGN_KERNEL") == "1":
            pytest.fail(f"no test kernel in {KERNEL_CACHE}: scripts/build-modsign-kernel {KERNEL_CACHE}")
        pytest.skip(f"no test kernel in {KERNEL_CACHE}: scripts/build-modsign-kernel {KERNEL_CACHE}")
    return (KERNEL_CACHE / "hsmtest.ko").read_bytes()


def _boot(cert: Path, files: dict[str, bytes], tmp_path: Path) -> tuple[dict[str, str], str]:
    """Boot the cached test kernel, with ``cert`` built in, on an initramfs whose init insmods
    ``files`` (name -> bytes) in order with busybox; each file's outcome and the console."""
    qemu = tool("qemu-system-x86_64", "qemu-system-x86")
    busybox = Path("/bin/busybox")
    require(busybox.exists(), "busybox", "apt-get install busybox-static", env="HSMSIGN_REQUIRE_TOOLS")
    # the token's certificate into a copy of the cached vmlinux (CONFIG_SYSTEM_EXTRA_CERTIFICATE)
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(KERNEL_CACHE / "vmlinux", vmlinux)
    der = tmp_path / "modules.der"
    subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(der)], check=True)
    done = subprocess.run(
        [str(KERNEL_CACHE / "insert-sys-cert"), "-b", str(vmlinux), "-c", str(der)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    root = tmp_path / "root"
    for sub in ("bin", "proc", "tmp", "dev"):
        (root / sub).mkdir(parents=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "init").write_text(INIT % {"files": " ".join(files)})
    (root / "init").chmod(0o755)
    for name, data in files.items():
        (root / name).write_bytes(data)
    listing = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
    initrd = tmp_path / "initrd.cpio"
    with initrd.open("wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing.encode(), stdout=out, check=True
        )
    boot = subprocess.run(
        [qemu, "-M", "pc", "-m", "128", "-nographic", "-no-reboot", "-kernel", str(vmlinux), "-initrd",
         str(initrd), "-append", "console=ttyS0 panic=-1 loglevel=7"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    return dict(re.findall(r"RESULT (\w+) (.*?)\r?$", boot.stdout, re.M)), boot.stdout


def _signed_copy(softhsm: SoftHsm, key: tuple[str, Path], data: bytes, path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    done = _sign(softhsm, key, str(path))
    assert done.returncode == 0, done.stderr
    return path.read_bytes()


def test_the_kernel_loads_only_the_module_hsmsign_signed(
    softhsm: SoftHsm,
    rsa_key: tuple[str, Path],
    other_key: tuple[str, Path],
    test_module: bytes,
    tmp_path: Path,
) -> None:
    """A kernel with CONFIG_MODULE_SIG_FORCE and only the token's certificate built in."""
    pristine = test_module
    good = _signed_copy(softhsm, rsa_key, pristine, tmp_path / "s" / "good.ko")
    other = _signed_copy(softhsm, other_key, pristine, tmp_path / "s" / "other.ko")
    flip = len(pristine) // 2
    flipped = good[:flip] + bytes([good[flip] ^ 0x01]) + good[flip + 1 :]
    files = {"good.ko": good, "flipped.ko": flipped, "unsigned.ko": pristine, "other.ko": other}
    results, console = _boot(rsa_key[1], files, tmp_path)
    assert results.get("good") == "loaded", console[-3000:]
    assert "hsmtest: loaded" in console
    for name in ("flipped", "unsigned", "other"):
        assert results.get(name, "").startswith("refused"), (name, console[-3000:])
    assert "Loading of unsigned module is rejected" in console
    assert "Loading of module with unavailable key is rejected" in console


def test_the_kernel_loads_a_compressed_module_hsmsign_signed(
    softhsm: SoftHsm, rsa_key: tuple[str, Path], test_module: bytes, tmp_path: Path
) -> None:
    """CONFIG_MODULE_COMPRESS_XZ: busybox's insmod decompresses, as kmod does, and the kernel
    checks the signature hsmsign put inside. The module is loaded once per boot (its name is
    taken after that), so the refused ones come first."""
    pristine = test_module
    xz = KERNEL_COMPRESS[".ko.xz"][0]
    packed = subprocess.run([*xz[:-1], "-c"], input=pristine, capture_output=True, check=True).stdout
    good = _signed_copy(softhsm, rsa_key, packed, tmp_path / "s" / "good.ko.xz")
    inside = bytearray(_decompressed(tmp_path / "s" / "good.ko.xz", ".ko.xz"))
    inside[len(pristine) // 2] ^= 0x01
    flipped = subprocess.run([*xz[:-1], "-c"], input=bytes(inside), capture_output=True, check=True).stdout
    files = {"unsigned.ko.xz": packed, "flipped.ko.xz": flipped, "good.ko.xz": good}
    results, console = _boot(rsa_key[1], files, tmp_path)
    for name in ("unsigned", "flipped"):
        assert results.get(name, "").startswith("refused"), (name, console[-3000:])
    assert "Loading of unsigned module is rejected" in console
    assert results.get("good") == "loaded", console[-3000:]
    assert "hsmtest: loaded" in console


def test_hsmsign_refuses_every_signature_the_kernel_refuses(
    softhsm: SoftHsm, rsa_key: tuple[str, Path], test_module: bytes, tmp_path: Path
) -> None:
    """Bytes of a module signature that the signature itself does not cover, each changed so
    that the kernel refuses the module (one boot; the good one loads first, so a changed one
    the kernel accepted would fail with "File exists" instead). `hsmsign modsign verify` must
    refuse each too, with the reason; it accepted all four before it applied the kernel's rules.
    Found by flipping every bit of the signature and comparing with this kernel."""
    good = _signed_copy(softhsm, rsa_key, test_module, tmp_path / "s" / "good.ko")
    body, pkcs7 = _split(good)
    at = len(body)
    info_pad = len(good) - len(MAGIC) - 12 + 5  # module_signature.__pad[0]
    cases = {  # name: (offset, bits flipped, hsmsign's exit code, what its message says)
        # SignedData version 1 -> 0: "Unsupported SignedData version" (EINVAL)
        "sdversion": (at + cms_field_offset(pkcs7, "signed-data-version"), 0x01, 6, "SignedData version (0)"),
        # SignerInfo version 1 -> 3 under SignedData 1: "SignedData-SignerInfo version mismatch"
        "siversion": (at + cms_field_offset(pkcs7, "signer-info-version"), 0x02, 6, "versions do not match"),
        # the issuer's common name ends in "S", not "s": the kernel finds keys by exact bytes (ENOKEY)
        "issuer": (at + cms_field_offset(pkcs7, "signer-issuer"), 0x20, 6, "is signed by another key"),
        # a padding byte of the info block: mod_check_sig wants it zero (EBADMSG)
        "infopad": (info_pad, 0x01, 2, "the module signature's info block is malformed"),
    }
    files = {"good.ko": good}
    for name, (offset, bits, _, _) in cases.items():
        changed = bytearray(good)
        changed[offset] ^= bits
        files[f"{name}.ko"] = bytes(changed)
    results, console = _boot(rsa_key[1], files, tmp_path)
    assert results.get("good") == "loaded", console[-3000:]
    for name in cases:
        assert results.get(name, "").startswith("refused"), (name, console[-3000:])
        assert "File exists" not in results[name], (name, results[name])
    for name, (_, _, code, message) in cases.items():
        path = tmp_path / "s" / f"{name}.ko"
        path.write_bytes(files[f"{name}.ko"])
        done = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), str(path))
        assert done.returncode == code, (name, done.stderr)
        assert message in done.stderr.splitlines()[0], (name, done.stderr)
        assert "Traceback" not in done.stderr
    again = softhsm.run_cli("modsign", "verify", "--cert", str(rsa_key[1]), str(tmp_path / "s" / "good.ko"))
    assert again.returncode == 0, again.stderr
