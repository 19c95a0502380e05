"""Archives and compressed streams the scanner opens: gzip, bzip2, xz, zstd, tar, cpio.

Each yields ``(source!member, bytes)``; the scanner scans members again, up to
``MAX_DEPTH`` levels. cpio goes through ``hsmsign.formats.cpio`` in its lenient mode.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator

from ..errors import VerificationError
from ..formats import cpio

MAX_MEMBER = 512 * 1024 * 1024
MAX_DEPTH = 3


def archive_members(data: bytes, source: str, depth: int) -> Iterator[tuple[str, bytes]] | None:
    if depth >= MAX_DEPTH or len(data) < 6:
        return None
    head = data[:6]
    if head[:2] == b"\x1f\x8b":
        return _decompressed(gzip.decompress, data, source, depth)
    if head[:3] == b"BZh":
        return _decompressed(bz2.decompress, data, source, depth)
    if head == b"\xfd7zXZ\x00":
        return _decompressed(lzma.decompress, data, source, depth)
    if head[:4] == ZSTD_MAGIC and shutil.which("zstd"):
        return _decompressed(_zstd_decompress, data, source, depth)
    if head in (b"070701", b"070702", b"070707"):
        return _cpio_members(data, source)
    if len(data) > 512 and data[257:262] == b"ustar":
        return _tar_members(data, source)
    return None


def _decompressed(
    fn: Callable[[bytes], bytes], data: bytes, source: str, depth: int
) -> Iterator[tuple[str, bytes]] | None:
    """The decompressed stream as one member (``file.gz!``); scan_bytes looks inside it again."""
    try:
        inner = fn(data)
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return None
    return iter([(source + "!", inner)])


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_decompress(data: bytes) -> bytes:
    """zstd (BitBake's sigdata/siginfo, .tar.zst) through the zstd tool: no stdlib module before 3.14."""
    try:
        done = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, timeout=300, check=False)
    except subprocess.SubprocessError as exc:
        raise OSError(str(exc)) from exc
    if done.returncode != 0:
        raise OSError(done.stderr.decode("utf-8", "replace").strip() or "zstd failed")
    return done.stdout


def _tar_members(data: bytes, source: str) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for ti in tf:
                if not ti.isfile() or ti.size > MAX_MEMBER:
                    continue
                fh = tf.extractfile(ti)
                if fh is not None:
                    yield f"{source.rstrip('!')}!{ti.name}", fh.read()
    except (tarfile.TarError, OSError, EOFError):
        return


def _cpio_members(data: bytes, source: str) -> Iterator[tuple[str, bytes]]:
    """newc/crc (070701/070702) and odc (070707) cpio, as the kernel and Yocto write them."""
    base = source.rstrip("!")
    try:
        for entry in cpio.iter_entries(io.BytesIO(data), len(data), lenient=True):
            if stat.S_ISREG(entry.mode) and entry.size:
                yield f"{base}!{entry.name}", data[entry.offset : entry.offset + entry.size]
    except VerificationError:
        return  # a damaged archive: what was read so far is scanned
