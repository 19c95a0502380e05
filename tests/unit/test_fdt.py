"""The pure-Python FDT reader/writer: byte-exact round trips, libfdt editing rules, errors, regions."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hsmsign.errors import HsmsignError
from hsmsign.formats.fdt import (
    FDT_BEGIN_NODE,
    FDT_END,
    FDT_END_NODE,
    FDT_PROP,
    Fdt,
    FdtError,
    Node,
    find_regions,
    region_bytes,
)

from tests.conftest import require

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "fit"


def dtc(source: Path, out: Path) -> bytes:
    require(
        shutil.which("dtc") is not None,
        "dtc",
        "apt-get install device-tree-compiler",
        env="HSMSIGN_REQUIRE_TOOLS",
    )
    subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(out), str(source)], check=True)
    return out.read_bytes()


def decompile(blob: bytes, tmp: Path) -> str:
    path = tmp / "x.dtb"
    path.write_bytes(blob)
    return subprocess.run(
        ["dtc", "-q", "-I", "dtb", "-O", "dts", str(path)], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("source", ["control.dts", "board.dts"])
def test_round_trip_dtc_output_byte_exact(tmp_path, source):
    blob = dtc(ASSETS / source, tmp_path / "a.dtb")
    tree = Fdt.parse(blob)
    assert tree.to_bytes() == blob
    assert [p for p, _ in tree.root.walk()][0] == "/"


def test_round_trip_mkimage_fit_byte_exact(tmp_path):
    mkimage = shutil.which("mkimage")
    require(mkimage is not None, "mkimage", "apt-get install u-boot-tools", env="HSMSIGN_REQUIRE_TOOLS")
    for f in ASSETS.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "kernel.bin").write_bytes(bytes(range(256)) * 64)
    dtc(tmp_path / "board.dts", tmp_path / "board.dtb")
    out = tmp_path / "x.fit"
    subprocess.run(
        [str(mkimage), "-f", str(tmp_path / "kernel-fdt.its"), str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    blob = out.read_bytes()
    tree = Fdt.parse(blob)
    assert tree.to_bytes() == blob
    kernel = tree.node("/images/kernel-1")
    assert kernel is not None and kernel.get("data") == bytes(range(256)) * 64


def test_edits_follow_libfdt_and_dtc_reads_them(tmp_path):
    blob = dtc(ASSETS / "control.dts", tmp_path / "a.dtb")
    tree = Fdt.parse(blob)
    strings_before = bytes(tree.strings)
    sig = tree.add_subnode(tree.root, "signature")
    key = tree.add_subnode(sig, "key-dev")
    tree.setprop_str(key, "key-name-hint", "dev")
    tree.setprop_u32(key, "rsa,num-bits", 2048)
    # a new property goes first in its node, a new subnode right after the parent's properties
    assert [p.name for p in key.props] == ["rsa,num-bits", "key-name-hint"]
    assert tree.root.children[0] is sig
    # names are appended once; a name that is a suffix of an existing one is reused (fdt_find_add_string_)
    assert bytes(tree.strings).startswith(strings_before)
    grown = len(tree.strings)
    assert tree.string_offset("name-hint") == tree.string_offset("key-name-hint") + len("key-")
    assert len(tree.strings) == grown
    # replacing a value keeps the property where it is
    tree.setprop_str(key, "key-name-hint", "prod")
    assert [p.name for p in key.props] == ["rsa,num-bits", "key-name-hint"]
    text = decompile(tree.to_bytes(), tmp_path)
    assert 'key-name-hint = "prod";' in text and "rsa,num-bits = <0x800>;" in text
    again = Fdt.parse(tree.to_bytes())
    assert again.node("/signature/key-dev").get_u32("rsa,num-bits") == 2048  # type: ignore[union-attr]


def test_libfdt_subnode_matching():
    parent = Node("images", children=[Node("kernel@1"), Node("kernel"), Node("fdt-1")])
    assert parent.subnode("kernel") is parent.children[0]  # libfdt: 'kernel' matches 'kernel@1' first
    assert parent.subnode("kernel@1") is parent.children[0]
    assert parent.subnode("fdt") is None
    assert parent.child("kernel") is parent.children[1]


def _blob(body: bytes, strings: bytes = b"", total_extra: int = 0) -> bytes:
    rsv = b"\0" * 16
    off_struct = 40 + len(rsv)
    off_strings = off_struct + len(body)
    total = off_strings + len(strings) + total_extra
    hdr = struct.pack(
        ">10I", 0xD00DFEED, total, off_struct, off_strings, 40, 17, 16, 0, len(strings), len(body)
    )
    return hdr + rsv + body + strings


def _tag(t: int) -> bytes:
    return struct.pack(">I", t)


def _node(name: bytes) -> bytes:
    raw = name + b"\0"
    return _tag(FDT_BEGIN_NODE) + raw + b"\0" * (-len(raw) % 4)


def _prop(nameoff: int, value: bytes) -> bytes:
    return struct.pack(">III", FDT_PROP, len(value), nameoff) + value + b"\0" * (-len(value) % 4)


GOOD = _node(b"") + _prop(0, b"x\0") + _tag(FDT_END_NODE) + _tag(FDT_END)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short"),
        (b"\0" * 64, "bad magic"),
        (_blob(GOOD, b"p\0", total_extra=100), "does not fit the file"),
        (_blob(_node(b"") + _tag(7) + _tag(FDT_END_NODE) + _tag(FDT_END), b"p\0"), "unknown tag"),
        (_blob(GOOD, b""), "outside the strings block"),
        (
            _blob(
                _node(b"")
                + _node(b"a")
                + _tag(FDT_END_NODE)
                + _prop(0, b"1")
                + _tag(FDT_END_NODE)
                + _tag(FDT_END),
                b"p\0",
            ),
            "follows a subnode",
        ),
        (
            _blob(_node(b"") + _tag(FDT_END_NODE) + _tag(FDT_END_NODE) + _tag(FDT_END), b""),
            "after the root node",
        ),
        (_blob(_node(b"") + _tag(FDT_END), b""), "FDT_END inside a node"),
        (_blob(_node(b"root") + _tag(FDT_END_NODE) + _tag(FDT_END), b""), "root node has a name"),
        (_blob(_node(b"") + struct.pack(">III", FDT_PROP, 1 << 30, 0), b"p\0"), "runs past"),
    ],
)
def test_malformed_blobs_raise_fdt_error(blob, message):
    with pytest.raises(FdtError) as info:
        Fdt.parse(blob)
    assert message in info.value.message
    assert isinstance(info.value, HsmsignError) and info.value.exit_code == 2


def test_find_regions_follows_fdt_region_rules():
    """/ {p; a {q; b {r;}; }; c {s;};} with / and /a included (fdt_region.c semantics)."""
    strings = b"p\0q\0r\0s\0data\0"
    parts = {
        "root": _node(b""),
        "p": _prop(0, b"P\0"),
        "a": _node(b"a"),
        "q": _prop(2, b"Q\0"),
        "qdata": _prop(8, b"big payload"),
        "b": _node(b"b"),
        "r": _prop(4, b"R\0"),
        "b_end": _tag(FDT_END_NODE),
        "a_end": _tag(FDT_END_NODE),
        "c": _node(b"c"),
        "s": _prop(6, b"S\0"),
        "c_end": _tag(FDT_END_NODE),
        "root_end": _tag(FDT_END_NODE),
        "end": _tag(FDT_END),
    }
    blob = _blob(b"".join(parts.values()), strings)
    hashed = b"".join(region_bytes(blob, find_regions(blob, ["/", "/a"], ["data"], True)))
    expected = (
        b"".join(
            parts[k] for k in ("root", "p", "a", "q", "b", "b_end", "a_end", "c", "c_end", "root_end", "end")
        )
        + strings
    )
    assert hashed == expected
    # without /a: a, b are direct/indirect children of / ; only a's tags survive, b is gone entirely
    hashed = b"".join(region_bytes(blob, find_regions(blob, ["/"], ["data"], False)))
    assert hashed == b"".join(parts[k] for k in ("root", "p", "a", "a_end", "c", "c_end", "root_end", "end"))
