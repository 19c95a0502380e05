"""U-Boot, SPL and kernel FIT signing as real BitBake tasks, checked by U-Boot's own verifier.

oe-core's own code runs unmodified: ``uboot-sign`` (concat_dtb,
do_uboot_assemble_fitimage, do_deploy) in stand-in U-Boot recipes whose
do_compile makes u-boot-nodtb.bin, u-boot.dtb and the SPL pair with dtc, and the
kernel FIT of the release: ``kernel-fitimage`` (scarthgap, do_assemble_fitimage
through ``hsmsign mkimage``) or ``linux-yocto-fitimage`` with
``kernel-fit-image`` (wrynose and later, do_hsmsign_fitimage) fed stand-in
kernel artifacts. Variants (tests/layer/meta-hsmsign-test/.../hsmsign-test-variants.inc):
RSA-2048 PKCS#1 v1.5, RSA-3072 PSS, ECDSA P-256, FIT_SIGN_INDIVIDUAL, and
separate SPL and kernel keys. Keys are made in a SoftHSM development token at
run time.

Then U-Boot's ``fit_check_sign`` (v2024.04 or later, HSMSIGN_TEST_UBOOT_TOOLS)
checks what do_deploy deployed: the U-Boot FIT against the SPL DTB and the
kernel FIT against u-boot.dtb; a flipped byte and another key are refused. The
task hashes are checked from BitBake's own runs: a moved PIN file re-runs
nothing, a new key re-signs (and the DTBs then hold exactly the new key), a
mode flip changes the signing tasks' hashes.

Only the test recipes and oe-core's linux-yocto-fitimage are parsed (BBMASK),
so a configuration change costs seconds, not a full parse; native tools come
from the host (ASSUME_PROVIDED, HOSTTOOLS). Environment: see bbenv.py.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.layer import bbenv
from tests.layer.bbenv import LAYER, LIB, SOFTHSM, TEST_LAYER, Build

VARIANTS = ("rsa2048", "pss3072", "ecdsa256", "individual", "separate")
# test keys made in the development token: label -> hsmsign keygen --type
KEYS = {
    "test-rsa2048": "rsa:2048",
    "test-rsa3072": "rsa:3072",
    "test-p256": "ec:secp256r1",
    "test-spl": "rsa:2048",
    "test-kernel": "rsa:2048",
    "test-other": "rsa:2048",
    "test-p256-other": "ec:secp256r1",
}
# the kernel FIT key of each variant (u-boot.dtb) and the SPL key (u-boot-spl.dtb)
KERNEL_KEY = {"pss3072": "test-rsa3072", "ecdsa256": "test-p256", "separate": "test-kernel"}
SPL_KEY = {"pss3072": "test-rsa3072", "ecdsa256": "test-p256", "separate": "test-spl"}
PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
SIGNING_TASKS = (
    {"do_uboot_assemble_fitimage", "do_assemble_fitimage"}
    if bbenv.SCARTHGAP
    else {"do_uboot_assemble_fitimage", "do_hsmsign_fitimage"}
)

pytestmark = [
    pytest.mark.skipif(not bbenv.HAVE_BITBAKE, reason=bbenv.SKIP_REASON),
    pytest.mark.skipif(bbenv.IS_ROOT, reason="BitBake refuses to run as root"),
    pytest.mark.skipif(not bbenv.PYTHON, reason="set HSMSIGN_TEST_PYTHON (python-pkcs11, cryptography)"),
    pytest.mark.skipif(
        not (
            bbenv.UBOOT_TOOLS and os.access(os.path.join(bbenv.UBOOT_TOOLS, "uboot-fit_check_sign"), os.X_OK)
        ),
        reason="set HSMSIGN_TEST_UBOOT_TOOLS to U-Boot 2024.04+ tools (uboot-mkimage, uboot-fit_check_sign)",
    ),
    pytest.mark.skipif(shutil.which("dtc") is None or shutil.which("fdtget") is None, reason="dtc missing"),
]


@dataclass
class FitBuild:
    build: Build
    pin: str
    devhome: str
    pin_file: str

    def conf(self, **changes: str) -> None:
        """(Re)write local.conf: the test configuration plus ``changes`` (VAR=value lines)."""
        local = fit_local_conf(self.devhome, self.pin_file, changes)
        bbenv.write_conf(self.build.topdir, local, fit_layers())

    def bitbake(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.build.run(*args, env={"HSM_TEST_PIN": self.pin})

    def deploy_dir(self, variant: str) -> str:
        found = glob.glob(os.path.join(self.build.topdir, "tmp*", "deploy", "images", "qemuarm64", variant))
        assert found, f"no deploy directory for {variant}"
        return found[0]


def fit_layers() -> list[str]:
    return bbenv.layer_paths(TEST_LAYER)


def offline_conf() -> list[str]:
    """local.conf lines of the FIT build that do not concern signing: what is parsed,
    and host tools standing in for native recipes (no toolchain, no network)."""
    masks = [
        # oe-core: only linux-yocto-fitimage (wrynose and later) is parsed
        os.path.join(bbenv.OECORE, "meta", "recipes-") + r"(?!kernel/linux/linux-yocto-fitimage\.bb)",
        os.path.join(bbenv.METAOE, "meta-oe", ""),
        os.path.join(bbenv.METAOE, "meta-python", "recipes-"),
        os.path.join(LAYER, "recipes-"),
        *([os.path.join(bbenv.METASWUPDATE, "recipes-")] if bbenv.METASWUPDATE else []),
    ]
    return [
        'PREFERRED_PROVIDER_virtual/kernel = "hsmsign-test-kernel"',
        'KERNEL_DEVICETREE = "hsmsign/test-board.dtb"',
        'ASSUME_PROVIDED += "u-boot-tools-native dtc-native"',
        # what oe-core's global classes (patch, fakeroot tasks, SPDX) add to every recipe's task graph
        'ASSUME_PROVIDED += "quilt-native patch-replacement-native virtual/fakeroot-native"',
        'HOSTTOOLS += "dtc uboot-mkimage uboot-fit_check_sign"',
        'BBMASK += "' + " ".join(masks) + '"',
        *(
            f'BBFILE_PATTERN_IGNORE_EMPTY_{c} = "1"'
            for c in ("hsmsign", "meta-python", "openembedded-layer", "swupdate")
        ),
    ]


def fit_local_conf(devhome: str, pin_file: str, changes: dict[str, str]) -> str:
    settings = {
        "HSMSIGN_MODE": "development",
        "HSMSIGN_DEV_HOME": devhome,
        "HSM_PKCS11_URI": f"pkcs11:token=hsmsign-dev;object=dev-signing?module-path={SOFTHSM}",
        "HSMSIGN_TEST_MODULE": f"?module-path={SOFTHSM}&pin-source=file:{pin_file}",
        "HSMSIGN_CMD": f"env PYTHONPATH={LIB} {bbenv.PYTHON} -m hsmsign",
        # the other roles' test recipes: a detached signature (ROOTFS), a swupdate bundle
        "HSM_PKCS11_URI_SWUPDATE": f"pkcs11:token=hsmsign-dev;object=dev-swupdate?module-path={SOFTHSM}",
        "HSM_PKCS11_URI_ENCRYPT": f"pkcs11:token=hsmsign-dev;object=dev-encrypt?module-path={SOFTHSM}",
        "HSMSIGN_SWUPDATE_CERT:pn-hsmsign-test-swu": os.path.join(devhome, "..", "hsmsign-swupdate.pem"),
        "HSMSIGN_TEST_OUT:pn-hsmsign-test-sign": os.path.join(devhome, "..", "hsmsign-test-out"),
        # the U-Boot recipes' control DTB: U-Boot sandbox's, when there is one to boot
        "HSMSIGN_TEST_CONTROL_DTB": os.path.join(bbenv.UBOOT_SANDBOX, "u-boot.dtb")
        if bbenv.UBOOT_SANDBOX
        else "",
        **changes,
    }
    lines = ['INHERIT += "hsmsign"', *(f'{name} = "{value}"' for name, value in settings.items())]
    return "\n".join([*lines, *offline_conf()]) + "\n"


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FitBuild]:
    topdir = bbenv.build_dir("fit") or str(tmp_path_factory.mktemp("bb-fit"))
    os.makedirs(topdir, exist_ok=True)
    devhome = os.path.join(topdir, "hsmsign-dev")
    pin = bbenv.dev_token(devhome)
    env = {"SOFTHSM2_CONF": os.path.join(devhome, "softhsm2.conf"), "HSM_TEST_PIN": pin}
    for label, key_type in KEYS.items():
        uri = f"pkcs11:token=hsmsign-dev;object={label}?module-path={SOFTHSM}"
        common = ("--uri", uri, "--mode", "development", "--pin-env", "HSM_TEST_PIN")
        if bbenv.hsmsign("info", *common, env=env).returncode == 0:
            continue  # a reused build directory keeps its token
        made = bbenv.hsmsign("keygen", *common, "--type", key_type, env=env)
        assert made.returncode == 0, made.stderr
    cert = bbenv.hsmsign(
        "cert", "--mode", "development", "--pin-env", "HSM_TEST_PIN",
        "--subject", "CN=meta-hsmsign layer test",
        "--uri", f"pkcs11:token=hsmsign-dev;object=dev-swupdate?module-path={SOFTHSM}",
        "--output", os.path.join(topdir, "hsmsign-swupdate.pem"), env=env,
    )  # fmt: skip
    assert cert.returncode == 0, cert.stderr
    # the PIN file the URIs name (pin-source=file:), outside the build's TMPDIR
    pin_file = bbenv.write_pin_file(os.path.join(topdir, "secrets-a"), pin)
    fb = FitBuild(Build(topdir, path_first=bbenv.UBOOT_TOOLS), pin, devhome, pin_file)
    fb.conf()
    yield fb


def targets(variants: tuple[str, ...] = VARIANTS) -> list[str]:
    return [f"hsmsign-test-{kind}-{v}" for v in variants for kind in ("uboot", "fitimage")]


@pytest.fixture(scope="module")
def built(fit: FitBuild) -> FitBuild:
    done = fit.bitbake("-c", "deploy", *targets())
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert fit.pin not in out
    return fit


def fit_check_sign(fit_file: str, dtb: str) -> subprocess.CompletedProcess[str]:
    tool = os.path.join(bbenv.UBOOT_TOOLS, "uboot-fit_check_sign")
    return subprocess.run([tool, "-f", fit_file, "-k", dtb], capture_output=True, text=True, check=False)


def fdtget(dtb: str, *args: str) -> str:
    done = subprocess.run(["fdtget", dtb, *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def key_nodes(dtb: str) -> dict[str, str]:
    """key-name-hint -> required of every key node under /signature."""
    nodes = fdtget(dtb, "-l", "/signature").split()
    return {
        fdtget(dtb, "/signature/" + n, "key-name-hint") or n: fdtget(dtb, "/signature/" + n, "required")
        for n in nodes
    }


FDT_MAGIC = b"\xd0\x0d\xfe\xed"


def flipped_copy(src: str, dst: str, offset_of: bytes, after: int = 0) -> None:
    """Copy ``src`` with one bit flipped, 0x40 bytes into the first ``offset_of`` after ``after``."""
    with open(src, "rb") as fh:
        data = bytearray(fh.read())
    at = data.find(offset_of, after)
    assert at > 0, f"{offset_of!r} not in {src}"
    data[at + 0x40] ^= 0x01
    with open(dst, "wb") as fh:
        fh.write(bytes(data))


@pytest.mark.parametrize("variant", VARIANTS)
def test_uboot_fit_accepted_by_spl_dtb(built: FitBuild, variant: str, tmp_path: object) -> None:
    deploy = built.deploy_dir(variant)
    uboot_fit = os.path.join(deploy, "u-boot-fitImage")
    spl_dtb = os.path.join(deploy, "u-boot-spl.dtb")
    key = SPL_KEY.get(variant, "test-rsa2048")
    # oe-core's U-Boot FIT signs its images (no configuration signature): required "image"
    assert key_nodes(spl_dtb) == {key: "image"}
    ok = fit_check_sign(uboot_fit, spl_dtb)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Verified OK" in ok.stdout + ok.stderr or variant == "ecdsa256", ok.stdout + ok.stderr
    # fit_check_sign checks a configuration's kernel, fdt and ramdisk (SPL checks each
    # loadable as it loads it): flip a byte of U-Boot's own DTB inside the FIT
    bad = os.path.join(str(tmp_path), "u-boot-fitImage.flipped")
    flipped_copy(uboot_fit, bad, FDT_MAGIC, after=1)
    refused = fit_check_sign(bad, spl_dtb)
    assert refused.returncode != 0, refused.stdout + refused.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_fit_accepted_by_uboot_dtb(built: FitBuild, variant: str, tmp_path: object) -> None:
    deploy = built.deploy_dir(variant)
    kernel_fit = os.path.join(deploy, "fitImage")
    uboot_dtb = os.path.join(deploy, "u-boot.dtb")
    key = KERNEL_KEY.get(variant, "test-rsa2048")
    want = {key: "conf"}
    if variant == "individual":
        want[key + "-img"] = "image"
    assert key_nodes(uboot_dtb) == want
    ok = fit_check_sign(kernel_fit, uboot_dtb)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = os.path.join(str(tmp_path), "fitImage.flipped")
    flipped_copy(kernel_fit, bad, b"meta-hsmsign stand-in kernel Image")
    refused = fit_check_sign(bad, uboot_dtb)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    # the same FIT signed by another token key: u-boot.dtb's key refuses it
    other = os.path.join(str(tmp_path), "fitImage.other-key")
    # (same algorithm: U-Boot v2024.04+ tools load ECDSA keys from the DTB and verify them)
    other_key, algo = (
        ("test-p256-other", "sha256,ecdsa256") if variant == "ecdsa256" else ("test-other", "sha256,rsa2048")
    )
    resigned = bbenv.hsmsign(
        "fit", "sign", "--uri", f"pkcs11:token=hsmsign-dev;object={other_key}?module-path={SOFTHSM}",
        "--key-name", key, "--algo", algo, "--mode", "development", "--pin-env", "HSM_TEST_PIN",
        "--output", other, kernel_fit,
        env={"SOFTHSM2_CONF": os.path.join(built.devhome, "softhsm2.conf"), "HSM_TEST_PIN": built.pin},
    )  # fmt: skip
    assert resigned.returncode == 0, resigned.stderr
    refused = fit_check_sign(other, uboot_dtb)
    assert refused.returncode != 0, refused.stdout + refused.stderr


def test_no_private_key_and_no_pin_in_the_build(built: FitBuild) -> None:
    pin = built.pin.encode()
    for tmp in built.build.tmpdirs():
        for base, _dirs, files in os.walk(tmp):
            for name in files:
                path = os.path.join(base, name)
                assert not name.endswith((".key", ".crt")), path
                if os.path.islink(path) or os.path.getsize(path) > 64 << 20:
                    continue
                with open(path, "rb") as fh:
                    data = fh.read()
                assert PEM_PRIVATE.search(data) is None, path
                if name.startswith(("run.", "log.")) or "sigdata" in name or "siginfo" in name:
                    assert pin not in data, path
    # and the leak scanner agrees
    audit = bbenv.hsmsign("audit", *built.build.tmpdirs())
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-2000:]


def rebuild(fit: FitBuild, variants: tuple[str, ...] = ("rsa2048",)) -> set[str]:
    done = fit.bitbake("-c", "deploy", *targets(variants))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    return bbenv.started_tasks(out)


def signing_started(started: set[str]) -> set[str]:
    return {t for t in started if t.split(":")[1] in SIGNING_TASKS}


def test_moving_the_pin_file_rebuilds_nothing(built: FitBuild) -> None:
    moved_dir = os.path.join(built.build.topdir, "secrets-b")
    os.makedirs(moved_dir, exist_ok=True)
    moved = os.path.join(moved_dir, "hsm-pin")
    shutil.move(built.pin_file, moved)
    built.pin_file = moved
    built.conf()
    started = rebuild(built, VARIANTS)
    assert started == set(), sorted(started)


def task_hashes(fit: FitBuild, target: str) -> dict[str, str]:
    """task -> hash of ``bitbake -S none TARGET`` (BitBake's own signature files)."""
    done = fit.bitbake("-S", "none", target)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    found: dict[str, tuple[float, str]] = {}
    for path in glob.glob(os.path.join(fit.build.topdir, "tmp*", "stamps", "*", target, "*.sigdata.*")):
        m = re.search(r"\.(do_\w+)\.sigdata\.([0-9a-f]{64})$", path)
        if m:
            mtime = os.path.getmtime(path)
            if m.group(1) not in found or mtime > found[m.group(1)][0]:
                found[m.group(1)] = (mtime, m.group(2))
    return {task: h for task, (_, h) in found.items()}


def test_mode_flip_changes_the_signing_tasks_only(built: FitBuild) -> None:
    target = "hsmsign-test-uboot-rsa2048"
    dev = task_hashes(built, target)
    built.conf(HSMSIGN_MODE="production")
    try:
        prod = task_hashes(built, target)
    finally:
        built.conf()
    assert dev["do_uboot_assemble_fitimage"] != prod["do_uboot_assemble_fitimage"]
    assert dev["do_deploy"] != prod["do_deploy"]
    assert dev["do_compile"] == prod["do_compile"]


def test_key_rotation_resigns_and_leaves_only_the_new_key(built: FitBuild) -> None:
    # a key no earlier run used (a reused build directory's sstate would hold its artifacts)
    new_key = "test-rotated-" + os.urandom(4).hex()
    made = bbenv.hsmsign(
        "keygen", "--uri", f"pkcs11:token=hsmsign-dev;object={new_key}?module-path={SOFTHSM}",
        "--type", "rsa:2048", "--mode", "development", "--pin-env", "HSM_TEST_PIN",
        env={"SOFTHSM2_CONF": os.path.join(built.devhome, "softhsm2.conf"), "HSM_TEST_PIN": built.pin},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    built.conf(HSMSIGN_TEST_RSA2048_KEY=new_key)
    try:
        started = rebuild(built)
        uboot, fitimage = "hsmsign-test-uboot-rsa2048", "hsmsign-test-fitimage-rsa2048"
        assert f"{uboot}:do_uboot_assemble_fitimage" in started, sorted(started)
        assert f"{uboot}:do_deploy" in started and f"{fitimage}:do_deploy" in started, sorted(started)
        assert signing_started(started) >= {f"{fitimage}:{t}" for t in SIGNING_TASKS if "uboot" not in t}
        assert f"{uboot}:do_compile" not in started  # the DTBs are those of the first build
        deploy = built.deploy_dir("rsa2048")
        assert key_nodes(os.path.join(deploy, "u-boot.dtb")) == {new_key: "conf"}
        assert key_nodes(os.path.join(deploy, "u-boot-spl.dtb")) == {new_key: "image"}
        for fit_file, dtb in (("fitImage", "u-boot.dtb"), ("u-boot-fitImage", "u-boot-spl.dtb")):
            ok = fit_check_sign(os.path.join(deploy, fit_file), os.path.join(deploy, dtb))
            assert ok.returncode == 0, ok.stdout + ok.stderr
    finally:
        built.conf()
        rebuild(built)  # the first key's artifacts back (from sstate), for the tests below


def fingerprint(fit: FitBuild, label: str) -> str:
    import json

    info = bbenv.hsmsign(
        "info", "--json", "--mode", "development", "--pin-env", "HSM_TEST_PIN",
        "--uri", f"pkcs11:token=hsmsign-dev;object={label}?module-path={SOFTHSM}",
        env={"SOFTHSM2_CONF": os.path.join(fit.devhome, "softhsm2.conf"), "HSM_TEST_PIN": fit.pin},
    )  # fmt: skip
    assert info.returncode == 0, info.stderr
    return str(json.loads(info.stdout)["fingerprint"])


WRONG = "0" * 64


@pytest.mark.parametrize(
    ("pins", "failing"),
    [
        # SPL's key signs the U-Boot FIT (U-Boot recipe); the kernel FIT key goes into
        # u-boot.dtb (U-Boot recipe) and signs the kernel FIT (kernel FIT recipe)
        ({"HSMSIGN_PUBKEY_SHA256_SPL": WRONG}, ("uboot",)),
        ({"HSMSIGN_PUBKEY_SHA256_FITIMAGE": WRONG}, ("uboot", "fitimage")),
        ({"HSMSIGN_PUBKEY_SHA256_UBOOT": WRONG}, ("uboot", "fitimage")),  # the chain: SPL and FITIMAGE
        ({"HSMSIGN_PUBKEY_SHA256": WRONG}, ("uboot", "fitimage")),
    ],
)
def test_a_wrong_pinned_key_stops_the_signing_task(
    built: FitBuild, pins: dict[str, str], failing: tuple[str, ...]
) -> None:
    """A pin is the user's own statement: in development mode too, a mismatch fails the task
    with exit 4, names the variable, and nothing is deployed. The PIN comes from the
    environment here (HSMSIGN_PIN_ENV), and is in no log, run file or signature."""
    variant = "separate"
    recipes = [f"hsmsign-test-{kind}-{variant}" for kind in ("uboot", "fitimage")]
    clean = built.bitbake("-c", "clean", *recipes)
    assert clean.returncode == 0, (clean.stdout + clean.stderr)[-3000:]
    env_pin = {"HSMSIGN_PIN_ENV": "HSM_TEST_PIN", "HSMSIGN_TEST_MODULE": f"?module-path={SOFTHSM}"}
    built.conf(**env_pin, **pins)
    try:
        done = built.bitbake("-k", "-c", "deploy", *recipes)
    finally:
        built.conf()
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-4000:]
    name = next(iter(pins))
    assert name in out and "exit code 4" in out, out[-6000:]
    assert built.pin not in out
    deploy = os.path.join(built.build.tmpdirs()[0], "deploy", "images", "qemuarm64", variant)
    deployed = set(os.listdir(deploy)) if os.path.isdir(deploy) else set()
    if "uboot" in failing:
        assert not {"u-boot-fitImage", "u-boot.dtb", "u-boot-spl.dtb"} & deployed, sorted(deployed)
    if "fitimage" in failing:
        assert "fitImage" not in deployed, sorted(deployed)
    bbenv.assert_pin_nowhere(built.build, built.pin)


def test_the_right_pinned_keys_sign(built: FitBuild) -> None:
    variant = "separate"
    recipes = [f"hsmsign-test-{kind}-{variant}" for kind in ("uboot", "fitimage")]
    pins = {
        "HSMSIGN_PUBKEY_SHA256_SPL": fingerprint(built, "test-spl"),
        # the U-Boot side's pin covers FITIMAGE too (its fallback role)
        "HSMSIGN_PUBKEY_SHA256_UBOOT": fingerprint(built, "test-kernel"),
        "HSMSIGN_PUBKEY_SHA256": WRONG,  # the roles' own pins apply, not the global one
    }
    built.conf(HSMSIGN_PIN_ENV="HSM_TEST_PIN", HSMSIGN_TEST_MODULE=f"?module-path={SOFTHSM}", **pins)
    try:
        done = built.bitbake("-c", "deploy", *recipes)
    finally:
        built.conf()
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    deploy = built.deploy_dir(variant)
    ok = fit_check_sign(os.path.join(deploy, "fitImage"), os.path.join(deploy, "u-boot.dtb"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bbenv.assert_pin_nowhere(built.build, built.pin)


def sandbox_bootm(dtb: str, fit_file: str) -> str:
    """U-Boot sandbox with ``dtb`` as its control DTB loads ``fit_file`` and runs bootm on it."""
    cmd = f"host load hostfs - 0x1000000 {fit_file} && bootm 0x1000000"
    done = subprocess.run(
        [os.path.join(bbenv.UBOOT_SANDBOX, "u-boot"), "-d", dtb, "-c", cmd],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.stdout + done.stderr


@pytest.mark.skipif(not bbenv.UBOOT_SANDBOX, reason="set HSMSIGN_TEST_UBOOT_SANDBOX (U-Boot sandbox)")
@pytest.mark.parametrize("variant", ("rsa2048", "pss3072"))
def test_sandbox_uboot_boots_only_the_signed_kernel_fit(
    built: FitBuild, variant: str, tmp_path: object
) -> None:
    """The device's own check: U-Boot (sandbox) with the u-boot.dtb oe-core deployed verifies
    the deployed kernel FIT in bootm, and refuses a flipped byte and an unsigned FIT."""
    deploy = built.deploy_dir(variant)
    dtb, kernel_fit = os.path.join(deploy, "u-boot.dtb"), os.path.join(deploy, "fitImage")
    key = KERNEL_KEY.get(variant, "test-rsa2048")
    algo = "sha256,rsa3072" if variant == "pss3072" else "sha256,rsa2048"
    good = sandbox_bootm(dtb, kernel_fit)
    assert f"{algo}:{key}+" in good, good[-3000:]  # '+': the configuration signature verified
    assert "Bad" not in good and "can't get kernel image" not in good, good[-3000:]
    bad = os.path.join(str(tmp_path), "fitImage.flipped")
    flipped_copy(kernel_fit, bad, b"meta-hsmsign stand-in kernel Image")
    refused = sandbox_bootm(dtb, bad)
    # the configuration signature covers the images' hashes; the flipped data fails its hash
    assert "Bad Data Hash" in refused and "can't get kernel image" in refused, refused[-3000:]
    # the same kernel in a FIT nobody signed
    unsigned = os.path.join(str(tmp_path), "fitImage.unsigned")
    kernel = os.path.join(str(tmp_path), "linux.bin")
    with open(kernel, "wb") as fh:
        fh.write(b"meta-hsmsign stand-in kernel Image\n" * 4096)
    made = subprocess.run(
        [os.path.join(bbenv.UBOOT_TOOLS, "uboot-mkimage"), "-f", "auto", "-A", "arm64", "-O", "linux",
         "-T", "kernel", "-C", "none", "-a", "0x80080000", "-e", "0x80080000", "-d", kernel, unsigned],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    refused = sandbox_bootm(dtb, unsigned)
    assert "Failed to verify required signature" in refused or "Verification failed" in refused, refused[
        -3000:
    ]


@pytest.mark.parametrize(
    ("recipe", "task", "variable", "label"),
    [
        ("hsmsign-test-sign", "hsmsign_test", "HSMSIGN_PUBKEY_SHA256_ROOTFS", "dev-signing"),
        ("hsmsign-test-swu", "swuimage", "HSMSIGN_PUBKEY_SHA256_SWUPDATE", "dev-swupdate"),
        ("hsmsign-test-swu", "swuimage", "HSMSIGN_PUBKEY_SHA256_ENCRYPT", "dev-encrypt"),
    ],
)
def test_rootfs_and_swupdate_tasks_enforce_their_pins(
    built: FitBuild, recipe: str, task: str, variable: str, label: str
) -> None:
    """The other roles' tasks (hsmsign_run from a class, meta-swupdate's sign tool and its
    encryption hook) stop with exit 4 on a wrong pin, and sign with the right one."""
    if recipe == "hsmsign-test-swu" and not bbenv.METASWUPDATE:
        pytest.skip("set HSMSIGN_TEST_METASWUPDATE")
    pin_env = {"HSMSIGN_PIN_ENV": "HSM_TEST_PIN"}
    built.conf(**pin_env, **{variable: WRONG})
    try:
        done = built.bitbake("-c", task, recipe)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-4000:]
        # hsmsign's one-line error names the variable (in the task log BitBake names; meta-swupdate
        # runs its sign tool from Python and reports the exit status as a CalledProcessError)
        logs = re.findall(r"Logfile of failure stored in: (\S+)", out)
        assert logs, out[-4000:]
        with open(logs[0], encoding="utf-8", errors="replace") as fh:
            log = fh.read()
        assert f"hsmsign: error: {variable} pins" in log, log[-4000:]
        assert "exit code 4" in out or "exit status 4" in out, out[-6000:]
        assert built.pin not in out
        built.conf(**pin_env, **{variable: fingerprint(built, label)})
        done = built.bitbake("-c", task, recipe)
        assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    finally:
        built.conf()
    bbenv.assert_pin_nowhere(built.build, built.pin)
