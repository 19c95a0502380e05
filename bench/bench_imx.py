#!/usr/bin/env python3
"""Benchmark: SPSDK signing through hsmsign's provider (``type=hsmsign``) against SPSDK's
``type=file`` provider and SPSDK's PKCS#11 plugin (``type=pkcs11``, spsdk-pkcs11) on the
same token and the same keys.

A scratch SoftHSM token is made in a temporary directory; an RSA-2048 key (HAB) and an
EC P-384 key (AHAB) are generated now, written to files there for ``type=file`` and
imported into the token for the other two; everything is deleted at the end. Prints the
time to open each provider (session, login, key lookup) and per signature, and the
ratios against ``type=file``.

    python bench/bench_imx.py [--count 200]

Needs SPSDK (pip install 'hsmsign[nxp]'), SoftHSMv2 and pkcs11-tool (opensc);
spsdk-pkcs11 for the third column. Not run by the test suite.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "meta-hsmsign" / "lib"))

PIN = "bench-pin-2468"


def make_token(base: Path) -> tuple[str, Path]:
    from hsmsign import token

    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    util = shutil.which("softhsm2-util")
    module = token.default_softhsm_module()
    if not util or not module:
        sys.exit("bench_imx: SoftHSMv2 missing (apt-get install softhsm2)")
    subprocess.run(
        [util, "--init-token", "--free", "--label", "bench-imx", "--pin", PIN, "--so-pin", "so-1357"],
        check=True, capture_output=True,
    )  # fmt: skip
    pin_file = base / "pin"
    pin_file.write_text(PIN + "\n")
    os.chmod(pin_file, 0o600)
    return module, pin_file


def import_key(module: str, private: Any, label: str, key_id: str, base: Path) -> Path:
    """Write ``private`` as PEM (for type=file) and import it into the token."""
    from cryptography.hazmat.primitives import serialization as ser

    pem = base / f"{label}.pem"
    pem.write_bytes(private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    der, pub = base / f"{label}.der", base / f"{label}.pub.der"
    der.write_bytes(private.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    pub.write_bytes(
        private.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    )
    for kind, path in (("privkey", der), ("pubkey", pub)):
        subprocess.run(
            ["pkcs11-tool", "--module", module, "--token-label", "bench-imx", "--login", "--pin", PIN,
             "--write-object", str(path), "--type", kind, "--label", label, "--id", key_id, "--usage-sign"],
            check=True, capture_output=True,
        )  # fmt: skip
    der.unlink()
    return pem


def time_provider(config: str, count: int, data: bytes) -> tuple[float, float]:
    """(seconds to create the provider, median seconds per signature)."""
    from spsdk.crypto.signature_provider import get_signature_provider_from_config_str

    t0 = time.perf_counter()
    provider = get_signature_provider_from_config_str(config)
    provider.get_signature(data)  # the first signature: login and key lookup where lazy
    opened = time.perf_counter() - t0
    times = []
    for i in range(count):
        t = time.perf_counter()
        provider.get_signature(data + i.to_bytes(4, "big"))
        times.append(time.perf_counter() - t)
    return opened, statistics.median(times)


def time_in_child(config: str, count: int) -> tuple[float, float]:
    """Each provider in its own process: PKCS#11 login state is per process, and the plugin
    refuses a token this process is already logged in to."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", config, "--count", str(count)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"bench_imx: {config.split(';')[0]} failed:\n{done.stderr[-2000:]}")
    opened, sign = done.stdout.split()[-2:]
    return float(opened), float(sign)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=200, help="signatures per provider and key")
    ap.add_argument("--one", metavar="SIGNER", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        opened, sign = time_provider(args.one, args.count, os.urandom(1024))
        print(opened, sign)
        return 0
    try:
        import spsdk
    except ImportError:
        sys.exit("bench_imx: SPSDK missing: pip install 'hsmsign[nxp]'")
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from hsmsign.nxp.signer import signer_string

    try:
        import spsdk_pkcs11  # noqa: F401

        have_plugin = True
    except ImportError:
        have_plugin = False

    base = Path(tempfile.mkdtemp(prefix="bench-imx-"))
    os.environ["HSMSIGN_MODE"] = "development"
    os.environ["BENCH_IMX_PIN"] = PIN
    try:
        module, pin_file = make_token(base)  # SOFTHSM2_CONF is set here and inherited by the children
        keys = {
            "RSA-2048 (HAB)": ("hab", rsa.generate_private_key(public_exponent=65537, key_size=2048), "01"),
            "EC P-384 (AHAB)": ("ahab", ec.generate_private_key(ec.SECP384R1()), "02"),
        }
        print(f"SPSDK {spsdk.__version__}; {args.count} signatures each over 1 KiB; SoftHSMv2 token")
        print(f"{'key':<17} {'provider':<9} {'open ms':>9} {'sign ms':>9} {'x file':>8}")
        for name, (label, private, key_id) in keys.items():
            pem = import_key(module, private, label, key_id, base)
            uri = f"pkcs11:token=bench-imx;object={label}?module-path={module}&pin-source=file:{pin_file}"
            configs = {
                "file": f"type=file;file_path={pem}",
                "hsmsign": signer_string(uri),
            }
            if have_plugin:
                configs["pkcs11"] = (
                    f"type=pkcs11;so_path={module};token_label=bench-imx;key_label={label};user_pin=$BENCH_IMX_PIN"
                )
            results = {kind: time_in_child(cfg, args.count) for kind, cfg in configs.items()}
            base_sign = results["file"][1]
            for kind, (opened, sign) in results.items():
                print(f"{name:<17} {kind:<9} {opened * 1e3:9.1f} {sign * 1e3:9.3f} {sign / base_sign:8.2f}")
        if not have_plugin:
            print("(spsdk-pkcs11 not installed: pip install spsdk-pkcs11 for the type=pkcs11 column)")
    finally:
        from hsmsign import token

        token.close_all()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
