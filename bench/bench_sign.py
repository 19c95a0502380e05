#!/usr/bin/env python3
"""Benchmark: `hsmsign sign` on a large file against the usual alternatives.

Prints, in one run on the same file (default 1 GiB) and the same SoftHSM token:
  * `openssl dgst -sha256`                  the hashing limit (no signature at all)
  * `hsmsign sign`                          hash locally, one token operation
  * `openssl dgst -sha256 -sign` via the libp11 pkcs11 engine
  * `pkcs11-tool --sign -m SHA256-RSA-PKCS` (the token hashes the whole file)
and the command's cold start (`hsmsign --version`, and signing a 1-byte file:
process start, imports, module load, login, one signature).

Targets (issue 2): hsmsign within 1.10x of `openssl dgst -sha256` on 1 GiB; cold start
under 150 ms. Usage: bench/bench_sign.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtoken import dev_token

PIN_ATTR = "pin-value"  # the engine wants the run-time PIN of a throw-away bench token in its URI


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd[:3])}...: {done.stderr.decode()[-400:]}")
        times.append(elapsed)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-"))
    try:
        token = dev_token(work)  # hsmsign as installed: with byte-code caches
        env, hsmsign, dev = token.env, token.hsmsign, token.dev
        uri = token.uri("rootfs")
        pin = token.pin()
        data = work / "image.bin"
        print(f"writing a {args.size_mib} MiB test file ...", file=sys.stderr)
        with open(data, "wb") as fh:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                fh.write(block)
        subprocess.run(["cat", str(data)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

        results: dict[str, float] = {}
        results["openssl dgst -sha256 (hash only)"] = timed(
            ["openssl", "dgst", "-sha256", str(data)], env, args.repeat
        )
        results["hsmsign sign"] = timed(
            [*hsmsign, "sign", "--uri", uri, "-o", str(work / "a.sig"), str(data)], env, args.repeat
        )
        engine_uri = f"pkcs11:token={dev['token']};object=dev-rootfs;type=private;{PIN_ATTR}={pin}"
        engine = subprocess.run(["openssl", "engine", "pkcs11"], capture_output=True, env=env, check=False)
        if engine.returncode == 0:
            results["openssl dgst -sign (pkcs11 engine)"] = timed(
                [
                    "openssl",
                    "dgst",
                    "-sha256",
                    "-engine",
                    "pkcs11",
                    "-keyform",
                    "engine",
                    "-sign",
                    engine_uri,
                    "-out",
                    str(work / "b.sig"),
                    str(data),
                ],
                env,
                args.repeat,
            )
        tool = shutil.which("pkcs11-tool")
        if tool:
            results["pkcs11-tool --sign (token hashes)"] = timed(
                [
                    tool,
                    "--module",
                    dev["module"],
                    "--token-label",
                    dev["token"],
                    "--login",
                    "--pin",
                    pin,
                    "--sign",
                    "-m",
                    "SHA256-RSA-PKCS",
                    "--label",
                    "dev-rootfs",
                    "-i",
                    str(data),
                    "-o",
                    str(work / "c.sig"),
                ],
                env,
                max(1, args.repeat - 2),
            )
        small = work / "one-byte"
        small.write_bytes(b"x")
        cold_version = timed([*hsmsign, "--version"], env, 5)
        cold_sign = timed([*hsmsign, "sign", "--uri", uri, "-o", str(work / "d.sig"), str(small)], env, 5)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = results["openssl dgst -sha256 (hash only)"]
    ours = results["hsmsign sign"]
    print(f"\nsigning a {args.size_mib} MiB file, median of {args.repeat} (RSA-2048 on SoftHSM)")
    print(f"{'tool':<40} {'seconds':>8} {'MiB/s':>8} {'hsmsign speed-up':>17}")
    for name, secs in results.items():
        print(f"{name:<40} {secs:8.3f} {args.size_mib / secs:8.0f} {secs / ours:16.2f}x")
    print(f"\nhsmsign sign / openssl dgst -sha256 = {ours / base:.3f}  (target <= 1.10)")
    version_ms, sign_ms = cold_version * 1000, cold_sign * 1000
    print(f"cold start: hsmsign --version {version_ms:.0f} ms; sign a 1-byte file {sign_ms:.0f} ms")
    print("(target < 150 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
