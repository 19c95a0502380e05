"""UEFI Secure Boot: ``hsmsign pe`` against sbverify, osslsigncode, sbsign, efitools and OVMF.

The input is Debian's systemd-boot (``systemd-boot-efi``), a real x86-64 EFI
application whose length is not a multiple of 8 (so the padding rule is
exercised). Every key lives in the session's SoftHSM token.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SoftHsm, require, tool
from tests.integration import ovmf

DEV = ("--mode", "development")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SYSTEMD_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


@pytest.fixture(scope="module")
def efi() -> Path:
    require(
        SYSTEMD_BOOT.exists(), "systemd-boot", "apt-get install systemd-boot-efi", env="HSMSIGN_REQUIRE_TOOLS"
    )
    return SYSTEMD_BOOT


@pytest.fixture(scope="module")
def uefi_key(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    uri = softhsm.keygen("uefi-db", "rsa:2048")
    cert = tmp_path_factory.mktemp("uefi") / "db.pem"
    done = softhsm.run_cli(
        "cert",
        *DEV,
        "--uri",
        uri,
        "--subject",
        "CN=hsmsign test db",
        "--eku",
        "codeSigning",
        "--output",
        str(cert),
    )
    assert done.returncode == 0, done.stderr
    return uri, cert


@pytest.fixture(scope="module")
def other_key(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    uri = softhsm.keygen("uefi-other", "rsa:3072")
    cert = tmp_path_factory.mktemp("uefi-other") / "other.pem"
    done = softhsm.run_cli("cert", *DEV, "--uri", uri, "--subject", "CN=not in db", "--output", str(cert))
    assert done.returncode == 0, done.stderr
    return uri, cert


def _sign(softhsm: SoftHsm, key: tuple[str, Path], src: Path, out: Path, *extra: str) -> None:
    done = softhsm.run_cli(
        "pe", "sign", *DEV, "--uri", key[0], "--cert", str(key[1]), "--output", str(out), *extra, str(src)
    )
    assert done.returncode == 0, done.stderr


def _flip(src: Path, out: Path) -> Path:
    """A copy with one byte changed in the middle of the first section's data."""
    from hsmsign.formats import pe

    data = bytearray(src.read_bytes())
    sec = pe.parse(data).sections[0]
    data[sec.offset + sec.size // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def _without_certificates(src: Path, out: Path) -> Path:
    """A copy whose PKCS#7 carries its certificates as CRLs ([0] becomes [1]): the signed bytes
    are all there, but not the signer's certificate."""
    data = bytearray(src.read_bytes())
    data[_pkcs7_offset(bytes(data), "certificates-tag")] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def _sbverify(cert: Path, image: Path) -> subprocess.CompletedProcess[str]:
    exe = tool("sbverify", "sbsigntool")
    return subprocess.run([exe, "--cert", str(cert), str(image)], capture_output=True, text=True, check=False)


def _osslsigncode(cert: Path, image: Path) -> subprocess.CompletedProcess[str]:
    exe = tool("osslsigncode", "osslsigncode")
    return subprocess.run(
        [exe, "verify", "-CAfile", str(cert), "-in", str(image)], capture_output=True, text=True, check=False
    )


def _digest(softhsm: SoftHsm, image: Path) -> str:
    done = softhsm.run_cli("pe", "digest", str(image))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_stock_verifiers_accept_and_reject(
    softhsm: SoftHsm, efi: Path, uefi_key: tuple[str, Path], other_key: tuple[str, Path], tmp_path: Path
) -> None:
    signed = tmp_path / "sd.efi"
    _sign(softhsm, uefi_key, efi, signed)
    cert = uefi_key[1]
    ok = _sbverify(cert, signed)
    assert ok.returncode == 0 and "Signature verification OK" in ok.stdout, ok.stdout + ok.stderr
    ok2 = _osslsigncode(cert, signed)
    assert ok2.returncode == 0 and "Succeeded" in ok2.stdout, ok2.stdout + ok2.stderr
    ours = softhsm.run_cli("pe", "verify", "--cert", str(cert), str(signed))
    assert ours.returncode == 0, ours.stderr

    tampered = _flip(signed, tmp_path / "tampered.efi")
    assert _sbverify(cert, tampered).returncode != 0
    assert _osslsigncode(cert, tampered).returncode != 0
    bad = softhsm.run_cli("pe", "verify", "--cert", str(cert), str(tampered))
    assert bad.returncode == 6 and "digest differs" in bad.stderr and "Traceback" not in bad.stderr

    assert _sbverify(cert, efi).returncode != 0
    unsigned = softhsm.run_cli("pe", "verify", "--cert", str(cert), str(efi))
    assert unsigned.returncode == 6 and "not signed" in unsigned.stderr

    # a signature by another key is not one by the db key
    others = tmp_path / "other.efi"
    _sign(softhsm, other_key, efi, others)
    assert _sbverify(cert, others).returncode != 0
    assert _osslsigncode(cert, others).returncode != 0
    assert softhsm.run_cli("pe", "verify", "--cert", str(cert), str(others)).returncode == 6
    assert _sbverify(other_key[1], others).returncode == 0


def test_digest_is_the_one_sbsign_and_osslsigncode_compute(
    softhsm: SoftHsm, efi: Path, uefi_key: tuple[str, Path], tmp_path: Path
) -> None:
    """sbsign (libp11, the same token key) and osslsigncode agree with our digest, byte for byte."""
    sbsign = tool("sbsign", "sbsigntool")
    ours = tmp_path / "ours.efi"
    _sign(softhsm, uefi_key, efi, ours)
    ours_digest = _digest(softhsm, ours)

    theirs = tmp_path / "sbsign.efi"
    key_uri = uefi_key[0].split("?")[0] + ";type=private?pin-value=" + softhsm.pin_file.read_text().strip()
    env = dict(softhsm.env, PKCS11_MODULE_PATH=softhsm.module)
    done = subprocess.run(
        [
            sbsign,
            "--engine",
            "pkcs11",
            "--key",
            key_uri,
            "--cert",
            str(uefi_key[1]),
            "--output",
            str(theirs),
            str(efi),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            "sbsign --engine pkcs11 failed: "
            + done.stderr.replace(softhsm.pin_file.read_text().strip(), "***")
        )
    assert _digest(softhsm, theirs) == ours_digest
    from hsmsign.formats import authenticode, pe

    data = theirs.read_bytes()
    (entry,) = pe.certificates(data)
    assert authenticode.signed_digest(entry.data).hex() == ours_digest

    for image in (ours, theirs):
        out = _osslsigncode(uefi_key[1], image).stdout
        current = re.search(r"Current message digest\s*:\s*([0-9A-F]+)", out)
        calculated = re.search(r"Calculated message digest\s*:\s*([0-9A-F]+)", out)
        assert current and calculated, out
        assert current.group(1).lower() == calculated.group(1).lower() == ours_digest


def test_append_keeps_the_first_signature(
    softhsm: SoftHsm, efi: Path, uefi_key: tuple[str, Path], other_key: tuple[str, Path], tmp_path: Path
) -> None:
    first = tmp_path / "first.efi"
    _sign(softhsm, other_key, efi, first)
    both = tmp_path / "both.efi"
    _sign(softhsm, uefi_key, first, both, "--append")
    from hsmsign.formats import pe

    assert len(pe.certificates(both.read_bytes())) == 2
    for cert in (uefi_key[1], other_key[1]):
        done = softhsm.run_cli("pe", "verify", "--cert", str(cert), str(both))
        assert done.returncode == 0, done.stderr
        assert _sbverify(cert, both).returncode == 0
    # re-signing without --append replaces both
    again = tmp_path / "again.efi"
    _sign(softhsm, uefi_key, both, again)
    assert len(pe.certificates(again.read_bytes())) == 1
    assert _digest(softhsm, again) == _digest(softhsm, both)


def _check_written(tmp_path: Path, image: bytes, data: bytes, size: int, blob: bytes) -> list[object]:
    from hsmsign.commands.pe import check_written
    from hsmsign.formats import pe

    path = tmp_path / "out.efi"
    path.write_bytes(image)
    fd = os.open(path, os.O_RDONLY)
    try:
        layout = pe.parse(data)
        head, table = pe.input_parts(data, layout)
        return list(check_written(fd, head, table, layout, size, blob, False, str(path)))
    finally:
        os.close(fd)


def test_the_read_back_catches_what_did_not_reach_the_file(efi: Path, tmp_path: Path) -> None:
    """After signing, the size, the headers, the padding and the table are read back from the file
    (the body is written from the very bytes that were hashed): each way of getting them wrong is
    an internal error (exit 5), so the output is never renamed into place."""
    from hsmsign.errors import SigningError
    from hsmsign.formats import pe

    data = efi.read_bytes()
    layout = pe.parse(data)
    blob = bytes(range(256)) * 4  # stands for the SignedData: the read-back compares bytes
    head, tail = pe.signed_parts(*pe.input_parts(data, layout), layout, [pe.win_certificate(blob)], False)
    start, end = pe.body_range(layout)
    good = head + data[start:end] + tail
    pad = -end % 8
    assert pad, "systemd-boot's length is not a multiple of 8: the padding is checked too"
    entries = _check_written(tmp_path, good, data, len(good), blob)
    assert [e.data for e in entries] == [blob]  # type: ignore[attr-defined]

    def changed(offset: int) -> bytes:
        image = bytearray(good)
        image[offset] ^= 0x01
        return bytes(image)

    cases = {
        "one byte short": (good[:-1], "bytes on disk"),
        "one block more": (good + bytes(8), "bytes on disk"),
        "a header byte": (changed(0x40), "headers read back differ"),
        "the table's size in the header": (changed(layout.cert_dir_offset + 4), "do not parse"),
        "the padding": (changed(end), "padding"),
        "the WIN_CERTIFICATE length": (changed(end + pad), "certificate table read back"),
        "a signature byte": (changed(end + pad + 8 + 100), "signature read back differs"),
    }
    for name, (image, words) in cases.items():
        with pytest.raises(SigningError, match="internal: .*" + words):
            _check_written(tmp_path, image, data, len(good), blob)
        assert SigningError.exit_code == 5, name


@pytest.mark.parametrize("fault", ["short", "changed"])
def test_a_bad_write_is_caught_and_nothing_is_written(
    softhsm: SoftHsm,
    efi: Path,
    uefi_key: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    """The write of the signature goes wrong (one byte short, one byte changed on its way): the
    read-back refuses with one line and exit 5; no output, no temporary file."""
    from hsmsign.cli import main
    from hsmsign.commands import pe_input
    from hsmsign.formats import pe

    real = pe_input.pwrite_all
    table_at = pe.parse(efi.read_bytes()).content_end

    def faulty(fd: int, data: bytes | memoryview, offset: int) -> None:
        if offset == table_at:  # the padding and the table, written after signing
            data = bytes(data)
            data = data[:-1] if fault == "short" else data[:-20] + bytes([data[-20] ^ 1]) + data[-19:]
        real(fd, data, offset)

    monkeypatch.setattr(pe_input, "pwrite_all", faulty)
    out = tmp_path / "signed.efi"
    argv = ["pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(efi)]
    assert main(argv) == 5
    err = capsys.readouterr().err
    assert err.startswith("hsmsign: error: internal: ") and "Traceback" not in err, err
    assert len(err.splitlines()) == 2, err  # the line and its hint
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]
    monkeypatch.setattr(pe_input, "pwrite_all", real)
    assert main(argv) == 0 and _sbverify(uefi_key[1], out).returncode == 0


def test_esl_is_what_efitools_writes(uefi_key: tuple[str, Path], softhsm: SoftHsm, tmp_path: Path) -> None:
    exe = tool("cert-to-efi-sig-list", "efitools")
    owner = str(uuid.uuid4())
    theirs = tmp_path / "theirs.esl"
    subprocess.run([exe, "-g", owner, str(uefi_key[1]), str(theirs)], check=True, capture_output=True)
    ours = tmp_path / "ours.esl"
    done = softhsm.run_cli("pe", "esl", "--cert", str(uefi_key[1]), "--owner", owner, "--output", str(ours))
    assert done.returncode == 0, done.stderr
    assert ours.read_bytes() == theirs.read_bytes()


def test_errors_are_one_line_and_write_nothing(
    softhsm: SoftHsm, efi: Path, uefi_key: tuple[str, Path], other_key: tuple[str, Path], tmp_path: Path
) -> None:
    not_pe = tmp_path / "notpe.efi"
    not_pe.write_bytes(b"\x7fELF" + os.urandom(4000))
    out = tmp_path / "out.efi"
    done = softhsm.run_cli(
        "pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(not_pe)
    )
    assert done.returncode == 2 and "not a PE/COFF image" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
    # a certificate of another key: refused before anything is written
    done = softhsm.run_cli(
        "pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(other_key[1]), "-o", str(out), str(efi)
    )
    assert done.returncode == 2 and "does not belong to the token key" in done.stderr
    assert not out.exists()
    # ECDSA: not what firmware checks
    ec = softhsm.keygen("uefi-ec", "ec:secp256r1")
    ec_cert = tmp_path / "ec.pem"
    assert (
        softhsm.run_cli("cert", *DEV, "--uri", ec, "--subject", "CN=ec", "--output", str(ec_cert)).returncode
        == 0
    )
    done = softhsm.run_cli("pe", "sign", *DEV, "--uri", ec, "--cert", str(ec_cert), "-o", str(out), str(efi))
    assert done.returncode == 2 and "needs an RSA key" in done.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]


FUZZ = settings(
    max_examples=int(os.environ.get("HSMSIGN_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_damaged_signed_image_is_refused_and_never_crashes(
    softhsm: SoftHsm, efi: Path, uefi_key: tuple[str, Path], tmp_path: Path
) -> None:
    """``pe digest`` and ``pe verify`` read untrusted images: bytes changed in the headers or in
    the certificate table, or the file cut short, give an HsmsignError of one line, never another
    exception (a traceback, exit 1). And an image that still verifies has the Authenticode digest
    that was signed: only bytes the digest leaves out (the checksum, ...) were changed."""
    from hsmsign.commands.pe import verify_image
    from hsmsign.errors import HsmsignError
    from hsmsign.formats import cms, pe

    signed = tmp_path / "signed.efi"
    _sign(softhsm, uefi_key, efi, signed)
    base = signed.read_bytes()
    layout = pe.parse(base)
    signed_digest = pe.digest(base, "sha256", layout)
    trusted = [cms.read_certificate_file(str(uefi_key[1]))]
    assert verify_image(base, trusted, "signed.efi")  # the base passes: every stage is reached
    header = min(layout.size_of_headers, 0x400)
    table = (layout.cert_table_offset, len(base))

    edit = st.tuples(st.booleans(), st.integers(0, 1 << 16), st.integers(0, 255))

    @FUZZ
    @given(st.lists(edit, min_size=1, max_size=6), st.none() | st.integers(0, len(base)))
    def damaged(edits: list[tuple[bool, int, int]], cut: int | None) -> None:
        data = bytearray(base)
        for in_table, where, value in edits:
            start, end = table if in_table else (0, header)
            data[start + where % (end - start)] = value
        image = bytes(data if cut is None else data[:cut])
        try:
            found = pe.parse(image, "damaged.efi")
            pe.digest(image, "sha256", found)
            good = verify_image(image, trusted, "damaged.efi")
        except HsmsignError as exc:
            assert exc.message and "\n" not in exc.message
            return
        assert good and good[0].image_digest == signed_digest

    damaged()


def test_pin_and_role(softhsm: SoftHsm, efi: Path, uefi_key: tuple[str, Path], tmp_path: Path) -> None:
    """The UEFI role's pin applies to pe sign (HSMSIGN_PUBKEY_SHA256_UEFI), and a wrong pin is exit 4."""
    out = tmp_path / "pinned.efi"
    args = ("pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(efi))
    done = softhsm.run_cli(*args, env={"HSMSIGN_PUBKEY_SHA256_UEFI": "00" * 32})
    assert done.returncode == 4, done.stderr
    assert not out.exists()
    # the ledger records the Authenticode digest and the key
    ledger = tmp_path / "ledger.jsonl"
    done = softhsm.run_cli(*args, "--ledger", str(ledger))
    assert done.returncode == 0, done.stderr
    entry = json.loads(ledger.read_text().splitlines()[-1])
    assert entry["kind"] == "pe" and entry["sha256"] == _digest(softhsm, out)
    assert softhsm.run_cli("ledger", "verify", "--ledger", str(ledger)).returncode == 0
    # the global pin does not apply when the role has its own
    done = softhsm.run_cli(
        *args,
        env={"HSMSIGN_PUBKEY_SHA256": "00" * 32, "HSMSIGN_PUBKEY_SHA256_UEFI": _fp(softhsm, uefi_key[0])},
    )
    assert done.returncode == 0, done.stderr


def _fp(softhsm: SoftHsm, uri: str) -> str:
    done = softhsm.run_cli("info", *DEV, "--uri", uri, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    return str(info.get("fingerprint") or info["key"]["fingerprint"]).removeprefix("sha256:")


@pytest.fixture(scope="module")
def db_vars(uefi_key: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = ovmf.missing()
    require(why is None, "OVMF/QEMU/virt-fw-vars", why or "", env="HSMSIGN_REQUIRE_TOOLS")
    return ovmf.enrolled_vars(uefi_key[1], tmp_path_factory.mktemp("ovmf") / "vars.fd")


def _pkcs7_offset(image: bytes, field: str) -> int:
    """The file offset of the byte to change for ``field`` in the image's (first) PKCS#7."""
    from asn1crypto import cms as acms
    from hsmsign.formats import pe

    start = pe.parse(image).cert_table_offset + 8  # after WIN_CERTIFICATE's length, revision, type
    der = image[start:]
    sd = acms.ContentInfo.load(der)["content"]
    si = sd["signer_infos"][0]
    at = {
        "certificates-tag": der.find(sd["certificates"].dump()),  # [0] becomes [1]: CRLs
        "digest-list-tag": der.find(sd["digest_algorithms"].dump()),  # SET becomes SEQUENCE
        "signer-version-tag": der.find(si.dump()) + 4,  # INTEGER becomes BIT STRING
        "signer-digest-null": der.find(si["digest_algorithm"].dump(), der.find(si.dump()))
        + len(si["digest_algorithm"].dump()) - 2,  # NULL becomes BOOLEAN
        "content-length": der.find(sd["encap_content_info"].dump()) + 15,  # [0]'s length + 1
        "certificate-version": der.find(sd["certificates"][0].chosen["tbs_certificate"].dump()) + 8,
    }
    return start + at[field]


@pytest.mark.parametrize(
    ("field", "flip", "needle"),
    [
        ("certificates-tag", 0x01, "not among the signature's own certificates"),
        ("digest-list-tag", 0x01, "list of digest algorithms is malformed"),
        ("signer-version-tag", 0x01, "malformed"),
        ("signer-digest-null", 0x04, "malformed"),  # a BOOLEAN of no bytes
        ("content-length", 0x01, "malformed"),  # [0] runs past its ContentInfo
        ("certificate-version", 0x01, "a certificate is malformed"),
    ],
)
def test_what_sbverify_refuses_in_the_signature_hsmsign_refuses(
    softhsm: SoftHsm, efi: Path, uefi_key: tuple[str, Path], tmp_path: Path, field: str, flip: int,
    needle: str,
) -> None:
    """One changed bit in the PKCS#7 that its signature does not cover, each found by comparing
    ``pe verify`` with sbverify (OpenSSL's PKCS7_verify, as the firmware's) on every bit of the
    certificate table: sbverify refuses the image, so hsmsign must; it accepted these before,
    and crashed on the last."""
    signed = tmp_path / "signed.efi"
    _sign(softhsm, uefi_key, efi, signed)
    data = bytearray(signed.read_bytes())
    data[_pkcs7_offset(bytes(data), field)] ^= flip
    changed = tmp_path / "changed.efi"
    changed.write_bytes(bytes(data))
    assert _sbverify(uefi_key[1], changed).returncode != 0
    refused = softhsm.run_cli("pe", "verify", "--cert", str(uefi_key[1]), str(changed))
    assert refused.returncode == 6 and needle in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_ovmf_secure_boot(
    softhsm: SoftHsm,
    efi: Path,
    uefi_key: tuple[str, Path],
    other_key: tuple[str, Path],
    db_vars: Path,
    tmp_path: Path,
) -> None:
    """OVMF, Secure Boot, db = the token's certificate: boots the signed systemd-boot, refuses the rest."""
    signed = tmp_path / "signed.efi"
    _sign(softhsm, uefi_key, efi, signed)
    others = tmp_path / "others.efi"
    _sign(softhsm, other_key, efi, others)
    rotated = tmp_path / "rotated.efi"
    _sign(softhsm, uefi_key, others, rotated, "--append")
    cases = {
        "signed": (signed, "accepted"),
        "one byte changed": (_flip(signed, tmp_path / "flipped.efi"), "refused"),
        "unsigned": (efi, "refused"),
        "another key": (others, "refused"),
        "another key + db key appended": (rotated, "accepted"),
        "signer's certificate left out": (_without_certificates(signed, tmp_path / "nocert.efi"), "refused"),
    }
    seen = {}
    for name, (image, want) in cases.items():
        result = ovmf.boot(image, db_vars)
        seen[name] = f"{result.verdict} in {result.seconds:.1f} s"
        assert result.verdict == want, f"{name}: {result.verdict}\n{result.console[-2000:]}"
    print("OVMF:", seen)


def test_the_image_read_ahead_is_the_one_signed(
    softhsm: SoftHsm,
    efi: Path,
    uefi_key: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`hsmsign pe sign` begins reading its image before the CLI is imported (hsmsign.launch): the
    command signs that image and does not read it again; an image read ahead under another path
    than the parser's is dropped, and the right one is read and signed."""
    from hsmsign.cli import main
    from hsmsign.commands import pe_input

    opened: list[str] = []
    real_init = pe_input.ImageInput.__init__

    def counted(self: pe_input.ImageInput, path: str, **options: bool) -> None:
        opened.append(path)
        real_init(self, path, **options)

    monkeypatch.setattr(pe_input.ImageInput, "__init__", counted)
    out = tmp_path / "signed.efi"
    argv = ["pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(efi)]
    pe_input.prefetch(argv)
    assert main(argv) == 0
    assert opened == [str(efi)]
    assert _sbverify(uefi_key[1], out).returncode == 0
    signed_digest = softhsm.run_cli("pe", "digest", str(out)).stdout.strip()

    decoy = tmp_path / "decoy.efi"  # another image, the guess the parser does not confirm
    decoy.write_bytes(SYSTEMD_STUB.read_bytes() if SYSTEMD_STUB.exists() else b"MZ")
    opened.clear()
    out.unlink()
    pe_input.prefetch([*argv[:-1], str(decoy)])
    assert main(argv) == 0
    assert opened == [str(decoy), str(efi)]
    assert _sbverify(uefi_key[1], out).returncode == 0
    assert softhsm.run_cli("pe", "digest", str(out)).stdout.strip() == signed_digest  # efi's, not decoy's


@pytest.fixture(scope="module")
def uki(efi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 21 MiB UKI made as ukify's predecessors made it (objcopy adds .cmdline, .linux and .initrd
    of random bytes to systemd's stub): sections across several of the pieces the body is copied
    and hashed in (``pe_input.PIECE``), and 3 KiB of data after the last section."""
    from hsmsign.commands import pe_input

    objcopy = tool("objcopy", "binutils")
    require(SYSTEMD_STUB.exists(), "systemd's EFI stub", "apt-get install systemd-boot-efi",
            env="HSMSIGN_REQUIRE_TOOLS")  # fmt: skip
    work = tmp_path_factory.mktemp("uki")
    linux, initrd, cmdline = work / "linux", work / "initrd", work / "cmdline"
    linux.write_bytes(os.urandom(2 * pe_input.PIECE + 12345))
    initrd.write_bytes(os.urandom(pe_input.PIECE // 2 + 777))
    cmdline.write_text("console=ttyS0 root=LABEL=root\n")
    out = work / "uki.efi"
    subprocess.run(
        [
            objcopy,
            "--add-section", f".cmdline={cmdline}", "--change-section-vma", ".cmdline=0x30000",
            "--add-section", f".linux={linux}", "--change-section-vma", ".linux=0x2000000",
            "--add-section", f".initrd={initrd}", "--change-section-vma", ".initrd=0x8000000",
            str(SYSTEMD_STUB), str(out),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    with out.open("ab") as fh:
        fh.write(os.urandom(3 * 1024 + 5))  # after the sections: hashed, up to the table
    return out


def test_a_large_image_is_signed_as_sbsign_signs_it(
    softhsm: SoftHsm, uki: Path, uefi_key: tuple[str, Path], tmp_path: Path
) -> None:
    """A UKI larger than three pieces of the copy: the signed image is the input but for the
    certificate-table entry and the table, sbverify and osslsigncode accept it, and the digest
    signed is the one ``pe digest`` (the whole file read and hashed) computes."""
    from hsmsign.formats import authenticode, pe

    out = tmp_path / "uki.signed.efi"
    _sign(softhsm, uefi_key, uki, out)
    assert _sbverify(uefi_key[1], out).returncode == 0
    assert "Signature verification: ok" in _osslsigncode(uefi_key[1], out).stdout
    data, signed = uki.read_bytes(), out.read_bytes()
    layout = pe.parse(data)
    cd = layout.cert_dir_offset
    assert signed[:cd] == data[:cd] and signed[cd + 8 : layout.size] == data[cd + 8 :]
    (entry,) = pe.certificates(signed)
    assert authenticode.signed_digest(entry.data).hex() == _digest(softhsm, out) == _padded_digest(uki)


@pytest.mark.parametrize("step", [4096, 1 << 20, None])
def test_the_digest_of_the_parts_is_the_digest_of_the_whole(
    uki: Path, monkeypatch: pytest.MonkeyPatch, step: int | None
) -> None:
    """``pe.digest_parts`` (the headers from memory, the body where it is being copied, read only
    once ``ready()`` says it is there) is ``pe.digest`` of the whole file: the body is filled here
    only as far as ``ready()`` asked, so a byte read before that would be a zero, and another digest."""
    from hsmsign.formats import pe

    if step is not None:
        monkeypatch.setattr(pe, "READY_STEP", step)
    data = uki.read_bytes()
    layout = pe.parse(data)
    head, _ = pe.input_parts(data, layout)
    body = bytearray(len(data))
    asked: list[int] = []

    def ready(offset: int) -> None:
        assert layout.size_of_headers < offset <= layout.content_end
        filled = max(asked, default=layout.size_of_headers)
        body[filled:offset] = data[filled:offset]
        asked.append(max(offset, filled))

    got = pe.digest_parts(head, memoryview(body), layout, pad=True, ready=ready)
    assert got == pe.digest(data, "sha256", layout, pad=True)
    assert asked[-1] == layout.content_end and asked == sorted(asked)
    assert len(asked) >= (layout.content_end - layout.size_of_headers) // pe.READY_STEP


def _padded_digest(image: Path) -> str:
    """The digest of an image as it is once signed (with the zeros that align it to 8), read whole."""
    from hsmsign.formats import pe

    data = image.read_bytes()
    assert len(data) % 8, "the padding is hashed too"
    return pe.digest(data, "sha256", pe.parse(data), pad=True).hex()


def _sign_in_process(
    uefi_key: tuple[str, Path], src: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    from hsmsign.cli import main

    argv = ["pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(src)]
    code = main(argv)
    return code, capsys.readouterr().err


def _no_output(out: Path) -> bool:
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".hsmsign-tmp-")]


def test_an_image_changed_while_it_is_signed_is_refused(
    softhsm: SoftHsm,
    uki: Path,
    uefi_key: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Whatever writes the image writes it again while it is copied (here: between two pieces):
    the command refuses with one line and exit 2, and writes nothing."""
    from hsmsign.commands import pe_input

    src = tmp_path / "in.efi"
    src.write_bytes(uki.read_bytes())
    # written long ago: the rewrite's time differs from it even where file times are as coarse
    # as the kernel's clock tick (before Linux 6.13's fine-grained times once a time was read)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    real = pe_input._copy

    def rewritten_meanwhile(*args: object) -> None:
        *rest, advance = args

        def advanced(done: int) -> None:
            advance(done)  # type: ignore[operator]
            with src.open("r+b") as fh:  # the same size, the same bytes: only the times change
                fh.seek(done)
                byte = fh.read(1)
                fh.seek(done)
                fh.write(byte)

        real(*rest, advanced)  # type: ignore[arg-type]

    monkeypatch.setattr(pe_input, "_copy", rewritten_meanwhile)
    out = tmp_path / "out.efi"
    code, err = _sign_in_process(uefi_key, src, out, capsys)
    assert code == 2, err
    assert err.startswith(f"hsmsign: error: {src} changed while it was signed"), err
    assert len(err.splitlines()) == 2 and "Traceback" not in err, err
    assert _no_output(out)
    monkeypatch.setattr(pe_input, "_copy", real)
    assert _sign_in_process(uefi_key, src, out, capsys)[0] == 0
    assert _sbverify(uefi_key[1], out).returncode == 0


@pytest.mark.parametrize("errno_name", ["EINVAL", "ENOSYS"])
def test_without_sendfile_the_body_is_copied_through_the_process(
    softhsm: SoftHsm,
    uki: Path,
    uefi_key: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    errno_name: str,
) -> None:
    """A file system whose files sendfile(2) refuses: the body is read and written with
    pread/pwrite, and the image is signed all the same."""
    import errno

    def refused(*args: object) -> int:
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))

    monkeypatch.setattr(os, "sendfile", refused)
    out = tmp_path / "out.efi"
    code, err = _sign_in_process(uefi_key, uki, out, capsys)
    assert code == 0, err
    assert _sbverify(uefi_key[1], out).returncode == 0
    assert _digest(softhsm, out) == _padded_digest(uki)


def test_headers_past_the_first_read_are_read_whole_and_signed(
    softhsm: SoftHsm,
    uki: Path,
    uefi_key: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An image whose headers and section table do not fit in the first read (``HEAD_READ``,
    here made smaller than systemd's) is read whole, hashed, and its body written from those
    bytes: the same signed image."""
    from hsmsign.commands import pe_input

    monkeypatch.setattr(pe_input, "HEAD_READ", 256)
    read_whole: list[str] = []
    pe_input.load_once()
    real = pe_input.atomic.read_input

    def counted(path: str, *args: object) -> bytes:
        read_whole.append(path)
        return real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pe_input.atomic, "read_input", counted)
    out = tmp_path / "out.efi"
    code, err = _sign_in_process(uefi_key, uki, out, capsys)
    assert code == 0, err
    assert read_whole.count(str(uki)) == 1  # (and the certificate, read as ever)
    assert _sbverify(uefi_key[1], out).returncode == 0
    assert _digest(softhsm, out) == _padded_digest(uki)


@pytest.mark.parametrize("where", ["first piece", "later piece", "mapping"])
def test_a_body_that_cannot_be_written_is_one_line_and_nothing(
    uki: Path,
    uefi_key: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    """The disk fills up while the body is copied (the first piece, a later one), or the output
    cannot be mapped and then not read back: one line naming the output and exit 2; no output,
    no temporary file."""
    import errno
    import mmap

    from hsmsign.commands import pe_input

    real_sendfile, real_preadv = os.sendfile, os.preadv
    calls: list[int] = []

    def full(*args: object) -> int:
        calls.append(1)
        if where == "first piece" or len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_sendfile(*args)  # type: ignore[arg-type]

    def unmappable(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    def unreadable(fd: int, buffers: list[memoryview], offset: int) -> int:
        if sum(len(b) for b in buffers) > pe_input.PIECE:  # the output read back: its whole body
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_preadv(fd, buffers, offset)

    if where == "mapping":
        monkeypatch.setattr(mmap, "mmap", unmappable)
        monkeypatch.setattr(os, "preadv", unreadable)
    else:
        monkeypatch.setattr(os, "sendfile", full)
    out = tmp_path / "out.efi"
    code, err = _sign_in_process(uefi_key, uki, out, capsys)
    assert code == 2, err
    reason = "Input/output error" if where == "mapping" else "No space left on device"
    assert err.startswith(f"hsmsign: error: cannot write {out}: {reason}"), err
    assert len(err.splitlines()) == 2 and "Traceback" not in err, err
    assert _no_output(out)


def test_an_unmappable_output_is_hashed_as_read_back(
    softhsm: SoftHsm,
    uki: Path,
    uefi_key: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file system that cannot map the output: its body is read back once copied and hashed."""
    import errno
    import mmap

    def unmappable(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    monkeypatch.setattr(mmap, "mmap", unmappable)
    out = tmp_path / "out.efi"
    code, err = _sign_in_process(uefi_key, uki, out, capsys)
    assert code == 0, err
    assert _sbverify(uefi_key[1], out).returncode == 0
    assert _digest(softhsm, out) == _padded_digest(uki)


_CONSOLE_WITH_EVENTS = (
    "import os, sys\n"
    "def hook(event, args):\n"
    "    if event == 'open' and isinstance(args[0], str) and '.hsmsign-tmp-' in args[0]:\n"
    "        sys.stderr.write('event: temporary\\n')\n"
    "    elif event == 'import' and args[0] == 'hsmsign.cli':\n"
    "        sys.stderr.write('event: cli\\n')\n"
    "sys.addaudithook(hook)\n"
    "sys.argv = ['hsmsign'] + sys.argv[1:]\n"
    "from hsmsign.launch import console_main\n"
    "console_main()\n"
)


def _console(
    softhsm: SoftHsm, argv: list[str], code: str = _CONSOLE_WITH_EVENTS
) -> subprocess.CompletedProcess[str]:
    """``hsmsign ARGV`` as the console script runs it, after ``code``'s own set-up (by default:
    the order of two events on stderr, the output's temporary file made and ``hsmsign.cli``
    imported)."""
    return subprocess.run(
        [sys.executable, "-c", code, *argv], env=softhsm.env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def test_the_output_is_made_before_the_cli_is_imported(
    softhsm: SoftHsm, uki: Path, uefi_key: tuple[str, Path], tmp_path: Path
) -> None:
    """The console script makes the output's temporary file, and begins copying the body into it,
    before the command-line interface is imported; the command takes that file and renames it:
    one temporary file in all."""
    out = tmp_path / "signed.efi"
    argv = ["pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(uki)]
    done = _console(softhsm, argv)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "event: temporary\nevent: cli\n", done.stderr  # one temporary file, made first
    assert _sbverify(uefi_key[1], out).returncode == 0
    assert _no_output(tmp_path / "nothing-else.efi")


@pytest.mark.parametrize("mistake", ["no --cert", "--cert is the output", "no such key"])
def test_an_output_made_early_is_removed_when_the_command_fails(
    softhsm: SoftHsm, uki: Path, uefi_key: tuple[str, Path], tmp_path: Path, mistake: str
) -> None:
    """A usage error (the parser refuses the line), an error before the output is taken (the
    certificate would be overwritten) and one after (no such key in the token): each exits 2
    with its message, and the temporary file made as the command started is gone."""
    out = tmp_path / "signed.efi"
    cert = tmp_path / "db.pem"
    cert.write_bytes(uefi_key[1].read_bytes())
    uri = uefi_key[0]
    if mistake == "no such key":
        uri = uri.replace("object=uefi-db", "object=no-such-key")
        assert uri != uefi_key[0]
    target = cert if mistake == "--cert is the output" else out
    options = [] if mistake == "no --cert" else ["--cert", str(cert)]
    argv = ["pe", "sign", *DEV, "--uri", uri, *options, "-o", str(target), str(uki)]
    done = _console(softhsm, argv)
    assert done.returncode in (2, 3), done.stderr
    assert done.stderr.startswith("event: temporary\nevent: cli\n"), done.stderr
    words = {
        "no --cert": "the following arguments are required: --cert",
        "--cert is the output": f"--output {cert} is also --cert",
        "no such key": "no-such-key",
    }[mistake]
    assert words in done.stderr, done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]
    assert not out.exists() and cert.read_bytes() == uefi_key[1].read_bytes()


def test_sigterm_as_the_output_is_made_removes_it(
    softhsm: SoftHsm, uki: Path, uefi_key: tuple[str, Path], tmp_path: Path
) -> None:
    """SIGTERM right after the console script made the output's temporary file (before the CLI is
    imported): exit 143 with one line, and the file is removed."""
    out = tmp_path / "signed.efi"
    code = (
        "import os, signal, sys\n"
        "sys.argv = ['hsmsign'] + sys.argv[1:]\n"
        "from hsmsign import launch\n"
        "from hsmsign.commands import pe_input\n"
        "real = pe_input.open_output\n"
        "def then_terminated():\n"
        "    real()\n"
        "    assert [p for p in os.listdir(sys.argv[-2].rpartition('/')[0]) if '.hsmsign-tmp-' in p]\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "pe_input.open_output = then_terminated\n"
        "launch.console_main()\n"
        "sys.exit('not terminated')\n"
    )
    argv = ["pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(uki)]
    done = _console(softhsm, argv, code)
    assert done.returncode == 143, done.stderr
    assert done.stderr == "hsmsign: error: terminated by SIGTERM; unfinished outputs removed\n"
    assert _no_output(out)


def test_pkcs11_modules_are_finalized_before_the_quick_exit(softhsm: SoftHsm) -> None:
    """hsmsign.launch ends the process without Python's teardown only after C_Finalize of every
    module loaded; a python-pkcs11 without lib.finalize (0.7.0, scarthgap's) keeps Python's exit."""
    code = (
        "import sys, pkcs11\n"
        "from hsmsign.token import modules\n"
        f"lib = modules.load_module({softhsm.module!r})\n"
        "lib.get_slots()\n"
        "done = modules.finalize_all()\n"
        "assert done == hasattr(lib, 'finalize'), done\n"
        "if done:\n"
        "    assert not modules.is_loaded(" + repr(softhsm.module) + ")\n"
        "    try:\n"
        "        lib.get_slots()\n"
        "    except pkcs11.PKCS11Error as exc:\n"
        "        print('finalized:', type(exc).__name__)\n"
        "    else:\n"
        "        sys.exit('still initialized after finalize_all')\n"
        "else:\n"
        "    print('kept for Python exit')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=softhsm.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(("finalized: ", "kept for Python exit")), done.stdout


def test_the_input_threads_import_nothing(efi: Path, tmp_path: Path) -> None:
    """The threads that read, hash and write the image only run what was imported before they
    started: a module imported by two threads at once can be seen half-initialized (seen once in
    about 500 runs: "partially initialized module 'typing' has no attribute 'ClassVar'")."""
    code = (
        "import os, sys, time\n"
        "from hsmsign.commands import pe_input\n"
        "before = set(sys.modules)\n"
        "pe_input.prefetch(['pe', 'sign', '--cert', 'c', '-o', 'o', sys.argv[1]])\n"
        "time.sleep(0.3)  # the read ahead is done, the thread waits for load()\n"
        "new = sorted(set(sys.modules) - before)\n"
        "assert not new, new\n"
        "pe_input.load()\n"
        "loaded = set(sys.modules)\n"
        "job = pe_input.adopt(sys.argv[1])\n"
        "fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "job.write_body(fd, sys.argv[2])\n"
        "job.parsed(); job.image_digest(); job.body_written()\n"
        "new = sorted(set(sys.modules) - loaded)\n"
        "assert not new, new\n"
        "print('ok', os.fstat(fd).st_size)\n"
    )
    out = tmp_path / "body"
    argv = [sys.executable, "-c", code, str(efi), str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", str(efi.stat().st_size)]


def test_an_image_from_a_fifo_is_read_once_and_signed(
    softhsm: SoftHsm, efi: Path, uefi_key: tuple[str, Path], tmp_path: Path
) -> None:
    """The read ahead leaves a FIFO alone (opened and closed, it would break its writer's pipe):
    the image a program writes into one is read by the command, signed and verified."""
    import threading

    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    image = efi.read_bytes()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            with open(fifo, "wb") as fh:
                fh.write(image)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    feeding = threading.Thread(target=writer, daemon=True)
    feeding.start()
    out = tmp_path / "signed.efi"
    argv = ["pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(fifo)]
    done = softhsm.run_cli(*argv, timeout=60)
    feeding.join(10)
    assert done.returncode == 0, done.stderr
    assert not failures, failures
    assert _sbverify(uefi_key[1], out).returncode == 0


def test_pe_sign_imports_nothing_of_cryptography_or_asn1crypto(
    softhsm: SoftHsm, uefi_key: tuple[str, Path], efi: Path, tmp_path: Path
) -> None:
    """``hsmsign pe sign`` checks its RSA signature and the certificate's key by their numbers
    (``keyformats.RsaPublicKey``), and writes, reads back and checks its SignedData with
    ``hsmsign.der``: neither pyca/cryptography nor asn1crypto is imported (python-pkcs11's helpers,
    which import asn1crypto, are deferred by the console script), half of a cold start together.
    The command runs as the console script runs it; an import of either ends it with 97."""
    out = tmp_path / "signed.efi"
    code = (
        "import os, sys\n"
        "def hook(event, args):\n"
        "    if event == 'import' and args[0].split('.')[0] in ('cryptography', 'asn1crypto'):\n"
        "        sys.stderr.write('imported ' + args[0] + '\\n'); sys.stderr.flush(); os._exit(97)\n"
        "sys.addaudithook(hook)\n"
        "sys.argv = ['hsmsign'] + sys.argv[1:]\n"
        "from hsmsign.launch import console_main\n"
        "console_main()\n"
    )
    argv = ["pe", "sign", *DEV, "--uri", uefi_key[0], "--cert", str(uefi_key[1]), "-o", str(out), str(efi)]
    done = _console(softhsm, argv, code)
    assert done.returncode == 0, done.stderr
    assert _sbverify(uefi_key[1], out).returncode == 0


def test_deferred_pkcs11_helpers_work_when_used() -> None:
    """The console script defers python-pkcs11's ``pkcs11.util`` modules: ``import pkcs11`` runs
    none of them and imports no asn1crypto; the first use of one runs it, with the result an
    eager import gives."""
    code = (
        "import sys\n"
        "from hsmsign.launch import defer_pkcs11_helpers\n"
        "defer_pkcs11_helpers(); defer_pkcs11_helpers()\n"
        "import pkcs11\n"
        "assert not [m for m in sys.modules if m.startswith('asn1crypto')], 'asn1crypto imported'\n"
        "from pkcs11.util.ec import encode_named_curve_parameters\n"
        "print(encode_named_curve_parameters('1.2.840.10045.3.1.7').hex())\n"
        "assert 'asn1crypto.keys' in sys.modules\n"
        "assert pkcs11.util.rsa.encode_rsa_public_key\n"
    )
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "06082a8648ce3d030107"


def test_the_signature_is_asn1cryptos_encoding_and_its_check_refuses_every_changed_byte(
    softhsm: SoftHsm, uefi_key: tuple[str, Path]
) -> None:
    """``authenticode.sign`` writes its SignedData with ``hsmsign.der`` alone: the bytes are those
    asn1crypto writes for the same fields (how hsmsign built it before). ``check_signed``, what
    ``pe sign`` runs on the signature read back, refuses it with any byte changed, and only with
    a VerificationError; ``verify`` (what ``pe verify`` runs) accepts the original."""
    import datetime

    from asn1crypto import algos, core, x509
    from asn1crypto import cms as acms
    from hsmsign import token
    from hsmsign.errors import VerificationError
    from hsmsign.formats import authenticode, cms

    cert = cms.read_certificate_file(str(uefi_key[1]), lazy=True)
    digest = bytes(range(32))
    when = datetime.datetime(2026, 12, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    with token.open_key(uefi_key[0], mode="development") as key:
        blob = authenticode.sign(key, cert=cert, image_digest=digest, when=when)

    # the same SignedData from asn1crypto's parts, as hsmsign wrote it until it stopped importing it
    parsed = acms.ContentInfo.load(blob)["content"]
    ours_info = parsed["signer_infos"][0]
    a_cert = x509.Certificate.load(cert.der)
    info = acms.SignerInfo({
        "version": "v1",
        "sid": acms.SignerIdentifier({"issuer_and_serial_number": acms.IssuerAndSerialNumber(
            {"issuer": a_cert.issuer, "serial_number": a_cert.serial_number})}),
        "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256", "parameters": core.Null()}),
        "signed_attrs": acms.CMSAttributes.load(b"\x31" + ours_info["signed_attrs"].dump()[1:]),
        "signature_algorithm": algos.SignedDigestAlgorithm(
            {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}),
        "signature": ours_info["signature"].native,
    })  # fmt: skip
    assert ours_info.dump() == info.dump()
    attrs = {a["type"].dotted: a["values"][0] for a in ours_info["signed_attrs"]}
    assert attrs["1.2.840.113549.1.9.5"].dump() == acms.Time({"utc_time": when}).dump()
    assert parsed["certificates"][0].chosen.dump() == a_cert.dump()
    assert authenticode.verify(blob, image_digest=digest, trusted=[cert]).image_digest == digest
    authenticode.check_signed(blob, image_digest=digest, cert=cert)

    for offset in range(len(blob)):
        for bit in (0x01, 0x80):
            changed = bytearray(blob)
            changed[offset] ^= bit
            with pytest.raises(VerificationError):
                authenticode.check_signed(bytes(changed), image_digest=digest, cert=cert)
    with pytest.raises(VerificationError, match="image's digest"):
        authenticode.check_signed(blob, image_digest=bytes(32), cert=cert)
    for cut in (blob[:-1], blob + b"\x00"):
        with pytest.raises(VerificationError, match="malformed"):
            authenticode.check_signed(cut, image_digest=digest, cert=cert)
