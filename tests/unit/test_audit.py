"""The leak scanner, on keys and secrets generated at run time (nothing secret is committed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
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
