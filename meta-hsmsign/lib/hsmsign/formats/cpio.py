"""The cpio "newc" archive that a swupdate ``.swu`` bundle is.

Format (cpio(5), ``new ASCII`` and ``new CRC``): a 110-byte header of ``070701``
(newc) or ``070702`` (crc) followed by 13 eight-digit hex fields (ino, mode, uid,
gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize,
check); the NUL-terminated name, padded so header+name is a multiple of 4; the
data, padded to 4; the last entry is ``TRAILER!!!``. ``check`` is, for crc, the
32-bit sum of all data bytes; swupdate compares it for ``070702`` entries and
ignores it for ``070701`` (``core/cpio_utils.c``). meta-swupdate builds bundles
with ``cpio -ov -H crc``; so does this writer by default.

The writer streams files (two passes for crc: checksum, then copy); the reader
checks every field and raises ``VerificationError`` on anything malformed. The
leak scanner (``hsmsign.audit``) reads with ``lenient=True``: also the old
portable format (``070707``, odc: 76-byte header of octal fields, no padding) that
``cpio -H odc`` writes. Member names that are not UTF-8 are read byte for byte (``surrogateescape``):
swupdate compares names as bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Union

from ..atomic import write_all
from ..errors import ConfigError, VerificationError, printable
from ..settings import source_date_epoch

MAGIC_NEWC = b"070701"
MAGIC_CRC = b"070702"
MAGIC_ODC = b"070707"
HEADER_LEN = 110
ODC_HEADER_LEN = 76
TRAILER = "TRAILER!!!"
MAX_NAME = 4096
CHUNK = 1 << 20

Source = Union[str, bytes, "os.PathLike[str]"]


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class Entry:
    """One archive member as read: where its data starts in the archive, and its header fields."""

    name: str
    size: int
    mode: int
    mtime: int
    check: int
    offset: int  # of the data in the archive
    crc_format: bool


def _header(name: bytes, size: int, mode: int, mtime: int, check: int, ino: int, crc: bool) -> bytes:
    namesize = len(name) + 1
    fields = [ino, mode, 0, 0, 1, mtime, size, 0, 0, 0, 0, namesize, check]
    for v in fields:
        if not 0 <= v <= 0xFFFFFFFF:
            raise ConfigError(
                f"cpio field value {v} does not fit 32 bits",
                "cpio newc holds files up to 4 GiB - 1; split larger images",
            )
    head = (MAGIC_CRC if crc else MAGIC_NEWC) + b"".join(b"%08X" % v for v in fields)
    out = head + name + b"\0"
    return out + b"\0" * _pad4(len(out))


def _checksum_and_size(src: Source) -> tuple[int, int]:
    if isinstance(src, bytes):
        return sum(src) & 0xFFFFFFFF, len(src)
    total = 0
    size = 0
    with open(src, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            total = (total + sum(chunk)) & 0xFFFFFFFF
            size += len(chunk)
    return total, size


def _check_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not raw or b"\0" in raw or len(raw) >= MAX_NAME or name.startswith("/") or ".." in name.split("/"):
        raise ConfigError(
            f"'{printable(name)}' cannot be a member name in a .swu", "use a plain relative file name"
        )
    return raw


def write(
    out: BinaryIO, members: Sequence[tuple[str, Source]], *, crc: bool = True, mtime: int | None = None
) -> int:
    """Write members ``(name, path-or-bytes)`` in order, then the trailer; return bytes written."""
    if mtime is None:
        mtime = source_date_epoch() or 0
    written = 0
    seen: set[str] = set()
    for ino, (name, src) in enumerate(members, start=1):
        raw = _check_name(name)
        if name in seen:
            raise ConfigError(f"'{printable(name)}' appears twice in the bundle")
        seen.add(name)
        try:
            check, size = _checksum_and_size(src) if crc else (0, _size(src))
        except OSError as exc:
            raise ConfigError(
                f"cannot read {os.fsdecode(src) if not isinstance(src, bytes) else name}: {exc.strerror}"
            ) from exc
        head = _header(raw, size, stat.S_IFREG | 0o644, mtime, check, ino, crc)
        out.write(head)
        written += len(head)
        copied = _copy(out, src)
        if copied != size:
            raise ConfigError(f"{printable(name)} changed size while the bundle was written")
        pad = _pad4(size)
        out.write(b"\0" * pad)
        written += size + pad
    trailer = _header(TRAILER.encode(), 0, 0, 0, 0, 0, crc)
    out.write(trailer)
    written += len(trailer)
    # GNU cpio pads the archive to its 512-byte block; swupdate reads (and ignores) up to 512 bytes of it
    tail = (512 - written % 512) % 512
    out.write(b"\0" * tail)
    return written + tail


def _size(src: Source) -> int:
    return len(src) if isinstance(src, bytes) else os.path.getsize(src)


def _copy(out: BinaryIO, src: Source) -> int:
    if isinstance(src, bytes):
        return write_all(out, src)
    n = 0
    with open(src, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            n += len(chunk)
    return n


def _odc_entry(fh: BinaryIO, head: bytes, pos: int) -> tuple[str, int, int, int, int]:
    """An odc header (``head`` holds its first ``HEADER_LEN`` bytes): name, size, mode, mtime, data offset."""
    if len(head) < ODC_HEADER_LEN:
        raise VerificationError(f"the archive ends inside a cpio header at offset {pos}")
    try:
        mode, mtime = int(head[18:24], 8), int(head[48:59], 8)
        namesize, size = int(head[59:65], 8), int(head[65:76], 8)
    except ValueError as exc:
        raise VerificationError(f"cpio odc header at offset {pos}: a field is not octal") from exc
    fh.seek(pos + ODC_HEADER_LEN)
    raw = fh.read(namesize)
    if not 1 <= namesize <= MAX_NAME or len(raw) != namesize:
        raise VerificationError(f"cpio odc header at offset {pos}: bad name size {namesize}")
    return raw[:-1].decode("utf-8", "replace"), size, mode, mtime, pos + ODC_HEADER_LEN + namesize


def _hex(field: bytes, what: str, at: int) -> int:
    try:
        text = field.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if len(text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise VerificationError(
            f"cpio header at offset {at}: field {what} is not 8 hex digits",
            "the .swu is damaged or not a cpio newc archive",
        )
    return int(text, 16)


def iter_entries(fh: BinaryIO, total_size: int | None = None, *, lenient: bool = False) -> Iterator[Entry]:
    """Walk an archive (seekable file); yield each member before the trailer.

    Names are decoded with ``surrogateescape`` (every byte kept). ``lenient``: also odc archives,
    names decoded with replacement characters (the leak scanner).
    """
    if total_size is None:
        pos0 = fh.tell()
        fh.seek(0, os.SEEK_END)
        total_size = fh.tell()
        fh.seek(pos0)
    pos = fh.tell()
    while True:
        head = fh.read(HEADER_LEN)
        if len(head) < HEADER_LEN and not (lenient and head[:6] == MAGIC_ODC):
            raise VerificationError(
                f"the archive ends inside a cpio header at offset {pos} (no TRAILER!!!)",
                "the .swu is truncated",
            )
        magic = head[:6]
        if lenient and magic == MAGIC_ODC:
            name, size, mode, mtime, data_off = _odc_entry(fh, head, pos)
            if name == TRAILER:
                return
            yield Entry(name, size, mode, mtime, 0, data_off, False)
            pos = data_off + size
            fh.seek(pos)
            continue
        if magic not in (MAGIC_NEWC, MAGIC_CRC):
            raise VerificationError(
                f"no cpio newc magic at offset {pos} (found {magic!r})",
                "a .swu is a cpio archive in newc/crc format ('cpio -H crc')",
            )
        names = (
            "ino",
            "mode",
            "uid",
            "gid",
            "nlink",
            "mtime",
            "filesize",
            "devmajor",
            "devminor",
            "rdevmajor",
            "rdevminor",
            "namesize",
            "check",
        )
        vals = {n: _hex(head[6 + 8 * i : 14 + 8 * i], n, pos) for i, n in enumerate(names)}
        namesize = vals["namesize"]
        if not 1 <= namesize <= MAX_NAME:
            raise VerificationError(f"cpio header at offset {pos}: name size {namesize} is out of range")
        raw = fh.read(namesize)
        if len(raw) != namesize or raw[-1:] != b"\0" or b"\0" in raw[:-1]:
            raise VerificationError(f"cpio header at offset {pos}: the member name is not NUL-terminated")
        # swupdate compares names as bytes: surrogateescape keeps every byte, so a name that is not
        # UTF-8 is read (and never equals a name sw-description gives); the leak scanner only shows them
        name = raw[:-1].decode("utf-8", "replace" if lenient else "surrogateescape")
        data_off = pos + HEADER_LEN + namesize + _pad4(HEADER_LEN + namesize)
        size = vals["filesize"]
        if name == TRAILER:
            return
        if data_off + size > total_size:
            raise VerificationError(
                f"member '{printable(name)}' claims {size} bytes but the archive ends first",
                "the .swu is truncated",
            )
        yield Entry(name, size, vals["mode"], vals["mtime"], vals["check"], data_off, magic == MAGIC_CRC)
        pos = data_off + size + _pad4(size)
        fh.seek(pos)


def read_entries(path: str) -> list[Entry]:
    try:
        with open(path, "rb") as fh:
            return list(iter_entries(fh))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def read_member(fh: BinaryIO, entry: Entry, limit: int = 16 << 20) -> bytes:
    """A small member's bytes (sw-description, its signature)."""
    if entry.size > limit:
        raise VerificationError(
            f"member '{printable(entry.name)}' is {entry.size} bytes, more than the {limit} expected"
        )
    fh.seek(entry.offset)
    data = fh.read(entry.size)
    if len(data) != entry.size:
        raise VerificationError(f"member '{printable(entry.name)}' is truncated")
    return data


def iter_member(fh: BinaryIO, entry: Entry) -> Iterator[bytes]:
    """Stream a member's bytes in chunks."""
    fh.seek(entry.offset)
    left = entry.size
    while left:
        chunk = fh.read(min(CHUNK, left))
        if not chunk:
            raise VerificationError(f"member '{printable(entry.name)}' is truncated")
        left -= len(chunk)
        yield chunk


def check_sums(fh: BinaryIO, entry: Entry) -> None:
    """Compare a crc member's byte sum with its header, as swupdate does."""
    if not entry.crc_format:
        return
    total = 0
    for chunk in iter_member(fh, entry):
        total = (total + sum(chunk)) & 0xFFFFFFFF
    if total != entry.check:
        raise VerificationError(
            f"member '{printable(entry.name)}': cpio checksum {total:08x} != header {entry.check:08x}"
        )
