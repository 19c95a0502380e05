"""Names inside artifacts cannot forge output lines: newlines, carriage returns, escape sequences and
bidi controls in FIT configurations, cpio members and ledger entries reach the terminal escaped.

The FIT is signed in the SoftHSM token with its hostile names, so ``fit verify`` goes all the way to
its OK line (and, tampered, to its error line); the .swu variants are in test_swupdate_malformed.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hsmsign.cli import main
from hsmsign.formats import fit
from hsmsign.formats.fdt import Fdt, Node

from tests.conftest import SoftHsm
from tests.unit.test_fit_limits import build_fit

FORGED = "hsmsign: OK"
HOSTILE = [
    f"conf-1\n{FORGED}",
    f"conf-2\r{FORGED}",
    "conf-3\x1b[2K\x1b[1A\x1b[32mOK",
    "conf-4\x9b2K",  # C1 CSI: an escape sequence without ESC
    "conf-5" + "\u202e".encode().decode("latin-1") + "KO",  # FDT names are bytes: U+202E as its UTF-8
    "conf-6\r\n\r\n",
]


def lines_are_safe(text: str) -> list[str]:
    lines = text.splitlines()
    for line in lines:
        assert line.isprintable(), repr(line)
        assert not line.startswith(FORGED) and not line.startswith("OK"), repr(line)
    return lines


def test_fit_sign_and_verify_print_hostile_names_escaped(
    softhsm: SoftHsm,
    ec256: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hsmsign import token

    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm.conf))
    monkeypatch.delenv("HSMSIGN_FIT_CHECK_SIGN", raising=False)
    unsigned = tmp_path / "hostile.itb"
    unsigned.write_bytes(build_fit([("kernel", b"K" * 256)], [(n, {"kernel": ["kernel"]}) for n in HOSTILE]))
    signed = tmp_path / "signed.itb"
    assert (
        main(["fit", "sign", "--mode", "development", "--uri", ec256, "-o", str(signed), str(unsigned)]) == 0
    )
    out, err = capsys.readouterr()
    lines = lines_are_safe(out + err)
    assert sum("/configurations/conf-" in line for line in lines) == len(HOSTILE)
    with token.open_key(ec256, mode="development") as key:
        empty = Fdt(Node(""), bytearray()).to_bytes()
        dtb = tmp_path / "u-boot.dtb"
        dtb.write_bytes(fit.add_key(empty, key.public_key(), "k", "sha256", required="conf")[0])

    assert main(["fit", "verify", "--dtb", str(dtb), str(signed)]) == 0
    out, err = capsys.readouterr()
    lines = lines_are_safe(out + err)
    assert len(lines) == 1 + len(HOSTILE)  # the OK line and one line per configuration checked
    assert lines[0].count(": OK (") == 1
    assert "conf-1\\nhsmsign: OK" in lines[0] and "\\x1b[2K" in lines[0] and "\\x9b2K" in lines[0]
    # one changed byte in the kernel: the error line names the configuration, escaped
    data = bytearray(signed.read_bytes())
    pos = bytes(data).find(b"K" * 256)
    data[pos + 10] ^= 1
    signed.write_bytes(bytes(data))
    assert main(["fit", "verify", "--dtb", str(dtb), str(signed)]) == 6
    out, err = capsys.readouterr()
    lines = lines_are_safe(out + err)
    assert out == "" and len(lines) == 1 and lines[0].startswith("hsmsign: error: ")


def test_ledger_show_and_verify_keep_one_line_per_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hsmsign import ledger

    path = tmp_path / "ledger.jsonl"
    for artifact in (
        f"/deploy/fitImage\n1\t2026\tfit\tdeadbeef\t{FORGED}",
        "/deploy/\x1b[2Kx.swu",
        "/a\u202eb",
    ):
        ledger.record(
            artifact=artifact,
            sha256_hex="00" * 32,
            key_fingerprint="11" * 32,
            uri_redacted="pkcs11:token=t;object=k",
            mechanism="ecdsa-sha256",
            kind="fit",
            ledger=str(path),
        )
    assert main(["ledger", "show", "--ledger", str(path)]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.isprintable() or "\t" in line for line in lines)
    assert all(cell.isprintable() for line in lines for cell in line.split("\t"))
    assert "\\n1\\t2026" in lines[0] and "\\u202e" in lines[2]
    # a hand-edited entry: the problem line quotes nothing raw
    text = path.read_text()
    path.write_text(text.replace("ecdsa-sha256", "ecdsa-sha256\\u001b[2K", 1))
    assert main(["ledger", "verify", "--ledger", str(path)]) == 6
    out, err = capsys.readouterr()
    assert all(line.isprintable() for line in (out + err).splitlines())
