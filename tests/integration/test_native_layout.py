"""hsmsign-native's installed layout runs: the recipe's own do_install, then the command.

The recipe's ``do_install`` (meta-hsmsign/recipes-devtools/hsmsign/hsmsign-native_*.bb)
is read from the recipe and run with sh, with ``${S}`` the layer's own library
and ``${D}`` a temporary image directory, the way BitBake would. The installed
``hsmsign`` starts with ``#!/usr/bin/env nativepython3``: here ``nativepython3``
is the interpreter running these tests, so ``scripts/test-yocto-pythons`` proves
the layout with the Python packages scarthgap and wrynose ship (python-pkcs11
0.7.0, their cryptography and asn1crypto). No BitBake needed: python3-native and
its modules cannot be built offline, so the interpreter stands in for them.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.conftest import SoftHsm, require

ROOT = Path(__file__).resolve().parents[2]
RECIPE = sorted(
    glob.glob(str(ROOT / "meta-hsmsign" / "recipes-devtools" / "hsmsign" / "hsmsign-native_*.bb"))
)[-1]
SITE = "/usr/lib/python3/site-packages"  # ${PYTHON_SITEPACKAGES_DIR}, relative to ${D}


def do_install_script() -> str:
    with open(RECIPE, encoding="utf-8") as fh:
        text = fh.read()
    found = re.search(r"^do_install\(\) \{\n(.*?)^\}", text, re.S | re.M)
    assert found is not None, f"no do_install in {RECIPE}"
    return found.group(1)


def install(dest: Path) -> Path:
    """Run the recipe's do_install into ``dest``; return the installed bin directory."""
    src = dest / "src"
    (src / "hsmsign").parent.mkdir(parents=True)
    os.symlink(ROOT / "meta-hsmsign" / "lib" / "hsmsign", src / "hsmsign")
    image = dest / "image"
    values = {
        "D": str(image),
        "S": str(src),
        "PYTHON_SITEPACKAGES_DIR": SITE,
        "bindir": "/usr/bin",
        "PYTHON": sys.executable,  # python3native's ${PYTHON}: the release's python3-native
    }
    script = re.sub(r"\$\{([A-Za-z_]+)\}", lambda m: values[m.group(1)], do_install_script())
    # cp -R of a symlinked directory: follow it (-L), as the fetcher's copy in ${S} is real
    script = script.replace("cp -R ", "cp -RL ")
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)  # not in a BitBake task's environment
    subprocess.run(["sh", "-e", "-c", script], check=True, capture_output=True, env=env)
    return image / "usr" / "bin"


def test_installed_layout_signs_with_nativepython3(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    bindir = install(tmp_path)
    hsmsign = bindir / "hsmsign"
    assert hsmsign.read_text().startswith("#!/usr/bin/env nativepython3\n")
    package = tmp_path / "image" / SITE.lstrip("/") / "hsmsign"
    assert_byte_compiled(package)
    shim = tmp_path / "shim"
    shim.mkdir()
    # a wrapper, not a symlink: a venv's interpreter knows its venv by its own path
    (shim / "nativepython3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "nativepython3").chmod(0o755)
    env = dict(softhsm.env)
    env.pop("PYTHONPATH", None)  # only what the recipe installed
    env["PYTHONPATH"] = str(tmp_path / "image" / SITE.lstrip("/"))
    env["PATH"] = f"{shim}:{bindir}:/usr/bin:/bin"
    env["HSMSIGN_MODE"] = "development"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(hsmsign), *argv], env=env, capture_output=True, text=True, check=False)

    version = run("--version")
    assert version.returncode == 0 and re.search(r"\d+\.\d+", version.stdout), version.stdout + version.stderr
    # as in a task under pseudo (PYTHONDONTWRITEBYTECODE=1): hsmsign's code comes from the
    # installed .pyc files, none is compiled from source, none is written
    before = sorted(package.rglob("*"))
    base_env = {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"}
    verbose = subprocess.run(
        [str(hsmsign), "doctor", "--help"],
        env={**base_env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONVERBOSE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    loaded = re.findall(r"^# code object from '?(\S+?)'?$", verbose.stderr, re.M)
    ours = [path for path in loaded if f"{os.sep}hsmsign{os.sep}" in path]
    assert len(ours) >= 5, verbose.stderr[-2000:]
    assert all(path.endswith(".pyc") for path in ours), [p for p in ours if not p.endswith(".pyc")]
    assert sorted(package.rglob("*")) == before
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"hsmsign-native layout\n" * 100)
    signed = run("sign", "--uri", rsa2048, "--output", str(tmp_path / "payload.sig"), str(payload))
    assert signed.returncode == 0, signed.stderr
    pem = run("pubkey", "--uri", rsa2048)
    assert pem.returncode == 0, pem.stderr
    key = serialization.load_pem_public_key(pem.stdout.encode())
    key.verify(  # type: ignore[union-attr, call-arg]
        (tmp_path / "payload.sig").read_bytes(), payload.read_bytes(), padding.PKCS1v15(), hashes.SHA256()
    )
    (tmp_path / "kernel.bin").write_bytes(b"stand-in kernel\n" * 512)
    (tmp_path / "kernel.its").write_text(ITS)
    mkimage = shutil.which("mkimage")
    require(mkimage is not None, "mkimage", "apt-get install u-boot-tools", env="HSMSIGN_REQUIRE_TOOLS")
    fit = tmp_path / "kernel.itb"
    made = subprocess.run(
        [str(mkimage), "-f", "kernel.its", str(fit)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    fit_signed = run("fit", "sign", "--uri", rsa2048, "--key-name", "rsa2048", "--json", str(fit))
    assert fit_signed.returncode == 0, fit_signed.stderr
    assert "/configurations/conf-1/" in fit_signed.stdout, fit_signed.stdout


def assert_byte_compiled(package: Path) -> None:
    """Every module has a .pyc for this interpreter, checked-hash, of the source beside it."""
    sources = sorted(package.rglob("*.py"))
    assert sources
    for source in sources:
        pyc = source.parent / "__pycache__" / f"{source.stem}.{sys.implementation.cache_tag}.pyc"
        assert pyc.is_file(), f"{source.relative_to(package)} was not byte-compiled"
        header = pyc.read_bytes()[:16]
        assert header[:4] == importlib.util.MAGIC_NUMBER, f"{pyc.name}: not this interpreter's"
        flags = int.from_bytes(header[4:8], "little")
        assert flags == 0b11, f"{pyc.name}: flags {flags:#b}, not checked-hash"
        assert header[8:16] == importlib.util.source_hash(source.read_bytes()), f"{pyc.name}: another source"
    assert not [p for p in package.rglob("*.pyc") if Path(p).parent.name != "__pycache__"]


ITS = """/dts-v1/;
/ {
	description = "hsmsign-native layout test";
	#address-cells = <1>;
	images {
		kernel-1 {
			data = /incbin/("kernel.bin");
			type = "kernel"; arch = "arm64"; os = "linux"; compression = "none";
			load = <0x80080000>; entry = <0x80080000>;
			hash-1 { algo = "sha256"; };
		};
	};
	configurations {
		default = "conf-1";
		conf-1 {
			kernel = "kernel-1";
			signature-1 { algo = "sha256,rsa2048"; key-name-hint = "rsa2048"; };
		};
	};
};
"""
