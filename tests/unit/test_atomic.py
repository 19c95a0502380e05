"""Outputs and inputs (hsmsign.atomic): descriptors not paths, directory checks, symbolic links,
bounded reads, files that change while they are read."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

import pytest
from hsmsign import atomic, signing
from hsmsign.cli import main
from hsmsign.errors import ConfigError

TMP = atomic.TMP_PREFIX


def _temporaries(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(TMP)]


# --------------------------------------------------------------------------- temporaries


def test_temporary_is_created_exclusive_and_nofollow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that already exists (here a planted link to a victim) is never opened: the next name is used."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"secret")
    victim.chmod(0o600)
    names = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(atomic, "_random_name", lambda: next(names))
    os.symlink(victim, tmp_path / f"{TMP}aaaa")
    atomic.write_bytes_atomic(tmp_path / "out", b"signed")
    assert (tmp_path / "out").read_bytes() == b"signed"
    assert victim.read_bytes() == b"secret" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert os.readlink(tmp_path / f"{TMP}aaaa") == str(victim)  # the planted link is left alone
    assert not (tmp_path / f"{TMP}bbbb").exists()


def test_a_swapped_temporary_is_not_renamed_and_no_mode_changes(tmp_path: Path) -> None:
    """The attack of the review: the temporary's name swapped for a link to a 0600 file before the rename."""
    victim = tmp_path / "pin"
    victim.write_bytes(b"1234")
    victim.chmod(0o600)
    with pytest.raises(ConfigError, match="replaced by something else"):
        with atomic.atomic_output(tmp_path / "out.sig") as out:
            out.write(b"signature")
            os.rename(out.tmp_path, tmp_path / "moved-away")
            os.symlink(victim, out.tmp_path)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.read_bytes() == b"1234"
    assert not (tmp_path / "out.sig").exists() and not os.path.lexists(tmp_path / "out.sig")
    assert _temporaries(tmp_path) == []


def test_mode_is_set_on_the_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object]] = []
    real_fchmod, real_chmod = os.fchmod, os.chmod
    monkeypatch.setattr(
        os, "fchmod", lambda fd, mode: (calls.append(("fchmod", mode)), real_fchmod(fd, mode))[1]
    )
    monkeypatch.setattr(os, "chmod", lambda *a, **k: (calls.append(("chmod", a)), real_chmod(*a, **k))[1])
    atomic.write_bytes_atomic(tmp_path / "a", b"x", mode=0o640)
    assert calls == [("fchmod", 0o640)]
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640


@pytest.mark.parametrize("old_mode", [0o4755, 0o2750, 0o1644, 0o6777])
def test_special_mode_bits_are_never_carried(tmp_path: Path, old_mode: int) -> None:
    out = tmp_path / "fw.bin"
    out.write_bytes(b"old")
    os.chmod(out, old_mode)
    atomic.write_bytes_atomic(out, b"new")
    assert stat.S_IMODE(out.stat().st_mode) == old_mode & 0o777
    atomic.write_bytes_atomic(tmp_path / "explicit", b"new", mode=0o4755)
    assert stat.S_IMODE((tmp_path / "explicit").stat().st_mode) == 0o755


def test_new_file_mode_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic.write_bytes_atomic(tmp_path / "private", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- directories


def test_world_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by every user and has no sticky bit"):
        atomic.write_bytes_atomic(shared / "out.sig", b"x")
    assert list(shared.iterdir()) == []
    shared.chmod(0o1777)  # like /tmp: others cannot rename or remove our files
    atomic.write_bytes_atomic(shared / "out.sig", b"x")
    assert (shared / "out.sig").read_bytes() == b"x"
    shared.chmod(0o775)  # group-writable: a team's deploy directory
    atomic.write_bytes_atomic(shared / "out2.sig", b"y")


def test_world_writable_directory_refused_through_the_cli(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    dtb = tmp_path / "in.dtb"
    dtb.write_bytes(b"\xd0\x0d\xfe\xed" + bytes(60))
    assert main(["pe", "esl", "--cert", str(dtb), "--output", str(shared / "db.esl")]) == 2
    assert list(shared.iterdir()) == []


def test_missing_directory_and_directory_as_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        atomic.write_bytes_atomic(tmp_path / "nope" / "out", b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        atomic.write_bytes_atomic(tmp_path / "d", b"x")


# --------------------------------------------------------------------------- symbolic links


def test_output_through_a_link_replaces_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    """Deploy-directory style: fitImage -> fitImage-6.6.bin, signed in place, the link stays."""
    target = tmp_path / "fitImage-6.6.bin"
    target.write_bytes(b"unsigned")
    os.chmod(target, 0o4755)  # noqa: S103 - setuid must not survive
    link = tmp_path / "fitImage"
    os.symlink(target.name, link)
    atomic.write_bytes_atomic(link, b"signed")
    assert os.readlink(link) == target.name
    assert target.read_bytes() == b"signed"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_link_chain_into_another_directory(tmp_path: Path) -> None:
    real = tmp_path / "images" / "u-boot-2024.itb"
    real.parent.mkdir()
    real.write_bytes(b"old")
    os.symlink(real, tmp_path / "mid")
    os.symlink(tmp_path / "mid", tmp_path / "u-boot.itb")
    atomic.write_bytes_atomic(tmp_path / "u-boot.itb", b"new")
    assert real.read_bytes() == b"new"
    assert os.path.islink(tmp_path / "u-boot.itb") and os.path.islink(tmp_path / "mid")
    assert _temporaries(real.parent) == [] and _temporaries(tmp_path) == []


def test_dangling_link_is_refused(tmp_path: Path) -> None:
    os.symlink(tmp_path / "missing", tmp_path / "out.sig")
    with pytest.raises(ConfigError, match="does not exist"):
        atomic.write_bytes_atomic(tmp_path / "out.sig", b"x")
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a link another owner")
def test_foreign_link_in_a_sticky_world_writable_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "bashrc"
    victim.write_bytes(b"keep")
    link = shared / "out.sig"
    os.symlink(victim, link)
    os.lchown(link, 4242, 4242)
    with pytest.raises(ConfigError, match="owned by another user"):
        atomic.write_bytes_atomic(link, b"x")
    assert victim.read_bytes() == b"keep"
    os.lchown(link, os.geteuid(), os.getegid())  # our own link there is followed
    atomic.write_bytes_atomic(link, b"x")
    assert victim.read_bytes() == b"x"


# --------------------------------------------------------------------------- staged outputs


def test_staged_outputs_land_together_or_not_at_all(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(b"old b")
    with pytest.raises(RuntimeError):
        with atomic.staged() as out:
            out.write_bytes(tmp_path / "a", b"new a")
            out.write_bytes(tmp_path / "b", b"new b")
            raise RuntimeError("the signature did not verify")
    assert not (tmp_path / "a").exists() and (tmp_path / "b").read_bytes() == b"old b"
    assert _temporaries(tmp_path) == [] and atomic.live_temporaries() == []

    class Refuse:
        def __enter__(self) -> None:
            raise ConfigError("cannot append to ledger")

        def __exit__(self, *exc: object) -> None:
            return None

    with pytest.raises(ConfigError, match="ledger"):
        with atomic.staged(Refuse) as out:
            out.write_bytes(tmp_path / "a", b"new a")
    assert not (tmp_path / "a").exists() and _temporaries(tmp_path) == []


def test_live_temporaries_are_registered_until_renamed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot write"):
        with atomic.atomic_output(tmp_path / "x") as out:
            assert atomic.live_temporaries() == [out.tmp_path]
            atomic.remove_live_temporaries()  # what SIGINT / SIGTERM do
            assert not os.path.exists(out.tmp_path) and atomic.live_temporaries() == []
    assert not (tmp_path / "x").exists()
    atomic.write_bytes_atomic(tmp_path / "y", b"1")
    assert atomic.live_temporaries() == [] and _temporaries(tmp_path) == []


def test_scratch_folders_go_when_the_block_ends_or_a_signal_stops_the_process() -> None:
    with atomic.scratch_directory("hsmsign-test-") as folder:
        assert os.path.isdir(folder) and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        Path(folder, "m.ko").write_bytes(b"module")
    assert not os.path.exists(folder)
    with atomic.scratch_directory("hsmsign-test-") as folder:
        Path(folder, "m.ko").write_bytes(b"module")
        atomic.remove_live_temporaries()  # what SIGINT / SIGTERM do, from any thread's work
        assert not os.path.exists(folder)
    assert not os.path.exists(folder)


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (
            ["fit", "add-key", "--key-name", "k", "--dtb", "/dev/zero", "--uri", "pkcs11:token=t;object=k"],
            "DTB",
        ),
        (["fit", "verify", "--dtb", "/dev/zero", "/dev/zero"], "FIT"),
        (["manifest", "verify", "--cert", "/dev/zero", "MANIFEST"], "certificate"),
        (["swupdate", "verify", "--cert", "/dev/zero", "/etc/hostname"], "certificate"),
        (
            ["swupdate", "sign", "--uri", "pkcs11:token=t;object=k", "-o", "SIG", "/dev/zero"],
            "sw-description",
        ),
        (["pe", "verify", "--cert", "/dev/zero", "/dev/zero"], "PE image"),
        (["pe", "digest", "/dev/zero"], "PE image"),
        (["pe", "esl", "--cert", "/dev/zero", "--output", "ESL"], "certificate"),
        (["verity", "sign", "--cert", "/dev/zero", "--root-hash", "00" * 32, "-o", "SIG"], "certificate"),
        (["ledger", "verify", "--ledger", "/dev/zero"], "ledger"),
        (["ledger", "show", "--ledger", "/dev/zero"], "ledger"),
        (
            [
                "sign",
                "--ledger",
                "/dev/zero",
                "--uri",
                "pkcs11:token=t;object=k",
                "-o",
                "SIG",
                "/etc/hostname",
            ],
            "ledger",
        ),
        (["sign", "--uri", "pkcs11:token=t;object=k", "-o", "SIG", "/dev/zero"], "file"),
    ],
)
def test_dev_zero_as_any_input_is_a_config_error(
    argv: list[str],
    what: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "MANIFEST").write_bytes(b"{}")
    (tmp_path / "MANIFEST.p7s").write_bytes(b"x")
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("hsmsign: error: ") and what in lines[0] and "/dev/zero" in lines[0], err
    assert "character device" in lines[0] or "not a regular file" in lines[0], err
    assert len(lines) <= 2 and "Traceback" not in err and "MemoryError" not in err
    assert not (tmp_path / "SIG").exists() and not (tmp_path / "ESL").exists()


def test_oversized_input_is_refused_before_it_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "cert.pem"
    with open(big, "wb") as fh:
        fh.truncate(atomic.MAX_INPUT + 1)  # sparse: costs nothing
    assert main(["pe", "esl", "--cert", str(big), "--output", str(tmp_path / "db.esl")]) == 2
    err = capsys.readouterr().err
    assert "certificate" in err and "larger than 64 MiB" in err and "Traceback" not in err


def test_a_regular_file_is_read_with_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A regular file comes in one read(2) into the bytes returned (then one at its end): no chunks
    joined, which for a 50 MiB image cost as much again as the read."""
    data = os.urandom(2 * atomic.CHUNK + 123)
    path = tmp_path / "image.efi"
    path.write_bytes(data)
    sizes: list[int] = []
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        sizes.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(atomic.os, "read", read)
    got = atomic.read_input(str(path), "PE image", atomic.MAX_IMAGE)
    assert got == data and type(got) is bytes
    assert sizes == [len(data) + 1, atomic.CHUNK]  # the file, then the end of it


def test_a_large_output_is_written_whole_in_pieces_of_write_chunk(tmp_path: Path) -> None:
    """A large output goes out in write(2) calls of WRITE_CHUNK at most (one call of the whole
    50 MiB cost ten times as much), and every byte arrives in order."""
    data = os.urandom(3 * atomic.WRITE_CHUNK + 4097)
    sizes: list[int] = []

    class Recorder:
        def __init__(self, fh: object) -> None:
            self.fh = fh

        def write(self, piece: memoryview) -> int:
            sizes.append(len(piece))
            return self.fh.write(piece)  # type: ignore[attr-defined]

    path = tmp_path / "signed.itb"
    with path.open("wb") as fh:
        assert atomic.write_all(Recorder(fh), data) == len(data)  # type: ignore[arg-type]
    assert path.read_bytes() == data
    assert sizes == [atomic.WRITE_CHUNK] * 3 + [4097]
    with atomic.staged() as outputs:
        outputs.write_bytes(tmp_path / "staged.itb", data)
    assert (tmp_path / "staged.itb").read_bytes() == data


def test_a_file_longer_than_its_size_says_is_read_whole_and_bounded() -> None:
    """procfs files report size 0 and have content: read in chunks after the first read, to the limit."""
    status = atomic.read_input("/proc/self/status", "status")
    assert status.startswith(b"Name:") and b"\nPid:" in status
    with pytest.raises(ConfigError, match="larger than 16 bytes"):
        atomic.read_input("/proc/self/status", "status", 16)


def _fifo(tmp_path: Path, nbytes: int) -> tuple[Path, threading.Thread]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as fh:  # the reader stops early
            for _ in range(nbytes // 4096):
                fh.write(bytes(4096))

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return fifo, t


def test_a_pipe_read_whole_is_bounded(tmp_path: Path) -> None:
    fifo, t = _fifo(tmp_path, 1 << 20)
    with pytest.raises(ConfigError, match="larger than 64 KiB"):
        atomic.read_input(str(fifo), "DTB", 64 << 10)
    t.join(5)


def test_a_streamed_pipe_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "MAX_STREAM", 256 << 10)
    fifo, t = _fifo(tmp_path, 4 << 20)
    with pytest.raises(ConfigError, match="pipe that gave more than 256 KiB"):
        signing.hash_file(str(fifo))
    t.join(5)
    (tmp_path / "small").mkdir()
    fifo2, t2 = _fifo(tmp_path / "small", 128 << 10)  # under the bound: hashed like a file
    assert signing.hash_file(str(fifo2)) == signing.hash_bytes(bytes(128 << 10))
    t2.join(5)


# --------------------------------------------------------------------------- files that change while read


def _changer(path: Path, how: str):  # noqa: ANN202 - a progress callback
    done = []

    def progress(n: int) -> None:
        if done:
            return
        done.append(n)
        if how == "truncate":
            os.truncate(path, 4096)
        elif how == "extend":
            with open(path, "ab") as fh:
                fh.write(b"appended")
        else:  # rewritten in place: same size, new mtime
            st = path.stat()
            with open(path, "r+b") as fh:
                fh.seek(st.st_size - 1)
                fh.write(b"!")
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    return progress


@pytest.mark.parametrize("how", ["truncate", "extend", "rewrite"])
def test_file_changed_while_hashed_is_an_error_not_sigbus(tmp_path: Path, how: str) -> None:
    path = tmp_path / "rootfs.ext4"
    with open(path, "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.truncate(64 << 20)
    with pytest.raises(ConfigError, match="changed while it was read"):
        signing.hash_file(str(path), "sha256", _changer(path, how))


def test_unchanged_file_hashes_as_hashlib_does(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(atomic.CHUNK * 2 + 12345)
    path.write_bytes(data)
    import hashlib

    for alg in ("sha256", "sha384", "sha512"):
        assert signing.hash_file(str(path), alg) == hashlib.new(alg, data).digest()
    (tmp_path / "empty").write_bytes(b"")
    assert signing.hash_file(str(tmp_path / "empty")) == hashlib.sha256(b"").digest()


def test_refuse_overwriting_compares_files_not_spellings(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "in.bin").write_bytes(b"x")
    (tmp_path / "sub" / "link").symlink_to(tmp_path / "in.bin")
    os.link(tmp_path / "in.bin", tmp_path / "hard")
    inputs = [("the input", str(tmp_path / "in.bin")), ("--cert", None)]
    for same in (tmp_path / "sub" / ".." / "in.bin", tmp_path / "sub" / "link", tmp_path / "hard"):
        with pytest.raises(ConfigError, match="is also the input"):
            atomic.refuse_overwriting([("--output", str(same))], inputs)
    # two outputs yet to be made, spelled differently
    with pytest.raises(ConfigError, match="--output and --tree name one file"):
        atomic.refuse_overwriting(
            [("--output", str(tmp_path / "new")), ("--tree", str(tmp_path / "sub" / ".." / "new"))], inputs
        )
    # distinct files, and outputs not given, pass; an output may be named like nothing else
    atomic.refuse_overwriting(
        [("--output", str(tmp_path / "out")), ("--tree", None), ("--sig", str(tmp_path / "out.sig"))], inputs
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard", "in.bin", "sub"]
