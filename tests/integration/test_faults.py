"""Faults survived, with real components: a real SoftHSM token, real files systems, real signals.

Each fault ends with a clear one-line error and the family's exit code, and never
with a partial or unsigned artifact under the real name. Destructive cases (the
token directory removed) run against a private token made for the test, never the
session token other tests share.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hsmsign import ledger

from tests.conftest import LIB, SoftHsm, require, tool

TMP_PREFIX = ".hsmsign-tmp-"

# A fault-injecting PKCS#11 module, compiled at test time: it forwards every call to the
# real module (FAULT_REAL_MODULE) and makes C_Login / C_Sign return the CK_RV given in
# FAULT_LOGIN / FAULT_SIGN (FAULT_LOGIN_TIMES: only the first N logins), logging each call
# to FAULT_LOG. SoftHSM itself never locks a
# PIN and never disappears mid-call, so this is how those paths meet a real token.
SHIM_C = r"""
/* A fault-injecting PKCS#11 module: forwards to FAULT_REAL_MODULE, fails chosen calls. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST shim;

static void note(const char *what) {
    const char *log = getenv("FAULT_LOG");
    if (log) { FILE *f = fopen(log, "a"); if (f) { fprintf(f, "%s\n", what); fclose(f); } }
}
static CK_RV fault(const char *name) {
    const char *e = getenv(name);
    return e ? (CK_RV)strtoul(e, NULL, 0) : CKR_OK;
}
/* FAULT_LOGIN_TIMES=N: only the first N logins of the process fail (a transient fault). */
static unsigned long logins;
static CK_RV shim_Login(CK_SESSION_HANDLE h, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
    note("C_Login");
    CK_RV rv = fault("FAULT_LOGIN");
    const char *times = getenv("FAULT_LOGIN_TIMES");
    if (times && logins++ >= strtoul(times, NULL, 0)) rv = CKR_OK;
    return rv ? rv : real->C_Login(h, u, pin, len);
}
static CK_RV shim_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR s, CK_ULONG_PTR sl) {
    note("C_Sign");
    CK_RV rv = fault("FAULT_SIGN");
    return rv ? rv : real->C_Sign(h, d, dl, s, sl);
}
/* FAULT_TOKEN_NAME renames the token, its slot and the library (manufacturer, model,
   descriptions); FAULT_HW_SLOT=1 sets CKF_HW_SLOT on the slot. */
static void set_name(CK_UTF8CHAR *field, size_t size) {
    const char *name = getenv("FAULT_TOKEN_NAME");
    if (!name) return;
    memset(field, ' ', size);
    memcpy(field, name, strnlen(name, size));
}
static CK_RV shim_GetInfo(CK_INFO_PTR info) {
    CK_RV rv = real->C_GetInfo(info);
    if (rv == CKR_OK) {
        set_name(info->manufacturerID, sizeof info->manufacturerID);
        set_name(info->libraryDescription, sizeof info->libraryDescription);
    }
    return rv;
}
static CK_RV shim_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info) {
    CK_RV rv = real->C_GetSlotInfo(id, info);
    if (rv == CKR_OK) {
        set_name(info->manufacturerID, sizeof info->manufacturerID);
        set_name(info->slotDescription, sizeof info->slotDescription);
        if (getenv("FAULT_HW_SLOT")) info->flags |= CKF_HW_SLOT;
    }
    return rv;
}
static CK_RV shim_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info) {
    CK_RV rv = real->C_GetTokenInfo(id, info);
    if (rv == CKR_OK) {
        set_name(info->manufacturerID, sizeof info->manufacturerID);
        set_name(info->model, sizeof info->model);
    }
    return rv;
}
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
    if (!real) {
        const char *path = getenv("FAULT_REAL_MODULE");
        void *lib = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        if (!lib) return CKR_GENERAL_ERROR;
        CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
        if (!get || get(&real) != CKR_OK) return CKR_GENERAL_ERROR;
        memcpy(&shim, real, sizeof shim);
        shim.C_Login = shim_Login;
        shim.C_Sign = shim_Sign;
        shim.C_GetInfo = shim_GetInfo;
        shim.C_GetSlotInfo = shim_GetSlotInfo;
        shim.C_GetTokenInfo = shim_GetTokenInfo;
    }
    *out = &shim;
    return CKR_OK;
}
"""
CKR_PIN_INCORRECT = 0xA0
CKR_PIN_LOCKED = 0xA4
CKR_DEVICE_ERROR = 0x30
CKR_DEVICE_REMOVED = 0x32
CKR_USER_PIN_NOT_INITIALIZED = 0x102


class PrivateToken:
    """A throw-away SoftHSM token with one P-256 key, for tests that destroy it."""

    def __init__(self, base: Path, module: str) -> None:
        self.base = base
        self.tokens = base / "tokens"
        self.tokens.mkdir(parents=True)
        self.conf = base / "softhsm2.conf"
        self.conf.write_text(
            f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        self.pin = base / "pin"
        self.pin.write_text("fault-pin-2468\n")
        os.chmod(self.pin, 0o600)
        self.module = module
        self.env = {**os.environ, "SOFTHSM2_CONF": str(self.conf), "PYTHONPATH": str(LIB)}
        self.env.pop("HSM_PKCS11_URI", None)
        self.env.pop("HSMSIGN_LEDGER", None)
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                "faults",
                "--pin",
                "fault-pin-2468",
                "--so-pin",
                "fault-so-1357",
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )
        done = self.cli("keygen", "--uri", self.uri, "--type", "ec:secp256r1")
        assert done.returncode == 0, done.stderr

    @property
    def uri(self) -> str:
        return f"pkcs11:token=faults;object=fw?module-path={self.module}&pin-source=file:{self.pin}"

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hsmsign", args[0], "--mode", "development", *args[1:]]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, timeout=60, check=False
        )


@pytest.fixture
def private_token(softhsm: SoftHsm, tmp_path: Path) -> PrivateToken:
    return PrivateToken(tmp_path / "token", softhsm.module)


def _assert_clean_failure(done: subprocess.CompletedProcess[str], code: int, out: Path) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("hsmsign: error: ")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_token_gone_before_signing(private_token: PrivateToken, tmp_path: Path) -> None:
    data = tmp_path / "u-boot.bin"
    data.write_bytes(os.urandom(4096))
    shutil.rmtree(private_token.tokens)
    out = tmp_path / "u-boot.sig"
    done = private_token.cli("sign", "--uri", private_token.uri, "-o", str(out), str(data))
    _assert_clean_failure(done, 3, out)
    # SoftHSM refuses C_Initialize without its token directory: the message names the module and its config
    assert "PKCS#11 module" in done.stderr and "SOFTHSM2_CONF" in done.stderr


def test_token_gone_during_signing(private_token: PrivateToken, tmp_path: Path) -> None:
    """The key is open and logged in; the token disappears while the artifact is being hashed."""
    fifo = tmp_path / "artifact.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "artifact.sig"
    proc = subprocess.Popen(
        private_token.argv("sign", "--uri", private_token.uri, "-o", str(out), str(fifo)),
        env=private_token.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Opening a FIFO for writing blocks until the reader opens it: the signer has opened the key by then.
        with open(fifo, "wb") as w:
            shutil.rmtree(private_token.tokens)
            w.write(os.urandom(1 << 20))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    _assert_clean_failure(done, 3, out)
    assert "failed" in err


def test_module_that_is_a_real_library_but_not_pkcs11(private_token: PrivateToken, tmp_path: Path) -> None:
    libz = ctypes.util.find_library("z")
    assert libz is not None
    path = next(
        (
            p
            for p in ("/lib/x86_64-linux-gnu/" + libz, "/usr/lib/x86_64-linux-gnu/" + libz)
            if os.path.exists(p)
        ),
        None,
    )
    if path is None:
        pytest.skip("libz shared object not found at a known path")
    data = tmp_path / "a.bin"
    data.write_bytes(b"x")
    out = tmp_path / "a.sig"
    uri = f"pkcs11:token=faults;object=fw?module-path={path}&pin-source=file:{private_token.pin}"
    done = private_token.cli("sign", "--uri", uri, "-o", str(out), str(data))
    _assert_clean_failure(done, 3, out)
    assert "PKCS#11" in done.stderr


@contextlib.contextmanager
def _full_filesystem(where: Path, how: str) -> Iterator[Path]:
    """A directory where writes fail: a 64 KiB tmpfs filled up, or (rlimit) any directory."""
    where.mkdir()
    if how == "rlimit":
        yield where
        return
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True, check=False
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (not root?); the rlimit case covers disk-full")
    try:
        with contextlib.suppress(OSError), open(where / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_disk_full_while_writing(private_token: PrivateToken, tmp_path: Path, how: str) -> None:
    data = tmp_path / "kernel.itb"
    data.write_bytes(os.urandom(8192))
    led = tmp_path / "ledger.jsonl"
    with _full_filesystem(tmp_path / "full", how) as full:
        out = full / "kernel.sig"
        argv = private_token.argv(
            "sign", "--uri", private_token.uri, "--ledger", str(led), "-o", str(out), str(data)
        )
        done = subprocess.run(
            argv,
            env=private_token.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            preexec_fn=_limit_file_size if how == "rlimit" else None,  # noqa: PLW1509 - no threads started here
        )
        _assert_clean_failure(done, 2, out)
        assert "space" in done.stderr or "too large" in done.stderr
    assert not led.exists()  # no ledger line for a signature that was never written


def test_sigkill_mid_write_leaves_the_old_artifact(softhsm: SoftHsm, tmp_path: Path) -> None:
    """SIGKILL while an encrypted image is being streamed out: the previous artifact stays whole."""
    aes = softhsm.keygen("faults-aes", "aes:256")
    out = tmp_path / "rootfs.enc"
    out.write_bytes(b"previous good artifact")
    src = tmp_path / "rootfs.img"
    with open(src, "wb") as fh:
        fh.truncate(16 << 30)  # sparse, and long enough to be caught half-way
    argv = [
        sys.executable,
        "-m",
        "hsmsign",
        "encrypt",
        "--mode",
        "development",
        "--uri",
        aes,
        "--in",
        str(src),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(argv, env=softhsm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tmps = [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
            if tmps and tmps[0].stat().st_size > 0:
                break
            if proc.poll() is not None:
                pytest.fail(f"encrypt ended early: {proc.communicate()}")
            time.sleep(0.02)
        else:
            pytest.fail("the encrypt command never started writing")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"previous good artifact"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("rootfs.enc", "rootfs.img")]
    assert all(name.startswith(TMP_PREFIX) for name in leftovers), leftovers


def test_sixteen_processes_sign_at_once(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    """16 processes, one token, one ledger: every signature verifies, the ledger holds all 16 and verifies."""
    pub_pem = tmp_path / "pub.pem"
    done = softhsm.run_cli("pubkey", "--mode", "development", "--uri", rsa2048, "--output", str(pub_pem))
    assert done.returncode == 0, done.stderr
    public_key = serialization.load_pem_public_key(pub_pem.read_bytes())
    led = tmp_path / "ledger.jsonl"
    procs = []
    for n in range(16):
        art = tmp_path / f"artifact-{n:02d}.bin"
        art.write_bytes(os.urandom(64 << 10) + bytes([n]))
        argv = [
            sys.executable,
            "-m",
            "hsmsign",
            "sign",
            "--mode",
            "development",
            "--uri",
            rsa2048,
            "--ledger",
            str(led),
            "-o",
            str(art) + ".sig",
            str(art),
        ]
        procs.append(
            (
                art,
                subprocess.Popen(
                    argv, env=softhsm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    for art, proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (art, err)
    for art, _ in procs:
        sig = Path(str(art) + ".sig").read_bytes()
        public_key.verify(sig, art.read_bytes(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    report = ledger.verify(str(led))
    assert report.ok, report.problems
    assert report.count == 16
    entries = ledger.entries(str(led))
    assert {e["artifact"] for e in entries} == {str(art) for art, _ in procs}
    for e in entries:
        assert e["sha256"] == hashlib.sha256(Path(e["artifact"]).read_bytes()).hexdigest()
        assert "pin" not in e["uri"]
    assert len({e["pid"] for e in entries}) == 16
    # and nothing secret reached the outputs: artifacts, signatures, public key, ledger
    audit = softhsm.run_cli("audit", "--json", str(tmp_path))
    assert audit.returncode == 0, audit.stdout
    assert json.loads(audit.stdout)["files"] == 16 * 2 + 2


@pytest.fixture(scope="module")
def fault_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    header = Path("/usr/include/p11-kit-1/p11-kit/pkcs11.h")
    require(
        bool(shutil.which("gcc")) and header.exists(),
        "gcc and p11-kit headers",
        "apt-get install gcc libp11-kit-dev",
        env="HSMSIGN_REQUIRE_TOOLS",
    )
    d = tmp_path_factory.mktemp("fault-module")
    (d / "shim.c").write_text(SHIM_C)
    lib = d / "libpkcs11-fault.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Werror",
            "-I/usr/include/p11-kit-1",
            "-o",
            str(lib),
            str(d / "shim.c"),
            "-ldl",
        ],
        check=True,
        capture_output=True,
    )
    return str(lib)


def _sign_through_fault_module(
    softhsm: SoftHsm, fault_module: str, tmp_path: Path, mode: str = "development", **faults: int | str
) -> tuple[subprocess.CompletedProcess[str], list[str], Path, Path]:
    softhsm.keygen("rsa2048", "rsa:2048")
    data = tmp_path / "fitImage"
    data.write_bytes(os.urandom(16384))
    out = tmp_path / "fitImage.sig"
    log = tmp_path / "calls.log"
    led = tmp_path / "ledger.jsonl"
    uri = (
        softhsm.uri("rsa2048", with_query=False)
        + f"?module-path={fault_module}&pin-source=file:{softhsm.pin_file}"
    )
    env = {
        "FAULT_REAL_MODULE": softhsm.module,
        "FAULT_LOG": str(log),
        **{k: hex(v) if isinstance(v, int) else v for k, v in faults.items()},
    }
    done = softhsm.run_cli(
        "sign",
        "--mode",
        mode,
        "--uri",
        uri,
        "--ledger",
        str(led),
        "-o",
        str(out),
        str(data),
        env=env,
    )
    calls = log.read_text().split() if log.exists() else []
    return done, calls, out, led


def test_fault_module_passes_through_when_no_fault(
    softhsm: SoftHsm, fault_module: str, tmp_path: Path
) -> None:
    done, calls, out, led = _sign_through_fault_module(softhsm, fault_module, tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size == 256 and calls.count("C_Login") == 1 and "C_Sign" in calls
    assert ledger.verify(str(led)).count == 1


@pytest.mark.parametrize(("rv", "needle"), [(CKR_PIN_LOCKED, "locked"), (CKR_PIN_INCORRECT, "PIN")])
def test_locked_or_wrong_pin_is_reported_once_never_retried(
    softhsm: SoftHsm, fault_module: str, tmp_path: Path, rv: int, needle: str
) -> None:
    done, calls, out, led = _sign_through_fault_module(softhsm, fault_module, tmp_path, FAULT_LOGIN=rv)
    _assert_clean_failure(done, 3, out)
    assert needle in done.stderr
    assert calls == ["C_Login"]  # one try: a retry would burn the token's remaining PIN tries
    assert "C_Sign" not in calls and not led.exists()


def test_a_store_read_half_written_is_read_again(
    softhsm: SoftHsm, fault_module: str, tmp_path: Path
) -> None:
    """SoftHSM rewrites its token file on every C_Login: a process that reads it half-written
    (parallel signers, in CI too) sees a token with no user PIN. hsmsign opens it again, and
    that costs no PIN try: the token answers before it looks at the PIN."""
    done, calls, out, led = _sign_through_fault_module(
        softhsm, fault_module, tmp_path, FAULT_LOGIN=CKR_USER_PIN_NOT_INITIALIZED, FAULT_LOGIN_TIMES=1
    )
    assert done.returncode == 0, done.stderr
    assert calls[:2] == ["C_Login", "C_Login"] and calls.count("C_Login") == 2 and "C_Sign" in calls
    assert out.stat().st_size == 256 and ledger.verify(str(led)).count == 1


def test_a_token_with_no_user_pin_says_how_to_set_one(
    softhsm: SoftHsm, fault_module: str, tmp_path: Path
) -> None:
    done, calls, out, led = _sign_through_fault_module(
        softhsm, fault_module, tmp_path, FAULT_LOGIN=CKR_USER_PIN_NOT_INITIALIZED
    )
    _assert_clean_failure(done, 3, out)
    assert "UserPinNotInitialized" in done.stderr and "--init-pin" in done.stderr
    assert 2 <= calls.count("C_Login") <= 4  # bounded: a few short tries, then the error
    assert "C_Sign" not in calls and not led.exists()


def test_a_real_token_with_no_user_pin_then_the_hints_command(softhsm: SoftHsm, tmp_path: Path) -> None:
    """A SoftHSM token initialised by its security officer alone (no user PIN): the error
    names the command that sets one, and that command, run as the hint gives it, is enough."""
    p11tool = tool("pkcs11-tool", "opensc")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "PYTHONPATH": str(LIB)}
    env.pop("HSM_PKCS11_URI", None)
    env.pop("HSMSIGN_LEDGER", None)
    base = [p11tool, "--module", softhsm.module]
    subprocess.run([*base, "--init-token", "--label", "no-user-pin", "--so-pin", "so-1357-2468"],
                   env=env, check=True, capture_output=True)
    pin = tmp_path / "pin"
    pin.write_text("user-2468\n")
    os.chmod(pin, 0o600)
    uri = f"pkcs11:token=no-user-pin;object=fw?module-path={softhsm.module}&pin-source=file:{pin}"
    data = tmp_path / "fw.bin"
    data.write_bytes(os.urandom(4096))
    out = tmp_path / "fw.sig"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hsmsign", argv[0], "--mode", "development", *argv[1:]],
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    done = cli("sign", "--uri", uri, "-o", str(out), str(data))
    _assert_clean_failure(done, 3, out)
    assert "UserPinNotInitialized" in done.stderr
    hint = done.stderr.split("(pkcs11-tool ", 1)[1].split(")", 1)[0].split()
    assert hint[:4] == ["--module", "MODULE", "--token-label", "LABEL"], done.stderr
    fixed = [p11tool, "--module", softhsm.module, "--token-label", "no-user-pin", *hint[4:],
             "--so-pin", "so-1357-2468", "--new-pin", "user-2468"]
    subprocess.run(fixed, env=env, check=True, capture_output=True)
    assert cli("keygen", "--uri", uri, "--type", "ec:secp256r1").returncode == 0
    done = cli("sign", "--uri", uri, "-o", str(out), str(data))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    ("rv", "needle"), [(CKR_DEVICE_REMOVED, "removed"), (CKR_DEVICE_ERROR, "device error")]
)
def test_token_lost_during_the_sign_call(
    softhsm: SoftHsm, fault_module: str, tmp_path: Path, rv: int, needle: str
) -> None:
    done, calls, out, led = _sign_through_fault_module(softhsm, fault_module, tmp_path, FAULT_SIGN=rv)
    _assert_clean_failure(done, 3, out)
    assert needle in done.stderr
    assert 1 <= calls.count("C_Sign") <= 4  # reconnect attempts are bounded
    assert not led.exists()


def test_a_software_token_is_known_by_its_slot_not_only_by_its_name(
    softhsm: SoftHsm, fault_module: str, tmp_path: Path
) -> None:
    """SoftHSM renamed (no "softhsm"/"software" in any name) is still software: its slot lacks
    CKF_HW_SLOT. Only a hardware slot and hardware names together pass production's rule."""
    renamed = "Acme Secure Element"
    info = softhsm.run_cli(
        "info", "--mode", "development", "--json", "--uri",
        softhsm.uri("rsa2048", with_query=False)
        + f"?module-path={fault_module}&pin-source=file:{softhsm.pin_file}",
        env={"FAULT_REAL_MODULE": softhsm.module, "FAULT_TOKEN_NAME": renamed},
    )  # fmt: skip
    token_info = json.loads(info.stdout)["token"]
    assert token_info["manufacturer"] == renamed and token_info["software"] is True
    assert "softhsm" not in info.stdout.lower()

    done, _, out, _ = _sign_through_fault_module(
        softhsm, fault_module, tmp_path, mode="production", FAULT_TOKEN_NAME=renamed
    )
    _assert_clean_failure(done, 4, out)
    assert "software token" in done.stderr and "CKF_HW_SLOT" in done.stderr
    # the flag alone does not make SoftHSM's own names pass
    done, _, out, _ = _sign_through_fault_module(
        softhsm, fault_module, tmp_path, mode="production", FAULT_HW_SLOT="1"
    )
    _assert_clean_failure(done, 4, out)
    assert "says 'softhsm'" in done.stderr
    # a hardware slot with a hardware name passes the rule (the rest of production policy too)
    done, _, out, _ = _sign_through_fault_module(
        softhsm, fault_module, tmp_path, mode="production", FAULT_TOKEN_NAME=renamed, FAULT_HW_SLOT="1"
    )
    assert done.returncode == 0, done.stderr
