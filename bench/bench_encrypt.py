#!/usr/bin/env python3
"""Benchmark: `hsmsign encrypt` (AES-256-CBC through the token) against the usual alternatives.

Prints, for one file (default 1 GiB) and one SoftHSM development token, wall time,
throughput and the peak RSS of each process:
  * `hsmsign encrypt`                   the key stays in the token; C_EncryptUpdate in 1 MiB chunks
  * `openssl enc -aes-256-cbc -K ...`   the usual way: the key in clear on the build host
  * `pkcs11-tool --encrypt -m AES-CBC-PAD` (OpenSC), when this OpenSC can
Each output is checked to be the same ciphertext length; hsmsign's peak RSS must stay
bounded (not grow with the file). Usage: bench/bench_encrypt.py [--size-mib 1024] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtoken import dev_token


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(seconds, peak RSS in KiB, exit code) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and proc.stderr is not None:
        sys.stderr.write(proc.stderr.read().decode()[-400:])
    return elapsed, usage.ru_maxrss, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-enc-"))
    rows: list[tuple[str, float, int]] = []
    try:
        token = dev_token(work)
        env, hsmsign, dev = token.env, token.hsmsign, token.dev
        uri = token.uri("encrypt")
        data = work / "image.bin"
        print(f"writing a {args.size_mib} MiB test file ...", file=sys.stderr)
        with open(data, "wb") as fh:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                fh.write(block)
        subprocess.run(["cat", str(data)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        expected = (args.size_mib << 20) + 16
        iv = os.urandom(16).hex()

        def best(name: str, cmd: list[str], out: Path) -> None:
            runs = []
            for _ in range(args.repeat):
                secs, rss, rc = run_measured(cmd, env)
                if rc != 0:
                    print(f"{name}: failed (exit {rc}); left out", file=sys.stderr)
                    return
                if out.stat().st_size != expected:
                    print(
                        f"{name}: wrote {out.stat().st_size} bytes, expected {expected}; left out",
                        file=sys.stderr,
                    )
                    return
                runs.append((secs, rss))
                out.unlink()
            secs, rss = min(runs)
            rows.append((name, secs, rss))

        best(
            "hsmsign encrypt (key in token)",
            [*hsmsign, "encrypt", "--uri", uri, "--iv", iv, "--in", str(data), "--out", str(work / "a.enc")],
            work / "a.enc",
        )
        throwaway = os.urandom(32).hex()  # the alternative needs the key in clear: a random one, never stored
        best(
            "openssl enc -aes-256-cbc (key in clear)",
            [
                "openssl",
                "enc",
                "-aes-256-cbc",
                "-K",
                throwaway,
                "-iv",
                iv,
                "-in",
                str(data),
                "-out",
                str(work / "b.enc"),
            ],
            work / "b.enc",
        )
        tool = shutil.which("pkcs11-tool")
        if tool:
            pin = token.pin()
            best(
                "pkcs11-tool --encrypt AES-CBC-PAD",
                [
                    tool,
                    "--module",
                    dev["module"],
                    "--token-label",
                    dev["token"],
                    "--login",
                    "--pin",
                    pin,
                    "--encrypt",
                    "-m",
                    "AES-CBC-PAD",
                    "--iv",
                    iv,
                    "--label",
                    dev["keys"]["encrypt"]["label"],
                    "-i",
                    str(data),
                    "-o",
                    str(work / "c.enc"),
                ],
                work / "c.enc",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if not rows:
        print("no result")
        return 1
    ours = rows[0][1]
    print(f"\nAES-256-CBC of a {args.size_mib} MiB file (best of {args.repeat}; SoftHSM token)")
    print(f"{'tool':<42} {'seconds':>8} {'MiB/s':>7} {'peak RSS MiB':>13} {'time / hsmsign':>15}")
    for name, secs, rss in rows:
        print(f"{name:<42} {secs:8.2f} {args.size_mib / secs:7.0f} {rss / 1024:13.1f} {secs / ours:14.2f}x")
    ossl = [r for r in rows if r[0].startswith("openssl")]
    if ossl:
        print(
            f"\nhsmsign encrypt / openssl enc = {ours / ossl[0][1]:.2f} (time; the key never left the token)"
        )
    print(
        f"hsmsign peak RSS {rows[0][2] / 1024:.0f} MiB for a {args.size_mib} MiB image (1 MiB chunks)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
