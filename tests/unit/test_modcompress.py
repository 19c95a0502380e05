"""Compressed kernel modules (hsmsign.formats.modcompress): the kernel's compression settings,
and one clear error for every way a compressed module can be unreadable."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess

import pytest
from hsmsign.errors import ConfigError
from hsmsign.formats import modcompress

from tests.conftest import tool

MODULE = b"\x7fELF" + os.urandom(3000) + b"\0" * 5000


def test_suffixes_name_the_format() -> None:
    assert modcompress.compression("a/b.ko") is None
    assert modcompress.compression("a/b.ko.gz") == "gzip"
    assert modcompress.compression("a/b.ko.xz") == "xz"
    assert modcompress.compression("a/b.ko.zst") == "zstd"
    assert modcompress.compression("a/b.xz") is None  # not a module's name
    assert modcompress.compression("a/b.ko.bz2") is None  # no kernel compresses modules with bzip2


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_round_trip_with_the_kernels_settings(kind: str) -> None:
    if kind == "zstd":
        tool("zstd", "zstd")
    packed = modcompress.compress(MODULE, kind, "m.ko")
    assert packed.startswith(modcompress.MAGIC[kind])
    assert modcompress.decompress(packed, kind, "m.ko") == MODULE
    if kind == "gzip":
        assert gzip.decompress(packed) == MODULE
        assert packed[3] == 0 and packed[4:8] == b"\0\0\0\0"  # gzip -n: no name, no time stamp
    if kind == "xz":
        assert lzma.decompress(packed) == MODULE
        # the stream flags name CRC32 (check ID 1): the one check the kernel's XZ decoder knows
        assert packed[6:8] == b"\x00\x01"
        if shutil.which("xz"):
            listed = subprocess.run(["xz", "--robot", "-lvv", "-"], input=packed, capture_output=True)
            if listed.returncode == 0:  # older xz cannot list a pipe
                assert b"--lzma2=dict=1MiB" in listed.stdout


def test_unreadable_modules_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    xz = lzma.compress(MODULE, check=lzma.CHECK_CRC32)
    gz = gzip.compress(MODULE)
    cases = [
        (gz, "xz", "m.ko.xz is named as xz data but is not xz data"),
        (xz[: len(xz) // 2], "xz", "m.ko.xz: corrupt xz data (the stream is cut short)"),
        (xz + b"tail", "xz", "m.ko.xz: corrupt xz data (4 bytes follow the compressed stream)"),
        (gz + gz, "gzip", "m.ko.xz: corrupt gzip data"),  # a second member: not what the kernel writes
        (gz[:10] + b"\xff" * 40, "gzip", "m.ko.xz: corrupt gzip data"),
        (b"", "zstd", "m.ko.xz is named as zstd data but is not zstd data"),
    ]
    for data, kind, message in cases:
        with pytest.raises(ConfigError) as caught:
            modcompress.decompress(data, kind, "m.ko.xz")
        assert caught.value.message.startswith(message), caught.value.message
        assert "\n" not in caught.value.message
    # a bomb stops at the limit
    monkeypatch.setattr(modcompress, "MAX_MODULE", 4096)
    with pytest.raises(ConfigError, match="decompresses to more than"):
        modcompress.decompress(xz, "xz", "big.ko.xz")


def test_zstd_without_the_program_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modcompress.shutil, "which", lambda _name: None)
    with pytest.raises(ConfigError) as caught:
        modcompress.compress(MODULE, "zstd", "m.ko.zst")
    assert "modules need the zstd program, which is not on PATH" in caught.value.message
    assert "apt-get install zstd" in (caught.value.hint or "")


def _kernel_zstd(module: bytes, tmp: str) -> bytes:
    """What modules_install makes of a module's file: ``zstd -T0 --rm -f -q m.ko``."""
    path = os.path.join(tmp, "m.ko")
    with open(path, "wb") as f:
        f.write(module)
    subprocess.run(["zstd", "-T0", "--rm", "-f", "-q", path], check=True)
    with open(path + ".zst", "rb") as f:
        return f.read()


def test_a_batch_of_zstd_modules_is_the_kernels_zstd_byte_for_byte(tmp_path: os.PathLike[str]) -> None:
    """Several .ko.zst modules go through one zstd process (from files, as modules_install runs it):
    each result is what the kernel's own command makes of that module, and mixed kinds keep
    their order."""
    tool("zstd", "zstd")
    modules = [b"\x7fELF" + os.urandom(200 * n) + b"\0" * 4000 for n in range(1, 6)]
    kinds = ["zstd", "xz", "zstd", "zstd", "gzip"]
    items = [(m, k, f"m{i}.ko") for i, (m, k) in enumerate(zip(modules, kinds))]
    packed = modcompress.compress_many(items)
    for module, kind, data in zip(modules, kinds, packed):
        assert data.startswith(modcompress.MAGIC[kind])
        assert modcompress.decompress(data, kind, "m.ko") == module
        if kind == "zstd":
            assert data == _kernel_zstd(module, str(tmp_path))
    # one module alone takes the same path: the same bytes
    assert modcompress.compress(modules[0], "zstd", "m0.ko") == packed[0]
    back = modcompress.decompress_many([(data, kind, "m.ko") for data, kind in zip(packed, kinds)])
    assert back == modules


def test_a_bad_zstd_module_in_a_batch_gets_its_own_error_and_the_others_their_bytes() -> None:
    tool("zstd", "zstd")
    good = [modcompress.compress(b"\x7fELF" + bytes([n]) * 3000, "zstd", "g.ko") for n in range(3)]
    cut = good[1][: len(good[1]) // 2]
    items = [
        (good[0], "zstd", "a.ko.zst"),
        (cut, "zstd", "cut.ko.zst"),
        (b"not zstd", "zstd", "text.ko.zst"),
        (good[2] + b"junk", "zstd", "tail.ko.zst"),
        (good[2], "zstd", "c.ko.zst"),
    ]
    out = modcompress.decompress_many(items)
    assert out[0] == b"\x7fELF" + bytes([0]) * 3000 and out[4] == b"\x7fELF" + bytes([2]) * 3000
    errors = {i: out[i] for i in (1, 2, 3)}
    for i, err in errors.items():
        assert isinstance(err, modcompress.CompressedModuleError), (i, err)
    assert errors[1].message.startswith("cut.ko.zst: corrupt zstd data")
    assert errors[2].message.startswith("text.ko.zst is named as zstd data but is not zstd data")
    assert errors[3].message.startswith("tail.ko.zst: corrupt zstd data")
    assert all("\n" not in e.message for e in errors.values())


def test_zstd_frames_are_cut_apart_by_their_recorded_sizes_or_not_at_all() -> None:
    """One zstd process decompresses a group of modules read one after the other; the sizes the
    frames record cut the output apart. A frame without one (compressed from a pipe), or a file
    of two frames, takes the one-module path and still gives its exact bytes."""
    tool("zstd", "zstd")
    modules = [b"\x7fELF" + bytes([n]) * (100 + 300 * n) for n in range(4)]
    from_file = [modcompress.compress(m, "zstd", "m.ko") for m in modules]
    assert [modcompress.zstd_content_size(p) for p in from_file] == [len(m) for m in modules]
    piped = subprocess.run(["zstd", "-q", "-c"], input=modules[1], capture_output=True, check=True).stdout
    assert modcompress.zstd_content_size(piped) is None
    assert modcompress.zstd_content_size(b"\x28\xb5\x2f\xfd") is None  # cut inside the header
    two_frames = from_file[2] + modcompress.compress(b"tail", "zstd", "t.ko")
    items = [
        (from_file[0], "zstd", "a"),
        (piped, "zstd", "b"),
        (two_frames, "zstd", "c"),
        (from_file[3], "zstd", "d"),
    ]
    assert modcompress.decompress_many(items) == [modules[0], modules[1], modules[2] + b"tail", modules[3]]
    # every frame records a size, but one file holds a second frame: the total differs, each alone
    items = [(from_file[0], "zstd", "a"), (two_frames, "zstd", "c"), (from_file[3], "zstd", "d")]
    assert modcompress.decompress_many(items) == [modules[0], modules[2] + b"tail", modules[3]]


def test_a_zstd_bomb_stops_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame that says it holds more than a module may is refused before zstd runs; one that
    says nothing is read up to the limit only; a group that would hold more than one module may
    goes one module at a time."""
    tool("zstd", "zstd")
    module = b"\x7fELF" + bytes(8000)
    from_file = modcompress.compress(module, "zstd", "m.ko")
    piped = subprocess.run(["zstd", "-q", "-c"], input=module, capture_output=True, check=True).stdout
    small = [modcompress.compress(b"\x7fELF" + bytes([n]) * 3000, "zstd", "s.ko") for n in range(3)]
    monkeypatch.setattr(modcompress, "MAX_MODULE", 4096)
    for data in (from_file, piped):
        with pytest.raises(ConfigError, match=r"big\.ko\.zst decompresses to more than 0 MiB"):
            modcompress.decompress(data, "zstd", "big.ko.zst")
    out = modcompress.decompress_many([(d, "zstd", f"s{n}.ko.zst") for n, d in enumerate(small)])
    assert out == [b"\x7fELF" + bytes([n]) * 3000 for n in range(3)]
    out = modcompress.decompress_many([(small[0], "zstd", "a"), (piped, "zstd", "big.ko.zst")])
    assert out[0] == b"\x7fELF" + bytes(3000) and isinstance(out[1], modcompress.CompressedModuleError)
