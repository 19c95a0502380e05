"""hsmsign's sw-description parser against libconfig, the library swupdate parses it with.

hsmsign checks that every image a signed sw-description names has the sha256 it lists; if it
read the file differently from the device, it could pass a bundle the device refuses, or
check other files than the device installs. The live oracle is the libconfig swupdate links
on this machine (Debian 12: libconfig 1.5, ``libconfig.so.9``), through ctypes. The devices a
Yocto build makes have libconfig 1.7.3 (scarthgap) or 1.8.2 (wrynose, master); where those
refuse what 1.5 accepts, the cases cite their source (``lib/scanner.l``, ``lib/util.c``,
``lib/libconfig.c`` at the tags ``v1.7.3`` and ``v1.8.2`` of hyperrealm/libconfig), and the
one thing they accept that 1.5 refuses (a comma before a closing bracket) is accepted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from pathlib import Path
from typing import Any

import pytest
from hsmsign.errors import VerificationError
from hsmsign.formats import libconfig, swupdate

from tests.conftest import mutations, require

# libconfig.h's CONFIG_TYPE_*
_GROUP, _INT, _INT64, _FLOAT, _STRING, _BOOL, _ARRAY, _LIST = 1, 2, 3, 4, 5, 6, 7, 8


class _Setting(ctypes.Structure):  # the head of libconfig.h's public config_setting_t
    _fields_ = [("name", ctypes.c_char_p), ("type", ctypes.c_short)]


class _Libconfig:
    def __init__(self) -> None:
        name = ctypes.util.find_library("config")
        require(name is not None, "libconfig", "apt-get install swupdate (it brings libconfig9)",
                env="HSMSIGN_REQUIRE_TOOLS")  # fmt: skip
        lib = ctypes.CDLL(name)
        lib.config_init.argtypes = [ctypes.c_void_p]
        lib.config_destroy.argtypes = [ctypes.c_void_p]
        lib.config_read_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.config_setting_length.argtypes = [ctypes.POINTER(_Setting)]
        lib.config_setting_get_elem.argtypes = [ctypes.POINTER(_Setting), ctypes.c_uint]
        lib.config_setting_get_elem.restype = ctypes.POINTER(_Setting)
        lib.config_setting_get_string.argtypes = [ctypes.POINTER(_Setting)]
        lib.config_setting_get_string.restype = ctypes.c_char_p
        lib.config_setting_get_bool.argtypes = [ctypes.POINTER(_Setting)]
        self.lib = lib

    def read(self, path: Path) -> Any:
        """The settings libconfig reads from ``path`` (numbers as their type only: versions of
        libconfig read large ones differently, and hsmsign uses none), or None if it refuses."""
        cfg = ctypes.create_string_buffer(256)  # config_t, with room to spare
        self.lib.config_init(cfg)
        try:
            if self.lib.config_read_file(cfg, str(path).encode()) != 1:
                return None
            root = ctypes.cast(cfg, ctypes.POINTER(ctypes.POINTER(_Setting)))[0]  # config_t.root
            return self._value(root)
        finally:
            self.lib.config_destroy(cfg)

    def _value(self, s: Any) -> Any:
        kind = s.contents.type
        if kind in (_GROUP, _ARRAY, _LIST):
            items = [self.lib.config_setting_get_elem(s, i) for i in range(self.lib.config_setting_length(s))]
            if kind == _GROUP:
                return {e.contents.name.decode(): self._value(e) for e in items}
            return [self._value(e) for e in items]
        if kind == _STRING:
            return self.lib.config_setting_get_string(s).decode("utf-8", "surrogateescape")
        if kind == _BOOL:
            return bool(self.lib.config_setting_get_bool(s))
        return "float" if kind == _FLOAT else "int"


@pytest.fixture(scope="module")
def libconfig_c() -> _Libconfig:
    return _Libconfig()


def _ours(text: bytes) -> Any:
    """hsmsign's reading, numbers as their type only; None if it refuses."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items()}
        if isinstance(v, list):
            return [strip(x) for x in v]
        if isinstance(v, bool) or isinstance(v, str):
            return v
        return "float" if isinstance(v, float) else "int"

    try:
        return strip(libconfig.parse(text.decode("utf-8")))
    except (VerificationError, UnicodeDecodeError):
        return None


# refused by libconfig 1.5 (checked live), 1.7.3 and 1.8.2 (their sources), accepted by hsmsign before
EVERY_LIBCONFIG_REFUSES = {
    "a name twice in a group": b'a = 1;\nimages = { sha256 = "aa"; sha256 = "bb"; };\n',
    "an array of an integer and a string": b'a = [1, "x"];\n',
    "an array of an integer and a float": b"a = [1, 2.0];\n",
    "an array of a 32-bit and a 64-bit integer": b"a = [1, 3L];\n",
    "an array of a group": b'a = [{ filename = "x"; }];\n',
    "an array of an array": b"a = [[1]];\n",
    "an array of a list": b"a = [(1)];\n",
    "a minus before a hex number": b"a = -0x10;\n",
    "a plus before a hex number": b"a = +0x10;\n",
    "an L after a float": b"a = 1.5L;\n",
    "a file separator as whitespace": b"a = 1;\x1cb = 2;\n",
    "a no-break space as whitespace": "a = 1;\u00a0b = 2;\n".encode(),
}

# refused by libconfig 1.7.3 or 1.8.2 (a device of a supported Yocto release), accepted by 1.5
YOCTO_LIBCONFIG_REFUSES = {
    # 1.7.3 util.c libconfig_parse_integer: strtoll(s, &end, 0), a leading 0 is octal
    "a leading 0 before a 9": (b"a = 09;\n", "octal"),
    # 1.7.3 and 1.8.2: an integer beyond 64 bits is TOK_ERROR
    "an integer beyond 64 bits": (b"a = 99999999999999999999;\n", "beyond what libconfig reads"),
    # 1.8.2 scanner.l: hex is 0[Xx]([0-9A-Fa-f]){1,16}(L(L)?)?, and beyond int64 an error
    "a hex number of 17 digits": (b"a = 0x11112222333344445;\n", "beyond what libconfig reads"),
    "a hex number beyond 63 bits": (b"a = 0x8000000000000000L;\n", "beyond what libconfig reads"),
    # 1.8.2 reads 0x1FFFFFFFF as a 64-bit integer, 1.7.3 as a 32-bit one: one mixes on each
    "an array of 1 and a hex number beyond 32 bits": (b"a = [1, 0x1FFFFFFFF];\n", "one type"),
    "an array of 1L and a hex number beyond 32 bits": (b"a = [1L, 0x1FFFFFFFF];\n", "one type"),
    # 1.7.3 scanner.l skips only [ \t] and \n|\r|\f (1.8.2 also \a, \b, \v)
    "a vertical tab as whitespace": (b"a = 1;\x0bb = 2;\n", "space character"),
}


@pytest.mark.parametrize("case", sorted(EVERY_LIBCONFIG_REFUSES))
def test_what_libconfig_refuses_hsmsign_refuses(libconfig_c: _Libconfig, tmp_path: Path, case: str) -> None:
    text = EVERY_LIBCONFIG_REFUSES[case]
    path = tmp_path / "sw-description"
    path.write_bytes(text)
    assert libconfig_c.read(path) is None, f"libconfig reads {case!r}: the case tests nothing"
    with pytest.raises(VerificationError, match=r"^sw-description line \d+: "):
        libconfig.parse(text.decode())


@pytest.mark.parametrize("case", sorted(YOCTO_LIBCONFIG_REFUSES))
def test_what_yocto_libconfig_refuses_hsmsign_refuses(case: str) -> None:
    text, message = YOCTO_LIBCONFIG_REFUSES[case]
    with pytest.raises(VerificationError, match=message):
        libconfig.parse(text.decode())


def test_a_nul_byte_is_refused(libconfig_c: _Libconfig, tmp_path: Path) -> None:
    """libconfig ends the string at a NUL byte (every version): the device would read another
    file name or hash than the text shows, so hsmsign refuses the file."""
    text = b'images = ({ filename = "rootfs.img\x00.sig"; sha256 = "aa"; });\n'
    path = tmp_path / "sw-description"
    path.write_bytes(text)
    assert libconfig_c.read(path) == {"images": [{"filename": "rootfs.img", "sha256": "aa"}]}
    with pytest.raises(VerificationError, match="line 1: a NUL byte"):
        libconfig.parse(text.decode())


def test_escapes_libconfig_reads_as_raw_bytes_are_refused(libconfig_c: _Libconfig, tmp_path: Path) -> None:
    """libconfig puts the byte of "\\xNN" into the string: "\\x00" ends it, "\\xff" is no UTF-8
    character. A file name with either would be another name on the device than hsmsign reads."""
    path = tmp_path / "sw-description"
    # "\\x00": 1.5 drops the byte, 1.7.3 and 1.8.2 end the string there ("a")
    for escape, device_reads in ((b"\\x00", "ab"), (b"\\xff", "a\udcffb")):
        text = b'f = "a' + escape + b'b";\n'
        path.write_bytes(text)
        assert libconfig_c.read(path) == {"f": device_reads}
        with pytest.raises(VerificationError, match="which libconfig reads as a raw byte"):
            libconfig.parse(text.decode())


def test_json_strings_swupdate_would_read_otherwise_are_refused() -> None:
    """A JSON sw-description: "\\u0000" cuts the string short in swupdate (a C string), and an
    unpaired surrogate is no character (it made `swupdate sign --images` fail with an internal
    error); hsmsign refuses both, naming them."""
    for escape, what in (("\\u0000", "a NUL character"), ("\\ud800", "an unpaired surrogate")):
        text = '{"software": {"images": [{"filename": "a' + escape + 'b", "sha256": "00"}]}}'
        with pytest.raises(VerificationError, match=what):
            swupdate.parse_description(text.encode())
    ok = swupdate.parse_description(b'{"software": {"images": [{"filename": "\\ud83d\\ude00"}]}}')
    assert ok["software"]["images"][0]["filename"] == "\U0001f600"  # a pair is one character


def test_json_nested_deeper_than_json_c_reads_is_refused() -> None:
    """swupdate reads a JSON sw-description with json-c, whose parser stops at 32 levels of
    nesting (checked here with the json-c on this machine); hsmsign refuses what it refuses."""
    name = ctypes.util.find_library("json-c")
    hint = "apt-get install swupdate (it brings libjson-c5)"
    require(name is not None, "json-c", hint, env="HSMSIGN_REQUIRE_TOOLS")
    json_c = ctypes.CDLL(name)
    json_c.json_tokener_parse.argtypes = [ctypes.c_char_p]
    json_c.json_tokener_parse.restype = ctypes.c_void_p
    json_c.json_object_put.argtypes = [ctypes.c_void_p]
    for depth in (31, 32, 33, 40):
        text = ('{"software": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}").encode()
        parsed = json_c.json_tokener_parse(text)
        json_c.json_object_put(parsed)
        if depth <= 32:
            assert parsed, depth
            assert swupdate.parse_description(text)["software"] is not None
        else:
            assert not parsed, depth
            with pytest.raises(VerificationError, match="more than 32 levels"):
                swupdate.parse_description(text)


def test_what_libconfig_reads_hsmsign_reads(libconfig_c: _Libconfig, tmp_path: Path) -> None:
    """Strings joined across comments, every comment style, a form feed as whitespace, the
    float forms libconfig takes, ':' for '=', lists of anything, arrays of one type."""
    text = (
        b"/* sw-description */\n"
        b'software = {\n\tversion = "1.0" // its version\n ;\n'
        b'\tdescription: "a" /* between */ "b" # and\n "c";\f\n'
        b"\tf = [1., .5, 1e3, -1.5e-3]; i = [0x10, 12, -3]; l = [1L, 0x1FFFFFFFFL];\n"
        b'\tmixed = (1, "x", [true, FALSE], { z = "w"; }, ());\n'
        b'\timages: ( { filename = "rootfs.img"; sha256 = "0a"; installed-directly = true; } );\n'
        b"};\n"
    )
    path = tmp_path / "sw-description"
    path.write_bytes(text)
    theirs = libconfig_c.read(path)
    assert theirs is not None and theirs["software"]["description"] == "abc"
    assert _ours(text) == theirs


def test_a_comma_before_the_closing_bracket_is_read_as_libconfig_1_7_reads_it() -> None:
    """libconfig 1.7 and later (grammar.y: ``value_list TOK_COMMA``) accept "(1,)" and "(1,,2)";
    so does hsmsign. Debian's 1.5 refuses them, so this is not checked against it."""
    assert libconfig.parse('a = (1, "x",); b = [1,,2,];') == {"a": [1, "x"], "b": [1, 2]}


SEED = b"""/* sw-description of a product */
software =
{
\tversion = "1.2.3";
\tdescription = "Firmware \\"update\\"\\tfor \\x41CME";
\thardware-compatibility: [ "1.0", "1.2" ];
\tcopies: {
\t\tcopy1: {
\t\t\timages: (
\t\t\t\t{
\t\t\t\t\tfilename = "rootfs.ext4.gz";
\t\t\t\t\ttype = "raw";
\t\t\t\t\tsha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
\t\t\t\t\tdevice = "/dev/mmcblk0p2";
\t\t\t\t\tinstalled-directly = true;
\t\t\t\t\toffset = 0x100;
\t\t\t\t\tratio = 1.5e3;
\t\t\t\t}
\t\t\t);
\t\t\tscripts: ( { filename = "post.sh"; type = "shellscript"; sha256 = "ff"; } );
\t\t\tbootenv: ( { name = "bootpart"; value = "a" ; }, { name = "x"; value = ""; } );
\t\t};
\t};
\t// a comment
\t# another
\tempty = {};
\tnums = [ 1, -2, +3 ];
};
"""
PIECES = [
    b";", b",", b"=", b":", b"{", b"}", b"(", b")", b"[", b"]", b'"', b"\\", b"L", b"0x", b"e", b".",
    b"-", b"/*", b"*/", b"//", b"#", b"\n", b" ", b"true", b"*", b"1", b'sha256 = "aa";', b"\\n", b"0",
]  # fmt: skip
# a comma before a closing bracket or another comma (read by 1.7 and later, refused by 1.5)
_COMMA_BEFORE_CLOSE = re.compile(rb",(\s|/\*.*?\*/|(#|//)[^\n]*\n)*[,)\]]", re.S)


def test_mutated_sw_descriptions_are_read_as_libconfig_reads_them(
    libconfig_c: _Libconfig, tmp_path: Path
) -> None:
    """1,500 mutations of a sw-description (bits flipped, pieces of syntax put in, bytes cut or
    copied), seeded: whatever libconfig refuses, hsmsign refuses (but a comma before a closing
    bracket, see above); whatever both read, they read alike. Found the name read twice, the
    arrays of mixed types and the unusual whitespace."""
    path = tmp_path / "sw-description"
    compared = refused = 0
    for text in mutations(SEED, PIECES, 1500, rng_seed=16):
        path.write_bytes(text)
        theirs, ours = libconfig_c.read(path), _ours(text)
        if theirs is None:
            if ours is not None:
                assert _COMMA_BEFORE_CLOSE.search(text), text.decode(errors="replace")
            refused += 1
        elif ours is not None:
            assert ours == theirs, text.decode(errors="replace")
            compared += 1
    assert compared > 300 and refused > 300, (compared, refused)  # both sides were exercised
