"""Every benchmark under bench/ runs to its end, on a tiny input.

Benchmarks are not run by the suite for their numbers, so nothing else notices when one stops
running: bench_fit failed for weeks after the FIT tests renamed their key, and bench_audit
after a merge dropped a line. Here each one runs with the smallest sizes it takes and must
exit 0 and print its result line. The numbers at these sizes mean nothing and are not checked.

A bench that stops on a missing tool ("... missing: apt-get install PACKAGE") is skipped, or
fails under HSMSIGN_REQUIRE_TOOLS=1 as every other test does. Not here: bench_layer_tasks
(it needs BitBake: scripts/run-layer-tests) and bench_imx (SPSDK lives in scripts/test-imx's
environment).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.test_fit import uboot_tools_dir

ROOT = Path(__file__).resolve().parents[2]

# script, arguments for a run of a few seconds, what its report must say
BENCHES: list[tuple[str, list[str], str]] = [
    # the first column is hsmsign's (found or not), the second detect-secrets' (if installed)
    ("bench_audit.py", ["--text-mb", "1", "--binary-mb", "2", "--repeat", "1"], r"Y [Y-]  ci/key76\.pem"),
    ("bench_encrypt.py", ["--size-mib", "4", "--repeat", "1"], r"hsmsign encrypt / openssl enc = [\d.]+"),
    ("bench_fit.py", ["--runs", "1", "--kernel-mib", "1"], r"hsmsign fit sign +[\d.]+ ms +ratio vs mkimage"),
    ("bench_hash.py", ["--size-mib", "4", "--repeat", "1"], r"readinto 1 MiB +[\d.]+ s"),
    ("bench_modsign.py", ["--count", "20"], r"signed modules byte-identical between hsmsign and sign-file"),
    ("bench_pe.py", ["--size-mib", "2", "--repeat", "1"], r"Authenticode digests identical: [0-9a-f]{64}"),
    # 16 MiB: the smallest the casync pair runs at
    ("bench_rauc.py", ["--size-mib", "16", "--repeat", "1"], r"hsmsign rauc convert / rauc convert = [\d.]+"),
    (
        "bench_remote.py",
        ["--keys", "rsa:2048", "--signers", "1", "--seconds", "0.5"],
        r"p11kit/local at 1 signers = [\d.]+ .*, 0 signing errors, 0 open errors -> (OK|MISSED)",
    ),
    ("bench_sign.py", ["--size-mib", "4", "--repeat", "1"], r"cold start: hsmsign --version \d+ ms"),
]


def test_every_bench_is_listed() -> None:
    on_disk = {p.name for p in (ROOT / "bench").glob("bench_*.py")}
    listed = {name for name, _, _ in BENCHES} | {"bench_layer_tasks.py", "bench_imx.py"}
    assert on_disk == listed, "add the new bench to BENCHES (or say above why it is left out)"


@pytest.mark.parametrize(("script", "args", "report"), BENCHES, ids=[b[0] for b in BENCHES])
def test_bench_runs_to_its_report(script: str, args: list[str], report: str) -> None:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    tools = uboot_tools_dir()
    if tools is not None:  # mkimage for bench_fit
        env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    missing = re.search(r"(\S+) missing: (apt-get install \S+|pip install .+)", done.stdout + done.stderr)
    if done.returncode != 0 and missing:
        require(False, missing.group(1), missing.group(2), env="HSMSIGN_REQUIRE_TOOLS")
    # bench_remote exits 1 when a run misses its ratio target: at half a second that is noise
    codes = (0, 1) if script == "bench_remote.py" else (0,)
    assert done.returncode in codes, f"{script} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    assert re.search(report, done.stdout), f"{script} printed no '{report}':\n{done.stdout[-1500:]}"
    if script == "bench_audit.py":  # and hsmsign audit finds every secret the bench planted
        assert not re.search(r"(?m)^  - [Y-]  ", done.stdout), done.stdout[-3000:]
    assert "Traceback" not in done.stderr
