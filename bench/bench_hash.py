#!/usr/bin/env python3
"""Benchmark: how `hsmsign sign` reads a large file (page cache warm), and what it costs in memory.

Compares, on the same file, the median of --repeat runs, each in a fresh process (as a
command runs; the ways interleaved), of the hashing alone:
  * mmap in 64 MiB views (the read path before issue 17: a truncated file killed it with SIGBUS,
    and every mapped page counted in the RSS)
  * `hsmsign.signing.hash_file` (`stream_input`, 64 KiB reads into one buffer, size and mtime
    checked: the read path now)
  * plain readinto with 64 KiB, 1 MiB and 16 MiB buffers, for reference (the size that stays
    in the CPU's cache between the read and the hash is the fastest)
and the peak RSS of each.

    python3 bench/bench_hash.py [--size-mib 1024] [--repeat 5]

The test suite runs it on a tiny input (tests/integration/test_benches.py), to keep it working.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "meta-hsmsign" / "lib"))


def via_mmap(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        for offset in range(0, len(m), 64 << 20):
            h.update(view[offset : offset + (64 << 20)])
        view.release()
    return h.digest()


def via_stream(path: str) -> bytes:
    from hsmsign import signing

    return signing.hash_file(path)


def via_read(path: str, size: int) -> bytes:
    h = hashlib.sha256()
    buf = bytearray(size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.digest()


def run_child(argv: list[str]) -> tuple[float, float]:
    """(the child's hashing time, its own high-water RSS in MiB: VmHWM, polled; ru_maxrss would
    carry the parent's into a vfork)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return float(out), peak / 1024


WAYS = {
    "mmap 64 MiB views (before)": via_mmap,
    "hash_file, 64 KiB (now)": via_stream,
    "readinto 64 KiB": lambda p: via_read(p, 64 << 10),
    "readinto 1 MiB": lambda p: via_read(p, 1 << 20),
    "readinto 16 MiB": lambda p: via_read(p, 16 << 20),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = WAYS[args.child]
        if args.child.startswith("hash_file"):
            from hsmsign import signing  # noqa: F401 - imported before the clock starts
        start = time.perf_counter()
        fn(args.path)
        print(time.perf_counter() - start)
        return 0
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "image")
        with open(path, "wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(1 << 20))
        via_read(path, 1 << 20)  # warm the page cache
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        peaks: dict[str, float] = dict.fromkeys(WAYS, 0.0)
        for _ in range(args.repeat):
            for name in WAYS:
                secs, peak = run_child([sys.executable, __file__, "--child", name, "--path", path])
                times[name].append(secs)
                peaks[name] = max(peaks[name], peak)
        print(f"{args.size_mib} MiB, median of {args.repeat} fresh processes, load {os.getloadavg()[0]:.1f}")
        for name in WAYS:
            med = statistics.median(times[name])
            rate = args.size_mib / med
            print(f"  {name:<28} {med:6.2f} s  {rate:7.0f} MiB/s  peak RSS {peaks[name]:6.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
