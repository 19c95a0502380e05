"""Compressed kernel modules: ``.ko.gz``, ``.ko.xz`` and ``.ko.zst``.

A kernel built with ``CONFIG_MODULE_COMPRESS_*`` installs its modules compressed.
The signature covers the uncompressed module: kmod (and busybox) decompress a
module before ``init_module``, and with ``CONFIG_MODULE_DECOMPRESS`` the kernel
decompresses it in ``finit_module`` before it checks the signature. So the
kernel's ``modules_install`` signs first and compresses after
(``scripts/Makefile.modinst``), and hsmsign does the same: decompress, sign the
ELF module, compress again with the kernel's own settings:

* gzip: ``gzip -n`` (level 6, no file name, no time stamp);
* xz: ``xz --check=crc32 --lzma2=dict=1MiB`` (the kernel's XZ decompressor
  checks CRC32 and keeps its dictionary small);
* zstd: ``zstd -T0 -q`` (level 3), through the ``zstd`` program: the standard
  library has no zstd before Python 3.14, and the program is a BitBake host tool
  on every release (OE-Core's ``kernel-module-split`` reads modules with it too).

Which one a module uses comes from its name (as OE-Core and the kernel name
them); the data must start with that format's magic. Every compressed result is
decompressed again and compared before it is handed back.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import zlib

from ..errors import ConfigError, SigningError, printable

# suffix -> format, as OE-Core's kernel-module-split matches them (r'\.ko\.(gz|xz|zst)$')
SUFFIXES = {".ko.gz": "gzip", ".ko.xz": "xz", ".ko.zst": "zstd"}
MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd"}
MAX_MODULE = 256 << 20  # an uncompressed module (the largest in a distribution kernel are ~20 MiB)
_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}]


class CompressedModuleError(ConfigError):
    """A compressed module that cannot be read (exit 2)."""


def compression(path: str) -> str | None:
    """``gzip``, ``xz`` or ``zstd`` for a compressed module's name, None for a ``.ko``."""
    for suffix, kind in SUFFIXES.items():
        if path.endswith(suffix):
            return kind
    return None


def decompress(data: bytes, kind: str, what: str) -> bytes:
    """The module inside ``data``, one whole ``kind`` stream and nothing after it."""
    if not data.startswith(MAGIC[kind]):
        raise CompressedModuleError(
            f"{what} is named as {kind} data but is not {kind} data",
            "give the module its real name (.ko, .ko.gz, .ko.xz or .ko.zst)",
        )
    if kind == "zstd":
        out = _zstd(["-d", "-c", "-q"], data, what, "decompress")
    else:
        if kind == "gzip":
            gz = zlib.decompressobj(31)
            try:
                out = gz.decompress(data, MAX_MODULE + 1)
            except zlib.error as exc:
                raise _corrupt(what, kind, str(exc)) from exc
            done, rest = gz.eof, gz.unused_data
        else:
            xz = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            try:
                out = xz.decompress(data, MAX_MODULE + 1)
            except lzma.LZMAError as exc:
                raise _corrupt(what, kind, str(exc)) from exc
            done, rest = xz.eof, xz.unused_data
        if len(out) <= MAX_MODULE and not done:
            raise _corrupt(what, kind, "the stream is cut short")
        if rest:
            raise _corrupt(what, kind, f"{len(rest)} bytes follow the compressed stream")
    if len(out) > MAX_MODULE:
        raise CompressedModuleError(
            f"{what} decompresses to more than {MAX_MODULE >> 20} MiB",
            "is it a kernel module? (the largest are a few tens of MiB)",
        )
    return out


def compress(module: bytes, kind: str, what: str) -> bytes:
    """``module`` compressed as the kernel's ``modules_install`` compresses it; checked by
    decompressing it again."""
    if kind == "gzip":
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # zlib's gzip header: no name, time 0
        out = gz.compress(module) + gz.flush()
    elif kind == "xz":
        out = lzma.compress(module, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=_XZ_FILTERS)
    else:
        out = _zstd(["-q", "-c", "-T0"], module, what, "compress")
    if decompress(out, kind, what) != module:
        raise SigningError(
            f"internal: {what}: the {kind} data does not decompress to the signed module",
            "nothing was written; report it",
        )
    return out


def _corrupt(what: str, kind: str, reason: str) -> CompressedModuleError:
    return CompressedModuleError(
        f"{what}: corrupt {kind} data ({reason})", "the file was cut short or changed; install it again"
    )


def _zstd(args: list[str], data: bytes, what: str, verb: str) -> bytes:
    program = shutil.which("zstd")
    if program is None:
        raise CompressedModuleError(
            f"{what}: .ko.zst modules need the zstd program, which is not on PATH",
            "install zstd (Debian: apt-get install zstd; BitBake has it as a host tool)",
        )
    done = subprocess.run([program, *args], input=data, capture_output=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = printable(lines[-1][:200]) if lines else f"zstd exit {done.returncode}"
        if verb == "decompress":
            raise _corrupt(what, "zstd", reason)
        raise SigningError(f"{what}: zstd could not compress the signed module ({reason})")
    return done.stdout
