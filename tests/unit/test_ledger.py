"""The signing ledger: hash chain, tamper detection, locking, torn writes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hsmsign import ledger
from hsmsign.cli import main
from hsmsign.errors import ConfigError, VerificationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _record(path: Path, n: int, **extra: str) -> dict:
    digest = hashlib.sha256(f"artifact {n}".encode()).hexdigest()
    entry = ledger.record(
        artifact=f"/deploy/artifact-{n}.itb",
        sha256_hex=digest,
        key_fingerprint="ab" * 32,
        uri_redacted="pkcs11:token=acme;object=fw",
        mechanism="sha256-rsa-pkcs1v15",
        kind="fit",
        ledger=str(path),
        **extra,
    )
    assert entry is not None
    return entry


def test_no_ledger_configured_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HSMSIGN_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    got = ledger.record(
        artifact="a",
        sha256_hex="00" * 32,
        key_fingerprint="11" * 32,
        uri_redacted="pkcs11:",
        mechanism="m",
        kind="k",
    )
    assert got is None and list(tmp_path.iterdir()) == []


def test_chain_and_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("HSMSIGN_LEDGER", str(path))
    first = ledger.record(
        artifact="/d/a.itb",
        sha256_hex="AA" * 32,
        key_fingerprint="bb" * 32,
        uri_redacted="pkcs11:token=t;object=k",
        mechanism="sha256-ecdsa",
        kind="sign",
    )
    assert first is not None
    entries = [_record(path, n) for n in range(2, 5)]
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4
    assert first["seq"] == 1 and first["prev"] == ledger.GENESIS and first["sha256"] == "aa" * 32
    for n, entry in enumerate(entries, 1):
        assert entry["seq"] == n + 1
        assert entry["prev"] == hashlib.sha256(lines[n - 1]).hexdigest()
    parsed = json.loads(lines[0])
    assert set(parsed) >= {
        "time",
        "artifact",
        "sha256",
        "key_fingerprint",
        "uri",
        "mechanism",
        "kind",
        "build_host",
        "prev",
        "seq",
    }
    assert parsed["time"].endswith("Z")
    report = ledger.verify(str(path))
    assert report.ok and report.count == 4 and report.head == hashlib.sha256(lines[-1]).hexdigest()


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(ln + b"\n" for ln in lines))


@pytest.fixture
def five(tmp_path: Path) -> tuple[Path, list[bytes]]:
    path = tmp_path / "ledger.jsonl"
    for n in range(5):
        _record(path, n)
    return path, path.read_bytes().splitlines()


def test_edit_is_detected(five: tuple[Path, list[bytes]]) -> None:
    path, lines = five
    entry = json.loads(lines[2])
    entry["artifact"] = "/deploy/evil.itb"
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    _write_lines(path, lines)
    report = ledger.verify(str(path))
    assert not report.ok
    assert any(p.startswith("line 4: chain broken") for p in report.problems)


def test_hand_edit_keeping_json_valid_but_not_canonical(five: tuple[Path, list[bytes]]) -> None:
    path, lines = five
    lines[4] = lines[4].replace(b'"kind":"fit"', b'"kind": "fit"')
    _write_lines(path, lines)
    report = ledger.verify(str(path))
    assert report.problems == ["line 5: not in canonical form (edited by hand?)"]


def test_reorder_is_detected(five: tuple[Path, list[bytes]]) -> None:
    path, lines = five
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(path, lines)
    report = ledger.verify(str(path))
    assert not report.ok and any("line 2" in p for p in report.problems)


def test_deletion_in_the_middle_is_detected(five: tuple[Path, list[bytes]]) -> None:
    path, lines = five
    del lines[2]
    _write_lines(path, lines)
    report = ledger.verify(str(path))
    assert any(p.startswith("line 3: chain broken") for p in report.problems)
    assert any("seq 4, expected 3" in p for p in report.problems)


def test_truncation_at_the_end_needs_the_head(five: tuple[Path, list[bytes]]) -> None:
    path, lines = five
    head = ledger.verify(str(path)).head
    _write_lines(path, lines[:-1])
    assert ledger.verify(str(path)).ok  # the chain alone cannot see a cut-off end...
    report = ledger.verify(str(path), expect_head=head, expect_count=5)
    assert not report.ok and len(report.problems) == 2  # ...the head kept elsewhere can


def test_torn_last_line(five: tuple[Path, list[bytes]]) -> None:
    path, lines = five
    path.write_bytes(path.read_bytes() + lines[0][:30])
    report = ledger.verify(str(path))
    assert report.problems == ["line 6: incomplete last line (torn write)"] and report.count == 5
    with pytest.raises(VerificationError, match="incomplete line"):
        _record(path, 99)


def test_refuses_pin_in_uri(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ledger.record(
            artifact="a",
            sha256_hex="00" * 32,
            key_fingerprint="11" * 32,
            uri_redacted="pkcs11:token=t?pin-value=1234",
            mechanism="m",
            kind="k",
            ledger=str(tmp_path / "l"),
        )
    assert not (tmp_path / "l").exists()


def test_unwritable_ledger_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open ledger"):
        _record(tmp_path / "no-such-dir" / "l.jsonl", 1)
    with pytest.raises(ConfigError):
        ledger.verify(str(tmp_path / "missing.jsonl"))


def test_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for n in range(25):
                _record(path, t * 1000 + n)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = ledger.verify(str(path))
    assert report.ok, report.problems
    assert report.count == 200
    artifacts = {e["artifact"] for e in ledger.entries(str(path))}
    assert len(artifacts) == 200


def test_disk_full_leaves_no_torn_line(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the append fail half-way (EFBIG): the ledger is cut back, still intact."""
    path = tmp_path / "ledger.jsonl"
    for n in range(3):
        _record(path, n)
    size = path.stat().st_size
    lib = Path(ledger.__file__).resolve().parents[1]
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 40}, {size + 40}))\n"
        "from hsmsign import ledger\n"
        "from hsmsign.errors import HsmsignError\n"
        "try:\n"
        "    ledger.record(artifact='/x', sha256_hex='00'*32, key_fingerprint='11'*32,\n"
        f"                  uri_redacted='pkcs11:', mechanism='m', kind='k', ledger={str(path)!r})\n"
        "except HsmsignError as e:\n"
        "    print(type(e).__name__, e.message); sys.exit(e.exit_code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(lib)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "ConfigError cannot append to ledger" in proc.stdout
    assert path.stat().st_size == size
    assert ledger.verify(str(path)).ok


def test_cli_verify_and_show(five: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]) -> None:
    path, lines = five
    assert main(["ledger", "verify", "--ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert "5 entries, chain intact" in out and hashlib.sha256(lines[-1]).hexdigest() in out
    assert main(["ledger", "show", "--ledger", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["seq"] for e in shown] == [1, 2, 3, 4, 5]
    _write_lines(path, lines[:2] + lines[3:])
    assert main(["ledger", "verify", "--ledger", str(path), "--json"]) == 6
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["count"] == 4
    assert main(["ledger", "verify", "--ledger", str(path.parent / "none.jsonl")]) == 2


def test_cli_ledger_as_argument(
    five: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger named as the argument, as users type it; it wins over HSMSIGN_LEDGER, and a
    different --ledger beside it is refused rather than one of them silently ignored."""
    path, _ = five
    other = path.parent / "other.jsonl"
    monkeypatch.setenv("HSMSIGN_LEDGER", str(other))
    assert main(["ledger", "verify", str(path)]) == 0
    assert "5 entries, chain intact" in capsys.readouterr().out
    assert main(["ledger", "show", str(path), "--json"]) == 0
    assert [e["seq"] for e in json.loads(capsys.readouterr().out)] == [1, 2, 3, 4, 5]
    assert main(["ledger", "verify", "--ledger", str(path), str(path)]) == 0
    capsys.readouterr()
    assert main(["ledger", "verify", "--ledger", str(other), str(path)]) == 2
    err = capsys.readouterr().err
    assert "two ledgers given" in err and "hsmsign ledger verify FILE" in err
    monkeypatch.delenv("HSMSIGN_LEDGER")
    assert main(["ledger", "show"]) == 2
    assert "name it (hsmsign ledger show FILE) or set HSMSIGN_LEDGER" in capsys.readouterr().err


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(st.binary(max_size=80), st.sampled_from([b"{}", b"[]", b'{"seq":1}', b"null", b"\n"])),
        max_size=8,
    )
)
def test_verify_never_raises_on_garbage(tmp_path: Path, parts: list[bytes]) -> None:
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(b"\n".join(parts))
    report = ledger.verify(str(path))
    assert report.count <= len(parts) + 1
    assert report.ok == (report.problems == [])


# --------------------------------------------------------------------------- line endings (docs/ledger.md)


def test_crlf_converted_ledger_does_not_verify_and_says_dos2unix(five: tuple[Path, list[bytes]]) -> None:
    path, lines = five
    good = path.read_bytes()
    path.write_bytes(good.replace(b"\n", b"\r\n"))  # opened and saved on Windows
    report = ledger.verify(str(path))
    assert not report.ok and report.count == 5
    assert len(report.problems) == 1 and "CRLF" in report.problems[0] and "dos2unix" in report.problems[0]
    assert report.head == hashlib.sha256(lines[-1]).hexdigest()  # the content itself is intact
    with pytest.raises(VerificationError, match="CRLF") as refused:  # appending would break the chain
        _record(path, 6)
    assert "dos2unix" in str(refused.value.hint)
    assert path.read_bytes() == good.replace(b"\n", b"\r\n")
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))  # dos2unix
    assert ledger.verify(str(path)).ok
    _record(path, 6)
    assert ledger.verify(str(path)).count == 6


def test_one_crlf_line_and_an_edit_are_both_reported(five: tuple[Path, list[bytes]]) -> None:
    path, lines = five
    edited = lines[1].replace(b"artifact-1", b"artifact-X")
    _write_lines(path, [lines[0] + b"\r", edited, *lines[2:]])
    problems = ledger.verify(str(path)).problems
    assert "CRLF on 1 line(s)" in problems[0]
    assert any(p.startswith("line 3: chain broken") for p in problems[1:])


def test_cli_verify_of_a_crlf_ledger(
    five: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = five
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert main(["ledger", "verify", "--ledger", str(path)]) == 6
    out = capsys.readouterr().out
    assert "NOT intact (1 problem(s))" in out and f"dos2unix {path}" in out


def test_a_ledger_line_without_end_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:
        fh.write(b"x" * (ledger.MAX_LINE + 10))
    report = ledger.verify(str(path))
    assert not report.ok and "longer than" in report.problems[0]


def test_preflight_checks_without_writing(tmp_path: Path) -> None:
    missing = tmp_path / "new.jsonl"
    ledger.preflight(str(missing))  # a new ledger in a writable directory: fine, and not created
    assert not missing.exists()
    with pytest.raises(ConfigError, match="does not exist"):
        ledger.preflight(str(tmp_path / "nope" / "l.jsonl"))
    with pytest.raises(ConfigError, match="not a regular file"):
        ledger.preflight("/dev/null")


def test_entries_taken_back_when_the_outputs_do_not_land(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _record(path, 1)
    before = path.read_bytes()
    batch = ledger.Batch(str(path))
    batch.add(artifact="/a", sha256_hex="00" * 32, key_fingerprint="11" * 32, uri_redacted="pkcs11:",
              mechanism="m", kind="k")  # fmt: skip
    with pytest.raises(OSError):
        with batch.appended():
            assert path.stat().st_size > len(before)  # appended and fsync'ed under the lock...
            raise OSError(18, "rename failed")  # ...then renaming an output failed
    assert path.read_bytes() == before


def test_the_wrong_file_is_named_so_and_its_problems_are_capped(
    five: tuple[Path, list[bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A binary file (with a CR before some newline, as random data has) is not a damaged ledger:
    the report says so first, says nothing of converted line endings, and the text lists 20 of
    its problems; --json lists them all."""
    path = tmp_path / "rootfs.ext4"
    data = bytearray(os.urandom(1 << 16))
    data[1000:1002] = b"\r\n"
    path.write_bytes(bytes(data) + b"\n")
    report = ledger.verify(str(path))
    assert not report.ok and report.count == 0
    assert report.problems[0].startswith("no line is a ledger entry")
    assert not any("dos2unix" in problem for problem in report.problems)
    assert len(report.problems) > 30
    assert main(["ledger", "verify", "--ledger", str(path)]) == 6
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 20 + 1 and out[-1].startswith(f"  ... and {len(report.problems) - 20} more")
    assert main(["ledger", "verify", "--ledger", str(path), "--json"]) == 6
    assert json.loads(capsys.readouterr().out)["problems"] == report.problems
    # a ledger with one line turned to garbage is a damaged ledger, told as before
    ledger_path, lines = five
    _write_lines(ledger_path, [*lines[:2], b"\x00garbage\r", *lines[3:]])
    damaged = ledger.verify(str(ledger_path))
    assert damaged.count == 4 and damaged.problems[0].startswith("line endings changed to CRLF on 1 line")
    assert "line 3: not a JSON object" in damaged.problems
