#!/usr/bin/env python3
"""Benchmark: ``hsmsign audit`` against ``detect-secrets scan`` on the same tree.

Builds a synthetic build tree in a temporary directory -- layer-like text (recipes,
conf, Python), a ``bitbake -e`` style dump, task logs, binary images and a
rootfs tarball -- with secrets planted at known places (keys generated now, never
stored), then times both scanners on it and prints MB/s, the ratio, and which
planted secrets each one found.

    python3 bench/bench_audit.py [--text-mb 20] [--binary-mb 200] [--repeat 3]

Needs: cryptography; detect-secrets (pip install detect-secrets) for the comparison.
The test suite runs it on a tiny input (tests/integration/test_benches.py), to keep it working.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "meta-hsmsign" / "lib"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from hsmsign import audit  # noqa: E402

PIN_ATTR = "pin-value"  # spelled apart: no file outside tests/ holds a pin-value assignment
WORDS = (
    "do_compile do_install FILESEXTRAPATHS SRC_URI PACKAGECONFIG DEPENDS RDEPENDS inherit python "
    "export CFLAGS LDFLAGS machine distro layer recipe append prepend override version license "
    "checksum sstate deploy image rootfs kernel uboot fitimage swupdate verity token signature"
).split()


def _text_line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        return f'{rng.choice(WORDS).upper()}_{rng.randint(0, 999)} = "{" ".join(rng.choices(WORDS, k=6))}"'
    if kind < 0.5:
        return f'SRC_URI[sha256sum] = "{rng.randbytes(32).hex()}"'
    if kind < 0.8:
        return "NOTE: " + " ".join(rng.choices(WORDS, k=12))
    return "    " + " ".join(rng.choices(WORDS, k=8)) + "()"


def build_tree(base: Path, text_mb: int, binary_mb: int, seed: int = 7) -> dict[str, str]:
    """Write the tree; return {relative path: what was planted there}."""
    rng = random.Random(seed)
    planted: dict[str, str] = {}
    nosec = serialization.NoEncryption()
    layer = base / "layers" / "meta-acme"
    for sub in ("recipes-bsp/u-boot", "recipes-kernel/linux", "conf", "classes", "lib/acme"):
        (layer / sub).mkdir(parents=True, exist_ok=True)
    per_file = 256 * 1024
    nfiles = max(1, text_mb * 1024 * 1024 // per_file)
    subs = ["recipes-bsp/u-boot", "recipes-kernel/linux", "classes", "lib/acme"]
    for i in range(nfiles):
        lines = []
        size = 0
        while size < per_file:
            ln = _text_line(rng)
            lines.append(ln)
            size += len(ln) + 1
        ext = (".bb", ".bbappend", ".bbclass", ".py")[i % 4]
        (layer / subs[i % 4] / f"file{i:04d}{ext}").write_text("\n".join(lines) + "\n")
    # planted secrets
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, nosec
    )
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, nosec
    )
    (layer / "recipes-bsp/u-boot/files").mkdir(exist_ok=True)
    (layer / "recipes-bsp/u-boot/files/dev.key").write_bytes(rsa_pem)
    planted["layers/meta-acme/recipes-bsp/u-boot/files/dev.key"] = "RSA private key (PEM)"
    (layer / "conf" / "local.conf.sample").write_text(
        'MACHINE ??= "acme-board"\n'
        f'HSM_PKCS11_URI = "pkcs11:token=acme;object=fw?{PIN_ATTR}={rng.randint(10**5, 10**6)}"\n'
        f'SWUPDATE_AES_KEY = "{rng.randbytes(32).hex()}"\n'
        'UBOOT_SIGN_KEYDIR = "${TOPDIR}/keys"\n'
    )
    planted["layers/meta-acme/conf/local.conf.sample"] = "pin-value URI, AES key, key dir"
    (base / "setup-env.sh").write_text(
        f"#!/bin/sh\nexport MKIMAGE_SIGN_PIN={rng.randint(1000, 9999)}\n"
        "export FW_KEY=2b7e151628aed2a6abf7158809cf4f3c\n"
    )
    planted["setup-env.sh"] = "PIN, NIST example AES key"
    # bitbake -e dump and logs
    (base / "tmp" / "log").mkdir(parents=True)
    with open(base / "tmp" / "bitbake-e.txt", "w") as fh:
        for _ in range(max(1, text_mb * 1024 * 1024 // 8 // 80)):
            fh.write(f'{rng.choice(WORDS).upper()}="{" ".join(rng.choices(WORDS, k=8))}"\n')
        fh.write(f'HSM_USER_PIN="{rng.randint(10**5, 10**6)}"\n')
    planted["tmp/bitbake-e.txt"] = "PIN in the datastore dump"
    # binary images with a key inside, and a rootfs tarball with a key
    deploy = base / "tmp" / "deploy" / "images" / "acme-board"
    deploy.mkdir(parents=True)
    with open(deploy / "core-image.ext4", "wb") as fh:
        remaining = binary_mb * 1024 * 1024
        chunk = 4 << 20
        while remaining > 0:
            n = min(chunk, remaining)
            fh.write(rng.randbytes(n // 2) + bytes(n - n // 2))
            remaining -= n
            if remaining < chunk <= remaining + n:  # before the last 4 MiB
                fh.write(ec_pem)
        if binary_mb * 1024 * 1024 < chunk:  # an image smaller than one chunk: the key at its end
            fh.write(ec_pem)
    planted["tmp/deploy/images/acme-board/core-image.ext4"] = "EC private key inside an ext4 image"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("./etc/ssl/private/device.pem", rsa_pem), ("./etc/hostname", b"acme\n")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (deploy / "core-image.tar.gz").write_bytes(buf.getvalue())
    planted["tmp/deploy/images/acme-board/core-image.tar.gz"] = "RSA private key inside a rootfs tarball"
    planted.update(plant_formats(base, rng))
    planted.update(plant_containers(base, rng, rsa_pem, ec_pem))
    return planted


def _b64u(n: int, size: int = 0) -> str:
    raw = n.to_bytes(size or (n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def plant_formats(base: Path, rng: random.Random) -> dict[str, str]:
    """Secrets in the shapes a line-based scanner misses: long lines, other wrappings, other spellings."""
    nosec = serialization.NoEncryption()
    planted: dict[str, str] = {}
    ci = base / "ci"
    stamps = base / "tmp" / "stamps" / "acme-board"
    for d in (ci, stamps):
        d.mkdir(parents=True, exist_ok=True)

    def put(rel: str, text: str, what: str) -> None:
        (base / rel).write_text(text)
        planted[rel] = what

    # BitBake sigdata: one line of JSON, the task's code inside a string
    varvals = {f"VAR_{i}": " ".join(rng.choices(WORDS, k=5)) for i in range(300)}
    varvals.update(
        {
            "HSM_PIN": str(rng.randint(10**7, 10**8)),
            "SWUPDATE_AES_KEY": rng.randbytes(32).hex(),
            "do_sign": f"    mkimage -k 'pkcs11:object=fw?{PIN_ATTR}={rng.randint(1000, 9999)}' -F fit.itb\n",
        }
    )
    sig = json.dumps({"task": "do_sign", "varvals": varvals}, separators=(",", ":"), sort_keys=True)
    put(
        "tmp/stamps/acme-board/u-boot.do_sign.sigdata.0123",
        sig,
        "PIN, AES key, pin-value in one-line sigdata",
    )
    put(
        "ci/long-line.log",
        "NOTE: " + "x" * 300 + f" pkcs11:token=acme?{PIN_ATTR.upper()}=8642 done\n",
        "upper-case pin-value at column 300",
    )
    put(
        "ci/provision.sh",
        f"pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so -l --pin {rng.randint(10**5, 10**6)} -O\n",
        "pkcs11-tool --pin",
    )
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, nosec
    )
    lines = rsa_pem.decode().splitlines()
    body = "".join(lines[1:-1])
    put(
        "ci/key76.pem",
        lines[0]
        + "\n"
        + "\n".join(body[i : i + 76] for i in range(0, len(body), 76))
        + "\n"
        + lines[-1]
        + "\n",
        "PEM re-wrapped at 76 columns",
    )
    put("ci/signing.env", f"SIGNING_KEY={lines[0]}{body}{lines[-1]}\n", "one-line PEM in an env file")
    put(
        "ci/k8s-secret.yaml",
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\ndata:\n  tls.key: "
        + base64.b64encode(rsa_pem).decode()
        + "\n",
        "base64-wrapped PEM (Kubernetes Secret)",
    )
    en = ec.generate_private_key(ec.SECP256R1()).private_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64u(en.public_numbers.x, 32),
        "y": _b64u(en.public_numbers.y, 32),
        "d": _b64u(en.private_value, 32),
    }
    put("ci/jwks.json", json.dumps({"keys": [jwk]}), "JWK EC private key")
    put(
        "ci/oct.jwk",
        json.dumps({"kty": "oct", "k": base64.urlsafe_b64encode(rng.randbytes(32)).decode()}),
        "JWK oct (AES) key",
    )
    ssh2 = base64.b64encode(bytes.fromhex("3f6ff9eb") + rng.randbytes(900)).decode()
    put(
        "ci/id_rsa.ssh2",
        '---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: "rsa-key"\n'
        + "\n".join(ssh2[i : i + 70] for i in range(0, len(ssh2), 70))
        + "\n---- END SSH2 ENCRYPTED PRIVATE KEY ----\n",
        "SSH2 private key",
    )
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, nosec
    )
    put("ci/deploy-key.json", json.dumps({"deploy_key": ed.decode()}), "OpenSSH key in a JSON string")
    return planted


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members.items():
        out.append(b"%-16s%-12d%-6d%-6d%-8s%-10d`\n" % (name.encode() + b"/", 0, 0, 0, b"100644", len(data)))
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def plant_containers(base: Path, rng: random.Random, rsa_pem: bytes, ec_pem: bytes) -> dict[str, str]:
    """Secrets in containers and encodings a build tree also holds (zip, .deb, UTF-16, DER in images ...)."""
    planted: dict[str, str] = {}
    ec_key = serialization.load_pem_private_key(ec_pem, None)
    der = ec_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pin = f'HSM_PIN = "{rng.randint(10**7, 10**8)}"\n'
    extra = base / "tmp" / "deploy" / "extra"
    extra.mkdir(parents=True)
    (extra / "setup-win.ps1").write_bytes(("# Windows setup\r\n" + pin).encode("utf-16"))
    planted["tmp/deploy/extra/setup-win.ps1"] = "PIN in UTF-16 text"
    env = b"\0".join([b"PATH=/usr/bin", f"HSM_USER_PIN={rng.randint(10**5, 10**6)}".encode(), b"HOME=/root"])
    (extra / "environ").write_bytes(env + b"\0")
    planted["tmp/deploy/extra/environ"] = "PIN in a NUL-separated environment dump"
    (extra / "core.4242").write_bytes(
        b"\x7fELF" + rng.randbytes(2 << 20) + b"\0" + env + b"\0" + rng.randbytes(1 << 20)
    )
    planted["tmp/deploy/extra/core.4242"] = "PIN in a core file's environment"
    (extra / "u-boot.bin").write_bytes(rng.randbytes(3 << 20) + der + rng.randbytes(1 << 20))
    planted["tmp/deploy/extra/u-boot.bin"] = "DER EC key at an odd offset in a binary"
    (extra / "fw.key.der").write_bytes(der + bytes(512))
    planted["tmp/deploy/extra/fw.key.der"] = "DER key with trailing bytes"
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("sdk/README", "SDK\n" * 1000)
        zf.writestr("sdk/keys/dev.pem", rsa_pem)
    (extra / "sdk.zip").write_bytes(zbuf.getvalue())
    planted["tmp/deploy/extra/sdk.zip"] = "RSA key in a deflated zip"
    data_tar = _tar({"./etc/fw/signing.pem": ec_pem}, "w:xz")
    (extra / "fw_1.0_all.deb").write_bytes(
        _ar(
            {
                "debian-binary": b"2.0\n",
                "control.tar.gz": _tar({"./control": b"Package: fw\n"}, "w:gz"),
                "data.tar.xz": data_tar,
            }
        )
    )
    planted["tmp/deploy/extra/fw_1.0_all.deb"] = "EC key in a .deb (ar, tar.xz)"
    nested = pin.encode()
    for i in range(4):  # gzip, tar.gz, gzip, tar.gz: six levels
        nested = _tar({f"./layer{i}": nested}, "w:gz") if i % 2 else gzip.compress(nested)
    (extra / "nested.tar.gz").write_bytes(nested)
    planted["tmp/deploy/extra/nested.tar.gz"] = "PIN six containers deep"
    if shutil.which("zstd"):
        sig = json.dumps(
            {"task": "do_sign", "varvals": {"HSM_URI": f"pkcs11:token=a;object=b?{PIN_ATTR}=4711"}}
        )
        zst = subprocess.run(["zstd", "-q", "-c"], input=sig.encode(), capture_output=True, check=True).stdout
        (extra / "u-boot.do_sign.sigdata.zst").write_bytes(zst)
        planted["tmp/deploy/extra/u-boot.do_sign.sigdata.zst"] = "pin-value in zstd single-line sigdata"
    return planted


def tree_bytes(base: Path) -> int:
    return sum(p.stat().st_size for p in base.rglob("*") if p.is_file())


def run_hsmsign(base: Path) -> tuple[float, set[str]]:
    t = time.perf_counter()
    findings, _, _ = audit.scan_paths([str(base)])
    dt = time.perf_counter() - t
    return dt, {os.path.relpath(f.source.split("!", 1)[0], base) for f in findings}


def run_detect_secrets(base: Path) -> tuple[float, set[str]] | None:
    exe = shutil.which("detect-secrets")
    if exe is None:
        return None
    t = time.perf_counter()
    done = subprocess.run(
        [exe, "scan", "--all-files", str(base)], capture_output=True, text=True, check=False, cwd=base
    )
    dt = time.perf_counter() - t
    try:
        results = json.loads(done.stdout).get("results", {})
    except json.JSONDecodeError:
        results = {}
    return dt, {os.path.relpath(os.path.join(base, p), base) for p in results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-mb", type=int, default=20)
    ap.add_argument("--binary-mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        base = Path(tmp)
        planted = build_tree(base, args.text_mb, args.binary_mb)
        total = tree_bytes(base)
        text_only = total - sum(p.stat().st_size for p in (base / "tmp" / "deploy").rglob("*") if p.is_file())
        print(
            f"tree: {total / 1e6:.1f} MB ({text_only / 1e6:.1f} MB text), {len(planted)} files with secrets"
        )
        have_ds = shutil.which("detect-secrets") is not None
        layers = base / "layers"
        layer_bytes = tree_bytes(layers)
        rows = []
        for label, where, size in (("whole tree", base, total), ("layers/ (text only)", layers, layer_bytes)):
            ours = min((run_hsmsign(where) for _ in range(args.repeat)), key=lambda r: r[0])
            theirs = run_detect_secrets(where) if have_ds else None
            rows.append((label, where, size, ours, theirs))
            print(f"{label}: {size / 1e6:.1f} MB")
            print(f"  hsmsign audit  : {ours[0]:7.2f} s {size / ours[0] / 1e6:8.1f} MB/s")
            if theirs is None:
                print("  detect-secrets : not installed (pip install detect-secrets)")
                continue
            print(f"  detect-secrets : {theirs[0]:7.2f} s {size / theirs[0] / 1e6:8.1f} MB/s")
            print(f"  ratio          : hsmsign {theirs[0] / ours[0]:.1f}x faster")
        _, _, _, ours, theirs = rows[0]
        print("planted secrets found (hsmsign, detect-secrets):")
        for path, what in sorted(planted.items()):
            ds = "-" if theirs is None else ("Y" if path in theirs[1] else "-")
            print(f"  {'Y' if path in ours[1] else '-'} {ds}  {path}: {what}")
        print(
            f"files flagged without a planted secret: hsmsign {len(ours[1] - set(planted))}, "
            f"detect-secrets {'n/a' if theirs is None else len(theirs[1] - set(planted))}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
