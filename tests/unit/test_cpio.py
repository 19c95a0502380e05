"""cpio newc/crc writer and reader (checked against GNU cpio) and the sw-description reader, fuzzed."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hsmsign.errors import ConfigError, HsmsignError, VerificationError
from hsmsign.formats import cpio
from hsmsign.formats import swupdate as swu
from hypothesis import given, settings
from hypothesis import strategies as st


def _gnu_cpio() -> str:
    path = shutil.which("cpio")
    if not path:
        if os.environ.get("HSMSIGN_REQUIRE_TOOLS") == "1":
            pytest.fail("GNU cpio is required (apt-get install cpio)")
        pytest.skip("GNU cpio missing: apt-get install cpio")
    return path


@pytest.mark.parametrize("crc", [True, False])
def test_gnu_cpio_extracts_what_we_write(tmp_path: Path, crc: bool) -> None:
    members = {
        "sw-description": b"software = {};\n",
        "sw-description.sig": os.urandom(300),
        "rootfs.ext4": os.urandom(70_001),
        "empty": b"",
        "odd": b"abc",
    }
    out = tmp_path / "b.swu"
    with open(out, "wb") as fh:
        size = cpio.write(fh, list(members.items()), crc=crc)
    assert size == out.stat().st_size and size % 512 == 0
    dest = tmp_path / "x"
    dest.mkdir()
    listing = subprocess.run(
        [_gnu_cpio(), "-idv", "--quiet", "-F", str(out)], cwd=dest, capture_output=True, text=True, check=True
    )
    assert listing.stderr.split() == list(members)  # order kept
    for name, data in members.items():
        assert (dest / name).read_bytes() == data


@pytest.mark.parametrize("fmt", ["crc", "newc"])
def test_we_read_what_gnu_cpio_writes(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    names = ["sw-description", "sw-description.sig", "image.bin"]
    contents = [b"desc", os.urandom(256), os.urandom(10_000)]
    for n, c in zip(names, contents):
        (src / n).write_bytes(c)
    archive = tmp_path / "gnu.swu"
    with open(archive, "wb") as fh:
        subprocess.run(
            [_gnu_cpio(), "-o", "-H", fmt, "--quiet"],
            cwd=src,
            input="\n".join(names).encode(),
            stdout=fh,
            check=True,
        )
    entries = cpio.read_entries(str(archive))
    assert [e.name for e in entries] == names
    assert [e.crc_format for e in entries] == [fmt == "crc"] * 3
    with open(archive, "rb") as fh:
        for e, c in zip(entries, contents):
            assert cpio.read_member(fh, e) == c
            cpio.check_sums(fh, e)  # GNU cpio's crc equals ours
            if fmt == "crc":
                assert e.check == sum(c) & 0xFFFFFFFF


def test_bad_names_and_duplicates_refused() -> None:
    for bad in ("/abs", "../up", "a/../b", ""):
        with pytest.raises(ConfigError):
            cpio.write(io.BytesIO(), [(bad, b"x")])
    with pytest.raises(ConfigError, match="twice"):
        cpio.write(io.BytesIO(), [("a", b"x"), ("a", b"y")])


def test_bundle_layout_checked(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.swu"
    with open(wrong, "wb") as fh:
        cpio.write(fh, [("image", b"x"), ("sw-description", b"d")])
    with pytest.raises(VerificationError, match="first member is not sw-description"):
        swu.read_bundle(str(wrong))
    good = tmp_path / "good.swu"
    with open(good, "wb") as fh:
        swu.write_bundle(fh, b"d", b"sig", [])
    b = swu.read_bundle(str(good))
    assert (b.description, b.signature) == (b"d", b"sig")
    data = bytearray(good.read_bytes())
    data[112 + 16] ^= 1  # inside sw-description's data: the crc sum no longer matches
    good.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="checksum"):
        swu.read_bundle(str(good))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(alphabet="abcdefgh.-_", min_size=1, max_size=20), st.binary(max_size=600)),
        max_size=6,
        unique_by=lambda t: t[0],
    ),
    st.booleans(),
)
def test_roundtrip(members: list[tuple[str, bytes]], crc: bool) -> None:
    members = [(n, d) for n, d in members if n not in (".", "..") and n != cpio.TRAILER]
    buf = io.BytesIO()
    cpio.write(buf, members, crc=crc)
    buf.seek(0)
    entries = list(cpio.iter_entries(buf))
    assert [e.name for e in entries] == [n for n, _ in members]
    for e, (_, d) in zip(entries, members):
        assert cpio.read_member(buf, e) == d
        cpio.check_sums(buf, e)


_SEED = io.BytesIO()
cpio.write(
    _SEED,
    [
        ("sw-description", b'software = { version = "1"; };'),
        ("sw-description.sig", b"S" * 40),
        ("img", b"I" * 100),
    ],
)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_reader_only_raises_verification_error(data: st.DataObject) -> None:
    raw = bytearray(_SEED.getvalue())
    kind = data.draw(st.sampled_from(["flip", "truncate", "random", "insert"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 6))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif kind == "random":
        raw = bytearray(data.draw(st.binary(max_size=600)))
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=30))
    buf = io.BytesIO(bytes(raw))
    try:
        entries = list(cpio.iter_entries(buf))
        for e in entries:
            assert e.offset + e.size <= len(raw)
            assert len(cpio.read_member(buf, e)) == e.size
            cpio.check_sums(buf, e)
    except VerificationError as exc:
        assert "\n" not in exc.message


SAMPLE = b"""
software =
{
    version = "0.1.0";
    description = "Firmware update for XXXXX Project";
    hardware-compatibility: [ "1.0", "1.2", "1.3"];
    /* a comment */ // another
    images: (
        {
            filename = "rootfs.ext4.enc";
            device = "/dev/mmcblk0p1";
            type = "raw"; encrypted = true;
            ivt = "65D793B87B6724BB27954C7664F15FF3";
            sha256 = "0b0dfb8e0d0d3a3e8b0b11a8e4b4cd1b0a3ba1a17e3e43d0a8d6a6a1e3d1f2ab";
        },
        {
            filename = "bootlogo.bmp"; volume = "splash"; offset = 0x100; ratio = 1.5e2;
            sha256 = "aa" "aa" "0b0dfb8e0d0d3a3e8b0b11a8e4b4cd1b0a3ba1a17e3e43d0a8d6a6a1e3d1";
        }
    );
    scripts: ( { filename = "test.lua"; type = "lua"; sha256 = "%s"; } );
    stable: { main: { images: ( { filename = "x.img"; sha256 = "%s"; } ); }; };
}
""" % (b"1" * 64, b"2" * 64)


def test_sw_description_reader() -> None:
    desc = swu.parse_description(SAMPLE)
    sw = desc["software"]
    assert sw["version"] == "0.1.0"
    assert sw["hardware-compatibility"] == ["1.0", "1.2", "1.3"]
    assert sw["images"][1]["offset"] == 256 and sw["images"][1]["ratio"] == 150.0
    arts = swu.artifacts(desc)
    assert [a.filename for a in arts] == ["rootfs.ext4.enc", "bootlogo.bmp", "test.lua", "x.img"]
    assert arts[0].encrypted and arts[0].ivt == "65D793B87B6724BB27954C7664F15FF3"
    assert arts[1].sha256 == "aaaa0b0dfb8e0d0d3a3e8b0b11a8e4b4cd1b0a3ba1a17e3e43d0a8d6a6a1e3d1"
    assert swu.check_artifacts(arts) == ["rootfs.ext4.enc", "bootlogo.bmp", "test.lua", "x.img"]


def test_sw_description_json_and_rendered() -> None:
    j = {"software": {"version": "1", "images": [{"filename": "a", "sha256": "b" * 64}]}}
    assert [a.filename for a in swu.artifacts(swu.parse_description(json.dumps(j).encode()))] == ["a"]
    with pytest.raises(ConfigError, match="no sha256"):
        swu.check_artifacts(swu.artifacts(swu.parse_description(b'images: ( { filename = "a"; } );')))


@pytest.mark.parametrize(
    "text",
    [
        b'a = "unterminated',
        b"a = ;",
        b"a = ( 1, 2",
        b"= 3;",
        b'a = "\\q";',
        b"a = {" * 200,
        b"\xff\xfe",
        b"a = 1 b",
    ],
)
def test_sw_description_errors(text: bytes) -> None:
    with pytest.raises(VerificationError) as err:
        swu.parse_description(text)
    assert "\n" not in err.value.message


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(alphabet='abc=:;,{}()[]"\\ \n/*#0123456789.xL-+truefalse', max_size=200).map(str.encode),
        st.integers(0, len(SAMPLE) - 1).flatmap(
            lambda i: st.binary(max_size=5).map(lambda b: SAMPLE[:i] + b + SAMPLE[i + 1 :])
        ),
    )
)
def test_fuzz_sw_description(data: bytes) -> None:
    try:
        desc = swu.parse_description(data)
        found = swu.artifacts(desc)
        swu.check_artifacts(found)
    except HsmsignError as exc:
        assert isinstance(exc, (VerificationError, ConfigError))
        assert "\n" not in exc.message
        return
    assert isinstance(desc, dict)
    assert all(isinstance(a.filename, str) for a in found)
