"""Artifact files: checked input, and atomic output (an artifact is either complete,
signed and verified, or absent).

``read_input(path, what)`` reads an input with one-line errors (missing, a
directory, unreadable: ``ConfigError``, exit 2).

``atomic_output(path)`` yields a temporary file in the destination's directory.
The caller writes, then verifies the temporary file (its path is ``.tmp_path``);
only when the ``with`` block ends without an exception is the file fsync'ed and
renamed over ``path``. On any exception, including KeyboardInterrupt, the
temporary file is removed and ``path`` is left untouched. A SIGKILL leaves at most
a ``.hsmsign-tmp-*`` file next to the destination, never a half-written artifact
under the real name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

from .errors import ConfigError

TMP_PREFIX = ".hsmsign-tmp-"


class AtomicFile:
    """The open temporary file and its path, handed to the ``with`` block."""

    def __init__(self, fh: BinaryIO, tmp_path: str, final_path: str) -> None:
        self.fh = fh
        self.tmp_path = tmp_path
        self.final_path = final_path

    def write(self, data: bytes) -> int:
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], mode: int | None = None, fsync: bool = True
) -> Iterator[AtomicFile]:
    """Write ``path`` atomically; see the module docstring.

    ``fsync=False``: no fsync before the rename, for callers that write many files and
    flush them together afterwards (``sync_all``); the rename is atomic all the same.
    """
    final = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(final))
    if not os.path.isdir(directory):
        raise ConfigError(
            f"output directory {directory} does not exist",
            "create it first, or choose another --output",
        )
    try:
        import tempfile  # here, not at import: the verbs import this module for read_input

        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    except OSError as exc:
        raise ConfigError(
            f"cannot write in {directory}: {exc.strerror}", "check permissions and free space"
        ) from exc
    fh = os.fdopen(fd, "w+b")
    ok = False
    try:
        yield AtomicFile(fh, tmp, final)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
        fh.close()
        if mode is None and os.path.exists(final):
            mode = os.stat(final).st_mode & 0o7777
        os.chmod(tmp, mode if mode is not None else 0o644)
        os.replace(tmp, final)
        ok = True
    except OSError as exc:
        raise ConfigError(
            f"cannot write {final}: {exc.strerror}", "check permissions and free space"
        ) from exc
    finally:
        if not fh.closed:
            # closing flushes the buffer again: on a full disk that raises a second ENOSPC
            with contextlib.suppress(OSError):
                fh.close()
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, mode: int | None = None, fsync: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path, mode=mode, fsync=fsync) as out:
        out.write(data)


def sync_all() -> None:
    """Flush every file written with ``fsync=False`` to disk: one call for a whole batch."""
    os.sync()


def check_readable(path: str) -> None:
    """A ConfigError (exit 2) unless ``path`` is a readable file."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such file", "check the path")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{path} is not readable", "check its permissions")


def read_input(path: str, what: str) -> bytes:
    """An input file's bytes (``what`` names it in errors)."""
    check_readable(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def file_mode(path: str) -> int | None:
    """The permission bits of ``path`` (an output takes its input's), or None when it cannot be read."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None
