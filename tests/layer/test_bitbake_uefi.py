"""UEFI Secure Boot in real BitBake: systemd-boot and GRUB signed by do_hsmsign_uefi, db certificate deployed.

Stand-in ``systemd-boot`` and ``grub-efi`` recipes (tests/layer/meta-hsmsign-test/uefi/)
put Debian's real ``systemd-bootx64.efi`` where oe-core's recipes leave their build
output; the layer's hook (hsmsign-uefi.bbclass) signs it between do_compile (systemd-boot)
or do_mkimage (GRUB) and do_install/do_deploy with a key in a SoftHSM development token,
and the layer's own ``hsmsign-uefi-db`` recipe deploys the db certificate (PEM, DER, EFI
signature list). ``sbverify`` checks the deployed binaries against the deployed
certificate. Only these recipes are parsed (BBMASK); grub-efi's do_install, a fakeroot task,
runs under Debian's pseudo (bbenv.HOST_PSEUDO); environment: bbenv.py.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.layer import bbenv
from tests.layer.bbenv import SOFTHSM, Build, StandinBuild

SYSTEMD_BOOT = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
TARGETS = ("systemd-boot:do_deploy", "hsmsign-uefi-db:do_deploy")
# the GRUB image: EFI_PROVIDER = "grub-efi" (conf below) makes oe-core's GRUB_IMAGE
# bootx64.efi and GRUB_IMAGE_PREFIX grub-efi-, so the class must join both
GRUB_IMAGE = "grub-efi-bootx64.efi"
WRONG = "0" * 64

pytestmark = [
    *bbenv.NEEDS_BITBAKE,
    bbenv.NEEDS_PYTHON,
    bbenv.NEEDS_PSEUDO,
    pytest.mark.skipif(not os.path.exists(SYSTEMD_BOOT), reason="apt-get install systemd-boot-efi"),
    pytest.mark.skipif(shutil.which("sbverify") is None, reason="apt-get install sbsigntool"),
]


class UefiBuild(StandinBuild):
    FOLDER = "uefi"
    KEEP = "bsp/hsmsign-uefi-db"

    def conf(self, key: str = "test-uefi", **changes: str) -> None:
        uri = f"pkcs11:token=hsmsign-dev;object={key}?module-path={SOFTHSM}&pin-source=file:{self.pin_file}"
        settings = {
            "HSM_PKCS11_URI_UEFI": uri,
            "EFI_PROVIDER": "grub-efi",
            # grub-efi's do_install is a fakeroot task, as in oe-core
            **bbenv.HOST_PSEUDO,
            **changes,
        }
        self.write_conf(settings)


@pytest.fixture(scope="module")
def uefi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UefiBuild]:
    topdir = bbenv.standin_topdir("uefi", tmp_path_factory)
    devhome, pin, pin_file = bbenv.standin_token(topdir, ("test-uefi", "test-uefi-2"))
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
    bbenv.assert_no_secrets(uefi.build, uefi.pin)


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


def grub_paths(uefi: UefiBuild) -> tuple[str, str, str]:
    """GRUB's image where do_mkimage leaves it (${B}), where do_install puts it (${D}), and the
    recipe's task order log (${T}/log.task_order)."""
    workdir = uefi.workdir("grub-efi")
    return (
        os.path.join(workdir, "build", GRUB_IMAGE),
        os.path.join(workdir, "image", "boot", "EFI", "BOOT", "bootx64.efi"),
        os.path.join(workdir, "temp", "log.task_order"),
    )


def test_grub_signed_between_mkimage_and_install(uefi: UefiBuild) -> None:
    """oe-core's grub-efi: do_hsmsign_uefi runs after do_mkimage and before do_install and
    do_deploy (BitBake's task graph, and the order the tasks ran in), and what is packaged and
    deployed is the signed image; the unsigned input is deployed nowhere."""
    done = uefi.bitbake("grub-efi:do_deploy", "hsmsign-uefi-db:do_deploy")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert uefi.pin not in out
    deploy = uefi.deploy_dir()
    cert = os.path.join(deploy, "hsmsign-uefi-db.pem")
    signed = os.path.join(deploy, GRUB_IMAGE)
    ok = sbverify(cert, signed)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ours = bbenv.hsmsign("pe", "verify", "--cert", cert, signed)
    assert ours.returncode == 0, ours.stderr
    # the input the stand-in's do_mkimage copied: unsigned, refused, and deployed under no name
    assert sbverify(cert, SYSTEMD_BOOT).returncode != 0
    with open(SYSTEMD_BOOT, "rb") as fh:
        unsigned = fh.read()
    for name in os.listdir(deploy):
        with open(os.path.join(deploy, name), "rb") as fh:
            assert fh.read() != unsigned, f"{name} is the unsigned input"
    # the task graph: after do_mkimage and the db certificate, before do_install and do_deploy
    graph = bbenv.task_graph(uefi.build, "grub-efi:do_deploy")
    assert graph["grub-efi.do_hsmsign_uefi"] >= {"grub-efi.do_mkimage", "hsmsign-uefi-db.do_deploy"}
    assert "grub-efi.do_hsmsign_uefi" in graph["grub-efi.do_install"]
    assert "grub-efi.do_hsmsign_uefi" in graph["grub-efi.do_deploy"]
    assert "grub-efi.do_hsmsign_uefi" not in graph["grub-efi.do_mkimage"]
    if "grub-efi:do_hsmsign_uefi" in bbenv.started_tasks(out):  # (not when it came from sstate)
        built, installed, task_order = grub_paths(uefi)
        with open(task_order, encoding="utf-8") as fh:
            ran = re.findall(r"^\S+ (do_\w+) \(\d+\): ", fh.read(), re.M)  # "TIMESTAMP do_task (PID): LOG"
        last = {task: i for i, task in enumerate(ran)}
        assert last["do_mkimage"] < last["do_hsmsign_uefi"] < min(last["do_install"], last["do_deploy"]), ran
        with open(built, "rb") as a, open(installed, "rb") as b, open(signed, "rb") as c:
            assert a.read() == b.read() == c.read()
    bbenv.assert_no_secrets(uefi.build, uefi.pin)
    audit = bbenv.hsmsign("audit", *uefi.build.tmpdirs())
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-2000:]


def test_grub_with_a_wrong_pinned_fingerprint_stops_and_deploys_nothing(uefi: UefiBuild) -> None:
    """A HSMSIGN_PUBKEY_SHA256_UEFI that is not the key's: GRUB's do_hsmsign_uefi stops with
    exit 4 before anything is written, do_install and do_deploy do not run. The db certificate
    is given as a file (HSMSIGN_UEFI_CERT, as production requires), so hsmsign-uefi-db does not
    use the key and it is GRUB's own task that meets the pin."""
    deploy = uefi.deploy_dir()
    db = os.path.join(uefi.build.topdir, "secrets", "uefi-db.pem")
    shutil.copyfile(os.path.join(deploy, "hsmsign-uefi-db.pem"), db)
    clean = uefi.bitbake("-c", "clean", "grub-efi")
    assert clean.returncode == 0, (clean.stdout + clean.stderr)[-3000:]
    assert not os.path.exists(os.path.join(deploy, GRUB_IMAGE))
    uefi.conf(HSMSIGN_PUBKEY_SHA256_UEFI=WRONG, HSMSIGN_UEFI_CERT=db)
    try:
        done = uefi.bitbake("-k", "grub-efi:do_deploy")
    finally:
        uefi.conf()
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-4000:]
    started = bbenv.started_tasks(out)
    assert "grub-efi:do_hsmsign_uefi" in started, started
    assert not {"grub-efi:do_install", "grub-efi:do_deploy"} & started, started
    assert "ERROR: grub-efi" in out and "do_hsmsign_uefi" in out, out[-6000:]
    assert "HSMSIGN_PUBKEY_SHA256_UEFI" in out and "exit code 4" in out, out[-6000:]
    assert "Traceback" not in out
    assert uefi.pin not in out
    assert not os.path.exists(os.path.join(deploy, GRUB_IMAGE))
    built, installed, _ = grub_paths(uefi)
    assert not os.path.exists(installed)
    # do_mkimage's image is as it was: the refused task wrote nothing in its place
    with open(built, "rb") as a, open(SYSTEMD_BOOT, "rb") as b:
        assert a.read() == b.read()
    bbenv.assert_pin_nowhere(uefi.build, uefi.pin)


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
