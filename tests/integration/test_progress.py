"""Long work shows a progress line on a terminal, and nothing elsewhere.

The meter (``hsmsign.commands.common.Progress``) writes to standard error when it is a
terminal and the work is at least 100 MiB. Each command here runs in a subprocess whose
standard error is a pseudo-terminal; the files are sparse, so 120 MiB cost no disk.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SoftHsm
from tests.integration.test_swupdate import write_description

DEV = ("--mode", "development")
METER = re.compile(r"\r([^\r\n]+): +([0-9.]+)% of (\d+) MiB, +\d+ MiB/s")


def _on_a_terminal(softhsm: SoftHsm, *argv: str) -> tuple[int, str, str]:
    """``hsmsign ARGV`` with standard error on a pseudo-terminal: (exit code, stdout, what it showed)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hsmsign", *argv],
            stdout=subprocess.PIPE,
            stderr=slave,
            env=softhsm.env,
        )
        os.close(slave)
        slave = -1
        seen = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return proc.returncode, out.decode(), seen.decode(errors="replace")


def _last_meter(terminal: str) -> tuple[str, float, int]:
    found = METER.findall(terminal)
    assert found, terminal
    label, pct, mib = found[-1]
    return label, float(pct), int(mib)


@pytest.fixture
def big_files(tmp_path: Path) -> list[Path]:
    files = []
    for name in ("rootfs.ext4", "data.img"):
        path = tmp_path / name
        with open(path, "wb") as fh:
            fh.truncate(60 << 20)
            fh.seek(1 << 20)
            fh.write(os.urandom(4096))
        files.append(path)
    return files


@pytest.fixture
def cert(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> Path:
    path = tmp_path / "signer.pem"
    done = softhsm.run_cli("cert", *DEV, "--uri", rsa2048, "--subject", "CN=progress", "--output", str(path))
    assert done.returncode == 0, done.stderr
    return path


def test_manifest_and_its_check_show_progress_over_all_files(
    softhsm: SoftHsm, rsa2048: str, cert: Path, big_files: list[Path], tmp_path: Path
) -> None:
    manifest = tmp_path / "MANIFEST"
    rc, _, terminal = _on_a_terminal(
        softhsm, "manifest", *DEV, "--uri", rsa2048, "--cert", str(cert), "--output", str(manifest),
        *map(str, big_files),
    )  # fmt: skip
    assert rc == 0, terminal
    assert _last_meter(terminal) == ("hashing 2 files", 100.0, 120)
    assert terminal.count("\n") >= 1 and "Traceback" not in terminal

    rc, out, terminal = _on_a_terminal(softhsm, "manifest", "verify", "--cert", str(cert), str(manifest))
    assert rc == 0 and "2 files match" in out, terminal
    assert _last_meter(terminal) == ("checking 2 files", 100.0, 120)

    # not a terminal: no meter
    done = softhsm.run_cli("manifest", "verify", "--cert", str(cert), str(manifest))
    assert done.returncode == 0 and "%" not in done.stderr and "\r" not in done.stderr


def test_swupdate_bundle_shows_progress_while_it_checks_the_images(
    softhsm: SoftHsm, rsa2048: str, cert: Path, big_files: list[Path], tmp_path: Path
) -> None:
    desc = write_description(tmp_path, big_files)
    swu = tmp_path / "update.swu"
    rc, _, terminal = _on_a_terminal(
        softhsm, "swupdate", "bundle", *DEV, "--uri", rsa2048, "--cert", str(cert), "--sw-description",
        str(desc), "--output", str(swu), *map(str, big_files),
    )  # fmt: skip
    assert rc == 0, terminal
    assert _last_meter(terminal) == ("checking the sha256 of 2 images", 100.0, 120)
    assert swu.stat().st_size > 120 << 20


def test_sign_shows_progress_while_it_hashes(
    softhsm: SoftHsm, rsa2048: str, big_files: list[Path], tmp_path: Path
) -> None:
    with open(big_files[0], "ab") as fh:
        fh.truncate(120 << 20)
    rc, _, terminal = _on_a_terminal(
        softhsm, "sign", *DEV, "--uri", rsa2048, "--output", str(tmp_path / "r.sig"), str(big_files[0])
    )
    assert rc == 0, terminal
    assert _last_meter(terminal) == ("hashing rootfs.ext4", 100.0, 120)


def test_small_work_shows_no_meter(softhsm: SoftHsm, rsa2048: str, cert: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(1 << 20))
    rc, _, terminal = _on_a_terminal(
        softhsm, "manifest", *DEV, "--uri", rsa2048, "--cert", str(cert), "--output", str(tmp_path / "M"),
        str(small),
    )  # fmt: skip
    assert rc == 0, terminal
    assert not METER.search(terminal), terminal
