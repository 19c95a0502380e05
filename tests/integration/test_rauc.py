"""RAUC bundles: ``hsmsign rauc`` with Debian's rauc signing through the SoftHSM token.

rauc signs (OpenSSL's pkcs11 engine, libp11); hsmsign checks the key before and the bundle
after. The checks that decide are rauc's own (``rauc info`` for the signature, ``rauc extract``
for the payload, as a device reads it), ``openssl cms -verify`` for a plain bundle's detached
signature and ``veritysetup`` for a verity bundle's payload.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SoftHsm, cms_field_offset, openssl_cms_verify, tool

DEV = ("--mode", "development")


@pytest.fixture(scope="module")
def rauc() -> str:
    tool("mksquashfs", "squashfs-tools")
    tool("veritysetup", "cryptsetup-bin")
    return tool("rauc", "rauc")


def _cert(softhsm: SoftHsm, uri: str, path: Path, subject: str, *extra: str) -> Path:
    done = softhsm.run_cli("cert", *DEV, "--uri", uri, "--subject", subject, "--output", str(path), *extra)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def rauc_key(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    uri = softhsm.keygen("rauc-signing", "rsa:2048")
    return uri, _cert(softhsm, uri, tmp_path_factory.mktemp("rauc") / "rauc.pem", "CN=hsmsign rauc test")


@pytest.fixture(scope="module")
def other_cert(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    uri = softhsm.keygen("rauc-other", "rsa:2048")
    return _cert(softhsm, uri, tmp_path_factory.mktemp("rauc-other") / "other.pem", "CN=another key")


def bundle_dir(base: Path, fmt: str, size: int = 300_000, unique: bool = False) -> Path:
    """A bundle directory: a manifest for ``fmt`` and one image of fixed bytes (a 4 KiB block
    repeated, or with ``unique`` bytes that never repeat, which casync cannot fold together)."""
    src = base / f"in-{fmt}"
    src.mkdir()
    if unique:
        image = random.Random(size).randbytes(size)
    else:
        block = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(128))
        image = (block * (size // len(block) + 1))[:size]
    (src / "rootfs.img").write_bytes(image)
    section = "" if fmt == "plain" else f"[bundle]\nformat={fmt}\n\n"
    (src / "manifest.raucm").write_text(
        f"[update]\ncompatible=hsmsign-test\nversion=1.0\n\n{section}[image.rootfs]\nfilename=rootfs.img\n"
    )
    return src


def make_bundle(
    softhsm: SoftHsm, key: tuple[str, Path], src: Path, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return softhsm.run_cli(
        "rauc", "bundle", *DEV, "--uri", key[0], "--cert", str(key[1]), *extra, str(src), str(out)
    )


def rauc_run(rauc: str, softhsm: SoftHsm, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([rauc, *argv], capture_output=True, text=True, env=softhsm.env, check=False)


def parts(path: Path) -> tuple[bytes, bytes]:
    """(payload, CMS) of a bundle."""
    data = path.read_bytes()
    (size,) = struct.unpack(">Q", data[-8:])
    return data[: -8 - size], data[-8 - size : -8]


def flipped(path: Path, offset: int, name: str) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    out = path.with_name(name)
    out.write_bytes(bytes(data))
    return out


def test_verity_bundle_signed_by_rauc_through_the_token(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path
) -> None:
    """rauc signs the manifest with the token key; rauc's own checks (signature, then every
    payload block as it extracts) and hsmsign's accept the bundle, and the PIN is in no output."""
    out = tmp_path / "update.raucb"
    done = make_bundle(softhsm, rauc_key, bundle_dir(tmp_path, "verity"), out, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["format"] == "verity" and len(report["verity_root"]) == 64
    assert report["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    pin = softhsm.pin_file.read_text().strip()
    assert pin not in done.stdout + done.stderr
    info = rauc_run(rauc, softhsm, "info", "--output-format=json", f"--keyring={rauc_key[1]}", str(out))
    assert info.returncode == 0, info.stderr
    assert "Verified inline signature by 'CN = hsmsign rauc test'" in info.stderr
    assert json.loads(info.stdout)["compatible"] == "hsmsign-test"
    extracted = rauc_run(rauc, softhsm, "extract", f"--keyring={rauc_key[1]}", str(out), str(tmp_path / "x"))
    assert extracted.returncode == 0, extracted.stderr
    assert (tmp_path / "x" / "rootfs.img").read_bytes() == (
        tmp_path / "in-verity" / "rootfs.img"
    ).read_bytes()
    ok = softhsm.run_cli("rauc", "verify", "--json", "--cert", str(rauc_key[1]), str(out))
    assert ok.returncode == 0, ok.stderr
    found = json.loads(ok.stdout)
    assert (
        found["format"] == "verity" and found["payload_checked"] and found["signer"] == "CN=hsmsign rauc test"
    )
    # no scratch folder is left next to the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-verity", "update.raucb", "x"]


def test_plain_bundle_detached_signature_verifies_with_openssl(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "plain.raucb"
    done = make_bundle(softhsm, rauc_key, bundle_dir(tmp_path, "plain"), out)
    assert done.returncode == 0, done.stderr
    assert "format plain" in done.stdout
    payload, cms = parts(out)
    (tmp_path / "payload").write_bytes(payload)
    (tmp_path / "sig.der").write_bytes(cms)
    ok = openssl_cms_verify(tmp_path / "sig.der", tmp_path / "payload", rauc_key[1])
    assert ok.returncode == 0, ok.stderr
    assert rauc_run(rauc, softhsm, "info", f"--keyring={rauc_key[1]}", str(out)).returncode == 0
    mine = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(out))
    assert mine.returncode == 0, mine.stderr


def test_ec_key(rauc: str, softhsm: SoftHsm, tmp_path: Path) -> None:
    uri = softhsm.keygen("rauc-ec", "ec:secp256r1")
    key = (uri, _cert(softhsm, uri, tmp_path / "ec.pem", "CN=hsmsign rauc ec"))
    out = tmp_path / "ec.raucb"
    done = make_bundle(softhsm, key, bundle_dir(tmp_path, "verity"), out)
    assert done.returncode == 0, done.stderr
    assert rauc_run(rauc, softhsm, "info", f"--keyring={key[1]}", str(out)).returncode == 0


def test_crypt_bundle_checked_before_encryption(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path
) -> None:
    """A crypt bundle (rauc 1.8+): the payload is encrypted and the verity tree covers the
    encrypted payload, so hsmsign checks it like a verity bundle; once ``rauc encrypt`` wraps it
    for its recipients, only a recipient's key opens it, and hsmsign says so."""
    out = tmp_path / "crypt.raucb"
    done = make_bundle(softhsm, rauc_key, bundle_dir(tmp_path, "crypt"), out, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] == "crypt"
    assert rauc_run(rauc, softhsm, "info", f"--keyring={rauc_key[1]}", str(out)).returncode == 0
    payload, _ = parts(out)
    assert not payload.startswith(b"hsqs")  # encrypted
    bad = flipped(out, 5000, "crypt-payload.raucb")
    refused = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(bad))
    assert refused.returncode == 6 and "verity root hash" in refused.stderr, refused.stderr
    enc = tmp_path / "crypt-enc.raucb"
    wrapped = rauc_run(
        rauc, softhsm, "encrypt", f"--to={rauc_key[1]}", f"--keyring={rauc_key[1]}", str(out), str(enc)
    )
    assert wrapped.returncode == 0, wrapped.stderr
    sealed = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(enc))
    assert sealed.returncode == 6 and "only a recipient's key" in sealed.stderr, sealed.stderr


def test_changed_bundles_are_refused(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path
) -> None:
    """One byte changed in a verity bundle's payload: hsmsign's check and rauc's extraction refuse
    it (``--no-payload`` checks the signature only, as ``rauc info`` does); one byte changed in
    a plain bundle's payload or in the signed manifest: every check refuses it."""
    verity = tmp_path / "v.raucb"
    assert make_bundle(softhsm, rauc_key, bundle_dir(tmp_path, "verity"), verity).returncode == 0
    payload, cms = parts(verity)
    bad = flipped(verity, 5000, "v-payload.raucb")
    refused = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(bad))
    assert refused.returncode == 6, refused.stderr
    assert "does not match the signed verity root hash" in refused.stderr
    assert rauc_run(
        rauc, softhsm, "extract", f"--keyring={rauc_key[1]}", str(bad), str(tmp_path / "x")
    ).returncode
    sig_only = softhsm.run_cli("rauc", "verify", "--no-payload", "--cert", str(rauc_key[1]), str(bad))
    assert sig_only.returncode == 0, sig_only.stderr
    manifest_at = len(payload) + cms.index(b"compatible=hsmsign-test") + len("compatible=")
    bad_manifest = flipped(verity, manifest_at, "v-manifest.raucb")
    assert softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(bad_manifest)).returncode == 6
    assert rauc_run(rauc, softhsm, "info", f"--keyring={rauc_key[1]}", str(bad_manifest)).returncode != 0
    plain = tmp_path / "p.raucb"
    assert make_bundle(softhsm, rauc_key, bundle_dir(tmp_path, "plain"), plain).returncode == 0
    bad_plain = flipped(plain, 5000, "p-payload.raucb")
    refused = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(bad_plain))
    assert refused.returncode == 6 and "messageDigest differs" in refused.stderr, refused.stderr
    assert rauc_run(rauc, softhsm, "info", f"--keyring={rauc_key[1]}", str(bad_plain)).returncode != 0


def test_untrusted_signer_refused(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], other_cert: Path, tmp_path: Path
) -> None:
    out = tmp_path / "u.raucb"
    assert make_bundle(softhsm, rauc_key, bundle_dir(tmp_path, "verity"), out).returncode == 0
    refused = softhsm.run_cli("rauc", "verify", "--cert", str(other_cert), str(out))
    assert refused.returncode == 6 and "not trusted" in refused.stderr, refused.stderr
    assert rauc_run(rauc, softhsm, "info", f"--keyring={other_cert}", str(out)).returncode != 0


@pytest.mark.parametrize("fmt", ["plain", "verity"])
@pytest.mark.parametrize(
    ("field", "needle"),
    [
        ("embedded-certificate-serial", "not among the signature's own certificates"),
        ("digest-algorithm-set", "lists digest algorithms"),
        # a signature whose last bit is 1 no longer parses with 1 unused bit: refused as malformed
        ("embedded-certificate-unused-bits", "self-signed and differs from the trusted certificate|"
                                             "carries a malformed certificate"),
    ],
)
def test_what_openssl_on_the_device_refuses_hsmsign_refuses(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path, fmt: str, field: str,
    needle: str,
) -> None:
    """One bit of the CMS that the signature does not cover, each found by comparing
    hsmsign's check with rauc's on every byte: rauc (OpenSSL's CMS_verify) refuses the
    bundle, so hsmsign must too; it accepted all three before."""
    out = tmp_path / "b.raucb"
    assert make_bundle(softhsm, rauc_key, bundle_dir(tmp_path, fmt), out).returncode == 0
    payload, der = parts(out)
    changed = flipped(out, len(payload) + cms_field_offset(der, field), "changed.raucb")
    device = rauc_run(rauc, softhsm, "info", f"--keyring={rauc_key[1]}", str(changed))
    assert device.returncode != 0, device.stdout
    refused = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(changed))
    assert refused.returncode == 6 and any(n in refused.stderr for n in needle.split("|")), refused.stderr
    assert "Traceback" not in refused.stderr


def test_refusals_before_rauc_signs_leave_nothing(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], other_cert: Path, tmp_path: Path
) -> None:
    """A certificate of another key, the production policy (a software token), a wrong pin and a
    directory without manifest: each stops before rauc runs, with its exit code, and no output
    or scratch folder remains; an existing output is left as it was."""
    src = bundle_dir(tmp_path, "verity")
    out = tmp_path / "out.raucb"
    out.write_bytes(b"previous bundle")
    wrong_cert = softhsm.run_cli(
        "rauc", "bundle", *DEV, "--uri", rauc_key[0], "--cert", str(other_cert), str(src), str(out)
    )
    assert wrong_cert.returncode == 2 and "does not belong to the token key" in wrong_cert.stderr
    production = softhsm.run_cli(
        "rauc",
        "bundle",
        "--mode",
        "production",
        "--uri",
        rauc_key[0],
        "--cert",
        str(rauc_key[1]),
        str(src),
        str(out),
    )
    assert production.returncode == 4, production.stderr
    replaced = make_bundle(softhsm, rauc_key, src, out)  # a good run replaces it
    assert replaced.returncode == 0 and out.read_bytes()[:4] == b"hsqs", replaced.stderr
    out.write_bytes(b"previous bundle")
    wrong_pin = softhsm.run_cli(
        "rauc", "bundle", *DEV, "--uri", rauc_key[0], "--cert", str(rauc_key[1]), str(src), str(out),
        env={"HSMSIGN_PUBKEY_SHA256_RAUC": "0" * 64},
    )  # fmt: skip
    assert wrong_pin.returncode == 4 and "HSMSIGN_PUBKEY_SHA256_RAUC" in wrong_pin.stderr, wrong_pin.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    no_manifest = make_bundle(softhsm, rauc_key, empty, out)
    assert no_manifest.returncode == 2 and "has no manifest.raucm" in no_manifest.stderr
    assert out.read_bytes() == b"previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "in-verity", "out.raucb"]


def test_rauc_failure_is_one_clear_error(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path
) -> None:
    """rauc refuses the input (a manifest without compatible): its own message, exit 5, no output,
    no scratch folder, and not the PIN."""
    src = bundle_dir(tmp_path, "verity")
    (src / "manifest.raucm").write_text("[update]\nversion=1\n\n[image.rootfs]\nfilename=rootfs.img\n")
    out = tmp_path / "bad.raucb"
    done = make_bundle(softhsm, rauc_key, src, out)
    assert done.returncode == 5, done.stderr
    assert "rauc bundle failed" in done.stderr and "compatible" in done.stderr
    assert "Traceback" not in done.stderr
    assert softhsm.pin_file.read_text().strip() not in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-verity"]


def test_ledger_entries_and_recorded_check(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path
) -> None:
    """``rauc bundle`` and ``rauc verify --record`` (what the layer runs after meta-rauc's
    do_bundle) append entries that name the bundle and the key, and the chain verifies;
    ``--record`` applies the role's pin."""
    ledger = tmp_path / "ledger.jsonl"
    out = tmp_path / "l.raucb"
    assert (
        make_bundle(
            softhsm, rauc_key, bundle_dir(tmp_path, "verity"), out, "--ledger", str(ledger)
        ).returncode
        == 0
    )
    rec = softhsm.run_cli(
        "rauc",
        "verify",
        "--record",
        "--uri",
        rauc_key[0],
        "--ledger",
        str(ledger),
        "--cert",
        str(rauc_key[1]),
        str(out),
    )
    assert rec.returncode == 0, rec.stderr
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert [e["kind"] for e in entries] == ["rauc", "rauc"]
    assert all(e["sha256"] == digest and e["artifact"] == str(out) for e in entries)
    assert entries[0]["key_fingerprint"] == entries[1]["key_fingerprint"]
    assert "pin-source" not in entries[0]["uri"]
    assert softhsm.run_cli("ledger", "verify", "--ledger", str(ledger)).returncode == 0
    record = ("rauc", "verify", "--record", "--uri", rauc_key[0], "--ledger", str(ledger))
    wrong = softhsm.run_cli(
        *record, "--cert", str(rauc_key[1]), str(out), env={"HSMSIGN_PUBKEY_SHA256_RAUC": "0" * 64}
    )
    assert wrong.returncode == 4, wrong.stderr
    unchecked = softhsm.run_cli(*record, "--no-payload", "--cert", str(rauc_key[1]), str(out))
    assert unchecked.returncode == 2 and "--no-payload" in unchecked.stderr, unchecked.stderr
    assert len(ledger.read_text().splitlines()) == 2


def test_not_a_bundle(softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path) -> None:
    for name, data in (
        ("empty.raucb", b""),
        ("text.raucb", b"not a bundle at all, just some text\n"),
        ("huge-size.raucb", b"hsqs" + b"\0" * 100 + struct.pack(">Q", 1 << 40)),
        ("garbage-cms.raucb", b"hsqs" + b"\0" * 100 + b"\x30\x03abc" + struct.pack(">Q", 5)),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        done = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(path))
        assert done.returncode == 6, (name, done.stderr)
        assert "Traceback" not in done.stderr
    missing = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(tmp_path / "missing.raucb"))
    assert missing.returncode == 2, missing.stderr


def test_casync_bundle_converted_through_the_token(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], other_cert: Path, tmp_path: Path
) -> None:
    """``rauc convert``, what meta-rauc's do_bundle runs for RAUC_CASYNC_BUNDLE, signs the casync
    form of a bundle with the token key when given the module and the PIN the way hsmsign's
    class gives them to rauc (its environment). hsmsign's check and rauc's accept the result;
    one changed byte, or a keyring of another key, is refused."""
    tool("casync", "casync")
    src = bundle_dir(tmp_path, "verity", size=16 << 20, unique=True)  # a smaller index: rauc refuses
    bundle = tmp_path / "update.raucb"
    assert make_bundle(softhsm, rauc_key, src, bundle).returncode == 0
    env = dict(
        softhsm.env,
        RAUC_PKCS11_MODULE=softhsm.module,
        RAUC_PKCS11_PIN=softhsm.pin_file.read_text().strip(),
    )
    converted = tmp_path / "casync-update.raucb"
    done = subprocess.run(
        [
            rauc, "convert", "--trust-environment", f"--cert={rauc_key[1]}",
            f"--key={softhsm.uri('rauc-signing', with_query=False)}", f"--keyring={rauc_key[1]}",
            str(bundle), str(converted),
        ],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "casync-update.castr").is_dir()
    info = rauc_run(rauc, softhsm, "info", "--output-format=json", f"--keyring={rauc_key[1]}", str(converted))
    assert info.returncode == 0, info.stderr
    names = [img["filename"] for entry in json.loads(info.stdout)["images"] for img in entry.values()]
    assert names == ["rootfs.img.caibx"], names
    ok = softhsm.run_cli("rauc", "verify", "--json", "--cert", str(rauc_key[1]), str(converted))
    assert ok.returncode == 0, ok.stderr
    found = json.loads(ok.stdout)
    assert found["format"] == "verity" and found["payload_checked"], found
    assert found["signer"] == "CN=hsmsign rauc test"
    bad = flipped(converted, 100, "casync-bad.raucb")
    refused = softhsm.run_cli("rauc", "verify", "--cert", str(rauc_key[1]), str(bad))
    assert refused.returncode == 6 and "verity root hash" in refused.stderr, refused.stderr
    untrusted = softhsm.run_cli("rauc", "verify", "--cert", str(other_cert), str(converted))
    assert untrusted.returncode == 6 and "not trusted" in untrusted.stderr, untrusted.stderr


def test_hsmsign_rauc_convert(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], other_cert: Path, tmp_path: Path
) -> None:
    """``hsmsign rauc convert``: rauc makes the casync form with the token key; the bundle and its
    chunk store (NAME.castr, where RAUC looks) land together with a ledger entry, after hsmsign's
    and rauc's checks. Converting again replaces both. An untrusted input, a name RAUC would not
    find the store by, or no input: one error, and nothing is written."""
    tool("casync", "casync")
    bundle = tmp_path / "update.raucb"
    src = bundle_dir(tmp_path, "verity", size=16 << 20, unique=True)
    assert make_bundle(softhsm, rauc_key, src, bundle).returncode == 0
    out, store = tmp_path / "out" / "casync-update.raucb", tmp_path / "out" / "casync-update.castr"
    out.parent.mkdir()
    ledger_file = tmp_path / "ledger.jsonl"
    args = ("rauc", "convert", *DEV, "--uri", rauc_key[0], "--cert", str(rauc_key[1]))
    done = softhsm.run_cli(*args, "--json", "--ledger", str(ledger_file), str(bundle), str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["format"] == "verity" and report["store"] == str(store)
    assert report["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert store.is_dir() and any(store.rglob("*.cacnk")), list(store.iterdir())[:5]
    assert softhsm.pin_file.read_text().strip() not in done.stdout + done.stderr
    info = rauc_run(rauc, softhsm, "info", "--output-format=json", f"--keyring={rauc_key[1]}", str(out))
    assert info.returncode == 0, info.stderr
    assert [i["filename"] for e in json.loads(info.stdout)["images"] for i in e.values()] == [
        "rootfs.img.caibx"
    ]
    entries = [json.loads(line) for line in ledger_file.read_text().splitlines()]
    assert [(e["kind"], e["artifact"], e["sha256"]) for e in entries] == [
        ("rauc", str(out), report["sha256"])
    ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["casync-update.castr", "casync-update.raucb"]
    again = softhsm.run_cli(*args, str(bundle), str(out))  # replaces the bundle and its store
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["casync-update.castr", "casync-update.raucb"]
    assert rauc_run(rauc, softhsm, "info", f"--keyring={rauc_key[1]}", str(out)).returncode == 0
    before = sorted(p.name for p in out.parent.iterdir())
    for argv, code, message in (
        (
            (*args, "--keyring", str(other_cert), str(bundle), str(tmp_path / "out" / "u.raucb")),
            5,
            "rauc convert failed",
        ),
        ((*args, str(bundle), str(tmp_path / "out" / "casync.img")), 2, "name ends in .raucb"),
        ((*args, str(tmp_path / "missing.raucb"), str(tmp_path / "out" / "m.raucb")), 2, "is not a file"),
    ):
        refused = softhsm.run_cli(*argv)
        assert refused.returncode == code and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and "\\n" not in refused.stderr
        assert sorted(p.name for p in out.parent.iterdir()) == before


def test_a_token_libp11_cannot_list_is_named_before_rauc_fails_on_it(
    rauc: str, softhsm: SoftHsm, tmp_path: Path
) -> None:
    """An Ed25519 key on the RAUC key's token: Debian's libp11 (0.4.12) then finds no key at all
    and rauc fails. The preflight refuses that token for such a libp11 and passes it for 0.4.18;
    without a version it warns; rauc bundle warns, and its failure says why."""
    own = softhsm.own_token("edwards-keys")
    uri = own.keygen("rauc-beside-ed", "rsa:2048")
    try:
        own.keygen("ed25519", "ed25519")
    except Exception as exc:  # noqa: BLE001 - SoftHSM built without EdDSA
        pytest.skip(f"this SoftHSM cannot make Ed25519 keys: {exc}")
    cert = _cert(softhsm, uri, tmp_path / "rauc.pem", "CN=beside an Ed25519 key")
    preflight = ("rauc", "preflight", *DEV, "--uri", uri, "--cert", str(cert))

    old = softhsm.run_cli(*preflight, "--libp11-version", "0.4.12")
    assert old.returncode != 0
    assert old.stderr.startswith("hsmsign: error: token 'edwards-keys' also holds 'ed25519' (Ed25519/")
    assert "libp11 0.4.12 cannot list" in old.stderr and "another token" in old.stderr
    assert "Traceback" not in old.stderr

    new = softhsm.run_cli(*preflight, "--libp11-version", "0.4.18")
    assert new.returncode == 0, new.stderr
    assert "libp11" not in new.stderr and "; libp11 0.4.18 can list every key on the token;" in new.stdout

    unknown = softhsm.run_cli(*preflight)
    assert unknown.returncode == 0, unknown.stderr
    assert "warning: token 'edwards-keys' also holds 'ed25519'" in unknown.stderr

    junk = softhsm.run_cli(*preflight, "--libp11-version", "new")
    assert junk.returncode == 2 and "not a libp11 version: 'new'" in junk.stderr

    # what the warning says is what happens: rauc with Debian's libp11 finds no key
    out = tmp_path / "update.raucb"
    done = make_bundle(softhsm, (uri, cert), bundle_dir(tmp_path, "verity"), out)
    if done.returncode == 0:
        pytest.fail("this rauc's libp11 lists a token with an Ed25519 key: say so in docs/rauc.md")
    assert "warning: token 'edwards-keys' also holds 'ed25519'" in done.stderr
    assert "libp11 could not list the token's keys: a key of a type it does not know" in done.stderr
    assert not out.exists()


def test_an_expired_certificate_is_named_before_the_device_check_refuses_it(
    rauc: str, softhsm: SoftHsm, rauc_key: tuple[str, Path], tmp_path: Path
) -> None:
    """A certificate of the token key that expired yesterday: the preflight warns (it passes: a
    device may be built not to check time), rauc bundle warns before rauc signs, and rauc's own
    check after signing (`rauc info --keyring`, which checks time as the device does) refuses the
    bundle, so nothing is written. A certificate that expires in 10 days: a warning, and a bundle."""
    import datetime

    from cryptography.hazmat.primitives import serialization
    from hsmsign import token
    from hsmsign.formats import x509

    now = datetime.datetime.now(tz=datetime.timezone.utc)
    expired = tmp_path / "expired.pem"
    with token.open_key(rauc_key[0], mode="development") as key:
        cert = x509.self_signed(key, "CN=expired", days=1, not_before=now - datetime.timedelta(days=2))
    expired.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    expiry = cert.not_valid_after_utc.strftime("%Y-%m-%d")

    pre = softhsm.run_cli("rauc", "preflight", *DEV, "--uri", rauc_key[0], "--cert", str(expired))
    assert pre.returncode == 0, pre.stderr
    assert f"warning: {expired} expired on {expiry}: a device that checks certificate time" in pre.stderr

    out = tmp_path / "update.raucb"
    done = make_bundle(softhsm, (rauc_key[0], expired), bundle_dir(tmp_path, "verity"), out)
    assert done.returncode != 0
    assert f"warning: {expired} expired on {expiry}" in done.stderr
    assert "rauc info" in done.stderr and "certificate has expired" in done.stderr, done.stderr
    assert "hint: the signer certificate is outside its validity period" in done.stderr
    assert not out.exists()

    soon = _cert(softhsm, rauc_key[0], tmp_path / "soon.pem", "CN=soon", "--days", "10")
    done = make_bundle(softhsm, (rauc_key[0], soon), bundle_dir(tmp_path, "plain"), out)
    assert done.returncode == 0, done.stderr
    assert f"warning: {soon} expires on " in done.stderr and "in 10 day(s)" in done.stderr
