"""Real BitBake for the layer tests: where the checkouts are, a build directory, one run.

The paths come from the environment (scripts/run-layer-tests sets them and runs the
tests as a plain user, since BitBake refuses root):

  HSMSIGN_TEST_BITBAKE        BitBake checkout (2.8 scarthgap, 2.18 wrynose, 2.19 master)
  HSMSIGN_TEST_OECORE         openembedded-core checkout of the same release
  HSMSIGN_TEST_METAOE         meta-openembedded checkout (meta-oe, meta-python)
  HSMSIGN_TEST_METASWUPDATE   meta-swupdate checkout (optional)
  HSMSIGN_TEST_PYTHON         a Python with python-pkcs11 and cryptography (signing tasks)
  HSMSIGN_TEST_UBOOT_TOOLS    U-Boot 2024.04+ tools (uboot-mkimage, uboot-fit_check_sign:
                              oe-core's uboot-sign runs 'mkimage -f auto-conf')
  HSMSIGN_TEST_UBOOT_SANDBOX  U-Boot sandbox (u-boot and its u-boot.dtb, built from Debian's
                              u-boot source): boots the signed kernel FIT with bootm
  HSMSIGN_TEST_BUILDROOT      one directory for this run's build directories (reuse it to
                              keep their parse caches)
  HSMSIGN_TEST_BUILDDIR       the main build's directory (keeps its parse cache)
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LAYER = os.path.join(ROOT, "meta-hsmsign")
LIB = os.path.join(LAYER, "lib")
TEST_LAYER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "meta-hsmsign-test")
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"

BITBAKE = os.environ.get("HSMSIGN_TEST_BITBAKE", "")
OECORE = os.environ.get("HSMSIGN_TEST_OECORE", "")
METAOE = os.environ.get("HSMSIGN_TEST_METAOE", "")
METASWUPDATE = os.environ.get("HSMSIGN_TEST_METASWUPDATE", "")
PYTHON = os.environ.get("HSMSIGN_TEST_PYTHON", "")
UBOOT_TOOLS = os.environ.get("HSMSIGN_TEST_UBOOT_TOOLS", "")
UBOOT_SANDBOX = os.environ.get("HSMSIGN_TEST_UBOOT_SANDBOX", "")
HAVE_BITBAKE = bool(BITBAKE and OECORE and METAOE)
SKIP_REASON = "set HSMSIGN_TEST_BITBAKE, HSMSIGN_TEST_OECORE, HSMSIGN_TEST_METAOE (scripts/run-layer-tests)"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")

# what every test module that runs BitBake needs; NEEDS_PYTHON: one whose tasks sign
NEEDS_BITBAKE = [
    pytest.mark.skipif(not HAVE_BITBAKE, reason=SKIP_REASON),
    pytest.mark.skipif(IS_ROOT, reason="BitBake refuses to run as root"),
]
# Debian's pseudo (the tool oe-core builds as pseudo-native) and its library's directory: it runs
# the fakeroot tasks (do_install, do_package) of the stand-in builds, with HOST_PSEUDO set
PSEUDO_LIBDIR = next((os.path.dirname(p) for p in sorted(glob.glob("/usr/lib/*/pseudo/libpseudo.so"))), "")
HOST_PSEUDO = {"PSEUDO_SYSROOT": "", "FAKEROOTBASEENV:append": f" PSEUDO_LIBDIR={PSEUDO_LIBDIR}"}
NEEDS_PSEUDO = pytest.mark.skipif(
    not PSEUDO_LIBDIR or not os.path.exists("/usr/bin/pseudo"), reason="apt-get install pseudo"
)
NEEDS_PYTHON = pytest.mark.skipif(not PYTHON, reason="set HSMSIGN_TEST_PYTHON (python-pkcs11, cryptography)")


def corenames() -> list[str]:
    try:
        with open(os.path.join(OECORE, "meta", "conf", "layer.conf"), encoding="utf-8") as fh:
            found = re.search(r'^LAYERSERIES_CORENAMES = "([^"]*)"', fh.read(), re.M)
    except OSError:
        return []
    return found.group(1).split() if found else []


# scarthgap: kernel-fitimage in the kernel recipe; wrynose and later: linux-yocto-fitimage
SCARTHGAP = corenames()[:1] == ["scarthgap"]


@dataclass
class Build:
    """One build directory; ``env``: what every bitbake run of it gets on top of the basics."""

    topdir: str
    path_first: str = ""
    env: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: int = 3600, tool: str = "bitbake"
    ) -> subprocess.CompletedProcess[str]:
        """``bitbake ARGS`` in the build directory (``tool``: another of BitBake's programs,
        e.g. ``bitbake-getvar``)."""
        path = os.path.join(BITBAKE, "bin") + ":/usr/bin:/bin"
        if self.path_first:
            path = self.path_first + ":" + path
        full_env = {
            "PATH": path,
            "HOME": os.environ.get("HOME", self.topdir),
            "LANG": "en_US.UTF-8",
            "LC_ALL": "en_US.UTF-8",
            "BBPATH": self.topdir,
        }
        full_env.update(self.env)
        full_env.update(env or {})
        start = time.monotonic()
        for attempt in (1, 2):
            done = subprocess.run(
                [tool, *args],
                cwd=self.topdir,
                env=full_env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            # Seen once at a load of 8 (master): bitbake exited 1 and printed nothing, nor
            # did the server log. That is no answer to what a test asks: once more.
            if done.returncode == 0 or (done.stdout + done.stderr).strip() or attempt == 2:
                break
            sys.stderr.write(f"{tool} {' '.join(args)}: exit {done.returncode}, no output: once more\n")
        self.timings[" ".join(args)] = time.monotonic() - start
        if not (done.stdout + done.stderr).strip():
            # the UI printed nothing: the server's log says why
            log = os.path.join(self.topdir, "bitbake-cookerdaemon.log")
            if os.path.exists(log):
                with open(log, encoding="utf-8", errors="replace") as fh:
                    done.stderr = fh.read()[-6000:]
        sys.stderr.write(
            f"{tool} {' '.join(args)}: {time.monotonic() - start:.1f} s, exit {done.returncode}\n"
        )
        return done

    def tmpdirs(self) -> list[str]:
        return [os.path.join(self.topdir, n) for n in os.listdir(self.topdir) if n.startswith("tmp")]


def build_dir(name: str) -> str:
    """The directory of build ``name`` under HSMSIGN_TEST_BUILDROOT (or next to
    HSMSIGN_TEST_BUILDDIR); "" when neither is set (the test makes a temporary one)."""
    root = os.environ.get("HSMSIGN_TEST_BUILDROOT", "")
    if root:
        return os.path.join(root, name)
    main = os.environ.get("HSMSIGN_TEST_BUILDDIR", "")
    return f"{main}-{name}" if main else ""


def layer_paths(*extra: str, swupdate: bool = True) -> list[str]:
    found = [
        os.path.join(OECORE, "meta"),
        os.path.join(METAOE, "meta-oe"),
        os.path.join(METAOE, "meta-python"),
    ]
    if swupdate and METASWUPDATE:
        found.append(METASWUPDATE)
    return [*found, LAYER, *extra]


BASE_LOCAL_CONF = (
    'MACHINE = "qemuarm64"\nDISTRO = ""\nBB_NO_NETWORK = "1"\nCONNECTIVITY_CHECK_URIS = ""\n'
    'BB_NUMBER_THREADS = "2"\nBB_NUMBER_PARSE_THREADS = "2"\n'
)


def write_conf(topdir: str, local: str, layers: list[str]) -> None:
    conf = os.path.join(topdir, "conf")
    os.makedirs(conf, exist_ok=True)
    with open(os.path.join(conf, "bblayers.conf"), "w", encoding="utf-8") as fh:
        fh.write('BBPATH = "${TOPDIR}"\nBBFILES ?= ""\nBBLAYERS = "' + " ".join(layers) + '"\n')
    with open(os.path.join(conf, "local.conf"), "w", encoding="utf-8") as fh:
        fh.write(BASE_LOCAL_CONF + local)


def hsmsign(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``hsmsign ARGS`` from the layer's own library with HSMSIGN_TEST_PYTHON."""
    full_env = {**os.environ, "PYTHONPATH": LIB, **(env or {})}
    return subprocess.run(
        [PYTHON or sys.executable, "-m", "hsmsign", *args],
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
    )


def dev_token(home: str) -> str:
    """Create the development token in ``home`` (``hsmsign dev-init``); return its PIN."""
    done = hsmsign("dev-init", env={"HSMSIGN_DEV_HOME": home})
    if done.returncode != 0:
        raise RuntimeError(f"hsmsign dev-init failed: {done.stderr}")
    with open(os.path.join(home, "user-pin"), encoding="utf-8") as fh:
        return fh.read().strip()


def tmpdir_files(build: Build) -> Iterator[str]:
    """Every file under the build's TMPDIRs (links left out)."""
    tmpdirs = build.tmpdirs()
    assert tmpdirs, f"no TMPDIR in {build.topdir}"
    for tmp in tmpdirs:
        for base, _dirs, files in os.walk(tmp):
            for name in files:
                path = os.path.join(base, name)
                if not os.path.islink(path):
                    yield path


def assert_pin_nowhere(build: Build, pin: str) -> None:
    """The PIN is in no run script, log, signature file or stamp of the build."""
    secret = pin.encode()
    for path in tmpdir_files(build):
        name = os.path.basename(path)
        if (
            name.startswith(("run.", "log.")) or "sigdata" in name or "siginfo" in name
            or "/stamps/" in path or "/log/" in path
        ):  # fmt: skip
            with open(path, "rb") as fh:
                assert secret not in fh.read(), path


def started_tasks(output: str) -> set[str]:
    """``recipe:do_task`` of every task BitBake started, from its (non-interactive) output."""
    found = re.findall(r"NOTE: recipe ([^:]+?)-[^-:]+-r\d+: task (do_\w+): Started", output)
    return {f"{recipe}:{task}" for recipe, task in found}


def task_graph(build: Build, target: str) -> dict[str, set[str]]:
    """``recipe.do_task`` -> the tasks it runs after, as BitBake resolved them for ``target``
    (``bitbake -g``: task-depends.dot in the build directory)."""
    done = build.run("-g", target)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    graph: dict[str, set[str]] = {}
    with open(os.path.join(build.topdir, "task-depends.dot"), encoding="utf-8") as fh:
        for task, parent in re.findall(r'^"([^"]+)" -> "([^"]+)"$', fh.read(), re.M):
            graph.setdefault(task, set()).add(parent)
    return graph


def assert_no_secrets(build: Build, pin: str, names: Sequence[str] = ()) -> None:
    """No file under TMPDIR (logs, run files, sigdata, work, deploy; up to 64 MiB each) holds the
    PIN or a PEM private key, and none is called one of ``names``."""
    secret = pin.encode()
    for path in tmpdir_files(build):
        assert os.path.basename(path) not in names, path
        if not os.path.isfile(path) or os.path.getsize(path) > 64 << 20:
            continue
        with open(path, "rb") as fh:
            data = fh.read()
        assert secret not in data, f"PIN in {path}"
        assert not PEM_PRIVATE.search(data), f"private key in {path}"


# --- builds of the test layer's stand-in recipes --------------------------------------------


def standin_topdir(name: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The build directory ``name`` (build_dir), or a temporary one; made."""
    topdir = build_dir(name) or str(tmp_path_factory.mktemp(f"bb-{name}"))
    os.makedirs(topdir, exist_ok=True)
    return topdir


def standin_token(topdir: str, labels: Sequence[str]) -> tuple[str, str, str]:
    """The development token in TOPDIR/hsmsign-dev (``hsmsign dev-init``) with an RSA-2048 key
    per label (made once), and its PIN in TOPDIR/secrets/hsm-pin, the file a URI's pin-source
    names: (devhome, pin, pin_file)."""
    devhome = os.path.join(topdir, "hsmsign-dev")
    pin = dev_token(devhome)
    env = {"SOFTHSM2_CONF": os.path.join(devhome, "softhsm2.conf"), "HSM_TEST_PIN": pin}
    for label in labels:
        uri = f"pkcs11:token=hsmsign-dev;object={label}?module-path={SOFTHSM}"
        common = ("--uri", uri, "--mode", "development", "--pin-env", "HSM_TEST_PIN")
        if hsmsign("info", *common, env=env).returncode != 0:
            made = hsmsign("keygen", *common, "--type", "rsa:2048", env=env)
            assert made.returncode == 0, made.stderr
    return devhome, pin, write_pin_file(os.path.join(topdir, "secrets"), pin)


def write_pin_file(pin_dir: str, pin: str) -> str:
    """The PIN file the URIs name (pin-source=file:), readable by the build user only."""
    os.makedirs(pin_dir, exist_ok=True)
    pin_file = os.path.join(pin_dir, "hsm-pin")
    with open(pin_file, "w", encoding="utf-8") as fh:
        fh.write(pin)
    os.chmod(pin_file, 0o600)
    return pin_file


@dataclass
class StandinBuild:
    """A build that parses only the stand-in recipes in TEST_LAYER/<FOLDER>/*/*.bb and, of the
    layer's own recipes, only KEEP (a folder under recipes-, e.g. "bsp/hsmsign-uefi-db"; none
    when empty). oe-core's, meta-oe's and meta-python's recipes are masked and the native tools
    of NATIVE are taken as provided: nothing is fetched or built for the host. The signing
    command is the layer's hsmsign run by HSMSIGN_TEST_PYTHON, in development mode with the
    token in ``devhome``."""

    build: Build
    pin: str
    devhome: str
    pin_file: str

    FOLDER: ClassVar[str] = ""
    KEEP: ClassVar[str] = ""
    MACHINE: ClassVar[str] = "qemux86-64"
    NATIVE: ClassVar[str] = "quilt-native patch-replacement-native virtual/fakeroot-native"
    # other layers whose classes the stand-ins use ({collection: path}); their recipes are masked
    LAYERS: ClassVar[dict[str, str]] = {}

    def write_conf(self, settings: dict[str, str], lines: Sequence[str] = ()) -> None:
        """conf/local.conf and conf/bblayers.conf: the stand-in build with ``settings`` on top of
        the common ones, and ``lines`` added as they are."""
        common = {
            "MACHINE": self.MACHINE,
            "HSMSIGN_MODE": "development",
            "HSMSIGN_DEV_HOME": self.devhome,
            "HSM_PKCS11_URI": f"pkcs11:token=hsmsign-dev;object=dev-signing?module-path={SOFTHSM}",
            "HSMSIGN_CMD": f"env PYTHONPATH={LIB} {PYTHON} -m hsmsign",
        }
        masks = [
            os.path.join(OECORE, "meta", "recipes-"),
            os.path.join(METAOE, "meta-oe", ""),
            os.path.join(METAOE, "meta-python", "recipes-"),
            os.path.join(LAYER, "recipes-") + (f"(?!{self.KEEP}/)" if self.KEEP else ""),
            os.path.join(TEST_LAYER, "recipes-test", ""),
            os.path.join(TEST_LAYER, "dynamic-layers", ""),
            *(os.path.join(path, "recipes-") for path in self.LAYERS.values()),
        ]
        # a layer whose recipes are all masked: no warning that its pattern matched nothing
        empty = ("core", "meta-python", "openembedded-layer", *self.LAYERS)
        empty += () if self.KEEP else ("hsmsign",)
        local = [
            'INHERIT += "hsmsign"',
            *(f'{name} = "{value}"' for name, value in {**common, **settings}.items()),
            *lines,
            f'BBFILES += "{TEST_LAYER}/{self.FOLDER}/*/*.bb"',
            f'ASSUME_PROVIDED += "{self.NATIVE}"',
            'BBMASK += "' + " ".join(masks) + '"',
            *(f'BBFILE_PATTERN_IGNORE_EMPTY_{c} = "1"' for c in empty),
        ]
        if self.KEEP:
            # offline: no cross binutils for the layer recipe's (empty) sysroot
            local.append(f'POPULATESYSROOTDEPS:class-target:pn-{os.path.basename(self.KEEP)} = ""')
        layers = layer_paths(TEST_LAYER, swupdate=False)
        layers[3:3] = self.LAYERS.values()  # after oe-core and meta-openembedded, before meta-hsmsign
        write_conf(self.build.topdir, "\n".join(local) + "\n", layers)

    def bitbake(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.build.run(*args)

    def deploy_dir(self) -> str:
        found = glob.glob(os.path.join(self.build.topdir, "tmp*", "deploy", "images", self.MACHINE))
        assert found, "no deploy directory"
        return found[0]

    def workdir(self, pn: str) -> str:
        found = glob.glob(os.path.join(self.build.topdir, "tmp*", "work", "*", pn, "*"))
        assert len(found) == 1, found
        return found[0]
