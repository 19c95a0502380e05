"""RAUC bundles in real BitBake: meta-rauc's own do_bundle signs through the token, then the
bundle is checked by hsmsign and by rauc.

meta-rauc's bundle class (from the release's snapshot) builds the test layer's
``hsmsign-test-bundle`` (one slot, a file a stand-in recipe deploys) with a stand-in
``rauc-native`` that runs Debian's rauc, and the host's ``mksquashfs``. hsmsign-rauc.bbclass
sets RAUC_KEY_FILE to the token key's URI, puts the module and the PIN into rauc's
environment for do_bundle only (OpenSSL's pkcs11 engine from Debian's libengine-pkcs11-openssl,
since libp11-native cannot be built offline: a stand-in gives its version), and checks every
bundle after signing.
Environment: bbenv.py.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.layer import bbenv
from tests.layer.bbenv import SOFTHSM, Build, StandinBuild

# meta-rauc next to the release's openembedded-core (the ../shared/yocto snapshots have it)
META_RAUC = os.path.join(os.path.dirname(bbenv.OECORE), "meta-rauc") if bbenv.OECORE else ""
TARGET = "hsmsign-test-bundle:do_deploy"
WRONG = "0" * 64

pytestmark = [
    *bbenv.NEEDS_BITBAKE,
    bbenv.NEEDS_PYTHON,
    bbenv.NEEDS_PSEUDO,
    pytest.mark.skipif(not os.path.isdir(META_RAUC), reason="no meta-rauc next to openembedded-core"),
    pytest.mark.skipif(shutil.which("rauc") is None, reason="apt-get install rauc"),
    pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="apt-get install squashfs-tools"),
]


class RaucBuild(StandinBuild):
    FOLDER = "rauc"
    MACHINE = "qemux86-64"
    NATIVE = StandinBuild.NATIVE + " squashfs-tools-native cryptsetup-native"
    LAYERS = {"rauc": META_RAUC}
    cert = ""
    other_cert = ""

    def uri(self, key: str = "test-rauc", pin_file: bool = True) -> str:
        uri = f"pkcs11:token=hsmsign-dev;object={key}?module-path={SOFTHSM}"
        return uri + f"&pin-source=file:{self.pin_file}" if pin_file else uri

    def conf(self, **changes: str) -> None:
        settings = {
            "HSM_PKCS11_URI_RAUC": self.uri(),
            "RAUC_CERT_FILE": self.cert,
            "HSMSIGN_LEDGER": os.path.join(self.build.topdir, "ledger.jsonl"),
            **bbenv.HOST_PSEUDO,
            **changes,
        }
        self.write_conf(settings, ['HOSTTOOLS += "mksquashfs unsquashfs"'])

    def bundle(self) -> str:
        found = sorted(glob.glob(os.path.join(self.deploy_dir(), "hsmsign-test-bundle-*.raucb")))
        links = [p for p in found if os.path.islink(p)]
        assert links, found
        return os.path.realpath(links[0])


def make_cert(rb: RaucBuild, key: str, name: str) -> str:
    path = os.path.join(rb.build.topdir, name)
    env = {"SOFTHSM2_CONF": os.path.join(rb.devhome, "softhsm2.conf")}
    done = bbenv.hsmsign(
        "cert",
        "--uri",
        rb.uri(key),
        "--mode",
        "development",
        "--subject",
        f"CN={key}",
        "--output",
        path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def rauc_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaucBuild]:
    topdir = bbenv.standin_topdir("rauc", tmp_path_factory)
    devhome, pin, pin_file = bbenv.standin_token(topdir, ("test-rauc", "test-rauc-other"))
    rb = RaucBuild(Build(topdir), pin, devhome, pin_file)
    rb.cert = make_cert(rb, "test-rauc", "rauc.pem")
    rb.other_cert = make_cert(rb, "test-rauc-other", "rauc-other.pem")
    rb.conf()
    yield rb


def rauc_info(keyring: str, bundle: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rauc", "info", "--output-format=json", f"--keyring={keyring}", bundle],
        capture_output=True,
        text=True,
        check=False,
    )


def test_bundle_signed_by_rauc_through_the_token_and_checked(rauc_build: RaucBuild) -> None:
    """meta-rauc's do_bundle signs with the token key (RAUC_KEY_FILE is its URI, no key file);
    the deployed bundle passes rauc's own check against the certificate and hsmsign's (the
    signature and every payload block), the ledger holds it, and neither the PIN nor a private
    key is anywhere in TMPDIR."""
    rb = rauc_build
    done = rb.bitbake(TARGET)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert rb.pin not in out
    assert not re.search(r"^WARNING: .*meta-hsmsign: ", out, re.M), out[-3000:]  # a clean build: no warning
    bundle = rb.bundle()
    info = rauc_info(rb.cert, bundle)
    assert info.returncode == 0, info.stderr
    manifest = json.loads(info.stdout)
    assert manifest["compatible"] == "hsmsign-test"
    assert "Verified inline signature by 'CN = test-rauc'" in info.stderr
    ours = bbenv.hsmsign("rauc", "verify", "--json", "--cert", rb.cert, bundle)
    assert ours.returncode == 0, ours.stderr
    found = json.loads(ours.stdout)
    assert found["format"] == "verity" and found["payload_checked"], found
    # signed by the token key: the fingerprint hsmsign reads from the token
    key = bbenv.hsmsign(
        "info", "--json", "--uri", rb.uri(), "--mode", "development",
        env={"SOFTHSM2_CONF": os.path.join(rb.devhome, "softhsm2.conf")},
    )  # fmt: skip
    assert key.returncode == 0, key.stderr
    assert json.loads(key.stdout)["fingerprint"] == found["key_fingerprint"]
    # another key's certificate is not trusted for it
    assert rauc_info(rb.other_cert, bundle).returncode != 0
    # the do_bundle log shows both checks ran (when it ran, not when it came from sstate)
    if "hsmsign-test-bundle:do_bundle" in bbenv.started_tasks(out):
        logs = glob.glob(os.path.join(rb.workdir("hsmsign-test-bundle"), "temp", "log.do_bundle"))
        with open(logs[0], encoding="utf-8") as fh:
            log = fh.read()
        assert "rauc signs with pkcs11:token=hsmsign-dev;object=test-rauc" in log
        # the preflight had libp11-native's version (the stand-in's libp11.pc)
        assert "libp11 0.4.12 can list every key on the token" in log, log[-3000:]
        assert "checked by hsmsign and by rauc info" in log
        with open(os.path.join(rb.build.topdir, "ledger.jsonl"), encoding="utf-8") as fh:
            entries = [json.loads(line) for line in fh]
        assert any(e["kind"] == "rauc" and e["key_fingerprint"] == found["key_fingerprint"] for e in entries)
    ledger = bbenv.hsmsign("ledger", "verify", "--ledger", os.path.join(rb.build.topdir, "ledger.jsonl"))
    assert ledger.returncode == 0, ledger.stderr
    bbenv.assert_no_secrets(rb.build, rb.pin)


def flag(rb: RaucBuild, name: str, var: str = "do_bundle") -> str:
    done = rb.build.run("-r", "hsmsign-test-bundle", "--value", "-q", "-f", name, var, tool="bitbake-getvar")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout.strip()


def test_recipe_names_the_key_not_a_file(rauc_build: RaucBuild) -> None:
    """RAUC_KEY_FILE is the key's URI without PIN source or module, do_bundle has the hooks and
    the token's lock, and libp11-native (OpenSSL's pkcs11 engine for rauc-native) and
    cryptsetup-native (veritysetup) are dependencies."""
    done = rauc_build.bitbake("-e", "hsmsign-test-bundle")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    env = done.stdout
    assert re.search(r'^RAUC_KEY_FILE="pkcs11:token=hsmsign-dev;object=test-rauc"$', env, re.M)
    # every rauc call quotes the key (meta-rauc's 'rauc convert' does not: the class does), and the
    # URI is not in do_bundle's file checksums (BitBake would warn it cannot checksum 'pkcs11')
    assert '--key="pkcs11:token=hsmsign-dev;object=test-rauc"' in env
    assert "--key=pkcs11:" not in env
    assert "pkcs11:" not in flag(rauc_build, "file-checksums")
    depends = re.search(r'^DEPENDS="(.*)"$', env, re.M)
    assert depends and {"libp11-native", "cryptsetup-native"} <= set(depends.group(1).split())
    assert {"hsmsign_prepare_env", "hsmsign_rauc_prepare"} <= set(flag(rauc_build, "prefuncs").split())
    assert "hsmsign_rauc_check" in flag(rauc_build, "postfuncs").split()
    assert "hsmsign-dev" in flag(rauc_build, "lockfiles")


def test_wrong_certificate_pin_or_keyring_fails_closed(rauc_build: RaucBuild) -> None:
    """A certificate of another key or a pinned fingerprint the key does not have: do_bundle
    fails in the prefunc, before rauc signs, with what to do. A keyring that does not trust the
    signer: the postfunc's check fails and deletes the bundle. No bundle is left in ${B} or
    deployed either way."""
    rb = rauc_build
    try:
        for changes, message in (
            ({"RAUC_CERT_FILE": rb.other_cert}, "does not belong to the token key"),
            ({"HSMSIGN_PUBKEY_SHA256_RAUC": WRONG}, f"HSMSIGN_PUBKEY_SHA256_RAUC pins sha256:{WRONG}"),
            # the devices' keyring does not trust the signer: rauc signs, the postfunc refuses
            (
                {"HSMSIGN_RAUC_KEYRING": rb.other_cert},
                "failed its check after signing; the bundles were deleted",
            ),
        ):
            rb.conf(**changes)
            rb.bitbake("-c", "cleansstate", "hsmsign-test-bundle")
            done = rb.bitbake(TARGET)
            out = done.stdout + done.stderr
            assert done.returncode != 0, out[-3000:]
            assert message in out, out[-3000:]
            assert rb.pin not in out
            assert not glob.glob(os.path.join(rb.workdir("hsmsign-test-bundle"), "build", "*.raucb"))
            assert not glob.glob(os.path.join(rb.deploy_dir(), "hsmsign-test-bundle-*.raucb"))
    finally:
        rb.conf()


def test_pin_from_the_environment_bitbake_was_started_from(rauc_build: RaucBuild) -> None:
    """HSMSIGN_PIN_ENV: the PIN rauc logs in with comes from the shell that started BitBake
    (BB_ORIGENV), read in the prefunc; it is in no file under TMPDIR. Without it, do_bundle
    stops in the prefunc and says what to export."""
    rb = rauc_build
    try:
        rb.conf(HSM_PKCS11_URI_RAUC=rb.uri(pin_file=False), HSMSIGN_PIN_ENV="HSM_TEST_PIN")
        rb.bitbake("-c", "cleansstate", "hsmsign-test-bundle")
        missing = rb.bitbake(TARGET)
        out = missing.stdout + missing.stderr
        assert missing.returncode != 0 and "HSM_TEST_PIN is not set in the environment" in out, out[-3000:]
        done = rb.build.run(TARGET, env={"HSM_TEST_PIN": rb.pin})
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-6000:]
        assert rb.pin not in out
        info = rauc_info(rb.cert, rb.bundle())
        assert info.returncode == 0, info.stderr
        bbenv.assert_no_secrets(rb.build, rb.pin)
    finally:
        rb.conf()


def test_rauc_key_file_refused_in_production_and_replaced_in_development(rauc_build: RaucBuild) -> None:
    """meta-rauc's RAUC_KEY_FILE naming a key file stops the parse in production; a PKCS#11 URI
    there that is not HSM_PKCS11_URI_RAUC's key gets a warning, and the role's key signs."""
    rb = rauc_build
    try:
        rb.conf(HSMSIGN_MODE="production", RAUC_KEY_FILE="/etc/rauc/development-1.key.pem")
        done = rb.bitbake("-e", "hsmsign-test-bundle")
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        assert "RAUC_KEY_FILE: names a key or secret file" in out, out[-3000:]
        assert "the key is a PKCS#11 URI (HSM_PKCS11_URI_RAUC)" in out
        rb.conf(RAUC_KEY_FILE="pkcs11:token=hsmsign-dev;object=test-rauc-other")
        done = rb.bitbake("-e", "hsmsign-test-bundle")
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-3000:]
        assert "RAUC_KEY_FILE names pkcs11:token=hsmsign-dev;object=test-rauc-other, but bundles" in out
        assert re.search(r'^RAUC_KEY_FILE="pkcs11:token=hsmsign-dev;object=test-rauc"$', done.stdout, re.M)
    finally:
        rb.conf()


@pytest.mark.skipif(shutil.which("casync") is None, reason="apt-get install casync")
def test_casync_bundle_converted_through_the_token(rauc_build: RaucBuild) -> None:
    """RAUC_CASYNC_BUNDLE: meta-rauc's own `rauc convert` signs the casync bundle with the token
    key, in the environment the prefunc set; the postfunc checks it as it checks the plain one
    (hsmsign: the signature and every payload block; rauc info against the keyring), and records
    both. Both bundles and the chunk store are deployed; the PIN is in no file under TMPDIR."""
    rb = rauc_build
    try:
        rb.conf(RAUC_CASYNC_BUNDLE="1", RAUC_KEYRING_FILE=rb.cert, HSMSIGN_TEST_RAUC_ROOTFS_MIB="16")
        for recipe in ("hsmsign-test-bundle", "hsmsign-test-rauc-rootfs"):
            rb.bitbake("-c", "cleansstate", recipe)
        done = rb.bitbake(TARGET)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-6000:]
        assert rb.pin not in out
        assert "Unable to get checksum" not in out, out[-3000:]
        links = [
            p
            for p in glob.glob(os.path.join(rb.deploy_dir(), "casync-hsmsign-test-bundle-*.raucb"))
            if os.path.islink(p)
        ]
        assert links, os.listdir(rb.deploy_dir())
        casync_bundle = os.path.realpath(links[0])
        store = casync_bundle[: -len(".raucb")] + ".castr"
        assert os.path.isdir(store) and os.listdir(store), store
        info = rauc_info(rb.cert, casync_bundle)
        assert info.returncode == 0, info.stderr
        assert "Verified inline signature by 'CN = test-rauc'" in info.stderr
        names = [img["filename"] for entry in json.loads(info.stdout)["images"] for img in entry.values()]
        assert names and all(n.endswith(".caibx") for n in names), names  # casync indexes, not images
        ours = bbenv.hsmsign("rauc", "verify", "--json", "--cert", rb.cert, casync_bundle)
        assert ours.returncode == 0, ours.stderr
        found = json.loads(ours.stdout)
        assert found["format"] == "verity" and found["payload_checked"], found
        assert rauc_info(rb.other_cert, casync_bundle).returncode != 0
        log_path = os.path.join(rb.workdir("hsmsign-test-bundle"), "temp", "log.do_bundle")
        with open(log_path, encoding="utf-8") as fh:
            log = fh.read()
        for name in ("bundle.raucb", "casync-bundle.raucb"):
            assert f"{name} checked by hsmsign and by rauc info" in log, log[-3000:]
        with open(os.path.join(rb.build.topdir, "ledger.jsonl"), encoding="utf-8") as fh:
            recorded = {os.path.basename(e["artifact"]) for e in map(json.loads, fh) if e["kind"] == "rauc"}
        assert {"bundle.raucb", "casync-bundle.raucb"} <= recorded, recorded
        bbenv.assert_no_secrets(rb.build, rb.pin)
    finally:
        rb.conf()


def test_a_token_libp11_native_cannot_list_stops_the_task_before_rauc(rauc_build: RaucBuild) -> None:
    """An Ed25519 key next to the RAUC key: libp11-native 0.4.12 would find no key on that token
    and rauc would fail opaquely. The prefunc's preflight, given libp11-native's version, stops
    do_bundle first and names the key in the way; nothing is deployed. (Last in this file: the
    key is removed afterwards.)"""
    rb = rauc_build
    env = {"SOFTHSM2_CONF": os.path.join(rb.devhome, "softhsm2.conf")}
    made = bbenv.hsmsign(
        "keygen", "--uri", rb.uri("test-ed25519"), "--mode", "development", "--type", "ed25519", env=env
    )
    assert made.returncode == 0, made.stderr
    try:
        rb.bitbake("-c", "cleansstate", "hsmsign-test-bundle")
        done = rb.bitbake(TARGET)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        refusal = "also holds 'test-ed25519' (Ed25519/Ed448), a key type libp11 0.4.12 cannot list"
        assert refusal in out, out[-3000:]
        assert "keep such keys on another token" in out
        assert rb.pin not in out
        assert not glob.glob(os.path.join(rb.deploy_dir(), "hsmsign-test-bundle-*.raucb"))
        # the host's engine (HSMSIGN_RAUC_DEPENDS empty): its version is unknown, so the preflight
        # warns, and the warning is a BitBake warning, not a line in the log; rauc then fails
        rb.conf(HSMSIGN_RAUC_DEPENDS="")
        done = rb.bitbake(TARGET)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        shown = r"^WARNING: .*do_bundle: meta-hsmsign: token 'hsmsign-dev' also holds 'test-ed25519'"
        assert re.search(shown, out, re.M), out[-3000:]
        assert "failed to load PKCS11 private key" in out, out[-3000:]  # rauc, in meta-rauc's do_bundle
        assert not glob.glob(os.path.join(rb.deploy_dir(), "hsmsign-test-bundle-*.raucb"))
    finally:
        rb.conf()
        for kind in ("privkey", "pubkey"):
            subprocess.run(
                ["pkcs11-tool", "--module", SOFTHSM, "--token-label", "hsmsign-dev", "--login",
                 "--pin", rb.pin, "--delete-object", "--type", kind, "--label", "test-ed25519"],
                env={**os.environ, **env}, capture_output=True, check=False,
            )  # fmt: skip
