#!/usr/bin/env python3
"""Benchmark: signing a FIT with a 32 MiB kernel, hsmsign vs mkimage -N pkcs11 (libp11 engine).

Same run, same SoftHSM token (a private one in a temp dir), same RSA-2048 key,
same unsigned FIT (tests/assets/fit/declared.its: an image signature over the
kernel and two configuration signatures). Each command is a fresh process, as
in a build: interpreter/engine start, module load, login, hashing, signing,
writing. Prints the median of N runs and the ratios against mkimage.

    python3 bench/bench_fit.py [--runs 5] [--kernel-mib 32]

Needs SoftHSM, libengine-pkcs11-openssl and U-Boot's mkimage (scripts/deps/fit.apt).
The test suite runs it on a tiny input (tests/integration/test_benches.py), to keep it working.
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

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "meta-hsmsign" / "lib"
ASSETS = ROOT / "tests" / "assets" / "fit"
KEY = "fit-dev"  # the key-name-hint declared.its names
PIN = "bench-pin-1234"  # noqa: S105 - PIN of a throw-away SoftHSM token in a temp dir


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kernel-mib", type=int, default=32)
    ap.add_argument("--mkimage", default=os.environ.get("HSMSIGN_MKIMAGE") or shutil.which("mkimage"))
    opts = ap.parse_args()
    if not opts.mkimage:
        sys.exit("mkimage not found (apt-get install u-boot-tools)")
    sys.path.insert(0, str(LIB))

    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-fit-"))
    try:
        tokens = work / "tokens"
        tokens.mkdir()
        conf = work / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        pin_file = work / "pin"
        pin_file.write_text(PIN + "\n")
        os.chmod(pin_file, 0o600)
        env = dict(
            os.environ, SOFTHSM2_CONF=str(conf), SOURCE_DATE_EPOCH="1700000000", HSMSIGN_MODE="development"
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIB), env.get("PYTHONPATH", "")]))
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                "bench",
                "--pin",
                PIN,
                "--so-pin",
                "so-" + PIN,
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        from hsmsign import keys, token

        module = token.default_softhsm_module()
        uri = f"pkcs11:token=bench;object={KEY}?module-path={module}&pin-source=file:{pin_file}"
        from hsmsign.uri import Pkcs11Uri

        keys.generate(Pkcs11Uri.parse(uri), keys.parse_key_type("rsa:2048"), mode="development")
        token.close_all()

        for f in ASSETS.iterdir():
            shutil.copy(f, work / f.name)
        (work / "kernel.bin").write_bytes(os.urandom(opts.kernel_mib << 20))
        (work / "initrd.bin").write_bytes(os.urandom(1 << 20))
        subprocess.run(
            ["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", "board.dtb", "board.dts"], cwd=work, check=True
        )
        unsigned = work / "unsigned.fit"
        subprocess.run(
            [opts.mkimage, "-f", "declared.its", str(unsigned)], cwd=work, check=True, capture_output=True
        )

        mk_env = dict(env, MKIMAGE_SIGN_PIN=PIN)
        drop_env = dict(
            env, MKIMAGE_SIGN_PIN=PIN, HSM_PKCS11_MODULE=module or "", HSMSIGN_MKIMAGE=opts.mkimage
        )
        target = work / "target.fit"
        py = sys.executable
        commands = {
            "mkimage -N pkcs11": (
                [opts.mkimage, "-F", "-k", f"token=bench;object={KEY}", "-N", "pkcs11", "-r", str(target)],
                mk_env,
            ),
            "hsmsign fit sign": (
                [py, "-m", "hsmsign", "fit", "sign", "--uri", uri, "--key-name", KEY, str(target)],
                env,
            ),
            "hsmsign mkimage": (
                [py, "-m", "hsmsign", "mkimage", "-F", "-k", f"token=bench;object={KEY}", "-r", str(target)],
                drop_env,
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(opts.runs):
            for name, (cmd, cmd_env) in commands.items():  # interleaved: same machine state for each
                shutil.copy(unsigned, target)
                times[name].append(timed(cmd, cmd_env))
        base = statistics.median(times["mkimage -N pkcs11"])
        size = unsigned.stat().st_size / (1 << 20)
        print(
            f"FIT {size:.1f} MiB ({opts.kernel_mib} MiB kernel), RSA-2048, SoftHSM, median of {opts.runs}"
        )
        for name, values in times.items():
            med = statistics.median(values)
            print(f"  {name:<20} {med * 1000:8.1f} ms   ratio vs mkimage {med / base:5.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
