#!/usr/bin/env python3
"""Benchmark: how `hsmsign sign` reads a large file (page cache warm), and what it costs in memory.

Compares, on the same file, median of --repeat runs:
  * mmap in 64 MiB views (the read path before issue 17: a truncated file killed it with SIGBUS,
    and every mapped page counted in the RSS)
  * `hsmsign.atomic.stream_input` (one 4 MiB buffer, size and mtime checked: the read path now)
  * plain readinto with 1 MiB and 16 MiB buffers, for reference
and the peak RSS of a child process hashing the file each way.

    python3 bench/bench_hash.py [--size-mib 1024] [--repeat 5]

Not run by the test suite.
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


def peak_rss_mib(argv: list[str]) -> float:
    """The command's own high-water RSS (VmHWM, polled): ru_maxrss would carry the parent's into a vfork."""
    proc = subprocess.Popen(argv)
    peak = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    return peak / 1024


WAYS = {
    "mmap 64 MiB views (before)": via_mmap,
    "stream_input 4 MiB (now)": via_stream,
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
        WAYS[args.child](args.path)
        return 0
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "image")
        with open(path, "wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(1 << 20))
        via_read(path, 1 << 20)  # warm the page cache
        print(f"{args.size_mib} MiB, median of {args.repeat}, load {os.getloadavg()[0]:.1f}")
        for name, fn in WAYS.items():
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn(path)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            peak = peak_rss_mib([sys.executable, __file__, "--child", name, "--path", path])
            print(f"  {name:<28} {med:6.2f} s  {args.size_mib / med:7.0f} MiB/s  peak RSS {peak:6.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
