"""The README's first command, ./scripts/demo, run as a newcomer would: every check as expected."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_readme_demo_command_runs_clean() -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HSM_PKCS11", "HSMSIGN_MODE", "SOFTHSM2"))
    }
    env["HSMSIGN_SKIP_APT"] = "1"  # the test run has installed everything already
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo")], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    assert "all as expected" in out
    for verifier in (
        "openssl dgst -verify",
        "veritysetup verify",
        "openssl cms -verify",
        "swupdate -c -k",
        "rauc info --keyring",
        "hsmsign rauc verify",
        "U-Boot fit_check_sign",
        "sbverify --cert",
        "osslsigncode verify",
        "OVMF with Secure Boot (QEMU)",
        "hsmsign audit",
        "hsmsign ledger verify",
    ):
        assert verifier in out, verifier
    table = out.split("=" * 100)[-1]
    assert "skipped" not in table
    # every family the README's table lists that runs without extra downloads, each checked
    # where it must be accepted and where one changed byte must be refused
    rows = [line.split("  ") for line in table.splitlines()]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    for want in (
        ["systemd-boot (UEFI)", "OVMF with Secure Boot (QEMU)", "accepted", "yes"],
        ["systemd-boot (UEFI), one byte changed", "OVMF with Secure Boot (QEMU)", "refused", "yes"],
        ["kernel module (.ko)", "openssl cms -verify", "accepted", "yes"],
        ["kernel module (.ko), one byte changed", "openssl cms -verify", "refused", "yes"],
    ):
        assert want in rows, want
    # the demo reads well at 100 columns and never prints the development PIN
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "pin-value" not in out
