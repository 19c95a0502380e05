"""The image ``hsmsign pe sign`` signs: opened, parsed, copied and hashed in threads, from the first moment.

:func:`prefetch` runs before the command-line interface is imported (``hsmsign.launch``),
so that the image is opened, its headers read and the rest of it read ahead while the
imports, the parser and the token login run; its body is copied into the output and hashed
there as soon as the output's temporary file is open (:class:`ImageInput`).

The threads import nothing. Two threads importing at once can see each other's modules
half-initialized (``dataclasses`` reads ``typing`` from ``sys.modules`` without the import
lock: "partially initialized module 'typing' has no attribute 'ClassVar'", twice in 1000 runs
before this rule). So the first reads use only ``os`` (loaded with the interpreter), and
the rest waits until :func:`load` has imported what it runs on the thread that imports;
``ImageInput`` calls it itself, ``hsmsign.launch`` right after the prefetch has started.
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False  # typing is not imported before the prefetch starts
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

# what the threads run, imported by load() (on the importing thread) before they need it
atomic: Any = None
pe: Any = None
mmap: Any = None
ConfigError: Any = None
_NO_SENDFILE: frozenset[int] = frozenset()
_loaded = threading.Event()
_S_IFMT, _S_IFREG = 0o170000, 0o100000  # stat's, without importing it
READ_AHEAD_MAX = 1 << 30  # atomic.MAX_IMAGE (a test keeps them equal): larger files are refused there
HEAD_READ = 1 << 16  # the first read: an image's headers and section table (usually 1 - 4 KiB)
PIECE = 8 << 20  # the body is copied and hashed in pieces this large, the hash one piece behind


def load_once() -> None:
    """:func:`load`, unless it has run (the command's thread calls it before it waits for a thread)."""
    if not _loaded.is_set():
        load()


def load() -> None:
    """Import what the threads run (on the calling thread) and let them run it."""
    global atomic, pe, mmap, ConfigError, _NO_SENDFILE
    import errno
    import mmap

    from .. import atomic
    from ..errors import ConfigError
    from ..formats import pe

    # a file system without sendfile(2) for these files: the body is copied with pread/pwrite
    # (macOS's sendfile writes to sockets only: ENOTSOCK)
    _NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTSOCK})
    _loaded.set()


# What `hsmsign pe sign` takes after the verb, as its parser defines it (a value or none), for
# the guess of its input before the parser exists; tests/unit/test_pe_input.py keeps this true.
SIGN_OPTIONS: dict[str, bool] = {
    "--uri": True,
    "--module": True,
    "--pin-env": True,
    "--mode": True,
    "--role": True,
    "--ledger": True,
    "--json": False,
    "--cert": True,
    "--output": True,
    "-o": True,
    "--append": False,
}
GLOBAL_FLAGS = ("-v", "-vv", "-vvv", "--verbose")  # what may come before the verb without a value

_prefetched: ImageInput | None = None


def guess_input(argv: Sequence[str]) -> str | None:
    """The IN.efi of a ``pe sign`` command line, or None if this is none or the guess is unsure.

    A guess only: the parser decides (an abbreviated option, ``--cer``, is left to it), and
    :func:`adopt` takes the image read ahead only if the parser names the same path.
    """
    return _guess(argv)[0]


def guess_output(argv: Sequence[str]) -> str | None:
    """The OUT.efi of a ``pe sign`` command line whose input :func:`guess_input` finds, if it
    gives one ``--output`` (or ``-o``) with a value that is not an option; otherwise None."""
    return _guess(argv)[1]


def _guess(argv: Sequence[str]) -> tuple[str | None, str | None]:
    words = list(argv)
    i = 0
    while i < len(words) and words[i] in GLOBAL_FLAGS:
        i += 1
    if words[i : i + 2] != ["pe", "sign"]:
        return None, None
    positional: list[str] = []
    outputs: list[str] = []
    rest = words[i + 2 :]
    j = 0
    while j < len(rest):
        word = rest[j]
        if word == "--":
            positional.extend(rest[j + 1 :])
            break
        if word.startswith("-") and word != "-":
            name, eq, value = word.partition("=")
            if name not in SIGN_OPTIONS or (eq and not SIGN_OPTIONS[name]):
                return None, None  # help, an abbreviation, -oOUT, a mistake: the parser will say
            if name in ("--output", "-o"):
                outputs.append(value if eq else (rest[j + 1] if j + 1 < len(rest) else ""))
            j += 2 if SIGN_OPTIONS[name] and not eq else 1
            continue
        positional.append(word)
        j += 1
    if len(positional) != 1:
        return None, None
    out = outputs[0] if len(outputs) == 1 and outputs[0] and not outputs[0].startswith("-") else None
    return positional[0], out


def prefetch(argv: Sequence[str]) -> bool:
    """If ``argv`` is a ``pe sign`` command, begin reading its image now; whether it began (the
    caller then runs :func:`load`, and :func:`open_output` once SIGINT and SIGTERM remove
    temporary files)."""
    global _prefetched
    path, out = _guess(argv)
    if path is None or _prefetched is not None:
        return False
    _prefetched = ImageInput(path, before_load=True)
    _prefetched.guessed_output = out
    return True


def open_output() -> None:
    """The output's temporary file for the command line's ``--output``, made now (after
    :func:`load`), and the body's copy into it begun: the command then takes it (:func:`adopt`)
    instead of opening its own once the command-line interface is imported and the arguments
    parsed, 0.02 s later. Any problem (a directory that does not exist...) is left to the
    command, which opens the output itself and reports it."""
    job = _prefetched
    if job is None or job.guessed_output is None:
        return
    try:
        early = atomic.create_temporary(job.guessed_output, mode=atomic.file_mode(job.path))
    except (ConfigError, OSError):
        return
    job.early_output = early
    job.write_body(early.fh.fileno(), job.guessed_output)


def adopt(path: str, output: str | None = None) -> ImageInput | None:
    """The image read ahead, if it is ``path`` and its output made early (if any) is ``output``;
    otherwise None (and a wrong guess is stopped, its output removed)."""
    global _prefetched
    job, _prefetched = _prefetched, None
    if job is None:
        return None
    if job.path == path and (job.early_output is None or job.guessed_output == output):
        return job
    job.stop()
    return None


def abandon() -> None:
    """The command ended without taking the image read ahead (a usage error...): stopped, its
    output removed."""
    global _prefetched
    job, _prefetched = _prefetched, None
    if job is not None:
        job.stop()


class ImageInput:
    """The image to sign: opened, parsed, copied into the output and hashed in threads, from the first moment.

    The usual case, a regular file: a thread started first reads its headers (``HEAD_READ``
    bytes) and asks the kernel to read the rest ahead. As soon as the output's temporary file
    is open (``write_body``), the body (the bytes the signed image takes from the input as they
    are: ``pe.body_range``) goes from the input into it with ``sendfile(2)``, page cache to page
    cache, ``PIECE`` bytes at a time, by a thread of its own; this one hashes each piece as
    soon as it is *in the output* (mapped, not read again), the headers from the bytes read
    first: what is signed is what was written, even if the input changed meanwhile (and that
    is refused too: :func:`_unchanged`). A third thread flushes the body to disk once it is
    copied, while it is hashed. The main thread writes the headers and the certificate
    table around it once it has the signature. A file system without ``sendfile`` for the
    files gets the body copied with ``pread``/``pwrite``; an output that cannot be mapped is
    read back once the copy is done.

    The image is never held whole in memory: a 1 GiB image costs its page cache, not 1 GiB
    more, and no 50 MiB buffer has to be faulted in (that, the copy into it and the copy out
    of it took a third of the CPU time of signing a 50 MiB UKI).

    Anything else (a FIFO, a file that is not a PE image, headers past ``HEAD_READ``) is read
    whole with ``atomic.read_input``'s checks and messages, hashed, and its body written from
    those bytes with ``pwrite``.

    ``read(2)``, ``sendfile(2)``, hashlib, ``pwrite(2)`` and ``fdatasync(2)`` release the
    GIL, so this work overlaps the imports, the certificate, the ledger checks and the token
    login on the main thread.
    """

    def __init__(self, path: str, *, before_load: bool = False) -> None:
        """Start reading ``path``. ``before_load``: :func:`load` has not run and the caller runs it
        next (the prefetch); otherwise it is run here first, if it has not."""
        if not before_load:
            load_once()
        self.path = path
        self.head = b""  # the input's headers and section table (at least)
        self.table = b""  # the input's certificate table (empty if it is unsigned)
        self.layout: Any = None
        self.digest = b""
        self.error: BaseException | None = None
        self.write_error: OSError | None = None
        self._stopped = False
        self._out_fd = -1
        self._out_name = ""
        self._parsed = threading.Event()
        self._output = threading.Event()  # write_body gave the output (or stop: there is none)
        self._copied = threading.Event()  # the body is in the output (or could not be)
        self._hashed = threading.Event()
        self._syncer: threading.Thread | None = None
        self.guessed_output: str | None = None  # prefetch: the command line's --output
        self.early_output: Any = None  # open_output: its temporary file, until take_output
        self._thread = threading.Thread(target=self._work, name="hsmsign-pe-input", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        src = -1
        whole = b""
        try:
            src, st = _open_regular(self.path)
            size = st.st_size if st is not None else 0
            head = _read_head(src, size)
            _loaded.wait()
            layout = _layout(head, size, self.path) if src >= 0 else None
            if layout is None:
                # anything but a regular file with usual headers, and every error: the read with
                # its checks and messages (read, not mapped: a file truncated meanwhile cannot
                # kill us with SIGBUS)
                if src >= 0:
                    os.close(src)
                    src = -1
                whole = atomic.read_input(self.path, "PE image", atomic.MAX_IMAGE)
                layout = pe.parse(whole, self.path)
                head, table = pe.input_parts(whole, layout)
            else:
                table = _read_table(src, layout, self.path)
            self.head, self.table, self.layout = head, table, layout
            self._parsed.set()
            if whole:
                # the digest of the image as it will be: with the padding before the table
                self.digest = pe.digest(whole, "sha256", layout, pad=True)
                self._hashed.set()
            self._output.wait()
            if self._stopped:
                return
            if whole or st is None:
                self._write_whole(whole)
            else:
                self._copy_and_hash(src, st)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            if self.error is None:
                self.error = exc
        finally:
            if src >= 0:
                os.close(src)
            if self._out_fd >= 0:
                os.close(self._out_fd)
                self._out_fd = -1
            self._parsed.set()
            self._copied.set()
            self._hashed.set()

    def _write_whole(self, whole: bytes) -> None:
        start, end = pe.body_range(self.layout)
        try:
            pwrite_all(self._out_fd, memoryview(whole)[start:end], start)
        except OSError as exc:
            self.write_error = exc
        self._copied.set()

    def _copy_and_hash(self, src: int, st: os.stat_result) -> None:
        """The body copied into the output by a thread, ``PIECE`` bytes at a time, and hashed here as
        it is there, each piece as soon as it is copied."""
        layout = self.layout
        start, end = pe.body_range(layout)
        fd = self._out_fd
        if end <= start:
            self._copied.set()
            self.digest = pe.digest_parts(self.head, b"", layout, pad=True)
            return
        try:
            os.ftruncate(fd, end)  # the output's size first: a file mapped must hold the whole mapping
        except OSError as exc:
            self.error = self._cannot_write(exc)
            return
        progress = _Progress(start)
        copier = threading.Thread(
            target=self._copy_body, args=(src, start, end, progress), name="hsmsign-pe-copy", daemon=True
        )
        copier.start()
        try:
            try:
                mapped = mmap.mmap(fd, end, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            except OSError:
                # a file system that cannot map it: the body read back once it is all there
                progress.wait(end)
                body = bytearray(end)
                try:
                    _pread_all(fd, memoryview(body)[start:], start)
                except OSError as exc:
                    self.error = self._cannot_write(exc)
                    return
                self.digest = pe.digest_parts(self.head, body, layout, pad=True)
            else:
                with mapped, memoryview(mapped) as view:
                    self.digest = pe.digest_parts(self.head, view, layout, pad=True, ready=progress.wait)
        except _CopyFailed:
            pass  # the copier's error is the one to report
        finally:
            copier.join()
        if self.error is None:
            _unchanged(src, st, self.path)

    def _copy_body(self, src: int, start: int, end: int, progress: _Progress) -> None:
        try:
            _copy(src, self._out_fd, start, end, self.path, progress.advance)
        except OSError as exc:
            self.error = self._cannot_write(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            self.error = exc
        finally:
            progress.stop()
            self._copied.set()

    def _sync(self, fd: int) -> None:
        try:
            self._copied.wait()
            if self.write_error is None and self.error is None and not self._stopped:
                getattr(os, "fdatasync", os.fsync)(fd)  # macOS has no fdatasync
        except OSError as exc:
            self.write_error = exc
        finally:
            os.close(fd)

    def _cannot_write(self, exc: OSError) -> BaseException:
        return ConfigError(
            f"cannot write {self._out_name}: {exc.strerror}", "check permissions and free space"
        )

    def parsed(self) -> Any:
        """The layout (the headers and the table are ``head`` and ``table``), or the input's error
        (missing, not a PE image...)."""
        load_once()
        self._parsed.wait()
        if self.error is not None and self.layout is None:
            raise self.error
        return self.layout

    def image_digest(self) -> bytes:
        """The digest, once the body is in the output (``write_body`` first)."""
        load_once()
        if not self._output.is_set():
            raise RuntimeError("ImageInput.image_digest before write_body")
        self._hashed.wait()
        if self.error is not None:
            raise self.error
        return self.digest

    def write_body(self, fd: int, what: str) -> None:
        """Copy the body into the open output ``fd`` (``what`` names it in errors), and flush it
        to disk (``body_written`` waits for that)."""
        self._out_name = what
        self._out_fd = os.dup(fd)
        self._syncer = threading.Thread(
            target=self._sync, args=(os.dup(fd),), name="hsmsign-pe-sync", daemon=True
        )
        self._syncer.start()
        self._output.set()

    def body_written(self) -> None:
        if self._syncer is not None:
            self._syncer.join()
        if self.error is not None:
            raise self.error
        if self.write_error is not None:
            raise self._cannot_write(self.write_error) from self.write_error

    def take_output(self) -> Any:
        """The output's temporary file made early (:func:`open_output`), now the caller's to rename
        or remove; None if there is none."""
        early, self.early_output = self.early_output, None
        return early

    def stop(self) -> None:
        """The command ends: a body not yet being written is not written, and an output made early
        and not taken is removed."""
        self._stopped = True
        self._output.set()
        early, self.early_output = self.early_output, None
        if early is not None:
            early._discard()


def _open_regular(path: str) -> tuple[int, os.stat_result | None]:
    """A descriptor of ``path`` and its status, if it is a regular file no larger than
    ``READ_AHEAD_MAX``; (-1, None) for anything else or any error, which ``read_input`` then
    meets and reports. Runs before :func:`load`: ``os`` only.

    Anything but a regular file is not even opened: a FIFO opened and closed here would take
    its writer's first bytes, or break its pipe, before ``read_input`` reads it.
    """
    try:
        if os.stat(path).st_mode & _S_IFMT != _S_IFREG:
            return -1, None
        # O_NONBLOCK: if a FIFO took the file's place since, the open does not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return -1, None
    try:
        st = os.fstat(fd)
        if st.st_mode & _S_IFMT == _S_IFREG and st.st_size <= READ_AHEAD_MAX:
            try:  # the rest of the file, from disk if it is not cached, while the headers are parsed
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except (OSError, AttributeError):  # (macOS has no posix_fadvise)
                pass
            return fd, st
    except OSError:
        pass
    os.close(fd)
    return -1, None


def _read_head(fd: int, size: int) -> bytes:
    """The first ``HEAD_READ`` bytes (all of a smaller file); empty on any error. ``os`` only."""
    if fd < 0:
        return b""
    try:
        return os.pread(fd, min(size, HEAD_READ), 0)
    except OSError:
        return b""


def _layout(head: bytes, size: int, what: str) -> Any:
    """The layout parsed from ``head``, the beginning of a ``size``-byte file; None when it does not
    hold the headers (or does not parse: the whole read then says why)."""
    if not head or len(head) < min(size, HEAD_READ) or size > atomic.MAX_IMAGE:
        return None
    try:
        layout = pe.parse(head, what, size=size)
    except pe.PeFormatError:
        return None
    if max(layout.size_of_headers, layout.headers_end) > len(head):
        return None
    return layout


def _read_table(fd: int, layout: Any, what: str) -> bytes:
    """The input's certificate table (kept by ``--append``, counted when replaced)."""
    if not layout.signed:
        return b""
    table = os.pread(fd, layout.cert_table_size, layout.cert_table_offset)
    if len(table) != layout.cert_table_size:
        raise _changed(what)
    return table


def _copy(src: int, dst: int, start: int, end: int, what: str, advance: Callable[[int], None]) -> None:
    """Bytes ``start`` to ``end`` of ``src`` to the same offsets in ``dst``, ``PIECE`` bytes at a
    time (``advance(offset)`` after each): ``sendfile(2)`` (page cache to page cache, no copy
    through this process), or ``pread``/``pwrite`` where the file system has no ``sendfile``.
    A source that ends early has changed: :func:`_changed`."""
    done = start
    try:
        os.lseek(dst, start, os.SEEK_SET)
        while done < end:
            sent = os.sendfile(dst, src, done, min(end - done, PIECE))
            if sent == 0:
                raise _changed(what)
            done += sent
            advance(done)
        return
    except OSError as exc:
        if exc.errno not in _NO_SENDFILE or done != start:
            raise
    buf = bytearray(min(end - start, atomic.WRITE_CHUNK))
    view = memoryview(buf)
    while done < end:
        got = os.preadv(src, [view[: min(end - done, len(buf))]], done)
        if got == 0:
            raise _changed(what)
        pwrite_all(dst, view[:got], done)
        done += got
        advance(done)


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(5, "the output is shorter than what was written into it")
        done += got


class _CopyFailed(Exception):
    """The copy stopped before the offset the hash waits for (its error is the image's)."""


class _Progress:
    """How far the body has been copied into the output: the hash waits on it."""

    def __init__(self, done: int) -> None:
        self._done = done
        self._stopped = False
        self._changed = threading.Condition()

    def advance(self, done: int) -> None:
        with self._changed:
            self._done = done
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def wait(self, offset: int) -> None:
        """Return once the bytes before ``offset`` are in the output; ``_CopyFailed`` if they never
        will be."""
        with self._changed:
            while self._done < offset:
                if self._stopped:
                    raise _CopyFailed
                self._changed.wait()


def _unchanged(fd: int, before: os.stat_result, what: str) -> None:
    """The input is as it was when it was opened: same size, not written since (its modification
    and change times, as tar's "file changed as we read it"; as for tar, a write in the same
    clock tick as the file's last change keeps both times on a kernel before Linux 6.13)."""
    now = os.fstat(fd)
    for field in ("st_size", "st_mtime_ns", "st_ctime_ns"):
        if getattr(now, field) != getattr(before, field):
            raise _changed(what)


def _changed(what: str) -> BaseException:
    return ConfigError(
        f"{what} changed while it was signed (its size, modification or change time)",
        "sign it once whatever writes it has finished; nothing was written",
    )
def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """All of ``data`` at ``offset``, ``atomic.WRITE_CHUNK`` per call (one write(2) of a whole
    50 MiB body was ten times slower)."""
    chunk = atomic.WRITE_CHUNK
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + chunk], offset + done)
