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

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

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


def assert_pin_nowhere(build: Build, pin: str) -> None:
    """The PIN is in no run script, log, signature file or stamp of the build."""
    tmpdirs = build.tmpdirs()
    assert tmpdirs, f"no TMPDIR in {build.topdir}"
    secret = pin.encode()
    for tmp in tmpdirs:
        for base, _dirs, files in os.walk(tmp):
            for name in files:
                path = os.path.join(base, name)
                if os.path.islink(path) or not (
                    name.startswith(("run.", "log.")) or "sigdata" in name or "siginfo" in name
                    or "/stamps/" in path or "/log/" in path
                ):  # fmt: skip
                    continue
                with open(path, "rb") as fh:
                    assert secret not in fh.read(), path


def started_tasks(output: str) -> set[str]:
    """``recipe:do_task`` of every task BitBake started, from its (non-interactive) output."""
    found = re.findall(r"NOTE: recipe ([^:]+?)-[^-:]+-r\d+: task (do_\w+): Started", output)
    return {f"{recipe}:{task}" for recipe, task in found}
