"""UEFI Secure Boot in real BitBake: systemd-boot signed by do_hsmsign_uefi, the db certificate deployed.

A stand-in ``systemd-boot`` recipe (tests/layer/meta-hsmsign-test/uefi/) puts
Debian's real ``systemd-bootx64.efi`` where oe-core's recipe leaves its build
output; the layer's hook (hsmsign-uefi.bbclass) signs it between do_compile and
do_install/do_deploy with a key in a SoftHSM development token, and the layer's
own ``hsmsign-uefi-db`` recipe deploys the db certificate (PEM, DER, EFI
signature list). ``sbverify`` checks the deployed binary against the deployed
certificate. Only these two recipes are parsed (BBMASK); environment: bbenv.py.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.layer import bbenv
from tests.layer.bbenv import LAYER, LIB, SOFTHSM, TEST_LAYER, Build

SYSTEMD_BOOT = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
TARGETS = ("systemd-boot:do_deploy", "hsmsign-uefi-db:do_deploy")
PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")

pytestmark = [
    pytest.mark.skipif(not bbenv.HAVE_BITBAKE, reason=bbenv.SKIP_REASON),
    pytest.mark.skipif(bbenv.IS_ROOT, reason="BitBake refuses to run as root"),
    pytest.mark.skipif(not bbenv.PYTHON, reason="set HSMSIGN_TEST_PYTHON (python-pkcs11, cryptography)"),
    pytest.mark.skipif(not os.path.exists(SYSTEMD_BOOT), reason="apt-get install systemd-boot-efi"),
    pytest.mark.skipif(shutil.which("sbverify") is None, reason="apt-get install sbsigntool"),
]


@dataclass
class UefiBuild:
    build: Build
    pin: str
    devhome: str
    pin_file: str

    def conf(self, key: str = "test-uefi", **changes: str) -> None:
        uri = f"pkcs11:token=hsmsign-dev;object={key}?module-path={SOFTHSM}&pin-source=file:{self.pin_file}"
        settings = {
            "MACHINE": "qemux86-64",
            "HSMSIGN_MODE": "development",
            "HSMSIGN_DEV_HOME": self.devhome,
            "HSM_PKCS11_URI": f"pkcs11:token=hsmsign-dev;object=dev-signing?module-path={SOFTHSM}",
            "HSM_PKCS11_URI_UEFI": uri,
            "HSMSIGN_CMD": f"env PYTHONPATH={LIB} {bbenv.PYTHON} -m hsmsign",
            **changes,
        }
        masks = [
            os.path.join(bbenv.OECORE, "meta", "recipes-"),
            os.path.join(bbenv.METAOE, "meta-oe", ""),
            os.path.join(bbenv.METAOE, "meta-python", "recipes-"),
            os.path.join(LAYER, "recipes-") + r"(?!bsp/hsmsign-uefi-db/)",
            os.path.join(TEST_LAYER, "recipes-test", ""),
            os.path.join(TEST_LAYER, "dynamic-layers", ""),
        ]
        lines = [
            'INHERIT += "hsmsign"',
            *(f'{name} = "{value}"' for name, value in settings.items()),
            f'BBFILES += "{TEST_LAYER}/uefi/*/*.bb"',
            'ASSUME_PROVIDED += "quilt-native patch-replacement-native virtual/fakeroot-native"',
            # offline: no cross binutils for the db recipe's (empty) sysroot
            'POPULATESYSROOTDEPS:class-target:pn-hsmsign-uefi-db = ""',
            'BBMASK += "' + " ".join(masks) + '"',
            *(
                f'BBFILE_PATTERN_IGNORE_EMPTY_{c} = "1"'
                for c in ("core", "meta-python", "openembedded-layer")
            ),
        ]
        bbenv.write_conf(
            self.build.topdir, "\n".join(lines) + "\n", bbenv.layer_paths(TEST_LAYER, swupdate=False)
        )

    def bitbake(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.build.run(*args)

    def deploy_dir(self) -> str:
        found = glob.glob(os.path.join(self.build.topdir, "tmp*", "deploy", "images", "qemux86-64"))
        assert found, "no deploy directory"
        return found[0]


@pytest.fixture(scope="module")
def uefi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UefiBuild]:
    topdir = bbenv.build_dir("uefi") or str(tmp_path_factory.mktemp("bb-uefi"))
    os.makedirs(topdir, exist_ok=True)
    devhome = os.path.join(topdir, "hsmsign-dev")
    pin = bbenv.dev_token(devhome)
    env = {"SOFTHSM2_CONF": os.path.join(devhome, "softhsm2.conf"), "HSM_TEST_PIN": pin}
    for label in ("test-uefi", "test-uefi-2"):
        uri = f"pkcs11:token=hsmsign-dev;object={label}?module-path={SOFTHSM}"
        common = ("--uri", uri, "--mode", "development", "--pin-env", "HSM_TEST_PIN")
        if bbenv.hsmsign("info", *common, env=env).returncode != 0:
            made = bbenv.hsmsign("keygen", *common, "--type", "rsa:2048", env=env)
            assert made.returncode == 0, made.stderr
    pin_dir = os.path.join(topdir, "secrets")
    os.makedirs(pin_dir, exist_ok=True)
    pin_file = os.path.join(pin_dir, "hsm-pin")
    with open(pin_file, "w", encoding="utf-8") as fh:
        fh.write(pin)
    os.chmod(pin_file, 0o600)
    ub = UefiBuild(Build(topdir), pin, devhome, pin_file)
    ub.conf()
    yield ub


def sbverify(cert: str, image: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbverify", "--cert", cert, image], capture_output=True, text=True, check=False)


def test_systemd_boot_signed_and_db_deployed(uefi: UefiBuild) -> None:
    done = uefi.bitbake(*TARGETS)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert uefi.pin not in out
    deploy = uefi.deploy_dir()
    cert = os.path.join(deploy, "hsmsign-uefi-db.pem")
    for suffix in ("pem", "der", "esl"):
        assert os.path.getsize(os.path.join(deploy, f"hsmsign-uefi-db.{suffix}")) > 0
    signed = os.path.join(deploy, "systemd-bootx64.efi")
    ok = sbverify(cert, signed)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ours = bbenv.hsmsign("pe", "verify", "--cert", cert, signed)
    assert ours.returncode == 0, ours.stderr
    # do_install copies the same file: the build tree's copy is signed (before do_install runs),
    pattern = os.path.join(uefi.build.topdir, "tmp*", "work", "*", "systemd-boot", "**", "src", "boot", "**")
    built = glob.glob(os.path.join(pattern, "systemd-bootx64.efi"), recursive=True)
    if "systemd-boot:do_hsmsign_uefi" in bbenv.started_tasks(out):  # (not when it came from sstate)
        assert built and all(sbverify(cert, p).returncode == 0 for p in built), built
    # the stub stays as it was (ukify's input)
    with (
        open(os.path.join(deploy, "linuxx64.efi.stub"), "rb") as a,
        open("/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "rb") as b,
    ):
        assert a.read() == b.read()
    # no PIN, no private key anywhere in TMPDIR (logs, run files, sigdata, deploy)
    pin = uefi.pin.encode()
    for tmp in uefi.build.tmpdirs():
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                path = os.path.join(root, name)
                if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 64 << 20:
                    continue
                with open(path, "rb") as fh:
                    data = fh.read()
                assert pin not in data, f"PIN in {path}"
                assert not PEM_PRIVATE.search(data), f"private key in {path}"


def with_uki_class(test: Any) -> Any:
    """wrynose and later: scarthgap has no uki.bbclass, so there (only) the test may skip in CI."""
    if bbenv.SCARTHGAP:
        reason = "oe-core has no uki.bbclass on scarthgap"
        test = pytest.mark.skip(reason=reason)(pytest.mark.skip_allowed(reason)(test))
    return test


@with_uki_class
def test_uki_signed_by_the_do_uki_postfunc(uefi: UefiBuild) -> None:
    """oe-core's uki.bbclass (wrynose and later): the deployed UKI is signed by do_uki's postfunc."""
    done = uefi.bitbake("hsmsign-test-uki:do_uki", "hsmsign-uefi-db:do_deploy")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert uefi.pin not in out
    deploy = uefi.deploy_dir()
    ok = sbverify(os.path.join(deploy, "hsmsign-uefi-db.pem"), os.path.join(deploy, "uki.efi"))
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_key_change_re_signs(uefi: UefiBuild, tmp_path: object) -> None:
    """The key identity is in the task hashes: another key gives another certificate and signature.

    (In a reused build directory the other key's results may come from sstate: what is
    checked is that the deployed files change with the key, not how BitBake got them.)
    """
    deploy = uefi.deploy_dir()
    old_cert = os.path.join(str(tmp_path), "old.pem")
    shutil.copyfile(os.path.join(deploy, "hsmsign-uefi-db.pem"), old_cert)
    uefi.conf(key="test-uefi-2")
    try:
        done = uefi.bitbake(*TARGETS)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-6000:]
        started = bbenv.started_tasks(out)
        assert started & {"systemd-boot:do_hsmsign_uefi", "systemd-boot:do_deploy_setscene"}, started
        cert = os.path.join(deploy, "hsmsign-uefi-db.pem")
        signed = os.path.join(deploy, "systemd-bootx64.efi")
        ok = sbverify(cert, signed)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert sbverify(old_cert, signed).returncode != 0
    finally:
        uefi.conf()
