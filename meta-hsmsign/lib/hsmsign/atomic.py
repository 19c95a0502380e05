"""Artifact files: bounded, checked input, and atomic output (an artifact is either
complete, signed, verified and recorded, or absent).

Input
-----
``read_input(path, what, limit)`` reads an input whole (certificates, DTBs, FITs,
signatures, sw-description...) with one-line errors: missing, a directory, a
character device (``/dev/zero``), unreadable, or larger than ``limit`` are each a
``ConfigError`` (exit 2), never a ``MemoryError``. It is the one place inputs are
read whole.

``stream_input(path, what)`` yields a large input (an image to hash or encrypt) in
chunks through one bounded buffer. A regular file is read to exactly the size it had
when opened; if it shrinks, grows or is rewritten meanwhile (size or mtime differ
afterwards) the read fails with a ``ConfigError`` instead of hashing a moving target
(mmap would die of SIGBUS on a truncated file). A pipe or FIFO is read up to
``MAX_STREAM`` bytes; a character device is refused.

Output
------
``staged(guard)`` collects outputs; each is written to a temporary file in its
destination's directory (``.tmp_path``), which the caller writes and verifies. When
the ``with`` block ends without an exception every temporary file is fsync'ed, given
its mode on the open descriptor, and renamed over its destination, inside
``guard()`` (the ledger appends its entries there and takes them back if a rename
fails). On any exception the temporary files are removed and the destinations are
left untouched. ``atomic_output(path)`` is the one-file form.

The output directory is opened once and every operation is relative to that
descriptor: the temporary file is created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (never
an existing file or a planted symlink), its mode is set with ``fchmod`` on the open
file, and it is renamed with ``renameat`` (``os.replace`` with ``src_dir_fd`` and
``dst_dir_fd``). A directory that others may write to without the sticky bit is
refused: there another user could rename the temporary file away between our writes.

A destination that is a symbolic link is resolved: the file it points to is replaced
(in place, in its own directory), the link stays. That is what in-place signing of a
deploy directory's ``fitImage -> fitImage-<version>.bin`` link needs. A link in a
world-writable sticky directory (``/tmp``) is followed only when it belongs to the
user running hsmsign, and a link to nothing is refused. A new file gets mode 0644
(less what the umask removes); a replaced file keeps its permission bits but never
setuid, setgid or sticky.

Signals
-------
Every live temporary file is in a registry. ``install_signal_handlers()`` (the CLI
calls it) makes SIGINT and SIGTERM remove them, print one line and exit 130 / 143.
While outputs are being renamed into place and the ledger appended (a few
milliseconds) the signal waits, so the pair is never cut in half. A SIGKILL leaves at
most a ``.hsmsign-tmp-*`` file next to the destination, never a half-written
artifact under the real name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from .errors import ConfigError

TMP_PREFIX = ".hsmsign-tmp-"
MAX_INPUT = 64 << 20  # an input read whole: certificate, DTB, signature, sw-description, list
MAX_IMAGE = (
    1 << 30
)  # a FIT or PE image read whole (both formats hold 32-bit sizes; real ones are far smaller)
MAX_STREAM = 64 << 30  # a pipe or FIFO streamed (its size is not known up front)
CHUNK = 4 << 20  # the one read buffer of stream_input
# Large outputs are written 1 MiB per call. Measured (50 MiB, ext4, Linux 6.18): one write(2)
# of the whole buffer takes 0.13 - 0.18 s, 1 MiB calls 0.014 s, 2 MiB and more are slow again.
WRITE_CHUNK = 1 << 20

_REGISTRY_LOCK = threading.Lock()
_LIVE: dict[int, AtomicFile] = {}  # id -> temporary file not yet renamed or removed
_SCRATCH: set[str] = set()  # private work folders (scratch_directory) not yet removed
_critical = 0  # > 0 while outputs are renamed into place: signals wait
_pending: list[int] = []


# --------------------------------------------------------------------------- input


def check_readable(path: str, what: str = "") -> None:
    """A ConfigError (exit 2) unless ``path`` is a readable file (``what`` names it in errors)."""
    name = f"{what} {path}" if what else path
    if not os.path.exists(path):
        raise ConfigError(f"{name}: no such file", "check the path")
    if os.path.isdir(path):
        raise ConfigError(f"{name} is a directory, not a file")
    if stat.S_ISCHR(os.stat(path).st_mode):
        raise ConfigError(f"{name} is a character device, not a file", "name the file itself")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{name} is not readable", "check its permissions")


_STREAMS = ("/dev/stdout", "/dev/stderr", "/dev/stdin")
_DESCRIPTOR_DIRS = ("/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/")


def refuse_stream(path: str) -> None:
    """A ConfigError when an output names standard output (``-``) or one of the process's
    descriptors (``/dev/stdout``, ``/dev/fd/N``): an output is a file renamed into place."""
    full = os.path.abspath(path)
    if path == "-" or full in _STREAMS or full.startswith(_DESCRIPTOR_DIRS):
        raise ConfigError(
            f"output {path} is standard output or a descriptor, not a file",
            "name a file: each output is written to a temporary file, checked, then renamed into place",
        )


def _same_file_key(path: str) -> tuple[str, object]:
    """What identifies the file ``path`` names, as the writes see it: an existing file by device
    and inode (symbolic links followed, hard links alike), a file yet to be made by its real path."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", (st.st_dev, st.st_ino))


def refuse_overwriting(
    outputs: Sequence[tuple[str, str | None]],
    inputs: Sequence[tuple[str, str | None]] = (),
    hint: str = "name another file for the output",
) -> None:
    """A ConfigError (exit 2), before any work, when an output would replace one of the
    command's inputs or another of its outputs. Each pair is (what it is, its path), the path
    None when it was not given: ``refuse_overwriting([("--output", out)], [("the file to sign", f)])``.
    """
    seen: dict[tuple[str, object], tuple[str, str]] = {}
    for what, path in inputs:
        if path is not None:
            seen.setdefault(_same_file_key(path), (what, path))
    kinds = {key: "input" for key in seen}
    for what, path in outputs:
        if path is None:
            continue
        refuse_stream(path)
        key = _same_file_key(path)
        if key in seen:
            other, other_path = seen[key]
            named = "" if other_path == path else f" ({other_path})"
            if kinds[key] == "input":
                raise ConfigError(f"{what} {path} is also {other}{named}: writing it would replace it", hint)
            raise ConfigError(f"{other} and {what} name one file ({path})", "give each output its own file")
        seen[key] = (what, path)
        kinds[key] = "output"


def _open_input(path: str, what: str) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path}: no such file", "check the path") from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {path}: {exc.strerror}", "check the path and its permissions"
        ) from exc
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode) or stat.S_ISCHR(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a character device"
        raise ConfigError(f"{what} {path} is {kind}, not a file", "name the file itself")
    return fd, st


def _size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


def read_input(path: str, what: str = "input", limit: int = MAX_INPUT) -> bytes:
    """An input file's bytes, at most ``limit`` of them (``what`` names it in errors)."""
    fd, st = _open_input(path, what)
    too_big = ConfigError(
        f"{what} {path} is larger than {_size_text(limit)}", f"is it the right file? a {what} is smaller"
    )
    try:
        regular = stat.S_ISREG(st.st_mode)
        if regular and st.st_size > limit:
            raise too_big
        # a regular file in one read(2) into one bytes object (one byte more, to see it grow): no
        # chunk list and no join, which for a 50 MiB image cost as much again as the read itself
        want = st.st_size + 1 if regular else CHUNK
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(want, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise too_big
            want = CHUNK
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except MemoryError as exc:
        raise ConfigError(f"{what} {path} does not fit in memory", "is it the right file?") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def stream_input(path: str, what: str = "input", chunk: int = CHUNK) -> Iterator[memoryview]:
    """``path``'s bytes in chunks through one buffer (each view is valid until the next one).

    See the module docstring: a regular file or block device must not change while it
    is read; a pipe is bounded by ``MAX_STREAM``; a character device is refused.
    """
    fd, st = _open_input(path, what)
    changed = ConfigError(
        f"{what} {path} changed while it was read (truncated, extended or rewritten)",
        "something else is writing it: run hsmsign once the file is complete; nothing was written",
    )
    buf = bytearray(chunk)
    view = memoryview(buf)
    try:
        sized = stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)
        expected = st.st_size if stat.S_ISREG(st.st_mode) else None
        if stat.S_ISBLK(st.st_mode):
            expected = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
        done = 0
        while True:
            want = chunk if expected is None else min(chunk, expected - done)
            if want == 0:
                break
            n = os.readv(fd, [view[:want]])
            if n == 0:
                if sized:
                    raise changed  # ended before the size it had when opened: truncated
                break
            done += n
            if not sized and done > MAX_STREAM:
                raise ConfigError(
                    f"{what} {path} is a pipe that gave more than {_size_text(MAX_STREAM)}",
                    "write the data to a file first, then name the file",
                )
            yield view[:n]
        if sized:
            after = os.fstat(fd)
            if os.read(fd, 1) or (
                stat.S_ISREG(st.st_mode)
                and (after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns)
            ):
                raise changed
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- output


def _random_name() -> str:
    """16 random hex digits for a temporary name (``secrets.token_hex(8)``: the same bytes, without
    importing secrets and random at every start)."""
    return os.urandom(8).hex()


def write_all(fh: BinaryIO, data: bytes | memoryview) -> int:
    """Write ``data`` to ``fh`` in :data:`WRITE_CHUNK` pieces; the bytes written."""
    view = memoryview(data)
    for start in range(0, len(view), WRITE_CHUNK):
        fh.write(view[start : start + WRITE_CHUNK])
    return len(view)


class AtomicFile:
    """One temporary output: the open file, its path, and where it goes."""

    def __init__(
        self,
        fh: BinaryIO,
        dir_fd: int,
        directory: str,
        tmp_name: str,
        final_name: str,
        mode: int,
        fsync: bool = True,
    ):
        self.fh = fh
        self.fsync = fsync
        self.dir_fd = dir_fd
        self.directory = directory
        self.tmp_name = tmp_name
        self.final_name = final_name
        self.mode = mode
        self.tmp_path = os.path.join(directory, tmp_name)
        self.final_path = os.path.join(directory, final_name)  # symbolic links resolved
        self.renamed = False
        self._identity: tuple[int, int] | None = None

    def write(self, data: bytes | memoryview) -> int:
        return write_all(self.fh, data)

    def flush(self) -> None:
        self.fh.flush()

    def _finish(self) -> None:
        """Flush, fsync and set the mode on the descriptor (before the rename)."""
        self.fh.flush()
        if self.fsync:
            os.fsync(self.fh.fileno())
        os.fchmod(self.fh.fileno(), self.mode)
        st = os.fstat(self.fh.fileno())
        self._identity = (st.st_dev, st.st_ino)
        self.fh.close()

    def _rename(self) -> None:
        # the name must still be our file: a temporary swapped for another file or a link is not
        # renamed over the output (the directory checks make this the second line of defence)
        st = os.stat(self.tmp_name, dir_fd=self.dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != self._identity:
            raise ConfigError(
                f"the temporary file {self.tmp_path} was replaced by something else while it was written",
                f"another user can write in {self.directory}: write elsewhere; nothing was written",
            )
        os.replace(self.tmp_name, self.final_name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.renamed = True
        _unregister(self)
        if self.fsync:
            with contextlib.suppress(OSError):
                os.fsync(self.dir_fd)  # the rename itself survives a crash

    def _discard(self) -> None:
        if not self.fh.closed:
            # closing flushes the buffer again: on a full disk that raises a second ENOSPC
            with contextlib.suppress(OSError):
                self.fh.close()
        if not self.renamed:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp_name, dir_fd=self.dir_fd)
        _unregister(self)
        with contextlib.suppress(OSError):
            os.close(self.dir_fd)


def _register(f: AtomicFile) -> None:
    with _REGISTRY_LOCK:
        _LIVE[id(f)] = f


def _unregister(f: AtomicFile) -> None:
    with _REGISTRY_LOCK:
        _LIVE.pop(id(f), None)


def live_temporaries() -> list[str]:
    """The paths of the temporary files this process has not yet renamed or removed."""
    with _REGISTRY_LOCK:
        return [f.tmp_path for f in _LIVE.values()]


def remove_live_temporaries() -> None:
    """Remove every live temporary file and scratch folder (a signal is stopping the process)."""
    import shutil

    with _REGISTRY_LOCK:
        files = list(_LIVE.values())
        _LIVE.clear()
        folders = list(_SCRATCH)
        _SCRATCH.clear()
    for f in files:
        with contextlib.suppress(OSError):
            os.unlink(f.tmp_name, dir_fd=f.dir_fd)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_directory(prefix: str, directory: str | None = None) -> Iterator[str]:
    """A private folder for intermediate files (``tempfile.mkdtemp``, in ``directory`` when
    given: an output made there can be renamed into place), removed when the block ends, and
    by the signal handlers when SIGINT or SIGTERM stop the process meanwhile."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix=prefix, dir=directory)
    with _REGISTRY_LOCK:
        _SCRATCH.add(folder)
    try:
        yield folder
    finally:
        with _REGISTRY_LOCK:
            _SCRATCH.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def resolve_output(path: str) -> tuple[str, str, int | None]:
    """(directory, name, existing permission bits) of the file ``path`` names, symlinks followed.

    Refuses a link to nothing, and a link in a world-writable sticky directory owned by
    another user (the case ``fs.protected_symlinks`` guards against).
    """
    refuse_stream(path)
    final = os.path.abspath(path)
    try:
        lst = os.lstat(final)
    except FileNotFoundError:
        lst = None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", "check the path") from exc
    if lst is not None and stat.S_ISLNK(lst.st_mode):
        parent = os.stat(os.path.dirname(final))
        if (
            parent.st_mode & stat.S_IWOTH
            and parent.st_mode & stat.S_ISVTX
            and lst.st_uid not in (os.geteuid(), parent.st_uid)
        ):
            raise ConfigError(
                f"{path} is a symbolic link owned by another user in a world-writable directory",
                "refusing to write through it; remove it or choose another output",
            )
        target = os.path.realpath(final)
        if not os.path.exists(target):
            raise ConfigError(
                f"{path} is a symbolic link to {target}, which does not exist", "fix or remove the link"
            )
        final = target
        lst = os.lstat(final)
    if lst is not None and not stat.S_ISREG(lst.st_mode):
        kind = "a directory" if stat.S_ISDIR(lst.st_mode) else "not a regular file"
        raise ConfigError(f"output {path} is {kind}", "name a file to write")
    existing = stat.S_IMODE(lst.st_mode) & 0o777 if lst is not None else None
    return os.path.dirname(final), os.path.basename(final), existing


def open_output_dir(directory: str) -> int:
    """A descriptor of the output directory; refuses one others may write to without the sticky bit."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"output directory {directory} does not exist", "create it first, or choose another --output"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot open output directory {directory}: {exc.strerror}") from exc
    st = os.fstat(dir_fd)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        os.close(dir_fd)
        raise ConfigError(
            f"output directory {directory} is writable by every user and has no sticky bit: another user "
            "could swap the file while it is written",
            f"chmod o-w {directory} (or chmod +t), or write elsewhere",
        )
    return dir_fd


def create_temporary(
    path: str | os.PathLike[str], mode: int | None = None, suffix: str = "", fsync: bool = True
) -> AtomicFile:
    """A registered temporary file for ``path`` (see the module docstring); the caller finishes it.

    ``fsync=False``: no fsync of the file or its directory, for callers that write many files and
    leave flushing to the kernel (``hsmsign modsign``: thousands of build intermediates, as the
    kernel's own ``sign-file`` writes them); the rename is atomic all the same.
    """
    directory, name, existing = resolve_output(os.fspath(path))
    if mode is None:
        mode = existing if existing is not None else 0o644 & ~_umask()
    mode &= 0o777  # never setuid, setgid or sticky
    dir_fd = open_output_dir(directory)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = TMP_PREFIX + _random_name() + suffix
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            os.close(dir_fd)
            raise ConfigError(
                f"cannot write in {directory}: {exc.strerror}", "check permissions and free space"
            ) from exc
    else:  # pragma: no cover - 100 collisions of 64 random bits
        os.close(dir_fd)
        raise ConfigError(f"cannot create a temporary file in {directory}")
    f = AtomicFile(os.fdopen(fd, "w+b"), dir_fd, directory, tmp, name, mode, fsync)
    _register(f)
    return f


class Staged:
    """Outputs that are renamed into place together (see :func:`staged`)."""

    def __init__(self) -> None:
        self.files: list[AtomicFile] = []

    def open(self, path: str | os.PathLike[str], mode: int | None = None, fsync: bool = True) -> AtomicFile:
        f = create_temporary(path, mode, fsync=fsync)
        self.files.append(f)
        return f

    def adopt(self, f: AtomicFile) -> AtomicFile:
        """A temporary file from :func:`create_temporary`, renamed or removed with the others."""
        self.files.append(f)
        return f

    def write_bytes(
        self, path: str | os.PathLike[str], data: bytes, mode: int | None = None, fsync: bool = True
    ) -> AtomicFile:
        f = self.open(path, mode, fsync)
        f.write(data)
        return f

    def commit(self, guard: Callable[[], AbstractContextManager[Any]] | None = None) -> None:
        try:
            for f in self.files:
                f._finish()
            with critical():
                with guard() if guard is not None else contextlib.nullcontext():
                    for f in self.files:
                        f._rename()
        except OSError as exc:
            names = ", ".join(f.final_path for f in self.files)
            raise ConfigError(
                f"cannot write {names}: {exc.strerror}", "check permissions and free space"
            ) from exc

    def discard(self) -> None:
        for f in self.files:
            f._discard()


@contextlib.contextmanager
def staged(guard: Callable[[], AbstractContextManager[Any]] | None = None) -> Iterator[Staged]:
    """Outputs written to temporary files, renamed into place together inside ``guard()`` at the end."""
    outputs = Staged()
    try:
        yield outputs
        outputs.commit(guard)
    finally:
        outputs.discard()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[AtomicFile]:
    """Write ``path`` atomically; see the module docstring."""
    with staged() as outputs:
        yield outputs.open(path, mode)


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, mode: int | None = None, fsync: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically (``fsync=False``: see :func:`create_temporary`)."""
    with staged() as outputs:
        outputs.write_bytes(path, data, mode, fsync)


def file_mode(path: str) -> int | None:
    """The permission bits of ``path`` (an output takes its input's), or None when it cannot be read."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None


# --------------------------------------------------------------------------- signals

SIGNAL_EXIT: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (outputs renamed and recorded, or neither)."""
    global _critical
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
        if not _critical and _pending:
            _stop(_pending[0])


def descendants(root: int | None = None) -> list[int]:
    """The processes below ``root`` (default: this one), children first (Linux /proc; elsewhere
    none are found)."""
    parent: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat.rpartition(b")")[2].split()
        if len(fields) > 1 and fields[1].isdigit():
            parent[int(entry)] = int(fields[1])
    found: list[int] = []
    level = [os.getpid() if root is None else root]
    while level:
        level = [pid for pid, ppid in parent.items() if ppid in level]
        found.extend(level)
    return found


def _stop(signum: int) -> None:
    # a child still running (a PIN program waiting for input, veritysetup, fit_check_sign), and
    # what it started, get the same signal: nothing is left behind writing next to outputs that
    # are gone, or waiting for input nobody gives
    for pid in descendants():
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
    remove_live_temporaries()
    word = "interrupted" if signum == signal.SIGINT else "terminated"
    line = f"hsmsign: error: {word} by {signal.Signals(signum).name}; unfinished outputs removed\n"
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, line.encode())
    os._exit(SIGNAL_EXIT.get(signum, 128 + signum))


def _on_signal(signum: int, frame: Any) -> None:
    if _critical:
        _pending.append(signum)
        return
    _stop(signum)


def install_signal_handlers() -> Callable[[], None]:
    """SIGINT and SIGTERM remove the live temporaries and exit 130 / 143; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.signal(s, _on_signal) for s in SIGNAL_EXIT}

    def restore() -> None:
        for s, handler in old.items():
            signal.signal(s, handler)

    return restore
