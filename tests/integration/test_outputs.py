"""Outputs that should not exist: a ledger that cannot be written, signals, files that change
while read, memory. A real SoftHSM token, the real CLI in subprocesses, real signals."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hsmsign import atomic, ledger
from hsmsign.cli import main

from tests.conftest import SoftHsm
from tests.integration.test_fit import EPOCH, build_fit, tools  # noqa: F401 - fixture
from tests.integration.test_swupdate import write_description

DEV = ("--mode", "development")
EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
TMP = atomic.TMP_PREFIX
ROOT_HASH = "ab" * 32

# Runs CLI calls in one process, each with its own stderr, and prints their results as JSON. With
# RLIMIT_FSIZE set (argv[2]) a file cannot grow past it: the ledger append then fails with EFBIG.
DRIVER = """
import contextlib, io, json, resource, signal, sys
limit = int(sys.argv[2])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from hsmsign.cli import main
results = []
for argv in json.loads(open(sys.argv[1]).read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    results.append({"rc": rc, "err": err.getvalue()})
print(json.dumps(results))
"""


def _temporaries(*dirs: Path) -> list[str]:
    return [p.name for d in dirs for p in d.iterdir() if p.name.startswith(TMP)]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith(("  hint: ", "hsmsign: warning: "))]
    assert len(lines) == 1 and lines[0].startswith("hsmsign: error: "), err
    assert "Traceback" not in err
    return lines[0]


class Workspace:
    """Inputs for every verb that records a signature, and the argv of each."""

    def __init__(self, softhsm: SoftHsm, uri: str, uboot: Path, d: Path) -> None:
        self.d = d
        self.cert = d / "signer.pem"
        done = softhsm.run_cli(
            "cert", *DEV, "--uri", uri, "--subject", "CN=hsmsign outputs test", "--eku", "codeSigning",
            "--eku", "emailProtection", "--output", str(self.cert),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        (d / "a.bin").write_bytes(os.urandom(10_000))
        build_fit(uboot, d, "kernel-fdt.its", name="image.fit", kernel_size=16 << 10)
        build_fit(uboot, d, "kernel-fdt.its", name="fitImage-6.6.bin", kernel_size=16 << 10)
        os.symlink("fitImage-6.6.bin", d / "fitImage")  # a deploy directory's link, signed in place
        with open(d / "rootfs.ext4", "wb") as fh:
            fh.write(os.urandom(64 << 10))
            fh.truncate(1 << 20)
        self.images = [d / "rootfs.img", d / "boot.img"]
        for p in self.images:
            p.write_bytes(os.urandom(20_000))
        self.description = write_description(d, self.images)
        self.snapshot = {p: p.read_bytes() for p in (d / "fitImage-6.6.bin", d / "image.fit")}

    def calls(self, uri: str, ledger_path: str) -> dict[str, tuple[list[str], list[Path]]]:
        """verb -> (argv, the outputs it writes)."""
        d, c, lg = self.d, str(self.cert), ["--ledger", ledger_path]
        return {
            "sign": (["sign", *DEV, "--uri", uri, *lg, "-o", f"{d}/a.sig", f"{d}/a.bin"], [d / "a.sig"]),
            "manifest": (
                ["manifest", *DEV, "--uri", uri, "--cert", c, *lg, "--output", f"{d}/MANIFEST", f"{d}/a.bin"],
                [d / "MANIFEST", d / "MANIFEST.p7s"],
            ),
            "fit sign -o": (
                ["fit", "sign", *DEV, "--uri", uri, *lg, "-o", f"{d}/signed.fit", f"{d}/image.fit"],
                [d / "signed.fit"],
            ),
            "fit sign in place (link)": (["fit", "sign", *DEV, "--uri", uri, *lg, f"{d}/fitImage"], []),
            "verity sign --root-hash": (
                ["verity", "sign", *DEV, "--uri", uri, "--cert", c, "--root-hash", ROOT_HASH, *lg,
                 "--root-hash-output", f"{d}/rh", "-o", f"{d}/rh.p7s"],
                [d / "rh", d / "rh.p7s"],
            ),
            "verity sign --image": (
                ["verity", "sign", *DEV, "--uri", uri, "--cert", c, "--image", f"{d}/rootfs.ext4", *lg,
                 "--hash-tree", f"{d}/rootfs.verity", "-o", f"{d}/rootfs.p7s"],
                [d / "rootfs.verity", d / "rootfs.p7s"],
            ),
            "pe sign": (
                ["pe", "sign", *DEV, "--uri", uri, "--cert", c, *lg, "--output", f"{d}/boot.efi", str(EFI)],
                [d / "boot.efi"],
            ),
            "swupdate sign": (
                ["swupdate", "sign", *DEV, "--uri", uri, "--cert", c, *lg, "-o", f"{d}/sw.sig",
                 str(self.description)],
                [d / "sw.sig"],
            ),
            "swupdate bundle": (
                ["swupdate", "bundle", *DEV, "--uri", uri, "--cert", c, *lg, "--sw-description",
                 str(self.description), "--output", f"{d}/update.swu", *map(str, self.images)],
                [d / "update.swu"],
            ),
            "cert": (
                ["cert", *DEV, "--uri", uri, "--subject", "CN=x", *lg, "--output", f"{d}/new.pem"],
                [d / "new.pem"],
            ),
            "csr": (
                ["csr", *DEV, "--uri", uri, "--subject", "CN=x", *lg, "--output", f"{d}/new.csr"],
                [d / "new.csr"],
            ),
        }  # fmt: skip

    def reset(self) -> None:
        """Remove what an earlier call wrote, put the inputs back."""
        for p in self.d.iterdir():
            if p.suffix in (".sig", ".p7s", ".efi", ".swu", ".csr", ".verity", ".jsonl") or p.name in (
                "MANIFEST",
                "signed.fit",
                "rh",
                "new.pem",
            ):
                p.unlink()
        for p, data in self.snapshot.items():
            p.write_bytes(data)

    def unchanged(self) -> None:
        for p, data in self.snapshot.items():
            assert p.read_bytes() == data, f"{p.name} changed"
        assert os.readlink(self.d / "fitImage") == "fitImage-6.6.bin"


def _drive(softhsm: SoftHsm, argvs: list[list[str]], where: Path, fsize_limit: int = 0) -> list[dict]:
    job = where / "calls.json"
    job.write_text(json.dumps(argvs))
    env = dict(softhsm.env, SOURCE_DATE_EPOCH=EPOCH)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(job), str(fsize_limit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    job.unlink()
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def pin_marker(softhsm: SoftHsm, rsa2048: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """rsa2048 with its PIN from a program that leaves a marker: was the token logged in to at all?"""
    d = tmp_path_factory.mktemp("pin-program")
    marker = d / "pin-was-read"
    prog = d / "get-pin"
    prog.write_text(f"#!/bin/sh\ntouch {marker}\ncat {softhsm.pin_file}\n")
    prog.chmod(0o700)
    uri = softhsm.uri("rsa2048", with_query=False) + f"?module-path={softhsm.module}&pin-source=|{prog}"
    return uri, marker


@pytest.fixture(scope="module")
def workspace(
    softhsm: SoftHsm,
    rsa2048: str,
    tools: Path,  # noqa: F811 - the fixture of test_fit
    tmp_path_factory: pytest.TempPathFactory,
) -> Workspace:
    assert EFI.exists()
    return Workspace(softhsm, rsa2048, tools, tmp_path_factory.mktemp("outputs"))


def _assert_nothing_written(ws: Workspace, outputs: list[Path], name: str) -> None:
    for p in outputs:
        assert not os.path.lexists(p), f"{name}: {p.name} was written"
    ws.unchanged()
    assert _temporaries(ws.d) == [], name


# --------------------------------------------------------------------------- 7: ledger and artifact together


def test_every_signing_verb_checks_the_ledger_before_the_token(
    softhsm: SoftHsm, workspace: Workspace, pin_marker: tuple[str, Path]
) -> None:
    """A ledger in a missing directory: every verb stops before the PIN is read, nothing is written."""
    uri, marker = pin_marker
    workspace.reset()
    calls = workspace.calls(uri, str(workspace.d / "no-such-dir" / "ledger.jsonl"))
    results = _drive(softhsm, [argv for argv, _ in calls.values()], workspace.d)
    for (name, (_, outputs)), got in zip(calls.items(), results):
        assert got["rc"] == 2, (name, got)
        line = _one_error_line(got["err"])
        assert "ledger" in line and "does not exist" in line, (name, line)
        _assert_nothing_written(workspace, outputs, name)
    assert not marker.exists(), "the token was logged in to before the ledger was checked"


def test_an_output_that_is_an_input_is_refused_before_the_token(
    softhsm: SoftHsm, workspace: Workspace, pin_marker: tuple[str, Path]
) -> None:
    """`--output` naming the file to sign (by name, through a link, as a hard link), the
    certificate, the image of a hash tree, or another output: one line, exit 2, before the PIN
    is read, and every file as it was."""
    uri, marker = pin_marker
    workspace.reset()
    d, c = workspace.d, str(workspace.cert)
    a, rootfs, sig = f"{d}/a.bin", f"{d}/rootfs.ext4", f"{d}/x.p7s"
    desc, image = str(workspace.description), str(workspace.images[0])
    os.symlink("a.bin", d / "a.link")
    os.link(d / "a.bin", d / "a.hard")
    (d / "MANIFEST").write_text("an earlier run's manifest\n")
    token = [*DEV, "--uri", uri]
    calls = {
        "sign onto its input": ["sign", *token, "-o", a, a],
        "sign onto a link to its input": ["sign", *token, "-o", f"{d}/a.link", a],
        "sign onto a hard link of its input": ["sign", *token, "-o", f"{d}/a.hard", a],
        "manifest listing its own output": ["manifest", *token, "--cert", c, "--output", f"{d}/MANIFEST", a,
                                            f"{d}/MANIFEST"],
        "verity tree onto the image": ["verity", "sign", *token, "--cert", c, "--image", rootfs,
                                       "--hash-tree", rootfs, "-o", sig],
        "verity root hash onto the signature": ["verity", "sign", *token, "--cert", c, "--root-hash",
                                                ROOT_HASH, "--root-hash-output", sig, "-o", sig],
        "pe sign onto the certificate": ["pe", "sign", *token, "--cert", c, "--output", c, str(EFI)],
        "pe esl onto the certificate": ["pe", "esl", "--cert", c, "--output", c],
        "swupdate sign onto sw-description": ["swupdate", "sign", *token, "--cert", c, "-o", desc, desc],
        "swupdate bundle onto an image": ["swupdate", "bundle", *token, "--cert", c, "--sw-description", desc,
                                          "--output", image, *map(str, workspace.images)],
        "encrypt with the IV onto the plaintext": ["encrypt", *token, "--in", a, "--out", f"{d}/a.enc",
                                                   "--iv-output", a],
        # standard output is no file to rename into place (and '-' made a file named '-')
        "sign to -": ["sign", *token, "-o", "-", a],
        "sign to /dev/stdout": ["sign", *token, "-o", "/dev/stdout", a],
        "verity signature to /dev/fd/1": ["verity", "sign", *token, "--cert", c, "--root-hash", ROOT_HASH,
                                          "-o", "/dev/fd/1"],
    }  # fmt: skip
    before = {p: p.read_bytes() for p in d.iterdir() if p.is_file()}
    results = _drive(softhsm, list(calls.values()), d)
    for name, got in zip(calls, results):
        assert got["rc"] == 2, (name, got)
        line = _one_error_line(got["err"])
        said = ("would replace it", "name one file", "is standard output or a descriptor, not a file")
        assert any(words in line for words in said), (name, line)
    assert {p: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    assert not (Path.cwd() / "-").exists() and not (d / "-").exists()
    assert not marker.exists(), "the token was logged in to before the outputs were checked"
    # the public key alone is printed to standard output: with no --output, or with '-'
    pem = softhsm.run_cli("pubkey", *token, "--output", "-")
    assert pem.returncode == 0 and pem.stdout.startswith("-----BEGIN PUBLIC KEY-----"), pem.stderr
    for name in ("a.link", "a.hard", "MANIFEST"):
        (d / name).unlink()


@pytest.fixture
def prefilled_ledger(tmp_path: Path) -> Path:
    """A ledger of 800 entries (about 300 KB: larger than any output of the verbs here)."""
    path = tmp_path / "ledger.jsonl"
    batch = ledger.Batch(str(path))
    for n in range(800):
        batch.add(
            artifact=f"/deploy/old-{n}.bin",
            sha256_hex=hashlib.sha256(b"%d" % n).hexdigest(),
            key_fingerprint="ab" * 32,
            uri_redacted="pkcs11:token=t;object=k",
            mechanism="sha256-rsa-pkcs1v15",
            kind="detached",
        )
    with batch.appended():
        pass
    return path


def test_a_failing_append_removes_every_output(
    softhsm: SoftHsm, workspace: Workspace, rsa2048: str, prefilled_ledger: Path
) -> None:
    """The ledger checks out, the token signs, then the append fails (EFBIG): no output lands."""
    workspace.reset()
    before = prefilled_ledger.read_bytes()
    calls = workspace.calls(rsa2048, str(prefilled_ledger))
    results = _drive(softhsm, [a for a, _ in calls.values()], workspace.d, fsize_limit=len(before) + 40)
    for (name, (_, outputs)), got in zip(calls.items(), results):
        assert got["rc"] == 2, (name, got)
        line = _one_error_line(got["err"])
        assert "cannot append to ledger" in line, (name, line)
        _assert_nothing_written(workspace, outputs, name)
    assert prefilled_ledger.read_bytes() == before
    assert ledger.verify(str(prefilled_ledger)).ok


def test_every_signing_verb_records_with_its_outputs(
    softhsm: SoftHsm, workspace: Workspace, rsa2048: str
) -> None:
    """The same calls with a good ledger: every output lands, with its entries, and the chain verifies."""
    workspace.reset()
    path = workspace.d / "good-ledger.jsonl"
    calls = workspace.calls(rsa2048, str(path))
    results = _drive(softhsm, [a for a, _ in calls.values()], workspace.d)
    for (name, (_, outputs)), got in zip(calls.items(), results):
        assert got["rc"] == 0, (name, got)
        for p in outputs:
            assert p.is_file(), (name, p)
    report = ledger.verify(str(path))
    assert report.ok and report.count >= len(calls), report.problems
    kinds = {e["kind"] for e in ledger.entries(str(path))}
    assert kinds == {"detached", "manifest", "fit", "verity", "pe", "swupdate", "cert", "csr"}
    # in-place through the link: the target is signed, the link is still a link
    assert os.readlink(workspace.d / "fitImage") == "fitImage-6.6.bin"
    assert (workspace.d / "fitImage-6.6.bin").read_bytes() != workspace.snapshot[
        workspace.d / "fitImage-6.6.bin"
    ]


def _crlf(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))


def _torn(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b'{"artifact":"/half')


def _edited(path: Path) -> None:
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([*lines[:-1], lines[-1].replace(b":", b": ")]) + b"\n")


@pytest.mark.parametrize(
    ("name", "make", "code", "words"),
    [
        ("missing-directory", lambda p: p.parent / "nope" / "l.jsonl", 2, "does not exist"),
        ("a-directory", lambda p: (p.mkdir(), p)[1], 2, "Is a directory"),
        ("dev-null", lambda p: Path("/dev/null"), 2, "not a regular file"),
        ("crlf", lambda p: (_crlf(p), p)[1], 6, "dos2unix"),
        ("torn-tail", lambda p: (_torn(p), p)[1], 6, "incomplete line"),
        ("edited-tail", lambda p: (_edited(p), p)[1], 6, "canonical form"),
    ],
)
def test_sign_refuses_a_ledger_it_cannot_append_to(
    softhsm: SoftHsm,
    rsa2048: str,
    tmp_path: Path,
    name: str,
    make: Callable[[Path], Path],
    code: int,
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "ledger.jsonl"
    if name not in ("missing-directory", "a-directory"):
        ledger.record(artifact="/a", sha256_hex="00" * 32, key_fingerprint="11" * 32, uri_redacted="pkcs11:",
                      mechanism="m", kind="k", ledger=str(path))  # fmt: skip
    target = make(path)
    before = path.read_bytes() if path.is_file() else None
    (tmp_path / "fw.bin").write_bytes(b"firmware")
    rc = main(["sign", *DEV, "--uri", rsa2048, "--ledger", str(target), "-o", str(tmp_path / "fw.sig"),
               str(tmp_path / "fw.bin")])  # fmt: skip
    assert rc == code, name
    err = capsys.readouterr().err
    _one_error_line(err)
    assert words in err, err
    assert not (tmp_path / "fw.sig").exists() and _temporaries(tmp_path) == []
    if before is not None:
        assert path.read_bytes() == before


# --------------------------------------------------------------------------- 8: signals


@contextlib.contextmanager
def _endless_fifo(path: Path) -> Iterator[Path]:
    os.mkfifo(path)
    stop = threading.Event()

    def feed() -> None:
        with contextlib.suppress(OSError), open(path, "wb") as fh:
            block = bytes(1 << 20)
            while not stop.is_set():
                fh.write(block)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        yield path
    finally:
        stop.set()
        with contextlib.suppress(OSError):  # unblock a writer whose reader never came
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        t.join(5)


def _wait_for(cond: Callable[[], bool], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_signal_during_encrypt_removes_the_temporary_file(
    softhsm: SoftHsm, tmp_path: Path, sig: signal.Signals, code: int, word: str
) -> None:
    uri = softhsm.keygen("aes-signals", "aes:256")
    big = tmp_path / "rootfs.ext4"
    with open(big, "wb") as fh:
        fh.truncate(16 << 30)  # sparse: long enough to be caught half-way
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsmsign", "encrypt", *DEV, "--uri", uri, "--in", str(big),
         "--out", str(out / "rootfs.enc")],
        env=softhsm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started = lambda: any(p.stat().st_size > (4 << 20) for p in out.glob(TMP + "*"))  # noqa: E731
    _wait_for(lambda: started() or proc.poll() is not None)
    err = _stop_with(proc, sig, code)
    assert err.splitlines() == [f"hsmsign: error: {word} by {sig.name}; unfinished outputs removed"]
    assert list(out.iterdir()) == []


def _stop_with(proc: subprocess.Popen[str], sig: signal.Signals, code: int) -> str:
    """Send ``sig`` to a running hsmsign: it exits with ``code`` and one line naming the signal
    (returned)."""
    try:
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert len(err.splitlines()) == 1 and sig.name in err, err
    return err


def _start_sign(softhsm: SoftHsm, uri: str, out: Path, data: Path) -> subprocess.Popen[str]:
    """``hsmsign sign`` started in the background, for a signal to be sent to it."""
    return subprocess.Popen(
        [sys.executable, "-m", "hsmsign", "sign", *DEV, "--uri", uri, "-o", str(out), str(data)],
        env=softhsm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_hashing_an_endless_pipe(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    with _endless_fifo(tmp_path / "fifo") as fifo:
        proc = _start_sign(softhsm, rsa2048, tmp_path / "x.sig", fifo)
        time.sleep(2.0)  # started, logged in, hashing the pipe
        _stop_with(proc, sig, code)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_a_child_that_is_still_running(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """A PIN program still running when hsmsign is stopped (waiting for a prompt, a remote
    secret store) gets the same signal: it is not left behind when hsmsign exits."""
    pid_file = tmp_path / "pin-program.pid"
    program = tmp_path / "slow-pin"
    pin = softhsm.pin_file.read_text().strip()
    program.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nsleep 120\necho {pin}\n")
    program.chmod(0o700)
    uri = rsa2048.replace(f"pin-source=file:{softhsm.pin_file}", f"pin-source=|{program}")
    assert uri != rsa2048, rsa2048
    data = tmp_path / "data.bin"
    data.write_bytes(b"payload")
    proc = _start_sign(softhsm, uri, tmp_path / "x.sig", data)
    _wait_for(lambda: (pid_file.exists() and pid_file.read_text().strip()) or proc.poll() is not None)
    child = int(pid_file.read_text() or "0")
    _wait_for(lambda: bool(atomic.descendants(child)) or proc.poll() is not None)
    below = atomic.descendants(child)  # the program's own child: sleep
    _stop_with(proc, sig, code)  # the signal goes to hsmsign only, not its process group

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                return fh.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
        except OSError:
            return True

    assert below
    _wait_for(lambda: all(gone(pid) for pid in [child, *below]), timeout=10)
    assert not (tmp_path / "x.sig").exists()


def test_unbounded_inputs_are_refused(
    softhsm: SoftHsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = softhsm.keygen("aes-signals", "aes:256")
    out = tmp_path / "x.enc"
    assert main(["encrypt", *DEV, "--uri", uri, "--in", "/dev/zero", "--out", str(out)]) == 2
    assert "character device" in _one_error_line(capsys.readouterr().err)
    with _endless_fifo(tmp_path / "fifo") as fifo:
        assert main(["encrypt", *DEV, "--uri", uri, "--in", str(fifo), "--out", str(out)]) == 2
    assert "not a regular file" in _one_error_line(capsys.readouterr().err)
    assert main(["sign", *DEV, "--uri", uri, "-o", str(out), "/dev/urandom"]) == 2
    assert "character device" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


# --------------------------------------------------------------------------- 10: files that change, memory


@pytest.mark.parametrize("how", ["truncate", "extend"])
def test_sign_of_a_file_changed_while_hashed_writes_nothing(
    softhsm: SoftHsm,
    rsa2048: str,
    tmp_path: Path,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hsmsign.commands import core

    path = tmp_path / "rootfs.ext4"
    with open(path, "wb") as fh:
        fh.truncate(32 << 20)

    class Changer:
        def __init__(self, *_: object) -> None:
            self.fired = False

        def __call__(self, done: int) -> None:  # the progress hook: called after each chunk
            if not self.fired:
                self.fired = True
                if how == "truncate":
                    os.truncate(path, 1 << 20)  # with mmap this was SIGBUS
                else:
                    with open(path, "ab") as fh:
                        fh.write(b"more")

        def done(self) -> None:
            pass

    monkeypatch.setattr(core, "file_progress", Changer)
    rc = main(["sign", *DEV, "--uri", rsa2048, "-o", str(tmp_path / "rootfs.sig"), str(path)])
    assert rc == 2
    assert "changed while it was read" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rootfs.ext4"]


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> tuple[int, float]:
    """(exit code, peak RSS in MiB) of a command: its own VmHWM, read from /proc while it runs.

    Not ru_maxrss: Linux carries the parent's high-water mark into a vfork'ed child's exec.
    """
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        time.sleep(0.02)
    return proc.returncode, peak / 1024


def test_sign_memory_is_bounded(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    """512 MiB through `hsmsign sign`: the peak RSS is the interpreter's, not the file's
    (a mapping counted every page read: 2.1 GB for 2 GiB)."""
    big = tmp_path / "rootfs.ext4"
    with open(big, "wb") as fh:
        for _ in range(512):
            fh.write(b"\x5a" * (1 << 20))  # real pages, not a sparse hole
    rc, peak = peak_rss_mib(
        [
            sys.executable,
            "-m",
            "hsmsign",
            "sign",
            *DEV,
            "--uri",
            rsa2048,
            "-o",
            str(tmp_path / "r.sig"),
            str(big),
        ],
        softhsm.env,
    )
    assert rc == 0
    print(f"hsmsign sign of 512 MiB: peak RSS {peak:.0f} MiB")
    assert 10 < peak < 160, f"peak RSS {peak:.0f} MiB for a 512 MiB file"
