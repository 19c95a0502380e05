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
  A batch of modules goes through one ``zstd`` process (:func:`decompress_many`,
  :func:`compress_many`), from files as ``modules_install`` compresses them, so a
  kernel's thousands of modules do not cost a process each.

Which one a module uses comes from its name (as OE-Core and the kernel name
them); the data must start with that format's magic. Every compressed result is
decompressed again and compared before it is handed back.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import shutil
import subprocess
import zlib
from collections.abc import Sequence

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
        out = _zstd_decompress(data, what)
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
        raise _too_big(what)
    return out


def compress(module: bytes, kind: str, what: str) -> bytes:
    """``module`` compressed as the kernel's ``modules_install`` compresses it; checked by
    decompressing it again."""
    if kind == "gzip":
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # zlib's gzip header: no name, time 0
        out = gz.compress(module) + gz.flush()
    elif kind == "xz":
        out = lzma.compress(module, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=_XZ_FILTERS)
    else:  # from a file, as modules_install compresses it (the frame then records the size)
        packed, reason = _zstd_compress_files([module], what)
        if packed is None:
            raise SigningError(f"{what}: zstd could not compress the signed module ({reason})")
        out = packed[0]
    if decompress(out, kind, what) != module:
        raise SigningError(
            f"internal: {what}: the {kind} data does not decompress to the signed module",
            "nothing was written; report it",
        )
    return out


def decompress_many(items: Sequence[tuple[bytes, str, str]]) -> list[bytes | CompressedModuleError]:
    """:func:`decompress` of each ``(data, kind, what)``: the module, or the error it gets.

    The zstd ones go through one ``zstd`` process. When it fails on any of them, each goes
    through :func:`decompress` again, so each gets its own error."""
    out: list[bytes | CompressedModuleError] = [b""] * len(items)
    batch = [i for i, (data, kind, _w) in enumerate(items) if kind == "zstd" and data.startswith(MAGIC[kind])]
    plain = _zstd_decompress_all([items[i][0] for i in batch], items[batch[0]][2]) if len(batch) > 1 else None
    found = dict(zip(batch, plain or []))
    for i, (data, kind, what) in enumerate(items):
        module = found.get(i)
        if module is not None and len(module) <= MAX_MODULE:
            out[i] = module
            continue
        try:
            out[i] = decompress(data, kind, what)
        except CompressedModuleError as exc:
            out[i] = exc
    return out


def compress_many(items: Sequence[tuple[bytes, str, str]]) -> list[bytes]:
    """:func:`compress` of each ``(module, kind, what)``, checked the same way; the zstd ones
    through one ``zstd`` process (and one more for the check)."""
    batch = [i for i, (_m, kind, _w) in enumerate(items) if kind == "zstd"]
    packed = (
        _zstd_compress_files([items[i][0] for i in batch], items[batch[0]][2])[0] if len(batch) > 1 else None
    )
    if packed is None:  # one alone, or zstd failed: each alone, with its own error
        return [compress(module, kind, what) for module, kind, what in items]
    back = decompress_many([(data, "zstd", items[i][2]) for data, i in zip(packed, batch)])
    found = dict(zip(batch, zip(packed, back)))
    out = []
    for i, (module, kind, what) in enumerate(items):
        if i not in found:
            out.append(compress(module, kind, what))
            continue
        data, again = found[i]
        if again != module:
            raise SigningError(
                f"internal: {what}: the zstd data does not decompress to the signed module",
                "nothing was written; report it",
            )
        out.append(data)
    return out


def _zstd_compress_files(modules: list[bytes], what: str) -> tuple[list[bytes] | None, str]:
    """``modules`` compressed by one ``zstd -T0``, each from a file of a private folder, as the
    kernel's ``modules_install`` compresses a module's file (so the frame records the size):
    each one's result, or None and zstd's last line of error."""
    program = _zstd_program(what)
    from ..atomic import scratch_directory

    with scratch_directory("hsmsign-zstd-") as tmp:
        names = [os.path.join(tmp, f"{n}.ko") for n in range(len(modules))]
        for name, module in zip(names, modules):
            with open(name, "xb") as f:
                f.write(module)
        done = subprocess.run([program, "-q", "-f", "-T0", "--", *names], capture_output=True, check=False)
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return None, printable(lines[-1][:200]) if lines else f"zstd exit {done.returncode}"
        packed = []
        for name in names:
            with open(name + ".zst", "rb") as f:
                packed.append(f.read())
        return packed, ""


def _corrupt(what: str, kind: str, reason: str) -> CompressedModuleError:
    return CompressedModuleError(
        f"{what}: corrupt {kind} data ({reason})", "the file was cut short or changed; install it again"
    )


def zstd_content_size(data: bytes) -> int | None:
    """The size a zstd frame says it holds (its Frame_Content_Size, RFC 8878 3.1.1.1), or None
    when it does not say (zstd writes it when it compresses a file)."""
    if len(data) < 6 or not data.startswith(MAGIC["zstd"]) or data[4] & 0x08:  # reserved bit
        return None
    descriptor = data[4]
    single_segment = descriptor >> 5 & 1
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    size = (single_segment, 2, 4, 8)[descriptor >> 6]
    if size == 0 or len(data) < start + size:
        return None
    value = int.from_bytes(data[start : start + size], "little")
    return value + 256 if size == 2 else value


def _zstd_decompress_all(blobs: list[bytes], what: str) -> list[bytes] | None:
    """Each of ``blobs`` decompressed, by one ``zstd`` reading them one after the other: a
    concatenation of frames decompresses to the concatenation of their contents, which each
    frame's recorded size cuts apart again (libzstd checks each frame's size). None when a
    frame records no size, the group would hold more than one module may, or zstd fails or
    gives another total."""
    sizes = [zstd_content_size(blob) for blob in blobs]
    if any(size is None or size > MAX_MODULE for size in sizes):
        return None
    total = sum(size or 0 for size in sizes)
    if total > MAX_MODULE:  # a group holds what one module may, or each goes alone
        return None
    out_all, failure = _zstd_bounded(b"".join(blobs), total, what)
    if failure is not None or len(out_all) != total:
        return None
    view = memoryview(out_all)
    out, at = [], 0
    for size in sizes:
        out.append(bytes(view[at : at + (size or 0)]))
        at += size or 0
    return out


def _zstd_program(what: str) -> str:
    program = shutil.which("zstd")
    if program is None:
        raise CompressedModuleError(
            f"{what}: .ko.zst modules need the zstd program, which is not on PATH",
            "install zstd (Debian: apt-get install zstd; BitBake has it as a host tool)",
        )
    return program


def _zstd_decompress(data: bytes, what: str) -> bytes:
    size = zstd_content_size(data)
    if size is not None and size > MAX_MODULE:
        raise _too_big(what)
    out, failure = _zstd_bounded(data, MAX_MODULE, what)
    if failure is not None:
        raise _corrupt(what, "zstd", failure)
    if len(out) > MAX_MODULE:
        raise _too_big(what)
    return out


def _zstd_bounded(data: bytes, limit: int, what: str) -> tuple[bytes, str | None]:
    """``zstd -d`` of ``data``, read up to ``limit`` + 1 bytes (a frame that says nothing of its
    size cannot fill the memory): the output, and None or zstd's reason for failing."""
    import threading

    proc = subprocess.Popen(
        [_zstd_program(what), "-d", "-c", "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    if stdin is None or stdout is None or stderr is None:  # pragma: no cover - PIPE gives all three
        raise SigningError("internal: zstd started without its pipes")
    errors: list[bytes] = []

    def feed() -> None:
        try:
            stdin.write(data)
        except OSError:  # zstd stopped reading (it failed, or was stopped at the limit)
            pass
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def drain() -> None:  # all of it (zstd must never block on a full pipe), the end kept
        while chunk := stderr.read(1 << 16):
            errors[:] = [(b"".join(errors) + chunk)[-(1 << 16) :]]

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain, daemon=True)]
    for thread in threads:
        thread.start()
    chunks, got = [], 0
    while got <= limit:
        chunk = stdout.read(min(1 << 20, limit + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got > limit:
        proc.kill()
    stdout.close()
    code = proc.wait()
    for thread in threads:
        thread.join()
    out = b"".join(chunks)
    if got > limit or code == 0:
        return out, None
    lines = b"".join(errors).decode("utf-8", "replace").strip().splitlines()
    return out, printable(lines[-1][:200]) if lines else f"zstd exit {code}"


def _too_big(what: str) -> CompressedModuleError:
    return CompressedModuleError(
        f"{what} decompresses to more than {MAX_MODULE >> 20} MiB",
        "is it a kernel module? (the largest are a few tens of MiB)",
    )
