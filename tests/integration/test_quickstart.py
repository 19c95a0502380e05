"""docs/quickstart.md, run as a newcomer pastes it: every shell block, in order, in a fresh HOME.

Only what cannot run here is left out: the install lines (``apt-get``, ``pip``, the venv;
the test run has installed all of it) and ``kas build`` (a full image build needs the
internet). The clean-up's removal of the development token waits until the test has
looked for its PIN in the output. Everything else runs as written, with its own
development token made by ``hsmsign dev-init`` in that HOME, and must end with each
checker's own words of success.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require, tool

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "quickstart.md"
SKIPPED = re.compile(
    r"^\s*(sudo |apt-get |pip install|python3 -m venv|\. \.venv/bin/activate|cd meta-hsmsign\b|kas build )"
)
TOKEN_REMOVAL = "rm -rf ~/.local/share/hsmsign/dev-token"


def _script() -> str:
    blocks = re.findall(r"^```sh\n(.*?)^```", PAGE.read_text(), re.S | re.M)
    assert len(blocks) >= 10, "the quick start lost its shell blocks?"
    assert TOKEN_REMOVAL in blocks[-1], "the clean-up no longer removes the development token"
    kept: list[str] = []
    for block in blocks:
        lines = block.splitlines()
        # a command continued over lines goes or stays whole
        i = 0
        while i < len(lines):
            j = i
            while lines[j].endswith("\\"):
                j += 1
            if not SKIPPED.match(lines[i]) and not lines[i].startswith(TOKEN_REMOVAL):
                kept.extend(lines[i : j + 1])
            i = j + 1
    return "set -euo pipefail\n" + "\n".join(kept) + "\n"


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    for name, package in (("mkimage", "u-boot-tools"), ("dtc", "device-tree-compiler"),
                          ("veritysetup", "cryptsetup-bin"), ("swupdate", "swupdate"),
                          ("sbverify", "sbsigntool"), ("gcc", "gcc"), ("modinfo", "kmod"),
                          ("softhsm2-util", "softhsm2")):  # fmt: skip
        tool(name, package)
    efi = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
    require(efi.exists(), "systemd-boot", "apt-get install systemd-boot-efi", env="HSMSIGN_REQUIRE_TOOLS")
    cache = Path(os.environ.get("HSMSIGN_CACHE") or Path.home() / ".cache" / "hsmsign")
    fit_check_sign = cache / "uboot-tools" / "current" / "fit_check_sign"
    require(fit_check_sign.exists(), "fit_check_sign", "./scripts/install-deps", "HSMSIGN_REQUIRE_TOOLS")

    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    (home / ".cache" / "hsmsign").symlink_to(cache)  # the U-Boot tools install-deps built
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "hsmsign"  # hsmsign as pip installs it, on this interpreter
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hsmsign "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HSM_", "HSMSIGN_", "SOFTHSM2"))}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", LC_ALL="C.UTF-8")
    script = tmp_path / "quickstart.sh"
    script.write_text(_script())
    done = subprocess.run(
        ["bash", str(script)], cwd=home, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-4000:]
    for words in (
        "refused, as it should be",  # step 2: production mode refuses the development token
        "Verified OK",  # 3: openssl dgst
        "Signature check OK",  # 4: U-Boot's fit_check_sign
        "swupdate accepts it",  # 6
        "Signature verification OK",  # 8: sbverify
        "quickstart modules (dev)",  # 9: modinfo's signer
        "audit exit code 4",  # 10: the planted key is found
    ):
        assert words in said, (words, said[-4000:])
    assert "Traceback" not in said
    # the clean-up removed the work folder; the token's PIN was never printed
    assert not (home / "hsmsign-quickstart").exists()
    pin = (home / ".local" / "share" / "hsmsign" / "dev-token" / "user-pin").read_text().strip()
    assert len(pin) >= 8 and pin not in said
    shutil.rmtree(home / ".local")
