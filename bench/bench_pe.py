#!/usr/bin/env python3
"""Benchmark: `hsmsign pe sign` against `sbsign --engine pkcs11` (libp11) on a 50 MiB UKI.

The UKI is made the way it was before ukify: objcopy adds .cmdline, .linux
(40 MiB) and .initrd (10 MiB) of random bytes to Debian's systemd-boot stub
(``linuxx64.efi.stub``). Both tools sign with the same RSA-2048 key in a SoftHSM
development token (``hsmsign dev-init``) and the same certificate; each run is a
cold process (start, module load, login, hash, one signature, write). The
Authenticode digests of both outputs are compared too.

Target (issue 16): hsmsign / sbsign wall time <= 1.0. Usage:
bench/bench_pe.py [--size-mib 50] [--repeat 5]

hsmsign runs with the interpreter that runs the bench, and the report names it and the
libraries' versions. To see what a Yocto build sees, run it with the venv
``scripts/test-yocto-pythons`` made for a release (its Python and python-pkcs11,
cryptography and asn1crypto pinned to the release's recipes), for example
``~/.cache/hsmsign/venvs/wrynose-*/bin/python bench/bench_pe.py``.

The breakdown runs, interleaved with the others, what a cold ``hsmsign pe sign``
cannot do without: the interpreter starting (``python -c pass``), and the
interpreter importing python-pkcs11 as the command loads it (its ``pkcs11.util``
helpers, which import asn1crypto, deferred by ``hsmsign.launch``; the command imports
nothing of asn1crypto or cryptography), without any other hsmsign code and without any
work. Two more pairs split each tool's time into
what every run costs and what the image's size costs: both tools sign the 130 KiB
systemd stub itself. And since hsmsign's output is on disk when it exits (fsync)
and sbsign's is not, sbsign also runs followed by ``sync -d`` of its output.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtoken import dev_token

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
PIN_ATTR = "pin-value"  # libp11 wants the run-time PIN of a throw-away bench token in its URI
# what `hsmsign pe sign` imports of them: python-pkcs11 without its asn1crypto helpers, nothing of
# asn1crypto or cryptography (tests/integration/test_pe.py holds it to that)
LIBRARIES = "from hsmsign.launch import defer_pkcs11_helpers as d; d(); import pkcs11._pkcs11"


def timed_pair(
    cmds: dict[str, list[str]], env: dict[str, str], repeat: int
) -> dict[str, tuple[float, float]]:
    """Median wall time and median CPU time (user + system, all threads) of each command.

    The commands are interleaved (a busy machine hits all alike), and each round starts one
    command later in the list, so that no command always runs after the same one: what ran
    just before moves a command's time by a few per cent (the memory it freed, the caches).
    Each starts with the disk written back (``sync``, not timed): sbsign exits with its output
    still dirty, and the command after it would share the disk with that writeback (hsmsign,
    which waits for its own output to reach the disk, took 0.34 s instead of 0.22 s on a 50 MiB
    UKI before this).
    """
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    names = list(cmds)
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            cmd = cmds[name]
            os.sync()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, check=False)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise SystemExit(f"failed: {name}: {done.stderr.decode()[-400:]}")
            times[name].append(elapsed)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {name: (statistics.median(times[name]), statistics.median(cpu[name])) for name in cmds}


def versions() -> str:
    """The interpreter and the libraries hsmsign ran with (this one: the bench runs hsmsign with
    ``sys.executable``); the ratio depends on them (docs/uefi.md, "Speed")."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("python-pkcs11", "cryptography", "asn1crypto", "cached-property"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return f"Python {sys.version.split()[0]}, " + ", ".join(found)


def make_uki(work: Path, size_mib: int) -> Path:
    linux, initrd, cmdline = work / "linux", work / "initrd", work / "cmdline"
    linux_mib = max(1, size_mib * 4 // 5)
    linux.write_bytes(os.urandom(linux_mib << 20))
    initrd.write_bytes(os.urandom(max(1, size_mib - linux_mib) << 20))
    cmdline.write_text("console=ttyS0 root=LABEL=root\n")
    uki = work / "uki.efi"
    subprocess.run(
        [
            "objcopy",
            "--add-section", f".cmdline={cmdline}", "--change-section-vma", ".cmdline=0x30000",
            "--add-section", f".linux={linux}", "--change-section-vma", ".linux=0x2000000",
            "--add-section", f".initrd={initrd}", "--change-section-vma", ".initrd=0x8000000",
            str(STUB), str(uki),
        ],
        check=True,
    )  # fmt: skip
    return uki


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for tool, package in (("sbsign", "sbsigntool"), ("objcopy", "binutils")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: apt-get install {package}")
    if not STUB.exists():
        raise SystemExit("systemd-boot stub missing: apt-get install systemd-boot-efi")

    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-pe-"))
    try:
        token = dev_token(work)
        env, hsmsign, dev = token.env, token.hsmsign, token.dev
        env["PKCS11_MODULE_PATH"] = dev["module"]
        uri = token.uri("uefi")
        pin = token.pin()
        cert = work / "db.pem"
        subprocess.run(
            [*hsmsign, "cert", "--uri", uri, "--subject", "CN=bench db", "--output", str(cert)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        print(f"making a {args.size_mib} MiB UKI ...", file=sys.stderr)
        uki = make_uki(work, args.size_mib)
        subprocess.run(["cat", str(uki)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        ours_out, theirs_out = work / "ours.efi", work / "sbsign.efi"
        engine_uri = f"pkcs11:token={dev['token']};object={dev['keys']['uefi']['label']};type=private"
        results = timed_pair(
            {
                "hsmsign pe sign": [
                    *hsmsign, "pe", "sign", "--uri", uri, "--cert", str(cert), "-o", str(ours_out), str(uki)
                ],
                "sbsign --engine pkcs11": [
                    "sbsign", "--engine", "pkcs11", "--key", f"{engine_uri}?{PIN_ATTR}={pin}",
                    "--cert", str(cert), "--output", str(theirs_out), str(uki),
                ],
                "sbsign, then sync -d of it": [
                    "sh", "-c", f'sbsign "$@" && sync -d {shlex.quote(str(theirs_out))}', "sh",
                    "--engine", "pkcs11", "--key", f"{engine_uri}?{PIN_ATTR}={pin}", "--cert", str(cert),
                    "--output", str(theirs_out), str(uki),
                ],
                "hsmsign, 130 KiB stub": [
                    *hsmsign, "pe", "sign", "--uri", uri, "--cert", str(cert), "-o", str(work / "s1.efi"),
                    str(STUB),
                ],
                "sbsign, 130 KiB stub": [
                    "sbsign", "--engine", "pkcs11", "--key", f"{engine_uri}?{PIN_ATTR}={pin}",
                    "--cert", str(cert), "--output", str(work / "s2.efi"), str(STUB),
                ],
                "python -c pass": [sys.executable, "-c", "pass"],
                "python, imports only": [sys.executable, "-c", LIBRARIES],
            },
            env,
            args.repeat,
        )  # fmt: skip
        digests = {
            name: subprocess.run(
                [*hsmsign, "pe", "digest", str(path)], env=env, capture_output=True, text=True, check=True
            ).stdout.strip()
            for name, path in (("hsmsign", ours_out), ("sbsign", theirs_out))
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours, theirs = results["hsmsign pe sign"][0], results["sbsign --engine pkcs11"][0]
    start, imports = results["python -c pass"][0], results["python, imports only"][0]
    print(f"\nsigning a {args.size_mib} MiB UKI, median of {args.repeat} cold runs each, interleaved")
    print(f"(RSA-2048 on SoftHSM; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"(hsmsign on {versions()})")
    print(f"{'':<28} {'wall':>8}   {'cpu':>8}")
    for name, (wall, cpu) in results.items():
        print(f"{name:<28} {wall:8.3f} s {cpu:8.3f} s")
    synced = results["sbsign, then sync -d of it"][0]
    ours_stub, theirs_stub = results["hsmsign, 130 KiB stub"][0], results["sbsign, 130 KiB stub"][0]
    print(f"\nhsmsign / sbsign = {ours / theirs:.3f}  (target <= 1.0)")
    print(f"hsmsign / (sbsign, then sync -d of its output) = {ours / synced:.3f}  (both outputs on disk)")
    print(
        f"per run: hsmsign {ours_stub:.3f} s, sbsign {theirs_stub:.3f} s (the stub); for the image's "
        f"{args.size_mib} MiB on top: hsmsign {ours - ours_stub:.3f} s, sbsign {theirs - theirs_stub:.3f} s"
    )
    print(
        f"breakdown: python starts in {start:.3f} s; with python-pkcs11 imported as the command "
        f"imports it and nothing done, {imports:.3f} s = {imports / theirs:.2f} x sbsign's "
        f"whole run; hsmsign's own code, the token, the I/O and the checks take the other "
        f"{ours - imports:.3f} s"
    )
    same = digests["hsmsign"] == digests["sbsign"]
    print(f"Authenticode digests {'identical' if same else 'DIFFER'}: {digests['hsmsign']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
