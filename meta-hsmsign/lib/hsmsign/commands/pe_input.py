"""The image ``hsmsign pe sign`` signs: read, hashed and written in threads, from the first moment.

:func:`prefetch` runs before the command-line interface is imported (``hsmsign.launch``),
so that on a large image the read and the hash overlap the imports, the parser and the token
login instead of following them.

The threads import nothing. Two threads importing at once can see each other's modules
half-initialized (``dataclasses`` reads ``typing`` from ``sys.modules`` without the import
lock: "partially initialized module 'typing' has no attribute 'ClassVar'", twice in 1000 runs
before this rule). So the first read uses only ``os`` (loaded with the interpreter), and
the rest waits until :func:`load` has imported what it runs on the thread that imports;
``ImageInput`` calls it itself, ``hsmsign.launch`` right after the prefetch has started.
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False  # typing is not imported before the prefetch starts
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# what the threads run, imported by load() (on the importing thread) before they need it
atomic: Any = None
pe: Any = None
ConfigError: Any = None
_loaded = threading.Event()
_S_IFMT, _S_IFREG = 0o170000, 0o100000  # stat's, without importing it
READ_AHEAD_MAX = 1 << 30  # atomic.MAX_IMAGE (a test keeps them equal): larger files are refused there


def load_once() -> None:
    """:func:`load`, unless it has run (the command's thread calls it before it waits for a thread)."""
    if not _loaded.is_set():
        load()


def load() -> None:
    """Import what the threads run (on the calling thread) and let them run it."""
    global atomic, pe, ConfigError
    from .. import atomic
    from ..errors import ConfigError
    from ..formats import pe

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
    words = list(argv)
    i = 0
    while i < len(words) and words[i] in GLOBAL_FLAGS:
        i += 1
    if words[i : i + 2] != ["pe", "sign"]:
        return None
    positional: list[str] = []
    rest = words[i + 2 :]
    j = 0
    while j < len(rest):
        word = rest[j]
        if word == "--":
            positional.extend(rest[j + 1 :])
            break
        if word.startswith("-") and word != "-":
            name, eq, _ = word.partition("=")
            if name not in SIGN_OPTIONS or (eq and not SIGN_OPTIONS[name]):
                return None  # help, an abbreviation, -oOUT, a mistake: the parser will say
            j += 2 if SIGN_OPTIONS[name] and not eq else 1
            continue
        positional.append(word)
        j += 1
    return positional[0] if len(positional) == 1 else None


def prefetch(argv: Sequence[str]) -> bool:
    """If ``argv`` is a ``pe sign`` command, begin reading its image now; whether it began (the
    caller then runs :func:`load`)."""
    global _prefetched
    path = guess_input(argv)
    if path is None or _prefetched is not None:
        return False
    _prefetched = ImageInput(path, before_load=True)
    return True


def adopt(path: str) -> ImageInput | None:
    """The image read ahead, if it is ``path``; otherwise None (and a wrong guess is stopped)."""
    global _prefetched
    job, _prefetched = _prefetched, None
    if job is None:
        return None
    if job.path == path:
        return job
    job.stop()
    return None


class ImageInput:
    """The image to sign: read, parsed and hashed in a thread started first; its body written in another.

    ``read(2)``, hashlib, ``pwrite(2)`` and ``fdatasync(2)`` release the GIL, so this work
    on a large image overlaps the imports, the certificate, the ledger checks and the token
    login on the main thread. As soon as the output's temporary file is open (``write_body``),
    a second thread writes the body (the bytes the signed image takes from the input as they
    are: ``pe.body_range``) into it at their offsets, from the very bytes that are hashed (one
    immutable ``bytes``), while they are hashed, and flushes them to disk; the main thread
    writes the headers and the certificate table around it once it has the signature.
    """

    def __init__(self, path: str, *, before_load: bool = False) -> None:
        """Start reading ``path``. ``before_load``: :func:`load` has not run and the caller runs it
        next (the prefetch); otherwise it is run here first, if it has not."""
        if not before_load:
            load_once()
        self.path = path
        self.data = b""
        self.layout: Any = None
        self.digest = b""
        self.error: BaseException | None = None
        self.write_error: OSError | None = None
        self._stopped = False
        self._parsed = threading.Event()
        self._hashed = threading.Event()
        self._writer: threading.Thread | None = None
        self._thread = threading.Thread(target=self._work, name="hsmsign-pe-input", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            ahead = _read_ahead(self.path)
            _loaded.wait()
            if ahead is None or len(ahead) > atomic.MAX_IMAGE:
                # anything but a regular file read whole, and every error: the read with its
                # checks and messages (read, not mapped: a file truncated meanwhile cannot
                # kill us with SIGBUS)
                ahead = atomic.read_input(self.path, "PE image", atomic.MAX_IMAGE)
            self.data = ahead
            self.layout = pe.parse(self.data, self.path)
            self._parsed.set()
            # the digest of the image as it will be: with the padding before the table
            self.digest = pe.digest(self.data, "sha256", self.layout, pad=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            self.error = exc
        finally:
            self._parsed.set()
            self._hashed.set()

    def _write(self, fd: int) -> None:
        try:
            self._parsed.wait()
            if self.error is None and not self._stopped:
                start, end = pe.body_range(self.layout)
                pwrite_all(fd, memoryview(self.data)[start:end], start)
                getattr(os, "fdatasync", os.fsync)(fd)  # macOS has no fdatasync
        except OSError as exc:
            self.write_error = exc
        finally:
            os.close(fd)

    def parsed(self) -> tuple[bytes, Any]:
        """The bytes and the layout, or the input's error (missing, not a PE image...)."""
        load_once()
        self._parsed.wait()
        if self.error is not None:
            raise self.error
        return self.data, self.layout

    def image_digest(self) -> bytes:
        load_once()
        self._hashed.wait()
        if self.error is not None:
            raise self.error
        return self.digest

    def write_body(self, fd: int) -> None:
        """Write the body into the open output ``fd`` (``body_written`` waits for it)."""
        self._writer = threading.Thread(
            target=self._write, args=(os.dup(fd),), name="hsmsign-pe-body", daemon=True
        )
        self._writer.start()

    def body_written(self, what: str) -> None:
        if self._writer is not None:
            self._writer.join()
        if self.write_error is not None:
            raise ConfigError(
                f"cannot write {what}: {self.write_error.strerror}", "check permissions and free space"
            ) from self.write_error

    def stop(self) -> None:
        """The command ends: a body not yet being written is not written."""
        self._stopped = True


def _read_ahead(path: str) -> bytes | None:
    """A regular file's bytes, read as ``atomic.read_input`` reads it (one ``read(2)`` of its size
    and one more byte, then end of file), with ``os`` alone; None for anything else or any
    error, which ``read_input`` then meets and reports.

    Anything but a regular file is not even opened: a FIFO opened and closed here would take
    its writer's first bytes, or break its pipe, before ``read_input`` reads it.
    """
    try:
        if os.stat(path).st_mode & _S_IFMT != _S_IFREG:
            return None
        # O_NONBLOCK: if a FIFO took the file's place since, the open does not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_mode & _S_IFMT != _S_IFREG or st.st_size > READ_AHEAD_MAX:
            return None
        data = os.read(fd, st.st_size + 1)
        if len(data) != st.st_size or os.read(fd, 1):
            return None  # it changed size while read
        return data
    except (OSError, MemoryError):
        return None
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """All of ``data`` at ``offset``, ``atomic.WRITE_CHUNK`` per call (one write(2) of a whole
    50 MiB body was ten times slower)."""
    chunk = atomic.WRITE_CHUNK
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + chunk], offset + done)
