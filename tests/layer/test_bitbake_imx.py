"""NXP i.MX in real BitBake: imx-boot's image AHAB-signed by do_hsmsign_imx, checked by NXP's verifier.

A stand-in ``imx-boot`` recipe (tests/layer/meta-hsmsign-test/imx/) puts an unsigned AHAB
image (made here with SPSDK's ``nxpimage ahab export``, one OEM container) where
meta-freescale's imx-boot leaves its images; the layer's hook (hsmsign-imx.bbclass) signs
it between do_compile and do_install/do_deploy through SPSDK with four SRK keys in a
SoftHSM development token, and deploys the SRK table and fuse words next to it.
``nxpimage ahab verify`` accepts the deployed image, prints the deployed fuse words and the
SRK that HSM_PKCS11_URI_IMX names, and refuses the image with one byte changed. The PIN
(handed through HSMSIGN_PIN_ENV) is in no file under TMPDIR, and no private key is. Another
key re-signs (the key identity is in the task hashes). On an i.MX 8M machine (HAB) the task
stops instead of deploying an unsigned image.

SPSDK is in no Yocto layer: the class runs the layer's hsmsign with HSMSIGN_SPSDK_PYTHON.
Here that is HSMSIGN_TEST_SPSDK_PYTHON (scripts/run-layer-tests finds the venv that
``scripts/test-imx --venv`` builds); without it these tests skip (fail in CI).
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.layer import bbenv
from tests.layer.bbenv import LAYER, SOFTHSM, Build, StandinBuild

SPSDK_PYTHON = os.environ.get("HSMSIGN_TEST_SPSDK_PYTHON", "")
# meta-freescale next to the release's openembedded-core (the ../shared/yocto snapshots have it)
FREESCALE = os.path.join(os.path.dirname(bbenv.OECORE), "meta-freescale") if bbenv.OECORE else ""
FAMILY = "mimx9352"
MACHINE = "qemuarm64"
IMAGE = f"imx-boot-{MACHINE}-sd.bin-flash_singleboot"
# what meta-freescale's imx-base.inc gives an i.MX 93 and an i.MX 8M Mini machine
MX93 = "mx9-generic-bsp:mx9-nxp-bsp:mx93-generic-bsp:mx93-nxp-bsp:"
MX8MM = "mx8-generic-bsp:mx8-nxp-bsp:mx8m-generic-bsp:mx8m-nxp-bsp:mx8mm-generic-bsp:mx8mm-nxp-bsp:"

pytestmark = bbenv.NEEDS_BITBAKE
needs_spsdk = [
    bbenv.NEEDS_PYTHON,
    pytest.mark.skipif(
        not (SPSDK_PYTHON and os.access(SPSDK_PYTHON, os.X_OK)),
        reason="set HSMSIGN_TEST_SPSDK_PYTHON to a Python with SPSDK (scripts/test-imx --venv builds one)",
    ),
]


def with_spsdk(test: Any) -> Any:
    for mark in needs_spsdk:
        test = mark(test)
    return test


def nxpimage(*args: str) -> subprocess.CompletedProcess[str]:
    """NXP's own command line from the SPSDK venv."""
    exe = os.path.join(os.path.dirname(SPSDK_PYTHON), "nxpimage")
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False)


# 'nxpimage ahab verify' of several images in one SPSDK process (its import takes seconds)
VERIFY_MANY = """
import json, sys
from click.testing import CliRunner
from spsdk.apps.nxpimage import main
out = {}
for path in sys.argv[2:]:
    r = CliRunner().invoke(main, ["ahab", "verify", "-f", sys.argv[1], "-b", path])
    out[path] = [r.exit_code, r.output]
print(json.dumps(out))
"""


def ahab_verify(*paths: str) -> list[tuple[int, str]]:
    done = subprocess.run(
        [SPSDK_PYTHON, "-c", VERIFY_MANY, FAMILY, *paths], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    return [(int(found[p][0]), str(found[p][1])) for p in paths]


@dataclass
class ImxBuild(StandinBuild):
    unsigned: str
    srk_uris: list[str]

    FOLDER = "imx"
    MACHINE = MACHINE  # (the module's: qemuarm64)

    def conf(self, overrides: str = MX93, **changes: str) -> None:
        settings = {
            "HSMSIGN_PIN_ENV": "HSM_TEST_PIN",
            "HSM_PKCS11_URI_IMX": self.srk_uris[1],
            "HSMSIGN_IMX_SRK_URIS": " ".join(self.srk_uris),
            "HSMSIGN_SPSDK_PYTHON": SPSDK_PYTHON,
            "HSMSIGN_TEST_IMX_IMAGE": self.unsigned,
            **changes,
        }
        self.write_conf(settings, [f'MACHINEOVERRIDES =. "{overrides}"'])


# the four SRK keys in one process (each 'hsmsign keygen' would start Python anew)
KEYGEN = """
import sys
from hsmsign.cli import main
for uri in sys.argv[1:]:
    if main(["keygen", "--uri", uri, "--type", "ec:secp384r1", "--mode", "development",
             "--pin-env", "HSM_TEST_PIN"]) != 0:
        sys.exit(1)
"""


def scratch_token(home: str) -> str:
    """A SoftHSM token 'hsmsign-dev' in ``home`` (softhsm2.conf where the class looks in
    development mode, HSMSIGN_DEV_HOME) with four SRK keys; returns its PIN."""
    conf = os.path.join(home, "softhsm2.conf")
    pin_file = os.path.join(home, "user-pin")
    if os.path.exists(pin_file):
        with open(pin_file, encoding="utf-8") as fh:
            return fh.read().strip()
    tokens = os.path.join(home, "tokens")
    os.makedirs(tokens, exist_ok=True)
    with open(conf, "w", encoding="utf-8") as fh:
        fh.write(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(8)
    env = {**os.environ, "SOFTHSM2_CONF": conf, "HSM_TEST_PIN": pin}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "hsmsign-dev", "--pin", pin,
         "--so-pin", secrets.token_hex(8)],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    made = subprocess.run(
        [bbenv.PYTHON, "-c", KEYGEN, *srk_uris()],
        env={**env, "PYTHONPATH": bbenv.LIB}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with open(pin_file, "w", encoding="utf-8") as fh:
        fh.write(pin)
    os.chmod(pin_file, 0o600)
    return pin


def srk_uris() -> list[str]:
    return [f"pkcs11:token=hsmsign-dev;object=test-imx-srk{i}?module-path={SOFTHSM}" for i in range(4)]


@pytest.fixture(scope="module")
def imx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImxBuild]:
    topdir = bbenv.standin_topdir("imx", tmp_path_factory)
    devhome = os.path.join(topdir, "hsmsign-dev")
    os.makedirs(devhome, exist_ok=True)
    pin = scratch_token(devhome)
    uris = srk_uris()
    # the unsigned boot image: one OEM container (what imx-mkimage leaves unsigned)
    work = os.path.join(topdir, "imx-input")
    os.makedirs(work, exist_ok=True)
    unsigned = os.path.join(work, "flash.bin")
    if not os.path.exists(unsigned):
        payload = os.path.join(work, "payload.bin")
        with open(payload, "wb") as fh:
            fh.write(os.urandom(4096))
        export = {
            "family": FAMILY,
            "revision": "latest",
            "target_memory": "standard",
            "output": unsigned,
            "containers": [{"container": {"srk_set": "none", "images": [{
                "image_path": payload, "load_address": "0x1FFC0000", "entry_point": "0x1FFC0000",
                "image_type": "executable", "core_id": "cortex-m33",
            }]}}],
        }  # fmt: skip
        config = os.path.join(work, "export.json")
        with open(config, "w", encoding="utf-8") as fh:
            json.dump(export, fh)
        done = nxpimage("ahab", "export", "-c", config)
        assert done.returncode == 0, done.stdout + done.stderr
    # the PIN reaches the tasks from the client environment (HSMSIGN_PIN_ENV)
    build = Build(topdir, env={"HSM_TEST_PIN": pin})
    ib = ImxBuild(build, pin, devhome, os.path.join(devhome, "user-pin"), unsigned, uris)
    ib.conf()
    yield ib


@with_spsdk
def test_imx_boot_signed_through_the_token_and_srk_files_deployed(imx: ImxBuild) -> None:
    done = imx.bitbake("imx-boot:do_deploy")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert imx.pin not in out
    deploy = imx.deploy_dir()
    image = os.path.join(deploy, IMAGE)
    assert os.path.realpath(os.path.join(deploy, "imx-boot")) == os.path.realpath(image)
    with open(image, "rb") as fh, open(imx.unsigned, "rb") as unsigned:
        signed_bytes, unsigned_bytes = fh.read(), unsigned.read()
    assert signed_bytes != unsigned_bytes
    # one changed byte of the signed container: NXP's verifier must refuse it
    bad = bytearray(signed_bytes)
    bad[0x10] ^= 0x01
    flipped = os.path.join(imx.build.topdir, "imx-input", "flipped.bin")
    with open(flipped, "wb") as fh:
        fh.write(bytes(bad))
    (rc, report), (_, unsigned_report), (flipped_rc, _) = ahab_verify(image, imx.unsigned, flipped)
    # NXP's verifier: the OEM container is signed, by the SRK table deployed next to it
    assert rc == 0, report[-3000:]
    assert "Signed by OEM keys" in report
    assert "Signed by OEM keys" not in unsigned_report
    assert flipped_rc != 0
    with open(os.path.join(deploy, "imx-boot-srk-table.bin"), "rb") as fh:
        assert fh.read() in signed_bytes
    with open(os.path.join(deploy, "imx-boot-srk-fuses.txt"), encoding="utf-8") as fh:
        words = re.findall(r"^SRKH\[\d+\] (0x[0-9A-F]{8})$", fh.read(), re.M)
    assert len(words) == 8  # SHA-256 of the table, what nxpimage asks to fuse
    for word in words:
        assert f"Value: {word}" in report, word
    # the key that signed is the one HSM_PKCS11_URI_IMX names: SRK 1 of the table
    assert "Used SRK key ID(Succeeded): SRK ID 1" in report, report[-3000:]
    # no PIN and no private key anywhere in TMPDIR (logs, run files, sigdata, deploy)
    bbenv.assert_no_secrets(imx.build, imx.pin)


@with_spsdk
def test_imx8m_hab_is_refused_not_left_unsigned(imx: ImxBuild) -> None:
    """i.MX 8M boots through HAB, which SPSDK cannot sign there: the build stops, nothing deployed."""
    imx.conf(overrides=MX8MM, HSMSIGN_IMX_SRK_NAME="imx-boot-8m-srk")
    try:
        done = imx.bitbake("imx-boot:do_deploy")
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        assert "imx-boot:do_hsmsign_imx" in bbenv.started_tasks(out) or "do_hsmsign_imx" in out
        assert "mx8m-generic-bsp: the boot ROM checks HAB" in out, out[-3000:]
        assert 'HSMSIGN_IMX_SIGN = ""' in out
        assert "Traceback" not in out
        assert not os.path.exists(os.path.join(imx.deploy_dir(), "imx-boot-8m-srk-table.bin"))
    finally:
        imx.conf()


@with_spsdk
def test_key_change_re_signs_from_the_unsigned_image(imx: ImxBuild) -> None:
    """The key identity is in the hashes of do_compile and do_hsmsign_imx: another SRK of the
    table signs an image do_compile made anew (never one signed before)."""
    imx.conf(HSM_PKCS11_URI_IMX=imx.srk_uris[2])
    try:
        done = imx.bitbake("imx-boot:do_deploy")
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-6000:]
        started = bbenv.started_tasks(out)
        assert {"imx-boot:do_compile", "imx-boot:do_hsmsign_imx"} <= started or (
            "imx-boot:do_deploy_setscene" in started
        ), started
        [(rc, report)] = ahab_verify(os.path.join(imx.deploy_dir(), IMAGE))
        assert rc == 0, report[-3000:]
        assert "Used SRK key ID(Succeeded): SRK ID 2" in report, report[-3000:]
    finally:
        imx.conf()


# --- meta-freescale's own recipes, parsed: the hook is where the class says ----------------


def task_parents(environment: str) -> dict[str, list[str]]:
    """The tasks each task runs after, from ``bitbake -e``'s ``_task_deps``."""
    found = re.search(r'^_task_deps="(.*)"$', environment, re.M)
    assert found, "no _task_deps in bitbake -e"
    return dict(ast.literal_eval(found.group(1))["parents"])


@pytest.mark.skipif(not os.path.isdir(FREESCALE), reason="no meta-freescale next to openembedded-core")
@pytest.mark.parametrize(
    ("machine", "recipe"),
    [("imx93-11x11-lpddr4x-evk", "imx-boot"), ("imx8mm-lpddr4-evk", "u-boot-fslc")],
)
def test_meta_freescale_recipes_are_hooked(
    machine: str, recipe: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """meta-freescale's imx-boot (i.MX 93) and U-Boot with imx-boot-container (i.MX 8M Mini):
    do_hsmsign_imx runs after do_compile and before do_install and do_deploy, with the key
    identity resolved (the stand-in above proves what the task does)."""
    topdir = bbenv.build_dir("imx-freescale") or str(tmp_path_factory.mktemp("bb-imx-freescale"))
    os.makedirs(topdir, exist_ok=True)
    srks = [f"pkcs11:token=acme;object=imx-srk{i}" for i in range(4)]
    masks = [
        os.path.join(bbenv.OECORE, "meta", "recipes-"),
        os.path.join(bbenv.METAOE, ""),
        os.path.join(LAYER, "recipes-"),
        os.path.join(FREESCALE, "dynamic-layers", ""),
        os.path.join(FREESCALE, "recipes-") + "(?!bsp/imx-mkimage/imx-boot_|bsp/u-boot/u-boot-fslc_)",
    ]
    lines = [
        f'MACHINE = "{machine}"',
        'ACCEPT_FSL_EULA = "1"',
        'INHERIT += "hsmsign"',
        'HSMSIGN_MODE = "development"',
        f'HSM_PKCS11_URI_IMX = "{srks[0]}"',
        f'HSMSIGN_IMX_SRK_URIS = "{" ".join(srks)}"',
        'HSMSIGN_CMD = "/usr/bin/hsmsign"',
        'BBMASK += "' + " ".join(masks) + '"',
        *(
            f'BBFILE_PATTERN_IGNORE_EMPTY_{c} = "1"'
            for c in ("core", "meta-python", "openembedded-layer", "hsmsign")
        ),
    ]
    layers = [*bbenv.layer_paths(swupdate=False)]
    layers.insert(3, FREESCALE)
    bbenv.write_conf(topdir, "\n".join(lines) + "\n", layers)
    done = Build(topdir).run("-e", recipe)
    out = done.stdout
    # (-e prints the recipe's environment even though its build dependencies are masked here)
    assert "_task_deps=" in out, (done.stdout + done.stderr)[-3000:]
    parents = task_parents(out)
    assert parents["do_hsmsign_imx"] == ["do_compile"]
    assert "do_hsmsign_imx" in parents["do_install"] and "do_hsmsign_imx" in parents["do_deploy"]
    assert re.search(r'^HSMSIGN_KEY_ID_IMX="pkcs11:token=acme;object=imx-srk0 ', out, re.M)
    assert "python do_hsmsign_imx () {" in out
