"""Parallel BitBake tasks on one developer machine: many ``hsmsign sign`` processes on one
SoftHSM token at once, no server between them.

SoftHSM rewrites its token file at every ``C_Login``, so a process opening the token while
another logs in can read it half-written (``CKR_TOKEN_NOT_RECOGNIZED``,
``CKR_GENERAL_ERROR``, ``CKR_USER_PIN_NOT_INITIALIZED``). Each signer must still succeed,
each signature must verify with the token's public key, and the shared ledger must hold
one intact line per artifact.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hsmsign import ledger

from tests.conftest import SoftHsm

SIGNERS = 16
ROUNDS = 3


def test_sixteen_signers_at_once_on_one_softhsm_token(softhsm: SoftHsm, ec256: str, tmp_path: Path) -> None:
    pub = tmp_path / "fw.pub.pem"
    done = softhsm.run_cli("pubkey", "--mode", "development", "--uri", ec256, "--output", str(pub))
    assert done.returncode == 0, done.stderr
    led = tmp_path / "ledger.jsonl"
    env = dict(softhsm.env)
    signed = []
    for rnd in range(ROUNDS):
        procs = []
        for i in range(SIGNERS):
            data = tmp_path / f"r{rnd}-part{i}.img"
            data.write_bytes(os.urandom(8192) + bytes([rnd, i]))
            procs.append((data, subprocess.Popen(
                [sys.executable, "-m", "hsmsign", "sign", "--mode", "development", "--uri", ec256,
                 "--ledger", str(led), "--output", f"{data}.sig", str(data)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)))
        for data, proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{data.name}: {err}"
            signed.append(data)
    for data in signed:
        ok = subprocess.run(
            ["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", f"{data}.sig", str(data)],
            capture_output=True, text=True, check=False,
        )
        assert ok.returncode == 0 and "Verified OK" in ok.stdout, (data.name, ok.stdout + ok.stderr)
    report = ledger.verify(str(led))
    assert report.ok, report.problems[:5]
    assert report.count == SIGNERS * ROUNDS
    assert sorted(e["artifact"] for e in ledger.entries(str(led))) == sorted(str(d) for d in signed)
