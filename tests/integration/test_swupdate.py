"""swupdate bundles signed through the token, checked by Debian's own swupdate binary."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SoftHsm, cms_field_offset
from tests.integration.swupdate_run import run_swupdate

DEV = ("--mode", "development")


def make_cert(softhsm: SoftHsm, uri: str, path: Path, *eku: str) -> Path:
    argv = ["cert", *DEV, "--uri", uri, "--subject", "CN=hsmsign test signer,O=Acme", "--output", str(path)]
    for e in eku:
        argv += ["--eku", e]
    done = softhsm.run_cli(*argv)
    assert done.returncode == 0, done.stderr
    return path


def swupdate_check(
    bundle: Path, cert: Path, *extra: str, hw: str = "board:1.0"
) -> subprocess.CompletedProcess:
    return run_swupdate(["-H", hw, "-c", "-i", str(bundle), "-k", str(cert), *extra], bundle.parent)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    a = tmp_path / "rootfs.ext4"
    a.write_bytes(os.urandom(200_000) + b"rootfs")
    b = tmp_path / "u-boot.img"
    b.write_bytes(os.urandom(40_001))
    return [a, b]


def write_description(tmp_path: Path, images: list[Path], hardware: str = "1.0") -> Path:
    from hsmsign.formats import swupdate as swu

    desc = swu.render_description(
        version="1.0.1",
        hardware=[hardware],
        images=[{"filename": p.name, "path": str(p), "type": "raw", "device": "/dev/null"} for p in images],
    )
    path = tmp_path / "sw-description"
    path.write_bytes(desc)
    return path


def build_bundle(
    softhsm: SoftHsm, uri: str, cert: Path, desc: Path, images: list[Path], out: Path, *extra: str
) -> subprocess.CompletedProcess:
    return softhsm.run_cli(
        "swupdate",
        "bundle",
        *DEV,
        "--uri",
        uri,
        "--cert",
        str(cert),
        "--sw-description",
        str(desc),
        "--output",
        str(out),
        *extra,
        *map(str, images),
    )


@pytest.mark.parametrize(
    ("key", "eku", "purpose"),
    [
        ("rsa2048", "emailProtection", ()),
        ("rsa2048", "codeSigning", ("--cert-purpose", "codeSigning")),
        ("ec256", "emailProtection", ()),
    ],
)
def test_swupdate_accepts_signed_bundle(
    softhsm: SoftHsm,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    images: list[Path],
    key: str,
    eku: str,
    purpose: tuple[str, ...],
) -> None:
    uri = request.getfixturevalue(key)
    cert = make_cert(softhsm, uri, tmp_path / "signer.pem", eku)
    desc = write_description(tmp_path, images)
    swu = tmp_path / "update.swu"
    done = build_bundle(softhsm, uri, cert, desc, images, swu)
    assert done.returncode == 0, done.stderr
    check = swupdate_check(swu, cert, *purpose)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SWUPDATE successful" in check.stdout + check.stderr
    # our own reader sees the layout swupdate needs
    from hsmsign.formats import cpio

    names = [e.name for e in cpio.read_entries(str(swu))]
    assert names[:2] == ["sw-description", "sw-description.sig"]
    assert sorted(names[2:]) == sorted(p.name for p in images)
    # and 'hsmsign swupdate verify' agrees
    v = softhsm.run_cli("swupdate", "verify", "--cert", str(cert), str(swu))
    assert v.returncode == 0, v.stderr


def test_swupdate_wrong_purpose_and_wrong_anchor_rejected(
    softhsm: SoftHsm, rsa2048: str, ec256: str, tmp_path: Path, images: list[Path]
) -> None:
    cert = make_cert(softhsm, rsa2048, tmp_path / "signer.pem", "emailProtection")
    other = make_cert(softhsm, ec256, tmp_path / "other.pem", "emailProtection")
    desc = write_description(tmp_path, images)
    swu = tmp_path / "update.swu"
    assert build_bundle(softhsm, rsa2048, cert, desc, images, swu).returncode == 0
    assert swupdate_check(swu, cert).returncode == 0
    # the certificate lacks codeSigning: swupdate must refuse it for that purpose
    assert swupdate_check(swu, cert, "--cert-purpose", "codeSigning").returncode == 1
    # another trust anchor
    assert swupdate_check(swu, other).returncode == 1
    # the wrong board
    assert swupdate_check(swu, cert, hw="board:9.9").returncode == 1


def test_swupdate_ca_path(softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path]) -> None:
    cert = make_cert(softhsm, rsa2048, tmp_path / "signer.pem")
    desc = write_description(tmp_path, images)
    swu = tmp_path / "update.swu"
    assert build_bundle(softhsm, rsa2048, cert, desc, images, swu).returncode == 0
    done = run_swupdate(["-H", "board:1.0", "-c", "-i", str(swu), "--ca-path", str(cert)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def _rebundle(
    src: Path,
    out: Path,
    *,
    description: bytes | None = None,
    image_patch: str | None = None,
    signature: bytes | None = None,
) -> None:
    """Rebuild a bundle with valid cpio checksums but changed content (the signature is kept)."""
    from hsmsign.formats import cpio
    from hsmsign.formats import swupdate as swu

    b = swu.read_bundle(str(src))
    members = []
    with open(src, "rb") as fh:
        for e in b.entries[2:]:
            data = bytearray(cpio.read_member(fh, e))
            if e.name == image_patch:
                data[len(data) // 2] ^= 0x01
            members.append((e.name, bytes(data)))
    tmpdir = out.parent / "re"
    tmpdir.mkdir(exist_ok=True)
    paths = []
    for name, data in members:
        (tmpdir / name).write_bytes(data)
        paths.append((name, str(tmpdir / name)))
    with open(out, "wb") as fh:
        swu.write_bundle(
            fh,
            description if description is not None else b.description,
            signature if signature is not None else b.signature,
            paths,
        )


def _changed_signature(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path], field: str
) -> tuple[Path, Path]:
    """A bundle whose sw-description.sig has one bit of ``field`` changed, and its certificate."""
    from hsmsign.formats import swupdate as swumod

    cert = make_cert(softhsm, rsa2048, tmp_path / "signer.pem", "emailProtection")
    swu = tmp_path / "update.swu"
    desc = write_description(tmp_path, images)
    assert build_bundle(softhsm, rsa2048, cert, desc, images, swu).returncode == 0
    sig = bytearray(swumod.read_bundle(str(swu)).signature)
    sig[cms_field_offset(bytes(sig), field)] ^= 0x01
    changed = tmp_path / "changed.swu"
    _rebundle(swu, changed, signature=bytes(sig))
    return changed, cert


@pytest.mark.parametrize(
    ("field", "needles"),
    [
        ("embedded-certificate-serial", ("not among the signature's own certificates",)),
        ("digest-algorithm-set", ("lists digest algorithms",)),
        # a signature whose last bit is 1 no longer parses with 1 unused bit: refused as malformed
        ("embedded-certificate-unused-bits", ("self-signed and differs from the trusted certificate",
                                              "carries a malformed certificate")),
    ],
)
def test_what_swupdate_refuses_in_the_signature_hsmsign_refuses(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path], field: str, needles: tuple[str, ...]
) -> None:
    """One bit of sw-description.sig that its signature does not cover, each found by
    comparing hsmsign's check with rauc's on every bit: swupdate (OpenSSL's CMS_verify)
    refuses the bundle, so hsmsign must too; it accepted all three before."""
    changed, cert = _changed_signature(softhsm, rsa2048, tmp_path, images, field)
    device = swupdate_check(changed, cert)
    assert device.returncode == 1, device.stdout + device.stderr
    refused = softhsm.run_cli("swupdate", "verify", "--cert", str(cert), str(changed))
    assert refused.returncode == 6 and any(n in refused.stderr for n in needles), refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_content_type_other_than_data_is_refused_though_swupdate_takes_it(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path]
) -> None:
    """hsmsign is stricter here, as docs/swupdate.md says: RFC 5652 wants the eContentType
    of the signed attributes (id-data), and the kernel refuses any other; swupdate 2022.12
    does not look."""
    changed, cert = _changed_signature(softhsm, rsa2048, tmp_path, images, "content-type")
    assert swupdate_check(changed, cert).returncode == 0
    refused = softhsm.run_cli("swupdate", "verify", "--cert", str(cert), str(changed))
    assert refused.returncode == 6 and "not id-data" in refused.stderr, refused.stderr


def test_one_changed_byte_is_rejected(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path]
) -> None:
    cert = make_cert(softhsm, rsa2048, tmp_path / "signer.pem")
    desc = write_description(tmp_path, images)
    swu = tmp_path / "update.swu"
    assert build_bundle(softhsm, rsa2048, cert, desc, images, swu).returncode == 0
    assert swupdate_check(swu, cert).returncode == 0

    # the untouched rebuild still passes: the tampering below is the only difference
    same = tmp_path / "same.swu"
    _rebundle(swu, same)
    assert swupdate_check(same, cert).returncode == 0

    text = desc.read_bytes()
    changed = text.replace(b'version = "1.0.1"', b'version = "1.0.2"')
    assert changed != text and len(changed) == len(text)
    bad_desc = tmp_path / "bad-desc.swu"
    _rebundle(swu, bad_desc, description=changed)
    r = swupdate_check(bad_desc, cert)
    assert r.returncode == 1
    assert "signature" in (r.stdout + r.stderr).lower()

    bad_img = tmp_path / "bad-img.swu"
    _rebundle(swu, bad_img, image_patch="rootfs.ext4")
    r = swupdate_check(bad_img, cert)
    assert r.returncode == 1
    assert "HASH mismatch" in r.stdout + r.stderr

    # a raw flipped byte in the file: swupdate's cpio checksum or hash catches it, and so do we
    raw = bytearray(swu.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    flipped = tmp_path / "flipped.swu"
    flipped.write_bytes(bytes(raw))
    assert swupdate_check(flipped, cert).returncode == 1
    for bad in (bad_desc, bad_img, flipped):
        v = softhsm.run_cli("swupdate", "verify", "--cert", str(cert), str(bad))
        assert v.returncode == 6, (bad, v.stderr)
        assert "Traceback" not in v.stderr
    # a file that is no cpio archive at all: the message names it
    not_swu = tmp_path / "rootfs.ext4"
    not_swu.write_bytes(b"\x00" * 4096)
    v = softhsm.run_cli("swupdate", "verify", "--cert", str(cert), str(not_swu))
    assert v.returncode == 6 and f"{not_swu}: no cpio newc magic at offset 0" in v.stderr, v.stderr


def test_sign_matches_openssl_cms_verify(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path]
) -> None:
    cert = make_cert(softhsm, rsa2048, tmp_path / "signer.pem")
    desc = write_description(tmp_path, images)
    sig = tmp_path / "sw-description.sig"
    done = softhsm.run_cli(
        "swupdate",
        "sign",
        *DEV,
        "--uri",
        rsa2048,
        "--cert",
        str(cert),
        "--output",
        str(sig),
        "--images",
        *map(str, images),
        "--json",
        str(desc),
    )
    assert done.returncode == 0, done.stderr
    assert '"images"' in done.stdout and "rootfs.ext4" in done.stdout
    ok = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(sig),
            "-content",
            str(desc),
            "-CAfile",
            str(cert),
            "-purpose",
            "smimesign",
            "-out",
            os.devnull,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("flag", "mode", "sigopts"),
    [
        ("--signing-mode", "rsa", ()),
        ("--mode", "rsa-pss", ("-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-2")),
    ],
)
def test_raw_rsa_modes_verify_like_swupdate(
    softhsm: SoftHsm,
    rsa2048: str,
    tmp_path: Path,
    images: list[Path],
    flag: str,
    mode: str,
    sigopts: tuple[str, ...],
) -> None:
    # Debian's swupdate is built for CMS only; its RSA modes call EVP_DigestVerify with sha256 (and, for PSS,
    # saltlen -2 = auto): openssl dgst with the same options is that check.
    desc = write_description(tmp_path, images)
    sig = tmp_path / "sw-description.sig"
    done = softhsm.run_cli(
        "swupdate", "sign", *DEV, "--uri", rsa2048, flag, mode, "--output", str(sig), "--json", str(desc)
    )
    assert done.returncode == 0, done.stderr
    assert f'"mode": "{mode}"' in done.stdout  # the '--mode rsa-pss' means the signature type
    assert sig.stat().st_size == 256
    pub = tmp_path / "pub.pem"
    assert softhsm.run_cli("pubkey", *DEV, "--uri", rsa2048, "--output", str(pub)).returncode == 0
    cmd = ["openssl", "dgst", "-sha256", "-verify", str(pub), *sigopts, "-signature", str(sig)]
    assert subprocess.run([*cmd, str(desc)], capture_output=True, check=False).returncode == 0
    tampered = tmp_path / "tampered"
    tampered.write_bytes(desc.read_bytes().replace(b"1.0.1", b"1.0.9"))
    assert subprocess.run([*cmd, str(tampered)], capture_output=True, check=False).returncode == 1
    # the other padding must not verify: the modes really differ
    other = ["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig)]
    if not sigopts:
        other[4:4] = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-2"]
    assert subprocess.run([*other, str(desc)], capture_output=True, check=False).returncode == 1


def test_ec_key_refused_for_raw_rsa_mode(
    softhsm: SoftHsm, ec256: str, tmp_path: Path, images: list[Path]
) -> None:
    desc = write_description(tmp_path, images)
    sig = tmp_path / "sw-description.sig"
    done = softhsm.run_cli(
        "swupdate", "sign", *DEV, "--uri", ec256, "--signing-mode", "rsa", "--output", str(sig), str(desc)
    )
    assert done.returncode == 2
    assert "RSA key" in done.stderr and "Traceback" not in done.stderr
    assert not sig.exists()


def test_unprotected_or_stale_descriptions_are_not_signed(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path]
) -> None:
    cert = make_cert(softhsm, rsa2048, tmp_path / "signer.pem")
    sig = tmp_path / "sw-description.sig"
    nohash = tmp_path / "nohash"
    nohash.write_text(
        'software = { version = "1"; hardware-compatibility: ["1.0"]; images: ( '
        '{ filename = "rootfs.ext4"; type = "raw"; } ); };\n'
    )
    done = softhsm.run_cli(
        "swupdate", "sign", *DEV, "--uri", rsa2048, "--cert", str(cert), "--output", str(sig), str(nohash)
    )
    assert done.returncode == 2
    assert "no sha256" in done.stderr
    assert not sig.exists()

    desc = write_description(tmp_path, images)
    images[0].write_bytes(b"changed after sw-description was written")
    swu = tmp_path / "update.swu"
    done = build_bundle(softhsm, rsa2048, cert, desc, images, swu)
    assert done.returncode == 2
    assert "sha256 of" in done.stderr
    assert not swu.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]

    broken = tmp_path / "broken"
    broken.write_text('software = { version = "1"; images: ( { filename = "x" ')
    done = softhsm.run_cli(
        "swupdate", "sign", *DEV, "--uri", rsa2048, "--cert", str(cert), "--output", str(sig), str(broken)
    )
    assert done.returncode == 6
    assert "sw-description line" in done.stderr

    # libconfig refuses a name twice in a group: the device could not read this file, whichever
    # sha256 hsmsign checked (it used to check the last one)
    twice = tmp_path / "twice"
    digest = hashlib.sha256(images[1].read_bytes()).hexdigest()
    twice.write_text(
        'software = { version = "1"; hardware-compatibility: ["1.0"]; images: (\n'
        f'{{ filename = "{images[1].name}"; sha256 = "{digest}";\n  sha256 = "{digest}"; }} ); }};\n'
    )
    done = softhsm.run_cli(
        "swupdate", "sign", *DEV, "--uri", rsa2048, "--cert", str(cert), "--output", str(sig), str(twice)
    )
    assert done.returncode == 6, done.stderr
    assert "sw-description line 3: the setting 'sha256' appears twice in one group" in done.stderr
    assert not sig.exists()


def test_cms_mode_needs_matching_cert(
    softhsm: SoftHsm, rsa2048: str, ec256: str, tmp_path: Path, images: list[Path]
) -> None:
    other = make_cert(softhsm, ec256, tmp_path / "other.pem")
    desc = write_description(tmp_path, images)
    sig = tmp_path / "sw-description.sig"
    done = softhsm.run_cli(
        "swupdate", "sign", *DEV, "--uri", rsa2048, "--cert", str(other), "--output", str(sig), str(desc)
    )
    assert done.returncode == 2
    assert "does not belong to the token key" in done.stderr
    done = softhsm.run_cli("swupdate", "sign", *DEV, "--uri", rsa2048, "--output", str(sig), str(desc))
    assert done.returncode == 2
    assert "--cert" in done.stderr
    assert not sig.exists()


def test_bundle_hashes_are_over_stored_bytes(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path]
) -> None:
    from hsmsign.formats import cpio
    from hsmsign.formats import swupdate as swu

    cert = make_cert(softhsm, rsa2048, tmp_path / "signer.pem")
    desc = write_description(tmp_path, images)
    out = tmp_path / "update.swu"
    assert build_bundle(softhsm, rsa2048, cert, desc, images, out, "--newc").returncode == 0
    parsed = swu.parse_description(desc.read_bytes())
    arts = {a.filename: a.sha256 for a in swu.artifacts(parsed)}
    with open(out, "rb") as fh:
        for e in cpio.read_entries(str(out))[2:]:
            assert not e.crc_format
            digest = hashlib.sha256(b"".join(cpio.iter_member(fh, e))).hexdigest()
            assert digest == arts[e.name]
    assert swupdate_check(out, cert).returncode == 0


def test_bundle_from_existing_signature(
    softhsm: SoftHsm, ec256: str, tmp_path: Path, images: list[Path]
) -> None:
    """sign and bundle as two steps (meta-swupdate's CUSTOM signing, then its own cpio step)."""
    cert = make_cert(softhsm, ec256, tmp_path / "signer.pem")
    desc = write_description(tmp_path, images)
    sig = tmp_path / "sw-description.sig"
    done = softhsm.run_cli(
        "swupdate", "sign", *DEV, "--uri", ec256, "--cert", str(cert), "--output", str(sig), str(desc)
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "two-step.swu"
    done = softhsm.run_cli(
        "swupdate",
        "bundle",
        "--sw-description",
        str(desc),
        "--signature",
        str(sig),
        "--output",
        str(out),
        *map(str, images),
    )
    assert done.returncode == 0, done.stderr
    assert swupdate_check(out, cert).returncode == 0
    # a file that is not a CMS signature is refused before any bundle is written
    junk = tmp_path / "junk.sig"
    junk.write_bytes(b"not a signature")
    bad = tmp_path / "bad.swu"
    done = softhsm.run_cli(
        "swupdate",
        "bundle",
        "--sw-description",
        str(desc),
        "--signature",
        str(junk),
        "--output",
        str(bad),
        *map(str, images),
    )
    assert done.returncode == 6 and "not a DER CMS" in done.stderr
    assert not bad.exists()
    # an image sw-description does not name is refused (it would ride along unprotected)
    stray = tmp_path / "stray.bin"
    stray.write_bytes(b"stray")
    done = softhsm.run_cli(
        "swupdate",
        "bundle",
        "--sw-description",
        str(desc),
        "--signature",
        str(sig),
        "--output",
        str(bad),
        *map(str, images),
        str(stray),
    )
    assert done.returncode == 2 and "does not name stray.bin" in done.stderr
    assert not bad.exists()


def test_a_signer_certificate_out_of_its_validity_period_is_named(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, images: list[Path]
) -> None:
    """Expired yesterday: `hsmsign swupdate bundle` warns (a device may be built not to check
    time), and swupdate itself, which checks time by default, refuses the bundle, as the warning
    says. Expiring in 10 days: a warning, and a bundle swupdate accepts."""
    import datetime

    from cryptography.hazmat.primitives import serialization
    from hsmsign import token
    from hsmsign.formats import x509

    now = datetime.datetime.now(tz=datetime.timezone.utc)
    expired = tmp_path / "expired.pem"
    with token.open_key(rsa2048, mode="development") as key:
        cert = x509.self_signed(key, "CN=expired", days=1, not_before=now - datetime.timedelta(days=2))
    expired.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    desc = write_description(tmp_path, images)
    swu = tmp_path / "update.swu"
    done = build_bundle(softhsm, rsa2048, expired, desc, images, swu)
    assert f"warning: {expired} expired on {cert.not_valid_after_utc:%Y-%m-%d}" in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr  # hsmsign's own check does not look at time...
    check = swupdate_check(swu, expired)  # ... the device's does
    assert check.returncode != 0, check.stdout + check.stderr
    assert "Authentication of all signatures failed" in check.stdout + check.stderr

    soon = tmp_path / "soon.pem"
    made = softhsm.run_cli(
        "cert", *DEV, "--uri", rsa2048, "--subject", "CN=soon", "--days", "10", "--output", str(soon)
    )
    assert made.returncode == 0, made.stderr
    done = build_bundle(softhsm, rsa2048, soon, desc, images, swu)
    assert done.returncode == 0, done.stderr
    assert f"warning: {soon} expires on " in done.stderr and "in 10 day(s)" in done.stderr
    assert swupdate_check(swu, soon).returncode == 0


def test_preflight_checks_key_type_and_certificate_without_signing(
    softhsm: SoftHsm, rsa2048: str, ec256: str, tmp_path: Path
) -> None:
    """What the layer runs before do_swuimage: the certificate must belong to the key (cms), the
    key must be RSA for the raw modes, cms needs a certificate; nothing is signed or recorded."""
    cert = make_cert(softhsm, rsa2048, tmp_path / "signer.pem")
    other = make_cert(softhsm, ec256, tmp_path / "other.pem")
    ledger = tmp_path / "ledger.jsonl"
    pre = ("swupdate", "preflight", *DEV, "--ledger", str(ledger), "--uri")
    ok = softhsm.run_cli(*pre, rsa2048, "--cert", str(cert), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signing_mode"] == "cms" and "warning" not in ok.stderr
    assert softhsm.run_cli(*pre, rsa2048, "--signing-mode", "rsa-pss").returncode == 0
    for argv, code, needle in (
        ((rsa2048, "--cert", str(other)), 2, "does not belong to the token key"),
        ((rsa2048,), 2, "CMS mode needs the signer certificate"),
        ((ec256, "--signing-mode", "rsa"), 2, "needs an RSA key, not ec"),
        ((softhsm.uri("nope"), "--cert", str(cert)), 3, "no private key matches"),
    ):
        done = softhsm.run_cli(*pre, *argv)
        assert done.returncode == code, done.stderr
        assert needle in done.stderr and "Traceback" not in done.stderr
    assert not ledger.exists()
