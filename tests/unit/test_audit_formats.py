"""The leak scanner's containers and binary formats: encodings, NUL records, zip, ar, nesting,
DER keys at any offset, big files, bombs. Keys are generated at run time (nothing secret
is committed)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from hsmsign import audit
from hsmsign.audit import archives
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOENC = serialization.NoEncryption()
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
PKCS8 = serialization.PrivateFormat.PKCS8
TRAD = serialization.PrivateFormat.TraditionalOpenSSL
PIN_ATTR = "pin-" + "value"
CONFIG = (
    f'MACHINE = "acme"\nSIGN = "1"\nHSM_PIN = "24681357"\nURI = "pkcs11:token=a;object=b?{PIN_ATTR}=97531"\n'
)
HAVE_ZSTD = shutil.which("zstd") is not None


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def spki_sha(key: object) -> str:
    pub = key.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore
    return hashlib.sha256(pub).hexdigest()


def summary(found: list[audit.Finding]) -> list[tuple[str, int]]:
    return sorted((f.kind, f.line) for f in found)


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def ar_bytes(members: dict[str, bytes], bsd: bool = False) -> bytes:
    """A Unix ar archive; names longer than 15 bytes go in a GNU ``//`` table (or BSD ``#1/``)."""
    out = [b"!<arch>\n"]
    table = b""
    names = {}
    for name in members:
        raw = name.encode()
        if len(raw) > 15 and not bsd:
            names[name] = b"/%d" % len(table)
            table += raw + b"/\n"
        else:
            names[name] = raw + (b"" if bsd else b"/")

    def entry(name: bytes, data: bytes) -> bytes:
        head = b"%-16s%-12d%-6d%-6d%-8s%-10d`\n" % (name, 0, 0, 0, b"100644", len(data))
        return head + data + (b"\n" if len(data) % 2 else b"")

    if table:
        out.append(entry(b"//", table))
    for name, data in members.items():
        if bsd and len(name.encode()) > 15:
            out.append(entry(b"#1/%d" % len(name.encode()), name.encode() + data))
        else:
            out.append(entry(names[name], data))
    return b"".join(out)


def zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


# --- text encodings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda t: t.encode("utf-16"),  # BOM, native order
        lambda t: t.encode("utf-16-le"),
        lambda t: t.encode("utf-16-be"),
        lambda t: b"\xfe\xff" + t.encode("utf-16-be"),
        lambda t: t.encode("utf-32"),
        lambda t: t.encode("utf-32-le"),
        lambda t: t.encode("utf-32-be"),
        lambda t: t.replace("\n", "\r\n").encode("utf-16-le"),  # Windows line ends
    ],
    ids=["utf16-bom", "utf16le", "utf16be", "utf16be-bom", "utf32-bom", "utf32le", "utf32be", "utf16le-crlf"],
)
def test_utf16_and_utf32_text(encode: Callable[[str], bytes], ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = ec_key.private_bytes(PEM, PKCS8, NOENC).decode()
    data = encode(CONFIG + pem)
    found = audit.scan_bytes(data, "notes.txt")
    assert summary(found) == [("pin-assignment", 3), ("pin-value", 4), ("private-key", 5)]
    assert spki_sha(ec_key) in next(f for f in found if f.kind == "private-key").detail
    assert "24681357" not in str(found) and "97531" not in str(found)
    # also as an archive member
    found = audit.scan_bytes(gzip.compress(tar_bytes({"./etc/notes.txt": data})), "rootfs.tar.gz")
    assert {f.source for f in found} == {"rootfs.tar.gz!./etc/notes.txt"} and len(found) == 3


def test_binary_with_zero_bytes_is_not_taken_for_utf16() -> None:
    words = random.Random(1).randbytes(4096)
    data = bytes(b for pair in zip(words, bytes(4096)) for b in pair)  # every other byte zero
    assert audit.scan.SNIFF_LEN and audit.scan._text_encoding(data) is None
    assert audit.scan._text_encoding("HSM_PIN=1\n".encode("utf-16-le")) == "utf-16-le"


# --- NUL bytes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,line",
    [
        (b"PATH=/usr/bin\0HOME=/root\0HSM_PIN=13572468\0TERM=xterm\0", 3),  # /proc/PID/environ
        (b"HSM_PIN=13572468\0", 1),
        (b"LANG=C\0export MKIMAGE_SIGN_PIN=13572468\0", 2),
        (b"a log line\nnext\0\0\0HSM_PIN = 13572468\nend\n", 5),  # text after NULs
        (b"A=1\0SO_PASSWORD='s3cr3t-pa55'\0", 2),
    ],
)
def test_nul_separated_records(data: bytes, line: int) -> None:
    found = audit.scan_bytes(data, "environ")
    assert [(f.kind, f.line) for f in found] == [("pin-assignment", line)]
    assert b"13572468" not in str(found).encode() and "s3cr3t" not in str(found)


@pytest.mark.parametrize("where", [0, 1, 2])
def test_environment_inside_a_core_file(tmp_path: Path, where: int) -> None:
    rng = random.Random(where)
    env = b"\0".join(
        [
            b"SHELL=/bin/sh",
            b"HSM_USER_PIN=80604020",
            b"OLDPWD=/",
            b"FW_AES_KEY = " + os.urandom(16).hex().encode(),
        ]
    )
    blob = [rng.randbytes(300_000), bytes(200_000), rng.randbytes(100_000)]
    blob.insert(where, b"\0" + env + b"\0")
    core = tmp_path / "core.1234"
    core.write_bytes(b"\x7fELF\x02\x01\x01" + b"".join(blob))
    found = audit.scan_file(str(core))
    assert sorted(f.kind for f in found) == ["pin-assignment", "symmetric-key"]
    # printf formats in a program's strings are not secrets
    prog = b"\x7fELF" + bytes(64) + b"password=%s\0PIN = '%s'\0secret_key=%.*s\0" + rng.randbytes(5000)
    assert audit.scan_bytes(prog, "bin/tool") == []


# --- compressed streams and archives -----------------------------------------------------


def _compressors() -> list[tuple[str, Callable[[bytes], bytes]]]:
    out = [
        ("gz", gzip.compress),
        ("gz-multi", lambda d: gzip.compress(d[:10]) + gzip.compress(d[10:])),
        ("gz-padded", lambda d: gzip.compress(d) + bytes(512)),
        ("bz2", bz2.compress),
        ("xz", lzma.compress),
        ("xz-multi", lambda d: lzma.compress(d[:7]) + lzma.compress(d[7:])),
    ]
    if HAVE_ZSTD:
        out.append(("zst", zstd))
    return out


@pytest.mark.parametrize("name,compress", _compressors(), ids=[c[0] for c in _compressors()])
def test_compressed_streams(name: str, compress: Callable[[bytes], bytes]) -> None:
    found = audit.scan_bytes(compress(CONFIG.encode()), f"local.conf.{name}")
    assert summary(found) == [("pin-assignment", 3), ("pin-value", 4)]
    assert all(f.source.endswith("!") for f in found)


@pytest.mark.skipif(not HAVE_ZSTD, reason="zstd missing: apt-get install zstd")
def test_zstd_compact_sigdata(tmp_path: Path) -> None:
    """BitBake's siginfo is zstd-compressed JSON on one line; a URI in it is found inside."""
    sig = (
        '{"task": "do_sign", "varvals": {"HSM_PKCS11_URI": "pkcs11:token=acme;object=fw?'
        + PIN_ATTR
        + '=11223344", "PN": "u-boot"}}'
    )
    path = tmp_path / "u-boot.do_sign.sigdata.zst"
    path.write_bytes(zstd(sig.encode()))
    found = audit.scan_file(str(path))
    assert [(f.kind, f.source.endswith(".zst!")) for f in found] == [("pin-value", True)]
    path.write_bytes(zstd(sig.encode())[:-9])  # damaged: a warning, no crash
    assert "unreadable" in {f.kind for f in audit.scan_file(str(path))}


def test_zip_members(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = rsa_key.private_bytes(PEM, TRAD, NOENC)
    key_der = ec_key.private_bytes(DER, PKCS8, NOENC)
    for method in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        path = tmp_path / f"bundle-{method}.zip"
        with zipfile.ZipFile(path, "w", compression=method) as zf:
            zf.writestr("docs/readme.txt", "nothing here\n" * 100)
            zf.writestr("keys/signing.pem", key_pem)
            zf.writestr("keys/fw.der", key_der)
            zf.writestr("conf/local.conf", CONFIG)
        found = audit.scan_file(str(path))
        got = sorted((f.source.split("!", 1)[1], f.kind) for f in found)
        assert got == [
            ("conf/local.conf", "pin-assignment"),
            ("conf/local.conf", "pin-value"),
            ("keys/fw.der", "private-key-der"),
            ("keys/signing.pem", "private-key"),
        ], method
    # a zip inside a tar.xz, a zip inside a zip
    inner = (tmp_path / f"bundle-{zipfile.ZIP_DEFLATED}.zip").read_bytes()
    found = audit.scan_bytes(tar_bytes({"./opt/app.jar": inner}, "w:xz"), "rootfs.tar.xz")
    assert len(found) == 4 and all(f.source.startswith("rootfs.tar.xz!./opt/app.jar!") for f in found)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("inner.zip", inner)
    assert len(audit.scan_bytes(outer.getvalue(), "outer.zip")) == 4
    # a truncated zip (no central directory): the local headers are walked
    cut = inner[: inner.rfind(b"PK\x01\x02")]
    found = audit.scan_bytes(cut[: len(cut) - 3], "cut.zip")
    assert {f.kind for f in found} >= {"private-key", "private-key-der", "pin-assignment"}


def test_zip_written_as_a_stream_and_encrypted(tmp_path: Path) -> None:
    if shutil.which("zip") is None:
        pytest.skip("zip missing")
    conf = tmp_path / "local.conf"
    conf.write_text(CONFIG)
    streamed = subprocess.run(  # zip - -: data descriptors, sizes after the data
        ["zip", "-q", "-", "-"], input=CONFIG.encode() * 50, capture_output=True, check=True
    ).stdout
    assert summary(audit.scan_bytes(streamed, "s.zip"))[:1] == [("pin-assignment", 3)]
    cut = streamed[: streamed.rfind(b"PK\x01\x02")]
    assert ("pin-assignment", 3) in summary(audit.scan_bytes(cut, "cut.zip"))
    enc = tmp_path / "enc.zip"
    subprocess.run(["zip", "-q", "-j", "-P", "pw", str(enc), str(conf)], check=True)
    found = audit.scan_file(str(enc))
    assert [(f.kind, "encrypted" in f.excerpt) for f in found] == [("unreadable", True)]


@pytest.mark.parametrize("bsd", [False, True])
def test_ar_deb_and_ipk(tmp_path: Path, bsd: bool, ec_key: ec.EllipticCurvePrivateKey) -> None:
    data_members = {
        "./etc/swupdate/priv.pem": ec_key.private_bytes(PEM, PKCS8, NOENC),
        "./etc/hostname": b"x\n",
    }
    control = tar_bytes(
        {"./control": b"Package: fw\n", "./postinst": b"#!/bin/sh\nexport HSM_PIN=5555\n"}, "w:gz"
    )
    variants = {
        "data.tar.xz": tar_bytes(data_members, "w:xz"),
        "data.tar.gz": tar_bytes(data_members, "w:gz"),
    }
    if HAVE_ZSTD:
        variants["data.tar.zst"] = zstd(tar_bytes(data_members))
    for data_name, data_tar in variants.items():
        deb = ar_bytes({"debian-binary": b"2.0\n", "control.tar.gz": control, data_name: data_tar}, bsd=bsd)
        path = tmp_path / f"fw_1.0_{data_name}.deb"
        path.write_bytes(deb)
        got = sorted((f.source.replace(str(path), "deb"), f.kind) for f in audit.scan_file(str(path)))
        assert got == [
            ("deb!control.tar.gz!./postinst", "pin-assignment"),
            (f"deb!{data_name}!./etc/swupdate/priv.pem", "private-key"),
        ]
        if shutil.which("dpkg-deb") and not bsd and data_name != "data.tar.zst":
            listing = subprocess.run(["dpkg-deb", "-c", str(path)], capture_output=True, check=True).stdout
            assert b"priv.pem" in listing  # the test's .deb is a real one
    # GNU long names, and what the system's ar writes
    long_name = "a-member-with-a-long-name.conf"
    found = audit.scan_bytes(ar_bytes({long_name: CONFIG.encode()}, bsd=bsd), "lib.a")
    assert {f.source for f in found} == {f"lib.a!{long_name}"}
    if shutil.which("ar"):
        (tmp_path / long_name).write_text(CONFIG)
        subprocess.run(["ar", "rc", str(tmp_path / "sys.a"), long_name], cwd=tmp_path, check=True)
        found = audit.scan_file(str(tmp_path / "sys.a"))
        assert {f.source.split("!")[-1] for f in found} == {long_name} and len(found) == 2


def _nest(payload: bytes, levels: int) -> bytes:
    """Wrap ``payload`` in ``levels`` containers, cycling through every format."""
    wrappers: list[Callable[[bytes], bytes]] = [
        gzip.compress,
        lambda d: tar_bytes({"./inner": d}),
        lambda d: ar_bytes({"inner": d}),
        lzma.compress,
        lambda d: _zip({"inner": d}),
        bz2.compress,
    ]
    for i in range(levels):
        payload = wrappers[i % len(wrappers)](payload)
    return payload


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("levels", [4, 6, 8])
def test_nesting_up_to_the_limit(levels: int) -> None:
    found = audit.scan_bytes(_nest(CONFIG.encode(), levels), "deep")
    assert summary(found) == [("pin-assignment", 3), ("pin-value", 4)]
    assert found[0].source.startswith("deep!") and found[0].source.endswith("inner!")


def test_nesting_past_the_limit_is_reported() -> None:
    found = audit.scan_bytes(_nest(CONFIG.encode(), archives.MAX_DEPTH + 2), "deep")
    assert [f.kind for f in found] == ["unreadable"] and "deeper than 8" in found[0].excerpt


# --- DER keys ----------------------------------------------------------------------------


def _der_keys(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, tuple[bytes, str]]:
    p384 = ec.generate_private_key(ec.SECP384R1())
    p521 = ec.generate_private_key(ec.SECP521R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    dsa_key = dsa.generate_private_key(2048)
    keys = {
        "rsa-pkcs1": (rsa_key.private_bytes(DER, TRAD, NOENC), spki_sha(rsa_key)),
        "rsa-pkcs8": (rsa_key.private_bytes(DER, PKCS8, NOENC), spki_sha(rsa_key)),
        "ec-sec1": (ec_key.private_bytes(DER, TRAD, NOENC), spki_sha(ec_key)),
        "ec-pkcs8": (ec_key.private_bytes(DER, PKCS8, NOENC), spki_sha(ec_key)),
        "p384-sec1": (p384.private_bytes(DER, TRAD, NOENC), spki_sha(p384)),
        "p521-pkcs8": (p521.private_bytes(DER, PKCS8, NOENC), spki_sha(p521)),
        "ed25519": (ed.private_bytes(DER, PKCS8, NOENC), spki_sha(ed)),
        "ed448": (ed448.Ed448PrivateKey.generate().private_bytes(DER, PKCS8, NOENC), ""),
        "dsa": (dsa_key.private_bytes(DER, TRAD, NOENC), ""),
        "encrypted-pkcs8": (
            ec_key.private_bytes(DER, PKCS8, serialization.BestAvailableEncryption(b"pw")),
            "",
        ),
        "pkcs12": (pkcs12.serialize_key_and_certificates(b"x", ec_key, None, None, NOENC), ""),
    }
    return keys


def test_der_keys_with_trailing_bytes_and_at_any_offset(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    keys = _der_keys(rsa_key, ec_key)
    rng = random.Random(5)
    blob = bytearray(rng.randbytes(4 << 20))
    at = {}
    for i, (name, (der, sha)) in enumerate(keys.items()):
        # whole file; with trailing bytes; after a header
        for data in (der, der + rng.randbytes(37), der + bytes(4096), b"\x7fELF" + rng.randbytes(999) + der):
            found = audit.scan_bytes(data, name)
            assert [f.kind for f in found] == ["private-key-der"], (name, len(data))
            assert sha in found[0].detail
            assert der[-20:].hex() not in str(found)
        pos = 1 + i * 350_003 + rng.randrange(1000)  # any alignment
        blob[pos : pos + len(der)] = der
        at[pos] = name
    path = tmp_path / "flash.img"
    path.write_bytes(blob)
    found = audit.scan_file(str(path))
    offsets = sorted(int(f.excerpt.split(" at byte ")[1].split()[0]) for f in found)
    assert offsets == sorted(at) and {f.kind for f in found} == {"private-key-der"}
    # inside a real executable, at an odd offset
    exe = Path(sys.executable).resolve().read_bytes()[: 1 << 20]
    der = keys["ec-sec1"][0]
    pos = len(exe) // 2 | 1
    found = audit.scan_bytes(exe[:pos] + der + exe[pos:], "usr/bin/app")
    assert [(f.kind, f"at byte {pos} " in f.excerpt) for f in found] == [("private-key-der", True)]


def test_no_der_findings_in_random_data_certificates_and_programs(ec_key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    assert audit.scan_bytes(cert.public_bytes(DER) + bytes(100), "cert.der") == []
    # a program's DER templates (the header a library puts before a raw key) are not keys
    templates = bytes.fromhex("302e020100300506032b656e04220420302e020100300506032b657004220420")
    assert audit.scan_bytes(bytes(64) + templates + templates + bytes(64), "libcrypto.so") == []
    assert audit.scan_bytes(random.Random(9).randbytes(8 << 20), "random.bin") == []
    for exe in (sys.executable, shutil.which("ls"), shutil.which("sh")):
        if exe:
            assert audit.scan_file(os.path.realpath(exe)) == [], exe


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=3000), st.integers(min_value=0, max_value=3000))
def test_der_search_never_raises_and_stays_bounded(noise: bytes, cut: int) -> None:
    headers = bytes.fromhex("308204a4020100") + bytes.fromhex("3077020101") + bytes.fromhex("3082ffff020103")
    data = noise[:cut] + headers + noise[cut:] + headers * 3
    for f in audit.scan_bytes(data, "fuzz.bin"):
        assert f.kind in audit.KINDS


def test_der_candidates_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit.scan, "MAX_DER_CANDIDATES", 50)
    fake = bytes.fromhex("3030020100020100") + bytes(40)  # parses as a SEQUENCE, is no key
    t = time.perf_counter()
    found = audit.scan_bytes(fake * 2000, "hostile.bin")
    assert time.perf_counter() - t < 5
    assert [f.kind for f in found] == ["unreadable"] and "DER-like" in found[0].excerpt


# --- big files, windows, bombs ------------------------------------------------------------


def test_windows_keep_lines_and_findings_across_boundaries(
    monkeypatch: pytest.MonkeyPatch, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    monkeypatch.setattr(audit.scan, "WINDOW", 1 << 13)
    monkeypatch.setattr(audit.scan, "OVERLAP", 1 << 11)
    pem = ec_key.private_bytes(PEM, PKCS8, NOENC)
    lines = [b"# filler line number %d" % i for i in range(5000)]
    for at, text in ((700, pem.rstrip()), (1500, b'HSM_PIN = "24681357"'), (4999, b"export SO_PIN=8642")):
        lines[at] = text
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 15 * (1 << 13)
    extra = pem.rstrip().count(b"\n")
    assert summary(audit.scan_bytes(data, "big.log")) == [
        ("pin-assignment", 1501 + extra),
        ("pin-assignment", 5000 + extra),
        ("private-key", 701),
    ]
    der = ec_key.private_bytes(DER, TRAD, NOENC)
    blob = random.Random(2).randbytes(100_000)
    for pos in (8192 - 60, 2 * 8192 - 2048 - 50, 50_000):  # straddling window edges
        found = audit.scan_bytes(blob[:pos] + der + blob[pos:], "img")
        assert [f"at byte {pos} " in f.excerpt for f in found] == [True], pos


def test_text_file_over_64_mib_scanned_to_its_end(tmp_path: Path) -> None:
    """The tail of a big text file is scanned, in bounded memory (a child process reports its peak)."""
    path = tmp_path / "bitbake-e.txt"
    line = b'SOME_VARIABLE = "value value value value value value value value value"\n'
    n = (70 << 20) // len(line) + 1
    with open(path, "wb") as fh:
        block = line * 10_000
        for _ in range(n // 10_000):
            fh.write(block)
        fh.write(line * (n % 10_000))
        fh.write(b'HSM_USER_PIN = "80604020"\n')
    assert path.stat().st_size > 70 << 20
    code = (
        "import resource, sys\n"
        "from hsmsign import audit\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "f = audit.scan_file(sys.argv[1])\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print([(x.kind, x.line) for x in f], (peak - before) // 1024)\n"
    )
    lib = Path(audit.__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(lib)},
    ).stdout.split("] ")
    assert out[0] + "]" == f"[('pin-assignment', {n + 1})]"
    assert int(out[1]) < 150, f"peak memory grew by {out[1]} MiB for a 70 MiB file"


def test_decompression_bombs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "BOMB_MIN", 1 << 20)
    for name, bomb in (
        ("bomb.xz", lzma.compress(bytes(8 << 20))),
        ("bomb.bz2", bz2.compress(bytes(8 << 20))),
    ):
        found = audit.scan_bytes(bomb, name)
        assert [f.kind for f in found] == ["unreadable"] and "decompression bomb" in found[0].excerpt
    # the total budget holds across members and levels
    monkeypatch.setattr(archives, "BOMB_RATIO", 10**9)
    monkeypatch.setattr(archives, "MAX_EXPANDED", 2 << 20)
    members = {f"./m{i}": random.Random(i).randbytes(1 << 20) for i in range(3)}
    members["./z/local.conf"] = CONFIG.encode()
    found = audit.scan_bytes(gzip.compress(tar_bytes(members)), "rootfs.tar.gz")
    assert [f.kind for f in found] == ["unreadable"] and "MiB of decompressed data" in found[0].excerpt
    within = audit.scan_bytes(gzip.compress(tar_bytes({"./z/local.conf": CONFIG.encode()})), "small.tar.gz")
    assert len(within) == 2


def test_damaged_containers_are_warnings() -> None:
    tgz = gzip.compress(tar_bytes({"./a/local.conf": CONFIG.encode(), "./b": os.urandom(100_000)}))
    found = audit.scan_bytes(tgz[: len(tgz) // 2], "cut.tar.gz")
    assert {f.kind for f in found} == {"pin-assignment", "pin-value", "unreadable"}
    for data in (
        b"!<arch>\nshort",
        b"070701" + b"Z" * 200,
        b"PK\x03\x04" + bytes(40),
        b"BZh91AY&SY" + bytes(50),
    ):
        for f in audit.scan_bytes(data, "x"):
            assert f.kind == "unreadable"


def test_zstd_without_the_tool_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives.shutil, "which", lambda name: None)
    found = audit.scan_bytes(archives.ZSTD_MAGIC + bytes(60), "x.sigdata.zst")
    assert [(f.kind, "install zstd" in f.excerpt) for f in found] == [("unreadable", True)]
