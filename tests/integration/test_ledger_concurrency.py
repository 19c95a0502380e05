"""Many processes append to one ledger at once: no line lost, none interleaved, the chain intact."""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hsmsign import ledger

LIB = Path(ledger.__file__).resolve().parents[1]


def _writer(path: str, worker: int, count: int, start: float) -> None:
    while time.time() < start:  # all workers begin together
        time.sleep(0.001)
    for n in range(count):
        ledger.record(
            artifact=f"/deploy/w{worker:02d}/artifact-{n:03d}.bin",
            sha256_hex=f"{worker:02x}{n:062x}",
            key_fingerprint="cd" * 32,
            uri_redacted="pkcs11:token=acme;object=fw",
            mechanism="sha256-ecdsa",
            kind="detached",
            ledger=path,
        )


def test_sixteen_processes_append_concurrently(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.jsonl")
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 1.5
    procs = [ctx.Process(target=_writer, args=(path, w, 50, start)) for w in range(16)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    report = ledger.verify(path)
    assert report.ok, report.problems[:5]
    assert report.count == 16 * 50
    entries = ledger.entries(path)
    assert [e["seq"] for e in entries] == list(range(1, 801))
    per_worker = collections.Counter(e["artifact"].split("/")[2] for e in entries)
    assert per_worker == {f"w{w:02d}": 50 for w in range(16)}
    # each worker's own lines stay in its order
    for w in range(16):
        mine = [e["artifact"] for e in entries if f"/w{w:02d}/" in e["artifact"]]
        assert mine == sorted(mine)


def test_a_writer_killed_while_holding_the_lock_does_not_block_or_tear(tmp_path: Path) -> None:
    """flock is released by the kernel when its holder dies: the next writer proceeds, the chain holds."""
    path = tmp_path / "ledger.jsonl"
    ledger.record(
        artifact="/a",
        sha256_hex="00" * 32,
        key_fingerprint="11" * 32,
        uri_redacted="pkcs11:",
        mechanism="m",
        kind="k",
        ledger=str(path),
    )
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_APPEND)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(LIB)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        ctx = multiprocessing.get_context("spawn")
        waiter = ctx.Process(target=_writer, args=(str(path), 1, 1, 0.0))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()  # blocked by the lock holder
        holder.send_signal(signal.SIGKILL)
        waiter.join(timeout=30)
        assert waiter.exitcode == 0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    report = ledger.verify(str(path))
    assert report.ok and report.count == 2
    assert json.loads(path.read_bytes().splitlines()[-1])["seq"] == 2
