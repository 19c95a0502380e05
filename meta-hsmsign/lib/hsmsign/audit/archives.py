"""Archives and compressed streams the scanner opens, read as streams in bounded memory.

Compressed streams: gzip (concatenated members too), bzip2, xz, zstd (through the
``zstd`` tool). Archives: tar (ustar, GNU, pax), cpio (newc, crc, odc, through
``hsmsign.formats.cpio`` in its lenient mode), ``ar`` (``.deb``, ``.ipk``; GNU and
BSD long names) and zip (stored, deflated, bzip2, lzma members).

Everything is read forward in chunks: a member is handed to the scanner as a
stream, never unpacked whole (only a zip nested inside another container is
copied to memory, up to ``MAX_ZIP_IN_MEMORY``, because zip needs its central
directory). Limits per scanned file: ``MAX_DEPTH`` nested containers,
``MAX_EXPANDED`` bytes out of all decompressors together, and a stream that
expands more than ``BOMB_RATIO`` times past ``BOMB_MIN`` is refused. Whatever
is not opened or is cut short raises ``Refused``, which the scanner reports as
a warning.
"""

from __future__ import annotations

import bz2
import io
import lzma
import shutil
import stat
import subprocess
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, BinaryIO, Protocol

from ..errors import VerificationError
from ..formats import cpio

MAX_DEPTH = 8
MAX_EXPANDED = 4 << 30
BOMB_RATIO = 1000
BOMB_MIN = 64 << 20
MAX_ZIP_IN_MEMORY = 64 << 20
CHUNK = 1 << 20
SNIFF_LEN = 512

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZ_MAGIC = b"\x1f\x8b"
_AR_MAGIC = b"!<arch>\n"


class Refused(Exception):
    """A stream the scan did not open or stopped reading; the message says what and why."""

    def __init__(self, source: str, message: str, *, exhausted: bool = False) -> None:
        super().__init__(message)
        self.source = source
        self.exhausted = exhausted


class Budget:
    """Decompressed bytes allowed for one scanned file, over all nesting levels."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_EXPANDED if limit is None else limit
        self.expanded = 0
        self.in_memory = 0

    def take(self, n: int, source: str) -> None:
        self.expanded += n
        if self.expanded > self.limit:
            raise Refused(
                source,
                f"stopped after {self.limit >> 20} MiB of decompressed data: the rest is not scanned "
                "(unpack it and audit the tree)",
                exhausted=True,
            )


class _Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


_DAMAGE = (
    OSError,
    EOFError,
    ValueError,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    VerificationError,
)


class Stream:
    """Forward-only reading with ``peek``, ``tell`` and forward ``seek`` over any ``read()``."""

    def __init__(self, raw: _Readable, source: str = "") -> None:
        self._raw = raw
        self._buf = b""
        self._pos = 0
        self.source = source

    def _read_raw(self, n: int) -> bytes:
        """Read from the layer below; its decoding errors become a ``Refused`` naming this stream."""
        try:
            return self._raw.read(n)
        except _DAMAGE as exc:
            raise Refused(self.source, f"damaged data ({exc}): the rest is not scanned") from None

    @classmethod
    def of_chunks(cls, chunks: Iterable[bytes]) -> Stream:
        return cls(_ChunkReader(chunks))

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n:
            more = self._read_raw(max(n - len(self._buf), CHUNK))
            if not more:
                break
            self._buf += more
        return self._buf[:n]

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = 1 << 62
        parts = []
        got = 0
        if self._buf:
            take = self._buf[:n]
            self._buf = self._buf[len(take) :]
            parts.append(take)
            got = len(take)
        while got < n:
            more = self._read_raw(min(n - got, 1 << 24))
            if not more:
                break
            parts.append(more)
            got += len(more)
        self._pos += got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self._pos:
            raise OSError("this stream only moves forward")
        while self._pos < pos:
            if not self.read(min(pos - self._pos, CHUNK)):
                break
        return self._pos

    def seekable_file(self) -> BinaryIO | None:
        """The underlying file rewound to its start, when it can seek and nothing was consumed."""
        raw = self._raw
        if self._pos != 0 or not isinstance(raw, (io.BufferedReader, io.BytesIO)):
            return None
        if isinstance(raw, io.BufferedReader) and not isinstance(raw.raw, io.FileIO):
            return None  # a buffered pipe or socket: it cannot seek
        raw.seek(0)
        self._buf = b""
        return raw

    def unread(self, data: bytes) -> None:
        """Put back bytes read past the end of a member (a deflate stream ends where it ends)."""
        self._buf = data + self._buf
        self._pos -= len(data)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        close = getattr(self._raw, "close", None)
        if close is not None:
            close()


class _ChunkReader:
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._pending = bytearray()

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._pending) < n:
            nxt = next(self._it, None)
            if nxt is None:
                break
            self._pending += nxt
        if n < 0 or n >= len(self._pending):
            out = bytes(self._pending)
            self._pending.clear()
            return out
        out = bytes(self._pending[:n])
        del self._pending[:n]
        return out

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class _Limited:
    """The next ``size`` bytes of a stream (an archive member)."""

    def __init__(self, st: Stream, size: int) -> None:
        self._st = st
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data = self._st.read(n)
        self._left -= len(data)
        return data


def sniff(head: bytes) -> str | None:
    """The container or compression at the start of ``head``, or None."""
    if head[:3] == _GZ_MAGIC + b"\x08" and len(head) > 3 and not head[3] & 0xE0:
        return "gzip"
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    if head[:6] == _XZ_MAGIC:
        return "xz"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    if head[:6] in (b"070701", b"070702", b"070707"):
        return "cpio"
    if head[:8] == _AR_MAGIC:
        return "ar"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


MemberIter = Iterator[tuple[str, "Stream | str"]]  # a str: why the member is not scanned


def members(kind: str, st: Stream, source: str, budget: Budget) -> MemberIter:
    """(source!member, stream) of each member; a compressed stream is one member (``file.gz!``).

    A member that is skipped comes with a message instead of a stream; a damaged or
    refused container raises ``Refused`` (members before it have been yielded).
    """
    base = source[:-1] if source.endswith("!") else source
    if kind == "gzip":
        yield source + "!", Stream.of_chunks(_inflate(st, source, budget))
    elif kind == "bzip2":
        yield (
            source + "!",
            Stream.of_chunks(_unpack(st, source, budget, bz2.BZ2Decompressor, b"BZh", "bzip2")),
        )
    elif kind == "xz":
        yield (
            source + "!",
            Stream.of_chunks(_unpack(st, source, budget, lzma.LZMADecompressor, _XZ_MAGIC, "xz")),
        )
    elif kind == "zstd":
        yield source + "!", Stream.of_chunks(_zstd(st, source, budget))
    elif kind == "tar":
        yield from _tar_members(st, base)
    elif kind == "cpio":
        yield from _cpio_members(st, base)
    elif kind == "ar":
        yield from _ar_members(st, base)
    elif kind == "zip":
        yield from _zip_members(st, base, budget)


def _expanded(source: str, budget: Budget, consumed: int, produced: int, n: int) -> None:
    budget.take(n, source)
    if produced > BOMB_MIN and produced > BOMB_RATIO * max(consumed, 1):
        raise Refused(
            source,
            f"expands more than {BOMB_RATIO} times (a decompression bomb?): stopped after "
            f"{produced >> 20} MiB, the rest is not scanned",
        )


def _inflate(st: Stream, source: str, budget: Budget) -> Iterator[bytes]:
    """gzip, member after member (``cat a.gz b.gz``); bytes after the last member are ignored."""
    d = zlib.decompressobj(31)
    consumed = produced = 0
    data = b""
    try:
        while True:
            if not data:
                data = st.read(CHUNK)
                consumed += len(data)
                if not data:
                    return  # truncated: what came out is scanned
            out = d.decompress(data, CHUNK)
            data = d.unconsumed_tail
            if out:
                produced += len(out)
                _expanded(source, budget, consumed, produced, len(out))
                yield out
            if d.eof:
                data = d.unused_data
                if len(data) < 3:
                    more = st.read(CHUNK)
                    consumed += len(more)
                    data += more
                if data[:3] != _GZ_MAGIC + b"\x08":
                    return
                d = zlib.decompressobj(31)
    except zlib.error as exc:
        raise Refused(source, f"damaged gzip stream ({exc}): the rest is not scanned") from None


def _unpack(
    st: Stream, source: str, budget: Budget, new: Callable[[], object], magic: bytes, what: str
) -> Iterator[bytes]:
    """bzip2 or xz (the same decompressor interface), stream after stream."""
    d = new()
    consumed = produced = 0
    try:
        while True:
            if d.eof:  # type: ignore[attr-defined]
                data = d.unused_data  # type: ignore[attr-defined]
                if len(data) < len(magic):
                    more = st.read(CHUNK)
                    consumed += len(more)
                    data += more
                if data[: len(magic)] != magic:
                    return
                d = new()
            elif d.needs_input:  # type: ignore[attr-defined]
                data = st.read(CHUNK)
                consumed += len(data)
                if not data:
                    return
            else:
                data = b""
            out = d.decompress(data, CHUNK)  # type: ignore[attr-defined]
            if out:
                produced += len(out)
                _expanded(source, budget, consumed, produced, len(out))
                yield out
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise Refused(source, f"damaged {what} stream ({exc}): the rest is not scanned") from None


def _zstd(st: Stream, source: str, budget: Budget) -> Iterator[bytes]:
    """zstd (BitBake's sigdata/siginfo, .tar.zst, .deb members) through the zstd tool, streamed.

    No standard-library module before Python 3.14.
    """
    exe = shutil.which("zstd")
    if exe is None:
        raise Refused(source, "zstd stream not opened: install zstd")
    proc = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
        [exe, "-dcq", "--no-progress"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    consumed = [0]
    failed: list[Refused] = []
    if proc.stdin is None or proc.stdout is None:  # pragma: no cover - both are pipes
        raise Refused(source, "zstd could not be started")

    def feed() -> None:
        try:
            while True:
                data = st.read(CHUNK)
                if not data:
                    break
                consumed[0] += len(data)
                proc.stdin.write(data)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except (OSError, ValueError):
            return  # the reader stopped (a refusal, a damaged stream): nothing left to feed
        except Refused as exc:  # the stream zstd reads from was refused (budget, damage)
            failed.append(exc)
            proc.kill()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    produced = 0
    complete = False
    try:
        while True:
            out = proc.stdout.read(CHUNK)
            if not out:
                break
            produced += len(out)
            _expanded(source, budget, consumed[0], produced, len(out))
            yield out
        complete = True
    finally:
        if not complete:
            proc.kill()  # the scan stopped early: the rest is not needed
        proc.wait()
        proc.stdout.close()
        feeder.join()
    if failed:
        raise failed[0]
    if proc.returncode != 0:
        raise Refused(source, "damaged zstd stream: the rest is not scanned")


def _tar_members(st: Stream, base: str) -> MemberIter:
    try:
        with tarfile.open(fileobj=st, mode="r|") as tf:  # type: ignore[call-overload]
            for ti in tf:
                if not ti.isfile():
                    continue
                fh = tf.extractfile(ti)
                if fh is not None:
                    yield f"{base}!{ti.name}", Stream(fh, f"{base}!{ti.name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise Refused(base, f"damaged tar archive ({exc}): members after it are not scanned") from None


def _cpio_members(st: Stream, base: str) -> MemberIter:
    """newc/crc (070701/070702) and odc (070707) cpio, as the kernel and Yocto write them."""
    try:
        for entry in cpio.iter_entries(st, 1 << 62, lenient=True):  # type: ignore[arg-type]
            if stat.S_ISREG(entry.mode) and entry.size:
                st.seek(entry.offset)
                yield f"{base}!{entry.name}", Stream(_Limited(st, entry.size))
    except (VerificationError, OSError) as exc:
        raise Refused(base, f"damaged cpio archive ({exc}): members after it are not scanned") from None


def _ar_members(st: Stream, base: str) -> MemberIter:
    """Unix ``ar`` (System V/GNU and BSD long names): ``.deb``, ``.ipk``, static libraries."""
    st.read(len(_AR_MAGIC))
    longnames = b""
    while True:
        head = st.read(60)
        if not head:
            return
        if len(head) < 60 or head[58:60] != b"`\n":
            at = st.tell() - len(head)
            raise Refused(base, f"damaged ar archive at offset {at}: the rest is not scanned")
        try:
            size = int(head[48:58].decode("ascii").strip() or "0")
        except (UnicodeDecodeError, ValueError):
            raise Refused(base, f"damaged ar archive at offset {st.tell() - 60}: bad member size") from None
        name = head[:16].rstrip(b" ")
        start = st.tell()
        data_size = size
        if name == b"//":  # GNU long-name table
            longnames = st.read(min(size, 1 << 20))
        elif name.startswith(b"#1/"):  # BSD: the name precedes the data
            try:
                n = int(name[3:])
            except ValueError:
                n = 0
            name = st.read(min(n, size)).rstrip(b"\0")
            data_size = size - n
        elif name.startswith(b"/") and name[1:].isdigit() and longnames:
            off = int(name[1:])
            end = longnames.find(b"/\n", off)
            name = longnames[off : end if end >= 0 else None]
        elif name.endswith(b"/") and name != b"/":
            name = name[:-1]
        if name not in (b"/", b"//", b"/SYM64/", b"__.SYMDEF", b"__.SYMDEF SORTED") and data_size > 0:
            yield f"{base}!{name.decode('utf-8', 'replace')}", Stream(_Limited(st, data_size))
        st.seek(start + size + (size & 1))


def _zip_members(st: Stream, base: str, budget: Budget) -> MemberIter:
    fh = st.seekable_file()
    held = 0
    if fh is None:
        # inside another container: zip needs its central directory, so the member is read into memory
        data = st.read(MAX_ZIP_IN_MEMORY + 1)
        if len(data) > MAX_ZIP_IN_MEMORY or budget.in_memory + len(data) > 2 * MAX_ZIP_IN_MEMORY:
            raise Refused(
                base,
                f"zip archive larger than {MAX_ZIP_IN_MEMORY >> 20} MiB inside another archive: not opened",
            )
        held = len(data)
        budget.in_memory += held
        fh = io.BytesIO(data)
        del data
    try:
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            fh.seek(0)
            yield from _zip_local_members(Stream(fh), base, budget)
            return
        with zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = f"{base}!{info.filename}"
                if info.flag_bits & 1:
                    yield name, "encrypted zip member: not scanned"
                    continue
                try:
                    member = zf.open(info)
                except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError) as exc:
                    yield name, f"zip member not opened ({exc})"
                    continue
                yield name, Stream.of_chunks(_counted(member, name, budget, info.compress_size))
    finally:
        budget.in_memory -= held


def _counted(fh: IO[bytes], source: str, budget: Budget, compressed: int) -> Iterator[bytes]:
    """A zip member's bytes, counted against the budget (a deflated member is decompressed output)."""
    produced = 0
    try:
        with fh:
            while True:
                out = fh.read(CHUNK)
                if not out:
                    return
                produced += len(out)
                _expanded(source, budget, compressed, produced, len(out))
                yield out
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise Refused(source, f"damaged zip member ({exc}): the rest is not scanned") from None


def _zip_local_members(st: Stream, base: str, budget: Budget) -> MemberIter:
    """A zip whose central directory cannot be read (a truncated file): walk the local headers."""
    while st.peek(4) == b"PK\x03\x04":
        head = st.read(30)
        if len(head) < 30:
            return
        flags = int.from_bytes(head[6:8], "little")
        method = int.from_bytes(head[8:10], "little")
        csize = int.from_bytes(head[18:22], "little")
        name = st.read(int.from_bytes(head[26:28], "little")).decode("utf-8", "replace")
        st.read(int.from_bytes(head[28:30], "little"))
        source = f"{base}!{name}"
        if flags & 1 or not (method == 8 or (method == 0 and not flags & 8)):
            reason = "encrypted" if flags & 1 else f"compression method {method}"
            raise Refused(source, f"zip member ({reason}) without central directory: the rest is not scanned")
        if method == 8:
            member = Stream.of_chunks(_raw_inflate(st, source, budget))
        else:
            member = Stream(_Limited(st, csize))
        yield source, member
        member.drain()
        if flags & 8:  # data descriptor: optional signature, crc, sizes (32 or 64 bit)
            tail = st.peek(28)
            for skip in (16, 12, 24, 20):
                if tail[skip : skip + 2] == b"PK" or len(tail) == skip:
                    st.read(skip)
                    break


def _raw_inflate(st: Stream, source: str, budget: Budget) -> Iterator[bytes]:
    d = zlib.decompressobj(-15)
    consumed = produced = 0
    data = b""
    try:
        while not d.eof:
            if not data:
                data = st.read(CHUNK)
                consumed += len(data)
                if not data:
                    return
            out = d.decompress(data, CHUNK)
            data = d.unconsumed_tail
            if out:
                produced += len(out)
                _expanded(source, budget, consumed, produced, len(out))
                yield out
    except zlib.error as exc:
        raise Refused(source, f"damaged zip member ({exc}): the rest is not scanned") from None
    st.unread(d.unused_data + data)  # what the deflate stream did not use belongs to the next header
