#!/usr/bin/env python3
"""Benchmark: what signing through the token adds to the U-Boot and kernel FIT recipes.

Real BitBake runs oe-core's own uboot-sign and kernel FIT code on the layer
tests' stand-in recipes (tests/layer/test_bitbake_fit.py, variant rsa2048), in
two configurations of one build directory:

* hsmsign: INHERIT += "hsmsign", keys in a SoftHSM token (the layer tests' setup);
* key files: no meta-hsmsign, oe-core signing with an RSA-2048 key file and
  certificate written to a throw-away directory (what the layer replaces).

Each run removes the recipes' output and sstate (cleansstate) and builds them
to do_deploy; BitBake's buildstats give every task's time. Prints, per recipe,
the median of N runs of: the signing tasks' time, their share of the recipe's
task time, and the ratio hsmsign / key files.

    # as a plain user (BitBake refuses root), with the layer tests' environment:
    HSMSIGN_TEST_BITBAKE=... HSMSIGN_TEST_OECORE=... HSMSIGN_TEST_METAOE=... \\
    HSMSIGN_TEST_PYTHON=... HSMSIGN_TEST_UBOOT_TOOLS=... python3 bench/bench_layer_tasks.py [--runs 3]

The stand-in recipes compile nothing, so the share is an upper bound: in a real
U-Boot or kernel build the same seconds are a far smaller part. Not run by the tests.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.layer import bbenv  # noqa: E402
from tests.layer import test_bitbake_fit as fitenv  # noqa: E402

RECIPES = ("hsmsign-test-uboot-rsa2048", "hsmsign-test-fitimage-rsa2048")


def signing_tasks(recipe: str, hsmsign: bool) -> set[str]:
    if "uboot" in recipe:
        return {"do_uboot_assemble_fitimage"}
    if bbenv.SCARTHGAP:
        return {"do_assemble_fitimage"}
    # wrynose and later: oe-core signs in do_compile; hsmsign in do_hsmsign_fitimage
    return {"do_compile", "do_hsmsign_fitimage"} if hsmsign else {"do_compile"}


def task_times(topdir: str) -> dict[str, dict[str, float]]:
    """recipe -> task -> seconds, from the newest buildstats run."""
    runs = sorted(glob.glob(os.path.join(topdir, "tmp*", "buildstats", "*")), key=os.path.getmtime)
    assert runs, "no buildstats (INHERIT += buildstats)"
    found: dict[str, dict[str, float]] = {}
    for path in glob.glob(os.path.join(runs[-1], "*", "do_*")):
        recipe = os.path.basename(os.path.dirname(path)).rsplit("-", 2)[0]
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Elapsed time:"):
                    found.setdefault(recipe, {})[os.path.basename(path)] = float(line.split()[2])
    return found


def keyfile_conf(keydir: str) -> str:
    """oe-core's own signing with key files, no meta-hsmsign."""
    lines = [
        'HOSTTOOLS += "openssl"',
        *(f'{var}_KEYDIR = "{keydir}"' for var in ("UBOOT_SIGN", "SPL_SIGN", "FIT_KERNEL_SIGN")),
        *(f'{var}_KEYNAME = "bench"' for var in ("UBOOT_SIGN", "SPL_SIGN", "FIT_KERNEL_SIGN")),
    ]
    return "\n".join([*lines, *fitenv.offline_conf(), 'INHERIT += "buildstats"']) + "\n"


def run_once(build: bbenv.Build, env: dict[str, str]) -> dict[str, dict[str, float]]:
    done = build.run("-c", "cleansstate", *RECIPES, env=env)
    if done.returncode != 0:
        sys.exit((done.stdout + done.stderr)[-3000:])
    done = build.run("-c", "deploy", *RECIPES, env=env)
    if done.returncode != 0:
        sys.exit((done.stdout + done.stderr)[-3000:])
    return task_times(build.topdir)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    if not (bbenv.HAVE_BITBAKE and bbenv.PYTHON and bbenv.UBOOT_TOOLS) or bbenv.IS_ROOT:
        sys.exit("run as a plain user with the layer tests' environment (see --help)")
    topdir = tempfile.mkdtemp(prefix="hsmsign-bench-layer-")
    try:
        devhome = os.path.join(topdir, "hsmsign-dev")
        pin = bbenv.dev_token(devhome)
        env = {"SOFTHSM2_CONF": os.path.join(devhome, "softhsm2.conf"), "HSM_TEST_PIN": pin}
        made = bbenv.hsmsign(
            "keygen", "--uri", f"pkcs11:token=hsmsign-dev;object=test-rsa2048?module-path={bbenv.SOFTHSM}",
            "--type", "rsa:2048", "--mode", "development", "--pin-env", "HSM_TEST_PIN", env=env,
        )  # fmt: skip
        if made.returncode != 0:
            sys.exit(made.stderr)
        build = bbenv.Build(topdir, path_first=bbenv.UBOOT_TOOLS)
        layers = fitenv.fit_layers()
        results: dict[str, list[dict[str, dict[str, float]]]] = {"hsmsign": [], "key files": []}
        hsm_conf = fitenv.fit_local_conf(
            devhome,
            "",
            {"HSMSIGN_PIN_ENV": "HSM_TEST_PIN", "HSMSIGN_TEST_MODULE": f"?module-path={bbenv.SOFTHSM}"},
        )
        hsm_conf += 'INHERIT += "buildstats"\n'
        keydir = os.path.join(topdir, "throwaway-keys")  # the alternative: a key file on disk
        os.makedirs(keydir)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=bench", "-days", "1",
             "-keyout", os.path.join(keydir, "bench.key"), "-out", os.path.join(keydir, "bench.crt")],
            check=True, capture_output=True,
        )  # fmt: skip
        for name, conf, run_env in (
            ("hsmsign", hsm_conf, {"HSM_TEST_PIN": pin}),
            ("key files", keyfile_conf(keydir), {}),
        ):
            bbenv.write_conf(topdir, conf, layers)
            run_once(build, run_env)  # warm-up: parse cache, sstate of the stand-in kernel
            for _ in range(opts.runs):
                results[name].append(run_once(build, run_env))
        print(f"{'recipe':<32} {'config':<10} {'signing s':>10} {'recipe s':>9} {'share':>6}")
        medians: dict[tuple[str, str], float] = {}
        for recipe in RECIPES:
            for name, runs in results.items():
                sign = statistics.median(
                    sum(
                        t
                        for task, t in r.get(recipe, {}).items()
                        if task in signing_tasks(recipe, name == "hsmsign")
                    )
                    for r in runs
                )
                total = statistics.median(sum(r.get(recipe, {}).values()) for r in runs)
                medians[(recipe, name)] = sign
                share = sign / total if total else 0.0
                print(f"{recipe:<32} {name:<10} {sign:>10.2f} {total:>9.2f} {share:>6.0%}")
            base = medians[(recipe, "key files")]
            ratio = medians[(recipe, "hsmsign")] / base if base else float("inf")
            print(f"{recipe:<32} hsmsign / key files: {ratio:.1f}x")
        print(f"(median of {opts.runs} runs; {'scarthgap' if bbenv.SCARTHGAP else 'wrynose or later'})")
    finally:
        shutil.rmtree(topdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
