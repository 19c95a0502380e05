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

--compress xz|gzip|zstd: the modules are compressed as CONFIG_MODULE_COMPRESS_* installs them,
and the kernel's way becomes, per module, decompress + sign-file + compress with the kernel's
settings (scripts/Makefile.modinst), one module per CPU at a time as `make -j` would run it;
hsmsign signs the compressed modules in place. The decompressed results must be byte-identical.

Usage: bench/bench_modsign.py [--count 3000] [--engine] [--compress xz]
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
# the kernel's compress command (scripts/Makefile.modinst), its decompress command, the package
COMPRESS = {
    "xz": (["xz", "--check=crc32", "--lzma2=dict=1MiB", "-f"], ["xz", "-d", "-f"], "xz-utils"),
    "gzip": (["gzip", "-n", "-f"], ["gzip", "-d", "-f"], "gzip"),
    "zstd": (["zstd", "-T0", "--rm", "-f", "-q"], ["zstd", "-d", "--rm", "-f", "-q"], "zstd"),
}
SUFFIX = {"xz": ".xz", "gzip": ".gz", "zstd": ".zst"}
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


def _plain(path: Path, compress: str | None) -> bytes:
    """A module as the kernel checks it: decompressed."""
    if not compress:
        return path.read_bytes()
    argv = {"xz": ["xz", "-dc"], "gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc", "-q"]}[compress]
    return subprocess.run([*argv, str(path)], capture_output=True, check=True).stdout


def copy_tree(src: Path, dest: Path) -> list[Path]:
    shutil.copytree(src, dest)
    return sorted(dest.iterdir())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--engine", action="store_true", help="also openssl cms -sign via the pkcs11 engine")
    ap.add_argument(
        "--compress", choices=tuple(COMPRESS), help="compressed modules (CONFIG_MODULE_COMPRESS_*)"
    )
    args = ap.parse_args()
    if args.compress and args.engine:
        raise SystemExit("--engine signs uncompressed modules only; drop one of them")
    if args.compress and shutil.which(COMPRESS[args.compress][0][0]) is None:
        raise SystemExit(
            f"{COMPRESS[args.compress][0][0]} missing: apt-get install {COMPRESS[args.compress][2]}"
        )
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
        if args.compress:
            # compressed with the kernel's own command, one module per CPU (setup, not timed)
            compress_argv = COMPRESS[args.compress][0]
            subprocess.run(
                ["xargs", "-0", "-n", "64", "-P", str(os.cpu_count() or 1), *compress_argv],
                input=b"\0".join(bytes(p) for p in sorted(pristine.iterdir())), check=True,
            )  # fmt: skip
        ours = copy_tree(pristine, work / "hsmsign")
        theirs = copy_tree(pristine, work / "sign-file")
        results: dict[str, float] = {}

        # every timed run starts from a clean page cache state: the dirty pages one run leaves
        # (3000 new files) are written back before the next starts, not during it
        os.sync()
        start = time.perf_counter()
        if args.compress:
            unpack, pack = " ".join(COMPRESS[args.compress][1]), " ".join(COMPRESS[args.compress][0])
            suffix = SUFFIX[args.compress]
            script = (
                f'for f; do {unpack} "$f" && {SIGN_FILE} sha256 {key} {cert} "${{f%{suffix}}}" '
                f'&& {pack} "${{f%{suffix}}}" || exit 255; done'
            )
            subprocess.run(
                ["xargs", "-0", "-n", "16", "-P", str(os.cpu_count() or 1), "sh", "-c", script, "sh"],
                input=b"\0".join(bytes(p) for p in theirs), check=True,
            )  # fmt: skip
        else:
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
            _plain(a, args.compress) == _plain(b, args.compress) == _plain(c, args.compress)
            for a, b, c in zip(ours, theirs, with_ledger)
        )
        packed_same = not args.compress or all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs))
    finally:
        key_path = work / "scratch.key"
        if key_path.exists():
            key_path.unlink()
        shutil.rmtree(work, ignore_errors=True)

    base = results["sign-file, one process per module"]
    what = f", compressed with {args.compress}" if args.compress else ""
    cpus = os.cpu_count()
    mib = total / (1 << 20)
    print(f"\nsigning {args.count} modules ({mib:.0f} MiB{what}), RSA-2048 SHA-256, {cpus} CPUs")
    if args.compress:
        print(f"(the kernel's way: decompress, sign-file, {args.compress} again, per module, {cpus} at once)")
    for name, secs in results.items():
        print(f"{name:<56} {secs:8.2f} s  {secs / args.count * 1000:6.2f} ms/module  {secs / base:6.3f}x")
    ratio = results["hsmsign modsign"] / base
    print(f"\nhsmsign / sign-file = {ratio:.3f}  (target <= 0.3), {logins} token login(s)")
    print(f"signed modules {'byte-identical' if same else 'DIFFER'} between hsmsign and sign-file")
    if args.compress:
        print(f"compressed files {'byte-identical' if packed_same else 'differ (same content)'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
