"""The leak scanner, on keys and secrets generated at run time (nothing secret is committed)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from hsmsign import audit, known_keys
from hsmsign.cli import main
from hsmsign.errors import ConfigError

NOENC = serialization.NoEncryption()
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def spki(key: object) -> bytes:
    return key.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def kinds(findings: list[audit.Finding]) -> list[str]:
    return sorted(f.kind for f in findings)


@pytest.mark.parametrize(
    "fmt,keyname",
    [
        (serialization.PrivateFormat.TraditionalOpenSSL, "rsa"),
        (serialization.PrivateFormat.PKCS8, "rsa"),
        (serialization.PrivateFormat.TraditionalOpenSSL, "ec"),
        (serialization.PrivateFormat.PKCS8, "ec"),
        (serialization.PrivateFormat.PKCS8, "ed25519"),
        (serialization.PrivateFormat.OpenSSH, "ed25519"),
        (serialization.PrivateFormat.OpenSSH, "ec"),
        (serialization.PrivateFormat.OpenSSH, "rsa"),
    ],
)
def test_pem_private_keys_found_with_line_and_fingerprint(
    fmt: serialization.PrivateFormat,
    keyname: str,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    key = {"rsa": rsa_key, "ec": ec_key, "ed25519": ed25519.Ed25519PrivateKey.generate()}[keyname]
    pem = key.private_bytes(PEM, fmt, NOENC)
    data = b"#!/bin/sh\n# setup script\nexport FOO=1\ncat > key.pem <<EOF\n" + pem + b"EOF\n"
    found = audit.scan_bytes(data, "setup.sh")
    assert kinds(found) == ["private-key"]
    f = found[0]
    assert f.line == 5 and f.source == "setup.sh" and f.severity == "error"
    body_line = pem.splitlines()[1].decode()
    assert body_line not in f.format() and body_line not in json.dumps(f.as_dict())
    assert hashlib.sha256(spki(key)).hexdigest() in f.detail


def test_encrypted_openssh_key_still_shows_its_public_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pytest.importorskip("bcrypt", reason="cryptography needs bcrypt to write encrypted OpenSSH keys")
    pem = ec_key.private_bytes(
        PEM, serialization.PrivateFormat.OpenSSH, serialization.BestAvailableEncryption(b"pw")
    )
    found = audit.scan_bytes(pem, "id_ecdsa")
    assert kinds(found) == ["private-key"]
    assert hashlib.sha256(spki(ec_key)).hexdigest() in found[0].detail


def test_encrypted_pem_and_pkcs12_and_der(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    enc = rsa_key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    (tmp_path / "enc.pem").write_bytes(enc)
    (tmp_path / "key.der").write_bytes(rsa_key.private_bytes(DER, serialization.PrivateFormat.PKCS8, NOENC))
    (tmp_path / "key1.der").write_bytes(
        rsa_key.private_bytes(DER, serialization.PrivateFormat.TraditionalOpenSSL, NOENC)
    )
    cert = _self_signed(rsa_key)
    p12 = pkcs12.serialize_key_and_certificates(
        b"x", rsa_key, cert, None, serialization.BestAvailableEncryption(b"pw")
    )
    (tmp_path / "bundle.p12").write_bytes(p12)
    found, nfiles, nbytes = audit.scan_paths([str(tmp_path)])
    by_file = {Path(f.source).name: f for f in found}
    assert nfiles == 4 and nbytes > 2000
    assert by_file["enc.pem"].kind == "private-key" and "ENCRYPTED" in by_file["enc.pem"].excerpt
    assert by_file["key.der"].kind == "private-key-der"
    assert hashlib.sha256(spki(rsa_key)).hexdigest() in by_file["key.der"].detail
    assert by_file["key1.der"].kind == "private-key-der"
    assert by_file["bundle.p12"].kind == "private-key-der" and "PKCS#12" in by_file["bundle.p12"].excerpt


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.Certificate:
    import datetime

    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_stdlib_spki_derivation_matches_cryptography(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    for key in (rsa_key, ec_key, ec.generate_private_key(ec.SECP384R1())):
        for fmt in (serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8):
            assert audit.spki_from_private_der(key.private_bytes(DER, fmt, NOENC)) == spki(key)
    cert = _self_signed(ec_key)
    assert audit.spki_from_certificate_der(cert.public_bytes(DER)) == spki(ec_key)
    assert audit.spki_from_private_der(b"\x30\x03\x02\x01") is None
    assert audit.spki_from_private_der(os.urandom(100)) is None


def test_known_public_keys_in_certs_and_pem(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ec_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    fps = [hashlib.sha256(spki(k)).hexdigest() for k in (ec_key, rsa_key)]
    data = tmp_path / "kk.json"
    data.write_text(
        json.dumps(
            {
                "public_keys": [
                    {
                        "spki_sha256": fp,
                        "algo": "ec",
                        "bits": 256,
                        "sources": [{"repo": "demo/bsp", "path": f"k{i}.pem", "commit": "0" * 40}],
                    }
                    for i, fp in enumerate(fps)
                ]
            }
        )
    )
    monkeypatch.setattr(known_keys, "DATA_FILE", str(data))
    text = (
        _self_signed(ec_key).public_bytes(PEM)
        + rsa_key.public_key().public_bytes(PEM, serialization.PublicFormat.PKCS1)
        + ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    found = audit.scan_bytes(text, "deploy/trust.pem")
    assert kinds(found) == ["known-public-key", "known-public-key"]
    assert "demo/bsp: k0.pem" in found[0].detail and "demo/bsp: k1.pem" in found[1].detail
    # OpenSSH public keys (authorized_keys, *.pub) of published keys, too
    ssh_lines = b"".join(
        k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b" me@host\n"
        for k in (ec_key, rsa_key, ed25519.Ed25519PrivateKey.generate())
    )
    ssh_found = audit.scan_bytes(ssh_lines, "root/.ssh/authorized_keys")
    assert [(f.kind, f.line) for f in ssh_found] == [("known-public-key", 1), ("known-public-key", 2)]
    assert ssh_found[0].excerpt.startswith("ecdsa-sha2-nistp256 key")
    # a private key that is published says so
    priv = audit.scan_bytes(rsa_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NOENC), "x")
    assert priv[0].kind == "private-key" and "PUBLISHED KEY" in priv[0].detail


LOCAL_CONF = """\
MACHINE ??= "qemuarm64"
HSM_PKCS11_URI = "pkcs11:token=acme;object=fw?pin-value={pin}"
HSM_PIN = "{pin}"
HSMSIGN_PIN_SOURCE = "file:/run/secrets/pin"
SWUPDATE_AES_KEY = "{aes}"
FIRMWARE_IV ?= "{iv}"
BOOT_KEY = "{b64}"
HSMSIGN_PUBKEY_SHA256 = "{sha}"
SRC_URI[sha256sum] = "{sha}"
SRCREV = "{sha40}"
UBOOT_SIGN_KEYDIR = "${{TOPDIR}}/keys"
RAUC_KEY_FILE = "${{THISDIR}}/dev.key"
SWUPDATE_PASSWORD_FILE = "/home/me/pw.txt"
export MKIMAGE_SIGN_PIN={pin}
PWD = "/home/me"
NIST_KEY = "2b7e151628aed2a6abf7158809cf4f3c"
ZERO_KEY = "00000000000000000000000000000000"
"""


def test_configuration_secrets(tmp_path: Path) -> None:
    pin = "73" + os.urandom(3).hex()
    aes = os.urandom(16).hex()
    iv = os.urandom(16).hex()
    import base64

    b64 = base64.b64encode(os.urandom(32)).decode()
    text = LOCAL_CONF.format(
        pin=pin, aes=aes, iv=iv, b64=b64, sha=os.urandom(32).hex(), sha40=os.urandom(20).hex()
    )
    found = audit.scan_text(text, "conf/local.conf")
    got = {(f.line, f.kind) for f in found}
    assert got == {
        (2, "pin-value"),
        (3, "pin-assignment"),
        (5, "symmetric-key"),
        (6, "symmetric-key"),
        (7, "symmetric-key"),
        (11, "key-file-variable"),
        (12, "key-file-variable"),
        (13, "key-file-variable"),
        (14, "pin-assignment"),
        (16, "known-symmetric-key"),
        (17, "weak-symmetric-key"),
    }
    report = "\n".join(f.format() for f in found) + json.dumps([f.as_dict() for f in found])
    for secret in (pin, aes, iv, b64):
        assert secret not in report
    nist = next(f for f in found if f.kind == "known-symmetric-key")
    assert "800-38A" in nist.detail


@pytest.mark.parametrize(
    "name,text,kind",
    [
        ("kas.yml", 'local_conf_header:\n  hsm: |\n    HSM_USER_PIN = "4711"\n', "pin-assignment"),
        ("ci.yml", "env:\n  password: hunter2-xyz\n", "pin-assignment"),
        (
            "env.txt",
            '# $HSM_PIN\n#   set conf/local.conf:3\n#     "9876"\nHSM_PIN="9876"\n',
            "pin-assignment",
        ),
        ("config.json", '{\n  "so_pin": "87654321",\n  "x": 1\n}\n', "pin-assignment"),
        (
            "key.h",
            '#define FW_AES_KEY "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"\n',
            "known-symmetric-key",
        ),
        (
            "aes.key",
            "390ad54490a4a5f53722291023c19e08ffb5c4677a59e958c96ffa6e641df040 "
            "d5d601bacfe13100b149177318ebc7a4\n",
            "known-symmetric-key",
        ),
        ("run.do_sign", "mkimage -k 'pkcs11:object=k;pin-value=1234' -F x.itb\n", "pin-value"),
        ("env.sh", "export FW_AES_KEY=q83vEjRWeJCrze8SNFZ4k+==\n", "symmetric-key"),
    ],
)
def test_secret_forms(name: str, text: str, kind: str) -> None:
    found = audit.scan_text(text, name)
    assert [f.kind for f in found] == [kind]


@pytest.mark.parametrize(
    "text",
    [
        'HSM_PKCS11_URI = "pkcs11:token=acme;object=fw?pin-source=file:/run/pin"\n',
        'HSMSIGN_PIN_ENV = "CI_HSM_PIN"\n',
        "pin = read_pin(path)\nself._pin = user_pin\n",
        'SRC_URI[sha256sum] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"\n',
        'KEY_NAME = "dev"\nUBOOT_SIGN_KEYNAME = "dev"\nPINCTRL_KEY_MAP = "abc"\n',
        "The pin-value attribute (RFC 7512) must not be used.\n",
        'HSM_PIN = "${HSM_PIN_FROM_ENV}"\nPASSWORD = ""\n',
        'UBOOT_SIGN_KEYDIR = ""\nPWD=/home/user\n',
        # seen in OE-Core: nsswitch.conf and busybox's kconfig
        "passwd:         files systemd\nshadow: files\n",
        "CONFIG_PASSWD=y\nCONFIG_PASSWORD_MINLEN=6\nCONFIG_PWD=y\n",
        # seen in this repository: the PEM header in a regex, a shell glob, a PIN file path, a constant's name
        '_PRIVATE_KEY = re.compile(r"-----BEGIN OPENSSH PRIVATE' + ' KEY-----")\n',
        '    *pin-value=*) die "no PIN in a URI" ;;\n',
        'HSM_PIN_FILE = "/run/secrets/hsm-pin"\nPIN_ATTR = "pin-value"\n',
    ],
)
def test_no_false_positives(text: str) -> None:
    assert audit.scan_text(text, "x") == []


def test_check_variable_for_the_layer() -> None:
    f = audit.check_variable("HSM_PIN", "1234")
    assert f is not None and f.kind == "pin-assignment" and f.source == "variable HSM_PIN"
    assert "1234" not in f.format()
    f = audit.check_variable("HSM_PKCS11_URI", "pkcs11:token=a;object=b?pin-value=secret99")
    assert f is not None and f.kind == "pin-value" and "secret99" not in f.format()
    f = audit.check_variable("FW_ENC_KEY", "2b7e151628aed2a6abf7158809cf4f3c")
    assert f is not None and f.kind == "known-symmetric-key"
    key_text = ed25519.Ed25519PrivateKey.generate().private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, NOENC
    )
    f = audit.check_variable("SIGNING_BLOB", key_text.decode())
    assert f is not None and f.kind == "private-key"
    assert audit.check_variable("HSM_PKCS11_URI", "pkcs11:token=a;object=b") is None
    assert audit.check_variable("HSMSIGN_PUBKEY_SHA256", os.urandom(32).hex()) is None
    assert audit.check_variable("SRCREV", os.urandom(20).hex()) is None
    assert audit.check_variable("HSM_PIN", None) is None


def _cpio_newc(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    ino = 1
    for name, data in [*members.items(), ("TRAILER!!!", b"")]:
        nb = name.encode() + b"\0"
        mode = 0o100644 if data or name != "TRAILER!!!" else 0
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + nb)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))
        ino += 1
    return out.getvalue()


def test_archives(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = ec_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NOENC)
    cpio = _cpio_newc({"etc/hostname": b"qemu\n", "etc/ssl/private/fw.pem": pem})
    (tmp_path / "initramfs.cpio.gz").write_bytes(gzip.compress(cpio))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for name, data in (
            ("./etc/swupdate/aes.key", b"2b7e151628aed2a6abf7158809cf4f3c\n"),
            ("./etc/os-release", b"ID=poky\n"),
        ):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (tmp_path / "rootfs.tar.xz").write_bytes(buf.getvalue())
    found, _, _ = audit.scan_paths([str(tmp_path)])
    srcs = {f.source.replace(str(tmp_path) + "/", ""): f.kind for f in found}
    assert srcs == {
        "initramfs.cpio.gz!etc/ssl/private/fw.pem": "private-key",
        "rootfs.tar.xz!./etc/swupdate/aes.key": "known-symmetric-key",
    }
    # the system cpio tool reads what our test writer wrote: the format is real
    if subprocess.run(["which", "cpio"], capture_output=True).returncode == 0:
        listing = subprocess.run(
            ["cpio", "-t", "--quiet"], input=cpio, capture_output=True, check=True
        ).stdout
        assert b"etc/ssl/private/fw.pem" in listing


def test_zstd_sigdata(tmp_path: Path) -> None:
    """BitBake writes sigdata/siginfo zstd-compressed: a PIN in a task's variables is found inside."""
    if subprocess.run(["which", "zstd"], capture_output=True).returncode != 0:
        pytest.skip("zstd missing: apt-get install zstd")
    sig = json.dumps({"task": "do_sign", "varvals": {"HSM_PIN": "80604020", "PN": "u-boot"}}, indent=0)
    raw = tmp_path / "u-boot.do_sign.sigdata"
    raw.write_text(sig)
    subprocess.run(["zstd", "-q", "--rm", str(raw), "-o", str(raw) + ".zst"], check=True)
    found = audit.scan_file(str(raw) + ".zst")
    assert [(f.kind, f.source.endswith(".zst!")) for f in found] == [("pin-assignment", True)]


def test_key_inside_a_binary_image(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NOENC)
    img = os.urandom(300_000) + b"\0" * 4096 + pem + os.urandom(100_000)
    (tmp_path / "core-image.ext4").write_bytes(img)
    found, _, _ = audit.scan_paths([str(tmp_path)])
    assert kinds(found) == ["private-key"]


def test_big_files_are_scanned_in_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    monkeypatch.setattr(audit.scan, "WINDOW", 1 << 16)
    monkeypatch.setattr(audit.scan, "OVERLAP", 1 << 12)
    pem = ec_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NOENC)
    img = tmp_path / "sdcard.wic"
    img.write_bytes(b"\n" * 70_000 + pem + b"pkcs11:object=x?pin-value=777\n" + os.urandom(50_000))
    found = audit.scan_file(str(img))
    assert [(f.kind, f.line) for f in found] == [
        ("private-key", 70_001),
        ("pin-value", 70_001 + pem.count(b"\n")),
    ]


def test_allowlist(tmp_path: Path) -> None:
    text = 'HSM_PIN = "2468"\nDEV_PASSWORD = "letmein-99"\n'
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "local.conf").write_text(text)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "howto.md").write_text(text)
    found, _, _ = audit.scan_paths([str(tmp_path)])
    assert len(found) == 4
    allow = tmp_path / "allow"
    allow.write_text(f"# reviewed\nid {found[0].id}\npath */docs/* pin-assignment\n")
    left, _, _ = audit.scan_paths([str(tmp_path)], audit.Allowlist.load(str(allow)))
    assert [(Path(f.source).name, f.line) for f in left] == [("local.conf", 2)]
    allow.write_text("path */docs/* no-such-kind\n")
    with pytest.raises(ConfigError):
        audit.Allowlist.load(str(allow))
    allow.write_text("whatever\n")
    with pytest.raises(ConfigError):
        audit.Allowlist.load(str(allow))
    with pytest.raises(ConfigError):
        audit.Allowlist.load(str(tmp_path / "missing"))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "local.conf").write_text('HSM_PKCS11_URI = "pkcs11:token=acme;object=fw"\n')
    assert main(["audit", str(clean)]) == 0
    assert "0 finding(s) in 1 file(s)" in capsys.readouterr().out
    (clean / "site.conf").write_text('HSM_PIN = "13579"\n')
    assert main(["audit", "--json", str(clean)]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["files"] == 2
    assert doc["findings"][0]["kind"] == "pin-assignment" and doc["findings"][0]["line"] == 1
    assert "13579" not in json.dumps(doc)
    (clean / "site.conf").write_text('UBOOT_SIGN_KEYDIR = "${TOPDIR}/keys"\n')
    assert main(["audit", "--fail-on", "error", str(clean)]) == 0
    assert main(["audit", str(clean)]) == 4
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["audit", "--fail-on", "error", str(fifo)]) == 0  # a FIFO is reported, never read (no hang)
    assert "not a regular file" in capsys.readouterr().out
    assert main(["audit", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_audit_is_standard_library_only_and_works_without_cryptography(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """BitBake imports audit/known_keys at parse time, where cryptography may be absent."""
    pem = rsa_key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NOENC)
    (tmp_path / "k.pem").write_bytes(pem)
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('cryptography', 'pkcs11', 'asn1crypto'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from hsmsign import audit, known_keys\n"
        f"f = audit.scan_file({str(tmp_path / 'k.pem')!r})\n"
        "print(f[0].kind, f[0].detail)\n"
        "print(audit.check_variable('HSM_PIN', '1111').kind)\n"
    )
    lib = Path(audit.__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(lib)},
    )
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(spki(rsa_key)).hexdigest() in proc.stdout
    assert "pin-assignment" in proc.stdout


def test_scanner_source_holds_no_literal_pem_header() -> None:
    src = "".join(p.read_text() for p in Path(audit.__file__).resolve().parents[1].glob("**/*.py"))
    assert "-----BEGIN " + "PRIVATE KEY" not in src
    assert "BEGIN RSA " + "PRIVATE" not in src


# --- ids and redaction: nothing of a secret, not even its length ------------------------

SECRET_LINES = [
    ("pin-assignment", 'HSM_PIN = "{s}"\n'),
    ("pin-value", "HSM_PKCS11_URI = pkcs11:token=t;object=k?pin-value={s}\n"),
    ("pin-argument", "pkcs11-tool -l --pin {s} --list-objects\n"),
    ("pin-assignment", '{{"varvals":{{"SO_PIN":"{s}","PN":"x"}}}}\n'),
]


@pytest.mark.parametrize("kind,template", SECRET_LINES)
def test_ids_and_excerpts_reveal_nothing_of_the_secret(tmp_path: Path, kind: str, template: str) -> None:
    """Two PINs of different lengths at one place: the same id and excerpt, neither holding the PIN."""
    reports = []
    for pin in ("4711", "24681357" + os.urandom(4).hex()):
        (tmp_path / "site.conf").write_text(template.format(s=pin))
        found, _, _ = audit.scan_paths([str(tmp_path)])
        assert [f.kind for f in found] == [kind]
        f = found[0]
        text = f.format() + json.dumps(f.as_dict())
        assert pin not in text and pin[:3] not in f.excerpt and str(len(pin)) not in f.excerpt
        assert f.id == audit.location_id(kind, "site.conf", 1) and f.id.startswith("loc-")
        # the old id was sha256(kind, secret): brute-forceable for a short PIN
        assert hashlib.sha256(kind.encode() + b"\0" + pin.encode()).hexdigest()[:16] not in text
        reports.append((f.id, f.excerpt))
    assert reports[0] == reports[1]


def test_no_secret_length_in_any_excerpt(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "key.der").write_bytes(rsa_key.private_bytes(DER, serialization.PrivateFormat.PKCS8, NOENC))
    (tmp_path / "key.pem").write_bytes(rsa_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NOENC))
    (tmp_path / "aes.key").write_text(os.urandom(32).hex() + " " + os.urandom(16).hex() + "\n")
    (tmp_path / "env.sh").write_text(
        f"export FW_AES_KEY={os.urandom(24).hex()}\nexport SO_PASSWORD=x{os.urandom(9).hex()}\n"
    )
    found, _, _ = audit.scan_paths([str(tmp_path)])
    assert len(found) == 5
    for f in found:
        assert "[redacted]" in f.excerpt or "redacted" not in f.excerpt
        assert re.search(r"\d+ (?:chars?|bytes?|hex)", f.excerpt) is None, f.excerpt


def test_ids_follow_the_place_not_the_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ids name a file relative to the repository (or scanned directory): the same on every checkout."""
    ids = []
    for where in ("a/checkout", "elsewhere/clone"):
        repo = tmp_path / where
        (repo / ".git").mkdir(parents=True)
        (repo / "conf").mkdir()
        (repo / "conf" / "local.conf").write_text('MACHINE = "x"\nHSM_PIN = "2468"\n')
        whole, _, _ = audit.scan_paths([str(repo)])
        one, _, _ = audit.scan_paths([str(repo / "conf" / "local.conf")])
        sub, _, _ = audit.scan_paths([str(repo / "conf")])
        assert len({f.id for f in whole + one + sub}) == 1
        ids.append(whole[0].id)
    assert ids[0] == ids[1] == audit.location_id("pin-assignment", "conf/local.conf", 2)
    # an old-style id (the secret's hash) no longer matches and says what to do
    repo = tmp_path / "a/checkout"
    allow = repo / ".hsmsign-audit-allow"
    old = hashlib.sha256(b"pin-assignment\0HSM_PIN=2468").hexdigest()[:16]
    allow.write_text(f"id {old}\n")
    loaded = audit.Allowlist.load(str(allow))
    assert len(loaded.warnings) == 1 and "old-style id" in loaded.warnings[0]
    assert main(["audit", "--allowlist", str(allow), str(repo)]) == 4
    err = capsys.readouterr().err
    assert "old-style id" in err and "loc-" in err
    allow.write_text(f"# reviewed\nid {ids[0]}\n")
    assert main(["audit", "--allowlist", str(allow), str(repo)]) == 0


# --- linear time ------------------------------------------------------------------------

ADVERSARIAL = [
    "HSM_PIN=a{sp}b\n",
    "export HSM_PIN=a{sp},{sp}b\n",
    "#define HSM_PIN a{sp}b\n",
    '{{"HSM_PIN": "a{sp}b", "SO_PIN": 1{sp}\n',
    "pkcs11:token=t?pin-value=a{sp}b\n",
    "pkcs11-tool --pin{sp}b --so-pin{sp}\n",
    "-----BEGIN RSA PRIVATE" " KEY-----{sp}b\n",  # split: no key header in a tracked file
    "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t{sp}b\n",
    '{{"kty": "RSA", "d": "{sp}\n',
    "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----{sp}b\n",
]


@pytest.mark.parametrize("spaces", [5000, 50000])
@pytest.mark.parametrize("template", ADVERSARIAL)
def test_long_blank_runs_scan_in_linear_time(template: str, spaces: int) -> None:
    """The example of the report (HSM_PIN=a, 5,000 blanks, b took over 100 s) and its relatives."""
    text = template.format(sp=" " * spaces)
    start = time.process_time()
    audit.scan_text(text, "x.conf")
    audit.check_variable("HSM_PIN", text)
    assert time.process_time() - start < 0.5


# --- formats and places the scanner used to miss ------------------------------------------


@pytest.mark.parametrize("column", [0, 153, 10_000, 200_000])
def test_whole_lines_are_scanned(column: int) -> None:
    pad = ("abc " * (column // 4 + 1))[:column]
    for spelling in ("pin-value", "PIN-VALUE", "Pin-Value", "pIn-vAlUe"):
        text = pad + f"pkcs11:token=t;object=k?{spelling}=97531\n"
        found = audit.scan_text(text, "long.txt")
        assert [f.kind for f in found] == ["pin-value"], spelling
        assert "97531" not in found[0].format() and found[0].excerpt.startswith("pkcs11:token=t")
    # an assignment on the line after a long one, and a JSON pair at the end of it
    text = pad + f'"SO_PIN": "97531"\nFW_KEY = "{os.urandom(16).hex()}"\n'
    found = audit.scan_text(text, "x")
    assert [(f.kind, f.line) for f in found] == [("pin-assignment", 1), ("symmetric-key", 2)]


def test_compact_sigdata_json() -> None:
    """BitBake's sigdata: one line of JSON, the task's shell code as strings with \\n escapes."""
    aes = os.urandom(32).hex()
    task = (
        "    export MKIMAGE_SIGN_PIN=1357\n"
        "    mkimage -k 'pkcs11:object=k?PIN-VALUE=2468' -F fit.itb\n"
        "    pkcs11-tool -l --pin=1111 --sign\n"
    )
    varvals = {
        "HSM_PIN": "80604020",
        "SWUPDATE_AES_KEY": aes,
        "do_sign": task,
        "PN": "u-boot",
        "UBOOT_SIGN_KEYDIR": "${HSMSIGN_KEY_ID}",
        "HSMSIGN_PUBKEY_SHA256": os.urandom(32).hex(),
    }
    blob = json.dumps({"task": "do_sign", "varvals": varvals}, separators=(",", ":"), sort_keys=True)
    assert "\n" not in blob and len(blob) > 160
    found = audit.scan_text(blob, "u-boot.do_sign.sigdata")
    assert sorted((f.kind, f.excerpt) for f in found) == [
        ("pin-argument", "pkcs11-tool --pin [redacted]"),
        ("pin-assignment", 'HSM_PIN = "[redacted]"'),
        ("pin-assignment", 'MKIMAGE_SIGN_PIN = "[redacted]"'),
        ("pin-value", "pkcs11:object=k?pin-value=[redacted]"),
        ("symmetric-key", 'SWUPDATE_AES_KEY = "[redacted]"'),
    ]
    report = json.dumps([f.as_dict() for f in found])
    for secret in ("80604020", aes, "1357", "2468", "1111"):
        assert secret not in report


@pytest.mark.parametrize(
    "command,excerpt,secret",
    [
        ("pkcs11-tool --pin 123456 -l --list-objects", "pkcs11-tool --pin", "123456"),
        ("pkcs11-tool --pin=123456 -s", "pkcs11-tool --pin", "123456"),
        ("pkcs11-tool -l -p 123456 -s -m ECDSA", "pkcs11-tool -p", "123456"),
        ("/usr/bin/pkcs11-tool -l -p'123456' -s", "pkcs11-tool -p", "123456"),
        ("PKCS11-TOOL --LOGIN --PIN 'a b c' --sign", "PKCS11-TOOL --PIN", "a b c"),
        (
            "pkcs11-tool --login --so-pin 87654321 --init-pin --new-pin 2222",
            "pkcs11-tool --so-pin",
            "87654321",
        ),
        (
            "softhsm2-util --init-token --free --label t --so-pin 12345678 --pin 8765",
            "softhsm2-util",
            "12345678",
        ),
        ("p11tool --login --set-pin=4321 'pkcs11:token=a'", "p11tool --set-pin", "4321"),
        ("yubihsm-shell -a sign-pkcs1v15 -p password1 -i 1", "yubihsm-shell -p", "password1"),
        ("openssl pkcs12 -export -passout pass:hunter22 -in x.pem", "-passout pass:", "hunter22"),
        ("openssl rsa -passin 'pass:hunter22' -in x.pem", "-passin 'pass:", "hunter22"),
        ("keytool -importkeystore -srcstorepass s3cret -deststorepass s3cret", "-srcstorepass", "s3cret"),
        ("gpg --batch --passphrase s3cr3t --sign x", "--passphrase", "s3cr3t"),
    ],
)
def test_pins_on_command_lines(command: str, excerpt: str, secret: str) -> None:
    for text in (command + "\n", f"do_sign() {{\n    {command} && echo ok\n}}\n", "run: |\n  " + command):
        found = audit.scan_text(text, "run.do_sign")
        assert {f.kind for f in found} == {"pin-argument"}, (text, found)
        assert any(f.excerpt.startswith(excerpt) for f in found)
        assert all(secret not in f.format() for f in found)
    f = audit.check_variable("do_sign", f"    {command}\n")
    assert f is not None and f.kind == "pin-argument" and secret not in f.format()


def test_pin_argument_on_a_continuation_line() -> None:
    text = "pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so \\\n    --login \\\n    --pin 2468 --sign\n"
    found = audit.scan_text(text, "sign.sh")
    assert [(f.kind, f.line) for f in found] == [("pin-argument", 3)]


@pytest.mark.parametrize(
    "text",
    [
        "mkdir -p /x && ssh -p 22 host\n",
        'pkcs11-tool --pin "$HSM_PIN" -l --sign\n',
        "pkcs11-tool --pin=${PIN} -l\n",
        "pkcs11-tool -l --pin PIN --sign\n",
        "softhsm2-util --init-token --so-pin SO_PIN --pin <pin>\n",
        "pkcs11-tool -l; cp -p a b\n",
        "hsmsign sign --pin-env CI_HSM_PIN -o x.sig x\n",
        "openssl rsa -passin env:KEY_PASS -passout file:/run/pw\n",
        "gpioset --pin 17 1\n",
    ],
)
def test_pin_arguments_not_reported(text: str) -> None:
    assert audit.scan_text(text, "x.sh") == []


def _pem_lines(key: object, fmt: serialization.PrivateFormat) -> tuple[str, str, str]:
    lines = key.private_bytes(PEM, fmt, NOENC).decode().splitlines()  # type: ignore[attr-defined]
    return lines[0], "".join(lines[1:-1]), lines[-1]


@pytest.mark.parametrize("width", [16, 48, 64, 76, 0, -1, -2])
def test_pem_at_any_width(width: int, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    for key, fmt in (
        (rsa_key, serialization.PrivateFormat.TraditionalOpenSSL),
        (ec_key, serialization.PrivateFormat.PKCS8),
        (ec_key, serialization.PrivateFormat.OpenSSH),
    ):
        head, body, tail = _pem_lines(key, fmt)
        if width > 0:
            text = (
                head + "\n" + "\n".join(body[i : i + width] for i in range(0, len(body), width)) + "\n" + tail
            )
        elif width == 0:  # one line, as environment variables flatten it
            text = head + body + tail
        elif width == -1:
            text = head + " " + body + " " + tail
        else:  # a JSON string with \n escapes
            text = json.dumps({"key": head + "\n" + body[:64] + "\n" + body[64:] + "\n" + tail + "\n"})
        found = audit.scan_text("config:\n" + text + "\n", "x")
        assert [(f.kind, f.line) for f in found] == [("private-key", 2)], text[:80]
        assert hashlib.sha256(spki(key)).hexdigest() in found[0].detail
        assert body[10:30] not in found[0].format()


@pytest.mark.parametrize("shape", ["k8s", "ci-variable", "wrapped76", "offset1", "offset2", "json"])
def test_base64_wrapped_pem(shape: str, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NOENC)
    b64 = base64.b64encode(pem).decode()
    text = {
        "k8s": f"apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\ndata:\n  tls.key: {b64}\n",
        "ci-variable": f'variables:\n  SIGNING_KEY_B64: "{b64}"\n',
        "wrapped76": "key: |\n" + "".join(f"  {b64[i : i + 76]}\n" for i in range(0, len(b64), 76)),
        "offset1": "blob=" + base64.b64encode(b"x\n" + pem).decode() + "\n",
        "offset2": "blob=" + base64.b64encode(b"#!\n" + pem + b"tail\n").decode() + "\n",
        "json": json.dumps({"auths": {}, "tls": {"key": b64}}),
    }[shape]
    found = [f for f in audit.scan_text(text, "secret.yaml") if f.kind == "private-key"]
    assert len(found) == 1 and found[0].excerpt.startswith("base64 of ")
    assert hashlib.sha256(spki(rsa_key)).hexdigest() in found[0].detail
    assert audit.check_variable("CI_KEY", b64) is not None
    # a base64-wrapped certificate or public key is not a secret
    pub = base64.b64encode(
        rsa_key.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert audit.scan_text(f"tls.crt: {pub.decode()}\n", "x") == []


def _b64u(n: int, size: int = 0) -> str:
    raw = n.to_bytes(size or (n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwks(rsa_key: rsa.RSAPrivateKey) -> dict[str, dict[str, str]]:
    rn = rsa_key.private_numbers()
    out = {
        "RSA": {
            "kty": "RSA",
            "kid": "k1",
            "n": _b64u(rn.public_numbers.n),
            "e": _b64u(rn.public_numbers.e),
            "d": _b64u(rn.d),
            "p": _b64u(rn.p),
            "q": _b64u(rn.q),
        },
    }
    for crv, curve, size in (("P-256", ec.SECP256R1(), 32), ("P-384", ec.SECP384R1(), 48)):
        k = ec.generate_private_key(curve)
        en = k.private_numbers()
        out[crv] = {
            "kty": "EC",
            "crv": crv,
            "x": _b64u(en.public_numbers.x, size),
            "y": _b64u(en.public_numbers.y, size),
            "d": _b64u(en.private_value, size),
        }
    ed = ed25519.Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    out["Ed25519"] = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(ed.public_key().public_bytes(raw, serialization.PublicFormat.Raw))
        .decode()
        .rstrip("="),
        "d": base64.urlsafe_b64encode(ed.private_bytes(raw, serialization.PrivateFormat.Raw, NOENC))
        .decode()
        .rstrip("="),
    }
    out["oct"] = {
        "kty": "oct",
        "alg": "A256GCM",
        "k": base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="),
    }
    return out


def test_jwk_private_and_secret_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    keys = _jwks(rsa_key)
    for name, jwk in keys.items():
        want = "symmetric-key" if name == "oct" else "private-key"
        for text in (
            json.dumps(jwk, indent=2),
            json.dumps({"keys": [jwk]}),
            json.dumps({"env": {"JWK": json.dumps(jwk)}}),
            "x = " + json.dumps(jwk, separators=(",", ":")),
        ):
            found = audit.scan_text(text, "jwks.json")
            assert [f.kind for f in found] == [want], (name, text[:60])
            secret = jwk.get("d") or jwk["k"]
            assert secret not in found[0].format() and str(len(secret)) not in found[0].excerpt
        f = audit.check_variable("SIGNING_JWK", json.dumps(jwk))
        assert f is not None and f.kind == want
    assert (
        hashlib.sha256(spki(rsa_key)).hexdigest() in audit.scan_text(json.dumps(keys["RSA"]), "x")[0].detail
    )
    # the published example key as a JWK oct key
    nist = {
        "kty": "oct",
        "k": base64.urlsafe_b64encode(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")).decode(),
    }
    assert [f.kind for f in audit.scan_text(json.dumps(nist), "x")] == ["known-symmetric-key"]
    # public JWKs are not secrets
    public = [{k: v for k, v in jwk.items() if k not in ("d", "p", "q", "k")} for jwk in keys.values()]
    assert audit.scan_text(json.dumps({"keys": public}), "jwks.json") == []


@pytest.mark.parametrize(
    "header",
    [
        "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----",
        "---- BEGIN SSH2 PRIVATE KEY ----",
        "----BEGIN SSH2 ENCRYPTED PRIVATE KEY----",
    ],
)
def test_ssh2_private_keys(header: str) -> None:
    body = base64.b64encode(bytes.fromhex("3f6ff9eb") + os.urandom(600)).decode()
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    end = header.replace("BEGIN", "END")
    for comment in ("", 'Comment: "rsa-key-20260101"\n', 'Subject: me\nComment: "a long \\\ncomment"\n'):
        text = "\r\n".join([header, *comment.splitlines(), *lines, end]) + "\r\n"
        found = audit.scan_text("# key\n" + text, "id_rsa.ssh2")
        assert [(f.kind, f.line) for f in found] == [("private-key", 2)]
        assert lines[1] not in found[0].format()
        assert audit.check_variable("K", text) is not None
    # RFC 4716 public keys are not secrets; nor is a mention of the header in prose
    pub = (
        "---- BEGIN SSH2 PUBLIC KEY ----\nComment: x\n"
        + "\n".join(lines)
        + "\n---- END SSH2 PUBLIC KEY ----\n"
    )
    assert audit.scan_text(pub, "id.pub") == []
    assert audit.scan_text(f"Files start with '{header}'.\n", "notes.md") == []


def test_age_secret_keys() -> None:
    alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l".upper()
    key = "AGE-SECRET-KEY-1" + "".join(alphabet[b % 32] for b in os.urandom(58))
    found = audit.scan_text(f"# created: 2026-01-01\n# public key: age1xyz\n{key}\n", "keys.txt")
    assert [(f.kind, f.line) for f in found] == [("private-key", 3)] and key[20:] not in found[0].format()


def test_pin_argument_with_the_tool_on_an_earlier_continuation_line() -> None:
    text = (
        "#!/bin/sh\nsofthsm2-util --init-token --free \\\n"
        "    --label dev \\\n    --so-pin 12345678 --pin 8765\n"
    )
    found = audit.scan_text(text, "setup.sh")
    assert sorted((f.kind, f.line, f.excerpt) for f in found) == [
        ("pin-argument", 4, "softhsm2-util --pin [redacted]"),
        ("pin-argument", 4, "softhsm2-util --so-pin [redacted]"),
    ]
