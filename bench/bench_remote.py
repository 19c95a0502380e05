#!/usr/bin/env python3
"""Signatures per second: a local SoftHSM token versus the same token through p11-kit.

    python bench/bench_remote.py                    # RSA-2048 and P-256, 1/4/16 signers, 3 s each
    python bench/bench_remote.py --keys rsa:2048 --seconds 5 --signers 1 4 16

Sets up its own SoftHSM token in a temp dir (private SOFTHSM2_CONF, keys generated inside
the token), exports it with ``p11-kit server`` on a Unix socket, then for each key type,
each back end (``local``: libsofthsm2.so loaded by the signer; ``p11kit``:
p11-kit-client.so -> socket -> p11-kit server -> libsofthsm2.so) and each number of
concurrent signer processes: every signer opens the key once (one login per process, as
the library does), waits at a barrier, then signs digests for the given time.

Prints signatures/s, the p11kit/local ratio (target: >= 0.7 at 16 signers), the mean
latency per signature and the latency p11-kit adds, and every error (signing errors and
failures to open the token, which a BitBake task would see as a failed task).

Not part of the test suite. Numbers depend on the machine's other load: run it twice.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# --lib DIR benchmarks another copy of the library (e.g. a patched token.py); spawned workers
# find it through the environment
LIB = Path(os.environ.get("HSMSIGN_BENCH_LIB") or ROOT / "meta-hsmsign" / "lib")
sys.path.insert(0, str(LIB))

TOKEN = "bench-remote"  # noqa: S105 - a token label
USER_PIN = "bench-user-pin-1234"  # a throwaway SoftHSM token that lives for one run
SO_PIN = "bench-so-pin-5678"
OPEN_ATTEMPTS = 5
TARGET_RATIO = 0.7


def _find(patterns: list[str]) -> str | None:
    for pattern in patterns:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def worker(uri: str, seconds: float, barrier: Any, results: Any) -> None:
    """One signer process: open once, sign until the time is up."""
    from hsmsign import token

    open_errors: list[str] = []
    key_cm = None
    key = None
    for _ in range(OPEN_ATTEMPTS):
        try:
            key_cm = token.open_key(uri, mode="development")
            key = key_cm.__enter__()
            break
        except Exception as exc:  # noqa: BLE001 - counted and reported
            open_errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
            time.sleep(0.1)
    try:
        barrier.wait(timeout=120)
    except Exception:  # noqa: BLE001
        results.put({"count": 0, "errors": [], "open_errors": open_errors + ["barrier broken"],
                     "latencies": []})
        return
    count = 0
    errors: list[str] = []
    latencies: list[float] = []
    if key is not None:
        deadline = time.perf_counter() + seconds
        i = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            digest = hashlib.sha256(i.to_bytes(8, "big")).digest()
            i += 1
            try:
                key.sign_digest(digest, "sha256")
                count += 1
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
    results.put({"count": count, "errors": errors, "open_errors": open_errors, "latencies": latencies})


def run_round(ctx: Any, uri: str, signers: int, seconds: float) -> dict[str, Any]:
    barrier = ctx.Barrier(signers + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(uri, seconds, barrier, results)) for _ in range(signers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=180)
    t0 = time.perf_counter()
    got = [results.get(timeout=seconds + 180) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(timeout=30)
    count = sum(r["count"] for r in got)
    lat = [x for r in got for x in r["latencies"]]
    return {
        "rate": count / max(elapsed, seconds),
        "count": count,
        "errors": [e for r in got for e in r["errors"]],
        "open_errors": [e for r in got for e in r["open_errors"]],
        "lat_ms": statistics.mean(lat) * 1000 if lat else float("nan"),
        "p95_ms": (sorted(lat)[int(len(lat) * 0.95)] * 1000) if lat else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", nargs="+", default=["rsa:2048", "ec:secp256r1"])
    ap.add_argument("--signers", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--lib", help="library tree to benchmark (default: meta-hsmsign/lib)")
    args = ap.parse_args()
    global LIB
    if args.lib:
        LIB = Path(args.lib).resolve()
        os.environ["HSMSIGN_BENCH_LIB"] = str(LIB)
        sys.path.insert(0, str(LIB))

    softhsm = _find(["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/*/softhsm/libsofthsm2.so"])
    client = _find(["/usr/lib/*/pkcs11/p11-kit-client.so", "/usr/lib*/pkcs11/p11-kit-client.so"])
    if not (softhsm and client and shutil.which("p11-kit") and shutil.which("softhsm2-util")):
        print("needs softhsm2, p11-kit and p11-kit-modules (scripts/deps/remote.apt)", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="hsmb-"))
    server: subprocess.Popen[str] | None = None
    try:
        (base / "tokens").mkdir()
        conf = base / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n"
                        "log.level = ERROR\n")
        pin_file = base / "pin"
        pin_file.write_text(USER_PIN + "\n")
        pin_file.chmod(0o600)
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", USER_PIN,
                        "--so-pin", SO_PIN], check=True, capture_output=True)
        env = {**os.environ, "PYTHONPATH": str(LIB)}
        for spec in args.keys:
            label = spec.replace(":", "-")
            uri = f"pkcs11:token={TOKEN};object={label}?module-path={softhsm}&pin-source=file:{pin_file}"
            subprocess.run([sys.executable, "-m", "hsmsign", "keygen", "--mode", "development", "--uri", uri,
                            "--type", spec], check=True, capture_output=True, env=env)

        sock = base / "p11.sock"
        server = subprocess.Popen(
            ["p11-kit", "server", "-f", "--provider", softhsm, "-n", str(sock), f"pkcs11:token={TOKEN}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert server.stdout is not None
        server.stdout.readline()
        while not sock.is_socket():
            time.sleep(0.02)
        os.environ["P11_KIT_SERVER_ADDRESS"] = f"unix:path={sock}"

        ctx = mp.get_context("spawn")
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
              f"{args.seconds:g} s per round; library {LIB}")
        verdicts = []
        for spec in args.keys:
            label = spec.replace(":", "-")
            key = f"pkcs11:token={TOKEN};object={label}"
            uris = {
                "local": f"{key}?module-path={softhsm}&pin-source=file:{pin_file}",
                "p11kit": f"{key}?module-path={client}&pin-source=file:{pin_file}",
            }
            print(f"\n{spec}")
            print(f"{'signers':>7} {'local/s':>9} {'p11kit/s':>9} {'ratio':>6} {'local ms':>9} "
                  f"{'p11kit ms':>9} {'added ms':>8} {'p95 ms':>7} {'errors':>6} {'open err':>8}")
            for n in args.signers:
                res = {name: run_round(ctx, uri, n, args.seconds) for name, uri in uris.items()}
                loc, rem = res["local"], res["p11kit"]
                ratio = rem["rate"] / loc["rate"] if loc["rate"] else float("nan")
                errors = len(loc["errors"]) + len(rem["errors"])
                open_errors = len(loc["open_errors"]) + len(rem["open_errors"])
                print(f"{n:>7} {loc['rate']:>9.0f} {rem['rate']:>9.0f} {ratio:>6.2f} {loc['lat_ms']:>9.3f} "
                      f"{rem['lat_ms']:>9.3f} {rem['lat_ms'] - loc['lat_ms']:>8.3f} {rem['p95_ms']:>7.2f} "
                      f"{errors:>6} {open_errors:>8}")
                for name in ("local", "p11kit"):
                    for e in sorted(set(res[name]["errors"] + res[name]["open_errors"]))[:3]:
                        print(f"        {name}: {e}")
                if n == max(args.signers):
                    verdicts.append((spec, n, ratio, errors, open_errors))
        print()
        ok = True
        for spec, n, ratio, errors, open_errors in verdicts:
            good = ratio >= TARGET_RATIO and errors == 0 and open_errors == 0
            ok &= good
            print(f"{spec}: p11kit/local at {n} signers = {ratio:.2f} (target >= {TARGET_RATIO}), "
                  f"{errors} signing errors, {open_errors} open errors -> {'OK' if good else 'MISSED'}")
        return 0 if ok else 1
    finally:
        if server is not None:
            try:
                os.killpg(server.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            server.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
