#!/usr/bin/env python3
"""Benchmark: `hsmsign rauc bundle` against `rauc bundle --key=pkcs11:...` on its own.

Both build the same verity bundle (one slot image of random bytes) and sign it through
OpenSSL's pkcs11 engine with the same RSA-2048 key of a SoftHSM development token
(``hsmsign dev-init``): rauc does the building and the signing in both. What hsmsign adds is
the key check before (policy, pin, the certificate belongs to the key) and the bundle check
after (the signature, every payload block with ``veritysetup verify``, ``rauc info``), which
rauc alone does not do; the ratio is its price. ``rauc bundle`` followed by ``rauc info`` is
the alternative with rauc's own check of the signature. Each run is a cold process; the
commands are interleaved and each starts with the disk written back (``sync``, not timed).

With casync installed (and --size-mib 16 or more), the bundle's casync form is made both
ways too: ``hsmsign rauc convert`` against ``rauc convert`` with the same key.

Usage: bench/bench_rauc.py [--size-mib 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtoken import dev_token


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for tool, package in (
        ("rauc", "rauc"),
        ("mksquashfs", "squashfs-tools"),
        ("veritysetup", "cryptsetup-bin"),
    ):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} missing: apt-get install {package}")

    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-rauc-"))
    try:
        token = dev_token(work)
        env, hsmsign, dev = token.env, token.hsmsign, token.dev
        uri = token.uri("rauc")
        cert = work / "rauc.pem"
        subprocess.run(
            [*hsmsign, "cert", "--uri", uri, "--subject", "CN=bench rauc", "--output", str(cert)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        src = work / "bundle"
        src.mkdir()
        (src / "rootfs.img").write_bytes(os.urandom(args.size_mib << 20))
        (src / "manifest.raucm").write_text(
            "[update]\ncompatible=bench\nversion=1\n\n[bundle]\nformat=verity\n\n"
            "[image.rootfs]\nfilename=rootfs.img\n"
        )
        # rauc alone: the PIN and the module in its environment, as the layer hands them
        rauc_env = dict(env)
        rauc_env["RAUC_PKCS11_MODULE"] = dev["module"]
        rauc_env["RAUC_PKCS11_PIN"] = token.pin()
        key = f"pkcs11:token={dev['token']};object={dev['keys']['rauc']['label']}"
        out = work / "out.raucb"
        cmds: dict[str, tuple[list[str], dict[str, str]]] = {
            "hsmsign rauc bundle": ([*hsmsign, "rauc", "bundle", "--uri", uri, "--cert", str(cert),
                                     str(src), str(out)], env),
            "rauc bundle --key=pkcs11:": (["rauc", "bundle", f"--cert={cert}", f"--key={key}", str(src),
                                           str(out)], rauc_env),
        }  # fmt: skip
        cmds["rauc bundle, then rauc info"] = (
            ["sh", "-c", 'rauc bundle --cert="$1" --key="$2" "$3" "$4" && rauc info --keyring="$1" "$4"',
             "sh", str(cert), key, str(src), str(out)],
            rauc_env,
        )  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in cmds}
        cpu: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.repeat):
            for name, (cmd, cmd_env) in cmds.items():
                if out.exists():
                    out.unlink()
                os.sync()
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                done = subprocess.run(cmd, env=cmd_env, capture_output=True, check=False)
                elapsed = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if done.returncode != 0:
                    raise SystemExit(f"failed: {name}: {done.stderr.decode()[-600:]}")
                times[name].append(elapsed)
                cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        # what hsmsign adds, alone: the check of the bundle just built
        verify = [*hsmsign, "rauc", "verify", "--cert", str(cert), str(out)]
        check_times = []
        for _ in range(args.repeat):
            os.sync()
            start = time.perf_counter()
            subprocess.run(verify, env=env, capture_output=True, check=True)
            check_times.append(time.perf_counter() - start)
        size = out.stat().st_size
        convert_times = _convert_pair(hsmsign, env, rauc_env, uri, key, cert, out, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"\na verity bundle of a {args.size_mib} MiB image ({size / 2**20:.1f} MiB bundle), "
          f"median of {args.repeat} cold runs each, interleaved")  # fmt: skip
    print(f"(RSA-2048 on SoftHSM; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'':<30} {'wall':>8}   {'cpu':>8}")
    for name in cmds:
        print(f"{name:<30} {med[name]:8.3f} s {statistics.median(cpu[name]):8.3f} s")
    print(f"{'hsmsign rauc verify (alone)':<30} {statistics.median(check_times):8.3f} s")
    alone, checked = med["rauc bundle --key=pkcs11:"], med["rauc bundle, then rauc info"]
    ours = med["hsmsign rauc bundle"]
    print(f"\nhsmsign rauc bundle / rauc bundle = {ours / alone:.3f}")
    print(f"hsmsign rauc bundle / (rauc bundle, then rauc info) = {ours / checked:.3f}")
    if isinstance(convert_times, str):
        print(f"casync conversion: {convert_times}")
    else:
        conv = {name: statistics.median(v) for name, v in convert_times.items()}
        print("\nits casync form (rauc convert: the index bundle and the chunk store), same key:")
        for name, secs in conv.items():
            print(f"{name:<30} {secs:8.3f} s")
        ratio = conv["hsmsign rauc convert"] / conv["rauc convert"]
        print(f"hsmsign rauc convert / rauc convert = {ratio:.3f}")
    return 0


def _convert_pair(
    hsmsign: list[str],
    env: dict[str, str],
    rauc_env: dict[str, str],
    uri: str,
    key: str,
    cert: Path,
    bundle: Path,
    work: Path,
    args: argparse.Namespace,
) -> dict[str, list[float]] | str:
    """``hsmsign rauc convert`` against ``rauc convert`` alone on the bundle just built, or why not."""
    if shutil.which("casync") is None:
        return "skipped, casync missing: apt-get install casync"
    if args.size_mib < 16:
        return "skipped below --size-mib 16 (rauc refuses a casync index of 4 KiB or less)"
    out = work / "casync.raucb"
    cmds = {
        "hsmsign rauc convert": ([*hsmsign, "rauc", "convert", "--uri", uri, "--cert", str(cert), str(bundle),
                                  str(out)], env),
        "rauc convert": (["rauc", "convert", f"--cert={cert}", f"--key={key}", f"--keyring={cert}",
                          str(bundle), str(out)], rauc_env),
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.repeat):
        for name, (cmd, cmd_env) in cmds.items():
            out.unlink(missing_ok=True)
            shutil.rmtree(work / "casync.castr", ignore_errors=True)
            os.sync()
            start = time.perf_counter()
            done = subprocess.run(cmd, env=cmd_env, capture_output=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"failed: {name}: {done.stderr.decode()[-600:]}")
            times[name].append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    sys.exit(main())
