#!/usr/bin/env python3
"""Benchmark: `hsmsign modsign` (one process, one token login) against the kernel's way,
one `scripts/sign-file` process per module (what `make modules_sign` runs), on N modules.

The modules are an ELF relocatable object (gcc -c, with a .modinfo section) padded to
realistic sizes: log-normal around 24 KiB, 4 KiB to 2 MiB, as the stripped modules of a
distribution kernel are. One RSA-2048 scratch key is made with openssl for the run: sign-file
reads it from the file (the kernel's default, the key file this project removes), and the
same key is imported into a scratch SoftHSM token for hsmsign, so the signed modules must be
byte-identical (RSA PKCS#1 v1.5 is deterministic); the bench checks that they are.

Optionally (--engine) also one `openssl cms -sign` per module through libp11's pkcs11
engine: a per-module signer that keeps the key in the token (the PKCS#7 only).

Target (issue 15): hsmsign / sign-file wall time <= 0.3, with one token login.
Usage: bench/bench_modsign.py [--count 3000] [--engine]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIGN_FILE = Path("/usr/lib/linux-kbuild-6.1/scripts/sign-file")
MODULE_C = r"""
static const char modinfo[] __attribute__((section(".modinfo"), used, aligned(1))) =
    "license=GPL\0name=bench\0vermagic=6.1.0 SMP mod_unload \0";
int bench_value = 1;
"""
PIN = "bench-pin-1234"
PIN_ATTR = "pin-value"  # libp11 wants the run-time PIN of a throw-away bench token in its URI


def sizes(count: int, seed: int = 15) -> list[int]:
    rng = random.Random(seed)
    return [min(2 << 20, max(4 << 10, int(rng.lognormvariate(10.1, 1.0)))) for _ in range(count)]


def make_modules(work: Path, count: int) -> Path:
    src = work / "bench.c"
    src.write_text(MODULE_C)
    base_path = work / "bench.o"
    subprocess.run(["gcc", "-c", str(src), "-o", str(base_path)], check=True)
    base = base_path.read_bytes()
    out = work / "pristine"
    out.mkdir()
    for i, size in enumerate(sizes(count)):
        # bytes after the section table are ignored by the ELF loader and kept by both signers
        (out / f"mod{i:05d}.ko").write_bytes(base + os.urandom(max(0, size - len(base))))
    return out


def copy_tree(src: Path, dest: Path) -> list[Path]:
    shutil.copytree(src, dest)
    return sorted(dest.iterdir())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--engine", action="store_true", help="also openssl cms -sign via the pkcs11 engine")
    args = ap.parse_args()
    if not SIGN_FILE.exists():
        raise SystemExit("sign-file missing: apt-get install linux-kbuild-6.1")
    for tool, package in (("gcc", "gcc"), ("softhsm2-util", "softhsm2"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: apt-get install {package}")

    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-modsign-"))
    try:
        (work / "tokens").mkdir()
        conf = work / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        pin_file = work / "pin"
        pin_file.write_text(PIN + "\n")
        pin_file.chmod(0o600)
        env = dict(os.environ)
        env.update(
            SOFTHSM2_CONF=str(conf),
            PYTHONPATH=str(ROOT / "meta-hsmsign" / "lib"),
            PYTHONPYCACHEPREFIX=str(work / "pycache"),
        )
        # bytecode is cached as in any installation: only the first process compiles
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        module = subprocess.run(
            [sys.executable, "-c", "from hsmsign import token; print(token.default_softhsm_module())"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        key, cert = work / "scratch.key", work / "scratch.pem"
        subprocess.run(
            ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-out", str(cert), "-days", "1", "-subj", "/CN=bench modules key"],
            check=True, capture_output=True,
        )  # fmt: skip
        util = ["softhsm2-util", "--pin", PIN]
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", PIN, "--so-pin", "5678"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [*util, "--import", str(key), "--token", "bench", "--label", "modules", "--id", "01"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        uri = f"pkcs11:token=bench;object=modules?module-path={module}&pin-source=file:{pin_file}"

        print(f"making {args.count} modules ...", file=sys.stderr)
        pristine = make_modules(work, args.count)
        total = sum(p.stat().st_size for p in pristine.iterdir())
        ours = copy_tree(pristine, work / "hsmsign")
        theirs = copy_tree(pristine, work / "sign-file")
        results: dict[str, float] = {}

        # every timed run starts from a clean page cache state: the dirty pages one run leaves
        # (3000 new files) are written back before the next starts, not during it
        os.sync()
        start = time.perf_counter()
        for path in theirs:
            subprocess.run([str(SIGN_FILE), "sha256", str(key), str(cert), str(path)], check=True)
        results["sign-file, one process per module"] = time.perf_counter() - start

        def hsmsign(modules: list[Path], *extra: str) -> float:
            os.sync()
            start = time.perf_counter()
            # in batches of 1000 on the command line, as xargs would
            for i in range(0, len(modules), 1000):
                done = subprocess.run(
                    [sys.executable, "-m", "hsmsign", "modsign", "--mode", "development", "--uri", uri,
                     "--cert", str(cert), *extra, *map(str, modules[i : i + 1000])],
                    env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
                if done.returncode != 0:
                    raise SystemExit(f"hsmsign modsign failed: {done.stderr[-400:]}")
            return time.perf_counter() - start

        results["hsmsign modsign"] = hsmsign(ours)
        logins = -(-len(ours) // 1000)
        # with a signing ledger (HSMSIGN_LEDGER): one entry per module, appended per commit
        with_ledger = copy_tree(pristine, work / "hsmsign-ledger")
        results["hsmsign modsign --ledger"] = hsmsign(with_ledger, "--ledger", str(work / "ledger.jsonl"))

        if args.engine:
            engine_dir = work / "engine"
            engine_dir.mkdir()
            engine_key = f"pkcs11:token=bench;object=modules;type=private?{PIN_ATTR}={PIN}"
            start = time.perf_counter()
            for path in theirs[: min(len(theirs), 500)]:
                subprocess.run(
                    ["openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-nosmimecap",
                     "-outform", "DER", "-engine", "pkcs11", "-keyform", "engine", "-inkey", engine_key,
                     "-signer", str(cert),
                     "-md", "sha256", "-in", str(pristine / path.name), "-out", str(engine_dir / path.name)],
                    env={**env, "PKCS11_MODULE_PATH": module}, check=True, capture_output=True,
                )  # fmt: skip
            per = (time.perf_counter() - start) / min(len(theirs), 500)
            results["openssl cms -engine pkcs11, per module (extrapolated)"] = per * len(theirs)

        same = all(
            a.read_bytes() == b.read_bytes() == c.read_bytes() for a, b, c in zip(ours, theirs, with_ledger)
        )
    finally:
        key_path = work / "scratch.key"
        if key_path.exists():
            key_path.unlink()
        shutil.rmtree(work, ignore_errors=True)

    base = results["sign-file, one process per module"]
    print(f"\nsigning {args.count} modules ({total / (1 << 20):.0f} MiB), RSA-2048 SHA-256")
    for name, secs in results.items():
        print(f"{name:<56} {secs:8.2f} s  {secs / args.count * 1000:6.2f} ms/module  {secs / base:6.3f}x")
    ratio = results["hsmsign modsign"] / base
    print(f"\nhsmsign / sign-file = {ratio:.3f}  (target <= 0.3), {logins} token login(s)")
    print(f"signed modules {'byte-identical' if same else 'DIFFER'} between hsmsign and sign-file")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
