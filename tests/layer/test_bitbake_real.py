"""meta-hsmsign with real BitBake and OE-Core (skipped without their paths).

Environment (scripts/run-layer-tests sets them and runs this as a plain user):
  HSMSIGN_TEST_BITBAKE        BitBake checkout (2.8 for scarthgap, 2.18 for wrynose)
  HSMSIGN_TEST_OECORE         openembedded-core checkout of the same release
  HSMSIGN_TEST_METAOE         meta-openembedded checkout (meta-oe, meta-python)
  HSMSIGN_TEST_METASWUPDATE   meta-swupdate checkout (optional)
  HSMSIGN_TEST_PYTHON         a Python with python-pkcs11 and cryptography, for the
                              signing task (optional: that test skips without it)
  HSMSIGN_TEST_BUILDDIR       reuse this build directory for the main build (keeps the
                              parse cache); else "main" under HSMSIGN_TEST_BUILDROOT
                              (tests/layer/conftest.py)

A full parse of OE-Core + meta-oe + meta-swupdate takes minutes on 2 cores: all
checks share one build directory; the parse-time refusals stop before any recipe
is parsed and use their own.

The main build is a fresh build directory made by OE-Core's own
``oe-init-build-env``, with the README's "In your build" snippet pasted as written
(paths filled in) and the test's own lines appended after it (meta-swupdate, the
test layer, development mode, offline settings). So its one full parse also proves
that the snippet's layers and LAYERDEPENDS parse every recipe of OE-Core, meta-oe
and meta-python. ``test_readme_snippet_as_written`` pastes the snippet alone, in
production mode with the README's URI, and parses meta-hsmsign's recipes with the
whole configuration (a BBMASK leaves the other layers' recipes out, to spare a
second full parse).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.layer import bbenv
from tests.layer.bbenv import (
    BITBAKE,
    LAYER,
    METAOE,
    METASWUPDATE,
    OECORE,
    ROOT,
    SCARTHGAP,
    SOFTHSM,
    TEST_LAYER,
    Build,
    assert_pin_nowhere,
)

PIN_MARKER = "pin-marker-5d1c9e"  # an obviously fake value that must never show up
SWU_FILES = os.path.join(
    TEST_LAYER, "dynamic-layers", "swupdate", "recipes-test", "hsmsign-test-swu", "files"
)

# scarthgap: kernel-fitimage in the kernel recipe; wrynose and later: linux-yocto-fitimage
KERNEL_CONF = 'KERNEL_CLASSES += "kernel-fitimage"\nKERNEL_IMAGETYPES += "fitImage"\n' if SCARTHGAP else ""
KERNEL_CASE = (
    (
        "virtual/kernel",
        "do_assemble_fitimage",
        ['UBOOT_MKIMAGE_SIGN="hsmsign mkimage"', "hsmsign_prepare_env"],
    )
    if SCARTHGAP
    else (
        "linux-yocto-fitimage",
        "do_hsmsign_fitimage",
        ["python do_hsmsign_fitimage () {", 'FIT_KERNEL_SIGN_ENABLE="0"'],
    )
)

pytestmark = [
    pytest.mark.skipif(not bbenv.HAVE_BITBAKE, reason=bbenv.SKIP_REASON),
    pytest.mark.skipif(bbenv.IS_ROOT, reason="BitBake refuses to run as root"),
]


def build_at(topdir: str) -> Build:
    """A build directory whose bitbake runs all carry the PIN marker as HSM_TEST_PIN."""
    return Build(topdir, env={"HSM_TEST_PIN": PIN_MARKER})


OFFLINE_CONF = (
    'BB_NO_NETWORK = "1"\nCONNECTIVITY_CHECK_URIS = ""\n'
    'BB_NUMBER_THREADS = "2"\nBB_NUMBER_PARSE_THREADS = "2"\n'
)


def readme_snippet() -> tuple[str, str]:
    """The README's "In your build" block: (bblayers.conf lines, local.conf lines), paths filled in."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    found = re.search(r"^## In your build\n.*?^```[a-z]*\n(.*?)^```", text, re.M | re.S)
    assert found is not None, "README.md has no code block under '## In your build'"
    block = found.group(1)
    bblayers, sep, local = block.partition("# conf/local.conf")
    assert sep and "# conf/bblayers.conf" in bblayers, block
    paths = {
        "/path/to/meta-openembedded": METAOE,
        "/path/to/meta-hsmsign/meta-hsmsign": LAYER,
        "/path/to/meta-swupdate": METASWUPDATE or "/nonexistent/meta-swupdate",
    }
    for placeholder, path in paths.items():
        bblayers = bblayers.replace(placeholder, path)
    live = [line for line in bblayers.splitlines() if not line.lstrip().startswith("#")]
    assert not any("/path/to" in line for line in live), f"a placeholder the test does not know: {bblayers}"
    return bblayers, sep + local


def init_builddir(topdir: str) -> None:
    """A fresh conf/ as OE-Core's oe-init-build-env makes it (its default templates)."""
    shutil.rmtree(os.path.join(topdir, "conf"), ignore_errors=True)
    done = subprocess.run(
        ["bash", "-c", '. "$1/oe-init-build-env" "$2"', "init", OECORE, topdir],
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", topdir), "BITBAKEDIR": BITBAKE},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and os.path.exists(os.path.join(topdir, "conf", "local.conf")), (
        done.stdout + done.stderr
    )


def append_conf(topdir: str, bblayers: str, local: str) -> None:
    for name, text in (("bblayers.conf", bblayers), ("local.conf", local)):
        with open(os.path.join(topdir, "conf", name), "a", encoding="utf-8") as fh:
            fh.write("\n" + text)


def warm_up(build: Build) -> None:
    """In a fresh TMPDIR, one cheap parse (meta-hsmsign's recipes only) before the real one.

    On wrynose and master the first parse in a fresh TMPDIR stores its recipe cache
    under a configuration hash that the next bitbake run does not reproduce (OE-Core's
    first-run set-up in TMPDIR and PERSISTENT_DIR changes the configuration; seen:
    the first ``bitbake -p`` and the next ``bitbake -g`` disagree, every later run
    agrees), so the second command parsed every recipe again: minutes on 2 cores.
    """
    if glob.glob(os.path.join(build.topdir, "tmp*", "saved_tmpdir")):
        return
    local = os.path.join(build.topdir, "conf", "local.conf")
    with open(local, encoding="utf-8") as fh:
        text = fh.read()
    try:
        with open(local, "a", encoding="utf-8") as fh:
            fh.write('\nBBMASK += "^(?!.*/meta-hsmsign/recipes-)"\n')
        done = build.run("-p", timeout=900)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    finally:
        with open(local, "w", encoding="utf-8") as fh:
            fh.write(text)


def write_conf(topdir: str, local: str, extra_layers: tuple[str, ...] = ()) -> None:
    conf = os.path.join(topdir, "conf")
    os.makedirs(conf, exist_ok=True)
    with open(os.path.join(conf, "bblayers.conf"), "w", encoding="utf-8") as fh:
        paths = " ".join(bbenv.layer_paths(*extra_layers))
        fh.write('BBPATH = "${TOPDIR}"\nBBFILES ?= ""\nBBLAYERS = "' + paths + '"\n')
    base = (
        'MACHINE = "qemuarm64"\nDISTRO = ""\nBB_NO_NETWORK = "1"\nCONNECTIVITY_CHECK_URIS = ""\n'
        'BB_NUMBER_THREADS = "2"\nBB_NUMBER_PARSE_THREADS = "2"\n'
    )
    with open(os.path.join(conf, "local.conf"), "w", encoding="utf-8") as fh:
        fh.write(base + local)


@pytest.fixture(scope="module")
def main_build(layer_builddir: Callable[[str], str], layer_cache_conf: str) -> Iterator[tuple[Build, str]]:
    topdir = os.environ.get("HSMSIGN_TEST_BUILDDIR") or layer_builddir("main")
    os.makedirs(topdir, exist_ok=True)
    python = os.environ.get("HSMSIGN_TEST_PYTHON", "")
    devhome = os.path.join(topdir, "hsmsign-dev")
    pin = bbenv.dev_token(devhome) if python else ""
    lib = os.path.join(LAYER, "lib")
    swu_cert = os.path.join(topdir, "hsmsign-swupdate.pem")
    if pin:
        env = {**os.environ, "PYTHONPATH": lib, "SOFTHSM2_CONF": os.path.join(devhome, "softhsm2.conf"),
               "HSM_TEST_PIN": pin}  # fmt: skip
        subprocess.run(
            [python, "-m", "hsmsign", "cert", "--mode", "development", "--pin-env", "HSM_TEST_PIN",
             "--uri", f"pkcs11:token=hsmsign-dev;object=dev-swupdate?module-path={SOFTHSM}",
             "--subject", "CN=meta-hsmsign layer test", "--output", swu_cert],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
    local = f"""
# the test's own lines, after the README's
MACHINE = "qemuarm64"
DISTRO = ""
{OFFLINE_CONF}{layer_cache_conf}INHERIT += "hsmsign"
HSMSIGN_MODE = "development"
HSMSIGN_DEV_HOME = "{devhome}"
# no pin-source: the PIN comes from HSM_TEST_PIN in BitBake's environment
HSM_PKCS11_URI = "pkcs11:token=hsmsign-dev;object=dev-rootfs?module-path={SOFTHSM}"
HSMSIGN_PIN_ENV = "HSM_TEST_PIN"
HSMSIGN_TEST_OUT:pn-hsmsign-test-sign = "{topdir}/hsmsign-test-out"
HSMSIGN_CMD:pn-hsmsign-test-sign = "env PYTHONPATH={lib} {python or "python3"} -m hsmsign"
HSMSIGN_CMD:pn-hsmsign-test-swu = "env PYTHONPATH={lib} {python or "python3"} -m hsmsign"
HSM_PKCS11_URI_SWUPDATE = "pkcs11:token=hsmsign-dev;object=dev-swupdate?module-path={SOFTHSM}"
HSM_PKCS11_URI_ENCRYPT = "pkcs11:token=hsmsign-dev;object=dev-encrypt?module-path={SOFTHSM}"
HSMSIGN_SWUPDATE_CERT:pn-hsmsign-test-swu = "{swu_cert}"
UBOOT_SIGN_ENABLE = "1"
UBOOT_FITIMAGE_ENABLE = "1"
SPL_SIGN_ENABLE = "1"
{KERNEL_CONF}IMAGE_CLASSES += "image_types_verity"
IMAGE_FSTYPES += "ext4 verity"
"""
    init_builddir(topdir)
    bblayers, readme_local = readme_snippet()
    extra = " ".join(x for x in (METASWUPDATE, TEST_LAYER) if x)
    own_layers = f'# the test\'s own layers\nBBLAYERS += "{extra}"\n'
    append_conf(topdir, bblayers + "\n" + own_layers, readme_local + local)
    build = build_at(topdir)
    warm_up(build)
    yield build, pin


def test_parse_with_oecore(main_build: tuple[Build, str]) -> None:
    build, _ = main_build
    done = build.run("-p")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    summary = re.search(r"Parsing of (\d+) \.bb files complete.*?(\d+) errors", out)
    assert summary is not None and summary.group(2) == "0", out[-2000:]
    assert PIN_MARKER not in out
    # development mode makes a secret in a variable a warning: none in the stock configuration
    assert not re.search(r"meta-hsmsign: \S+: holds ", out), out[-4000:]


def test_readme_snippet_as_written(layer_builddir: Callable[[str], str]) -> None:
    """The README's snippet alone, in a fresh build directory: production mode, the README's URI.

    Only the offline settings are added, and a BBMASK that leaves out every recipe
    outside meta-hsmsign: the whole configuration (layers, LAYERDEPENDS,
    LAYERSERIES_COMPAT, the class's parse-time checks) is parsed, and meta-hsmsign's
    recipes; the main build's full parse covers the other layers' recipes with the
    same snippet.
    """
    topdir = layer_builddir("readme-snippet")
    init_builddir(topdir)
    bblayers, local = readme_snippet()
    append_conf(topdir, bblayers, local + "\n" + OFFLINE_CONF + f'BBMASK += "^(?!{re.escape(LAYER)}/)"\n')
    done = build_at(topdir).run("-p", timeout=1800)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    summary = re.search(r"Parsing of (\d+) \.bb files complete.*?(\d+) errors", out)
    assert summary is not None and int(summary.group(1)) > 0 and summary.group(2) == "0", out[-2000:]
    assert "depends on layer" not in out
    assert not re.search(r"meta-hsmsign: \S+: holds ", out), out[-4000:]  # no variable flagged


def test_a_pin_in_a_bbappend_stops_the_parse(layer_builddir: Callable[[str], str]) -> None:
    """A secret written into a recipe's .bbappend (not into the configuration) stops the parse,
    naming the file, the line and the variable, never the value. The README's snippet plus a
    small layer holding only that .bbappend; meta-hsmsign's recipes are the ones parsed."""
    topdir = layer_builddir("bbappend-secret")
    init_builddir(topdir)
    leak = os.path.join(topdir, "meta-leak")
    os.makedirs(os.path.join(leak, "conf"), exist_ok=True)
    with open(os.path.join(LAYER, "conf", "layer.conf"), encoding="utf-8") as fh:
        compat = next(line for line in fh if line.startswith("LAYERSERIES_COMPAT_hsmsign"))  # meta-hsmsign's
    with open(os.path.join(leak, "conf", "layer.conf"), "w", encoding="utf-8") as fh:
        fh.write(
            'BBPATH .= ":${LAYERDIR}"\nBBFILES += "${LAYERDIR}/*.bbappend"\n'
            'BBFILE_COLLECTIONS += "leak"\nBBFILE_PATTERN_leak = "^${LAYERDIR}/"\n'
            + compat.replace("LAYERSERIES_COMPAT_hsmsign", "LAYERSERIES_COMPAT_leak")
        )
    append = os.path.join(leak, "hsmsign-uefi-db_%.bbappend")
    with open(append, "w", encoding="utf-8") as fh:
        fh.write('SUMMARY:append = " (board)"\n')
        fh.write(f'ACME_SIGN_URI = "pkcs11:token=t;object=k?pin-value={PIN_MARKER}"\n')
    bblayers, local = readme_snippet()
    masked = f"(?!({re.escape(LAYER)}|{re.escape(leak)})/)"
    append_conf(
        topdir,
        bblayers + f'\nBBLAYERS += "{leak}"\n',
        local + "\n" + OFFLINE_CONF + f'BBMASK += "^{masked}"\n',
    )
    done = build_at(topdir).run("-p", timeout=1800)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    assert f"meta-hsmsign: {append}:2: ACME_SIGN_URI: holds a PKCS#11 URI with pin-value" in out, out[-3000:]
    assert PIN_MARKER not in out


def task_edges(build: Build, target: str) -> set[tuple[str, str]]:
    done = build.run("-g", target)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    with open(os.path.join(build.topdir, "task-depends.dot"), encoding="utf-8") as fh:
        text = fh.read()
    return set(re.findall(r'"([^"]+)" -> "([^"]+)"', text))


def test_image_tasks_in_order(main_build: tuple[Build, str]) -> None:
    build, _ = main_build
    edges = task_edges(build, "core-image-minimal")
    image = "core-image-minimal"
    assert (f"{image}.do_hsmsign_verity", f"{image}.do_image_verity") in edges
    assert (f"{image}.do_image_complete", f"{image}.do_hsmsign_verity") in edges
    # hsmsign-native reaches the image's sysroot (default HSMSIGN_CMD)
    assert any(a.startswith("hsmsign-native.") for a, _ in edges) or any(
        b.startswith("hsmsign-native.") for _, b in edges
    )


@pytest.mark.parametrize(
    ("target", "task", "needles"),
    [
        (
            "u-boot",
            "do_uboot_assemble_fitimage",
            ['UBOOT_MKIMAGE_SIGN="hsmsign mkimage"', "hsmsign_prepare_env"],
        ),
        KERNEL_CASE,
        (
            "core-image-minimal",
            "do_hsmsign_verity",
            ["python do_hsmsign_verity () {", "python hsmsign_image_sign () {"],
        ),
    ],
)
def test_bitbake_e_shows_hooks_and_no_pin(
    main_build: tuple[Build, str], target: str, task: str, needles: list
) -> None:
    build, _ = main_build
    done = build.run("-e", target)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle} missing from bitbake -e {target}"
    assert 'UBOOT_SIGN_KEYDIR="pkcs11:' in out or target in ("core-image-minimal", "linux-yocto-fitimage")
    assert 'HSMSIGN_KEY_ID_ROOTFS="pkcs11:token=hsmsign-dev;object=dev-rootfs pubkey-sha256' in out
    assert PIN_MARKER not in out


def test_sign_task_runs_and_verifies(main_build: tuple[Build, str], tmp_path: object) -> None:
    build, pin = main_build
    if not pin:
        pytest.skip("set HSMSIGN_TEST_PYTHON to a Python with python-pkcs11 and cryptography")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl missing")
    done = build.run("-c", "hsmsign_test", "hsmsign-test-sign", env={"HSM_TEST_PIN": pin})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert not re.search(r"^WARNING: .*meta-hsmsign: ", out, re.M), out[-3000:]  # hsmsign warned of nothing
    outdir = os.path.join(build.topdir, "hsmsign-test-out")
    payload = os.path.join(outdir, "payload.bin")
    verify = subprocess.run(
        [
            openssl,
            "dgst",
            "-sha256",
            "-verify",
            os.path.join(outdir, "pubkey.pem"),
            "-signature",
            payload + ".sig",
            payload,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and "Verified OK" in verify.stdout, verify.stdout + verify.stderr
    assert_pin_nowhere(build, pin)


def test_swupdate_bundle_signed_and_encrypted_by_the_token(main_build: tuple[Build, str]) -> None:
    """meta-swupdate's own do_swuimage: sw-description signed (CMS), payload.bin encrypted by the token."""
    build, pin = main_build
    if not METASWUPDATE:
        pytest.skip("set HSMSIGN_TEST_METASWUPDATE")
    if not pin:
        pytest.skip("set HSMSIGN_TEST_PYTHON to a Python with python-pkcs11 and cryptography")
    for tool in ("cpio", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (the test build uses the host's)")
    done = build.run("-c", "swuimage", "hsmsign-test-swu", env={"HSM_TEST_PIN": pin})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert not re.search(r"^WARNING: .*meta-hsmsign: ", out, re.M), out[-3000:]
    # the prefunc's preflight: key, policy, signature type and certificate, before meta-swupdate works
    logs = glob.glob(os.path.join(build.topdir, "tmp*", "work", "*", "hsmsign-test-swu", "*", "temp",
                                  "log.do_swuimage"))  # fmt: skip
    assert logs, "no log.do_swuimage"
    with open(max(logs, key=os.path.getmtime), encoding="utf-8") as fh:
        log = fh.read()
    assert "OK: key dev-swupdate" in log and "signs swupdate's cms signature with" in log, log[-3000:]
    bundles = [
        os.path.join(base, name)
        for tmp in os.listdir(build.topdir)
        if tmp.startswith("tmp")
        for base, _dirs, files in os.walk(os.path.join(build.topdir, tmp, "deploy", "images"))
        for name in files
        if name.startswith("hsmsign-test-swu")
        and name.endswith(".swu")
        and not os.path.islink(os.path.join(base, name))
    ]
    assert bundles, out[-2000:]
    bundle = max(bundles, key=os.path.getmtime)
    python = os.environ["HSMSIGN_TEST_PYTHON"]
    lib = os.path.join(LAYER, "lib")
    cert = os.path.join(build.topdir, "hsmsign-swupdate.pem")
    verify = subprocess.run(
        [python, "-m", "hsmsign", "swupdate", "verify", "--cert", cert, bundle],
        env={**os.environ, "PYTHONPATH": lib}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr

    sys.path.insert(0, lib)
    from hsmsign.formats import cpio

    with open(bundle, "rb") as fh:
        members = {e.name: cpio.read_member(fh, e) for e in cpio.read_entries(bundle)}
    assert list(members)[:2] == ["sw-description", "sw-description.sig"]
    workdir = os.path.join(build.topdir, "swu-check")
    os.makedirs(workdir, exist_ok=True)
    for name in ("sw-description", "sw-description.sig"):
        with open(os.path.join(workdir, name), "wb") as fh:
            fh.write(members[name])
    from tests.conftest import openssl_cms_verify

    cms = openssl_cms_verify(
        os.path.join(workdir, "sw-description.sig"), os.path.join(workdir, "sw-description"), cert
    )
    assert cms.returncode == 0, cms.stderr

    # payload.bin went through the token: decrypt it there with the IV sw-description names
    with open(os.path.join(SWU_FILES, "payload.bin"), "rb") as fh:
        original = fh.read()
    encrypted = members["payload.bin"]
    assert encrypted != original and len(encrypted) % 16 == 0
    text = members["sw-description"].decode()
    found = re.search(r'ivt = "([0-9a-f]{32})"', text)
    assert found is not None, text
    assert "$swupdate_get" not in text and 'sha256 = "' in text
    os.environ["SOFTHSM2_CONF"] = os.path.join(build.topdir, "hsmsign-dev", "softhsm2.conf")
    import pkcs11

    token = pkcs11.lib(SOFTHSM).get_token(token_label="hsmsign-dev")
    with token.open(user_pin=pin) as session:
        key = session.get_key(label="dev-encrypt", key_type=pkcs11.KeyType.AES)
        plain = key.decrypt(
            encrypted, mechanism=pkcs11.Mechanism.AES_CBC_PAD, mechanism_param=bytes.fromhex(found.group(1))
        )
    assert plain == original
    with open(os.path.join(SWU_FILES, "plain.txt"), "rb") as fh:
        assert members["plain.txt"] == fh.read()  # not flagged: stays in clear
    assert_pin_nowhere(build, pin)


def test_pin_value_in_local_conf_stops_parse(tmp_path: object) -> None:
    topdir = os.path.join(str(tmp_path), "bb-pin")
    write_conf(
        topdir,
        'INHERIT += "hsmsign"\nHSM_PKCS11_URI = "pkcs11:token=t;object=k?pin-value=' + PIN_MARKER + '"\n',
    )
    done = build_at(topdir).run("-p", timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "HSM_PKCS11_URI" in out and "pin-value" in out and "what to do" in out
    assert "Parsing of" not in out  # stopped before any recipe
    assert PIN_MARKER not in out


def test_private_key_and_key_file_stop_parse_in_production(tmp_path: object) -> None:
    topdir = os.path.join(str(tmp_path), "bb-key")
    header = "-----BEGIN " + "PRIVATE KEY-----"  # split so the file itself holds no key header
    write_conf(
        topdir,
        'INHERIT += "hsmsign"\nHSM_PKCS11_URI = "pkcs11:token=t;object=k"\n'
        f'ACME_SIGNING_BLOB = "{header} MIIEvAIBADANBg"\nSWUPDATE_PRIVATE_KEY = "/keys/swu.pem"\n',
    )
    done = build_at(topdir).run("-p", timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "ACME_SIGNING_BLOB" in out and "private key" in out
    assert "SWUPDATE_PRIVATE_KEY" in out and "remove SWUPDATE_PRIVATE_KEY" in out
    assert "MIIEvAIBADANBg" not in out


# A published AES key (swupdate's documentation, hsmsign/data/known_keys.json) and IV.
SWUPDATE_DOC_KEY = "390ad54490a4a5f53722291023c19e08ffb5c4677a59e958c96ffa6e641df040"
SWUPDATE_DOC_IV = "d5d601bacfe13100b149177318ebc7a4"


def test_secrets_under_any_name_stop_parse_in_production(tmp_path: object) -> None:
    """Every variable and flag of the base configuration goes through the leak scanner's patterns.

    One parse for all cases (each is named in the fatal error; the check reports
    every problem at once), stopped before any recipe: a few seconds per release.
    Names no pre-filter would pick (FIRMWARE_BLOB, ACME_PASSWORD) show that every
    variable is checked.
    """
    topdir = os.path.join(str(tmp_path), "bb-secrets")
    secrets = {
        "MKIMAGE_SIGN_PIN": "24681357",
        "HSM_PIN": "97531",
        "ACME_SIGN_URI": f"pkcs11:token=t;object=k?pin-value={PIN_MARKER}",
        "SWUPDATE_AES_KEY": SWUPDATE_DOC_KEY,
        "FIRMWARE_BLOB": f"-K {SWUPDATE_DOC_KEY} -iv {SWUPDATE_DOC_IV}",
        "HSM_PKCS11_URI_ROOTFS": "pkcs11:token=t;object=k?pin-source=|/bin/echo%2086420",
    }
    lines = "".join(f'{name} = "{value}"\n' for name, value in secrets.items())
    write_conf(
        topdir,
        'INHERIT += "hsmsign"\nHSM_PKCS11_URI = "pkcs11:token=t;object=k?pin-source=file:/run/hsm-pin"\n'
        + lines
        # an override, a flag (meta-oe's signing.bbclass form) and an inline expression hide nothing
        + 'SIGNING_PIN:pn-u-boot = "13579"\n'
        + 'SIGNING_PKCS11_URI[fit] = "pkcs11:serial=1;object=fit?pin-value=55555"\n'
        + "ACME_PASSWORD = \"${@'hunter' + '2hunter2'}\"\n",
    )
    done = build_at(topdir).run("-p", timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Parsing of" not in out  # stopped before any recipe
    errors = out[out.index("ERROR:") :] if "ERROR:" in out else ""
    named = [*secrets, "SIGNING_PIN:pn-u-boot", "SIGNING_PKCS11_URI[fit]", "ACME_PASSWORD"]
    for name in named:
        assert f"meta-hsmsign: {name}: " in errors, f"{name} not named as fatal:\n{errors[-3000:]}"
    assert "pin-source=|PROGRAM has arguments" in errors and "published example key" in errors
    for value in [*secrets.values(), "24681357", "97531", "86420", "13579", "55555", "hunter2hunter2",
                  SWUPDATE_DOC_KEY, SWUPDATE_DOC_IV, PIN_MARKER]:  # fmt: skip
        assert value not in out
