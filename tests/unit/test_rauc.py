"""RAUC: the bundle layout and manifest parsing (hsmsign.formats.rauc) and what the layer hands
rauc at task time (hsmsign.bitbake.rauc_env). Signed bundles are tests/integration/test_rauc.py."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hsmsign import bitbake as hb
from hsmsign.errors import ConfigError, VerificationError
from hsmsign.formats import rauc

from tests.conftest import mutations, require

URI = "pkcs11:token=acme;object=rauc-signing"


def test_manifest_sections_comments_and_bad_lines() -> None:
    text = b"# made by rauc\n[update]\ncompatible = acme-board\nversion=1.2\n\n[bundle]\nformat=verity\n"
    assert rauc.parse_manifest(text) == {
        "update": {"compatible": "acme-board", "version": "1.2"},
        "bundle": {"format": "verity"},
    }
    for bad in (b"compatible=x\n", b"[update]\njust text\n", b"\xff\xfe"):
        with pytest.raises(VerificationError):
            rauc.parse_manifest(bad)
    with pytest.raises(VerificationError, match="larger than"):
        rauc.parse_manifest(b"[a]\n" + b"k=v\n" * (rauc.MAX_MANIFEST // 4))


def test_verity_parameters_are_checked() -> None:
    good = {"bundle": {"verity-hash": "ab" * 32, "verity-salt": "cd" * 32, "verity-size": "8192"}}
    assert rauc.verity_params(good, "b") == ("ab" * 32, "cd" * 32, 8192)
    for change in ({"verity-hash": "ab" * 31}, {"verity-hash": "zz" * 32}, {"verity-salt": "abc"},
                   {"verity-size": "100"}, {"verity-size": "0"}, {"verity-size": "-4096"},
                   # rauc's r_hex_decode(salt, 32) wants 32 bytes; before, any even length passed
                   {"verity-salt": "cd" * 16}, {"verity-hash": "ab" * 32 + " "},
                   # str.isdigit() takes these, and int() then read one and failed on the other
                   {"verity-size": "\u0664\u0660\u0669\u0666"}, {"verity-size": "4096\u00b2"}):  # fmt: skip
        with pytest.raises(VerificationError):
            rauc.verity_params({"bundle": {**good["bundle"], **change}}, "b")
    upper = {"bundle": {**good["bundle"], "verity-hash": "AB" * 32}}  # r_hex_decode takes either case
    assert rauc.verity_params(upper, "b")[0] == "ab" * 32


def _bundle(tmp_path: Path, payload: bytes, cms: bytes, size: int | None = None) -> str:
    path = tmp_path / "b.raucb"
    path.write_bytes(payload + cms + struct.pack(">Q", len(cms) if size is None else size))
    return str(path)


def test_layout_and_what_is_not_a_bundle(tmp_path: Path) -> None:
    layout = rauc.read_layout(_bundle(tmp_path, b"hsqs" + b"\0" * 60, b"\x30\x03\x02\x01\x00"))
    assert (layout.size, layout.payload_size, layout.cms) == (77, 64, b"\x30\x03\x02\x01\x00")
    for payload, cms, size in (
        (b"", b"", 0),  # too short
        (b"hsqs" + b"\0" * 60, b"\x30\x00", 0),  # no signature
        (b"hsqs" + b"\0" * 60, b"\x30\x00", 1 << 40),  # a size beyond the file
    ):
        with pytest.raises(VerificationError):
            rauc.read_layout(_bundle(tmp_path, payload, cms, size))
    # a payload that is not SquashFS: a crypt bundle's (encrypted), or no bundle at all
    other = _bundle(tmp_path, b"sqsh" + b"\0" * 60, b"\x04\x00")
    assert not rauc.read_layout(other).squashfs
    with pytest.raises(VerificationError, match="not a RAUC bundle"):
        rauc.verify_bundle(other, [])
    with pytest.raises(ConfigError):
        rauc.read_layout(str(tmp_path / "missing.raucb"))
    with pytest.raises(ConfigError, match="not a regular file"):
        rauc.read_layout(str(tmp_path))


def test_an_encrypted_bundle_says_who_can_check_it(tmp_path: Path) -> None:
    from asn1crypto import cms

    enveloped = cms.ContentInfo(
        {
            "content_type": "enveloped_data",
            "content": {
                "version": "v0",
                "recipient_infos": [],
                "encrypted_content_info": {
                    "content_type": "data",
                    "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": b"\0" * 16},
                    "encrypted_content": b"\0" * 32,
                },
            },
        }
    ).dump()
    with pytest.raises(VerificationError, match="only a recipient's key"):
        rauc.verify_bundle(_bundle(tmp_path, b"hsqs" + b"\0" * 60, enveloped), [])
    with pytest.raises(VerificationError, match="not a DER CMS"):
        rauc.verify_bundle(_bundle(tmp_path, b"hsqs" + b"\0" * 60, b"\x04\x02ab"), [])


def test_rauc_env_module_pin_engine(tmp_path: Path) -> None:
    """The module from the URI, the PIN from its pin-source (read at task time), the engine
    directory only when it holds pkcs11.so; nothing else of the settings."""
    pin_file = tmp_path / "pin"
    pin_file.write_text("4321\n")
    pin_file.chmod(0o600)
    uri = f"{URI}?module-path=/opt/hsm/libvendor.so&pin-source=file:{pin_file}"
    d = hb.DictData({"HSM_PKCS11_URI_RAUC": uri, "HSMSIGN_MODE": "production"})
    engines = tmp_path / "engines-3"
    engines.mkdir()
    env = hb.rauc_env(d, {}, str(engines))
    assert env == {"RAUC_PKCS11_MODULE": "/opt/hsm/libvendor.so", "RAUC_PKCS11_PIN": "4321"}
    (engines / "pkcs11.so").write_bytes(b"")
    assert hb.rauc_env(d, {}, str(engines))["OPENSSL_ENGINES"] == str(engines)


def test_rauc_env_pin_from_the_client_environment_and_the_role_default() -> None:
    """HSMSIGN_PIN_ENV: the PIN comes from BB_ORIGENV; the RAUC role defaults to HSM_PKCS11_URI;
    the module to HSM_PKCS11_MODULE."""
    d = hb.DictData(
        {
            "HSM_PKCS11_URI": URI,
            "HSMSIGN_PIN_ENV": "HSM_PIN",
            "HSM_PKCS11_MODULE": "/usr/lib/p11-kit-client.so",
            "HSMSIGN_MODE": "production",
        }
    )
    env = hb.rauc_env(d, {"HSM_PIN": "9876", "P11_KIT_SERVER_ADDRESS": "unix:path=/run/p11"})
    assert env["RAUC_PKCS11_PIN"] == "9876"
    assert env["RAUC_PKCS11_MODULE"] == "/usr/lib/p11-kit-client.so"
    assert env["P11_KIT_SERVER_ADDRESS"] == "unix:path=/run/p11"
    with pytest.raises(hb.TaskError, match="HSM_PIN is not set"):
        hb.rauc_env(d, {})


def test_rauc_env_refuses_what_the_policy_refuses(tmp_path: Path) -> None:
    d = hb.DictData(
        {"HSM_PKCS11_URI_RAUC": URI + "?module-path=/m.so&pin-value=1234", "HSMSIGN_MODE": "production"}
    )
    with pytest.raises(hb.TaskError) as caught:
        hb.rauc_env(d, {})
    assert "1234" not in str(caught.value)
    with pytest.raises(hb.TaskError, match="is empty"):
        hb.rauc_env(hb.DictData({"HSM_PKCS11_URI_RAUC": ""}), {})


def test_rauc_bundles_are_the_signed_ones(tmp_path: Path) -> None:
    for name in ("bundle.raucb", "casync-bundle.raucb", "encrypted-bundle.raucb"):
        (tmp_path / name).write_bytes(b"x")
    assert hb.rauc_bundles(str(tmp_path)) == [
        str(tmp_path / "bundle.raucb"),
        str(tmp_path / "casync-bundle.raucb"),
    ]


def test_libp11_versions_and_the_key_types_they_list(tmp_path: Path) -> None:
    from hsmsign.token import listing

    assert listing.parse_libp11_version("0.4.12") == (0, 4, 12)
    assert listing.parse_libp11_version(" 0.4.20+git \n") == (0, 4, 20)
    for bad in ("", "new", "0.4.x", "v0.4.12", "0.4.\u00b2", "0.\u0664.12"):
        with pytest.raises(ValueError, match="not a libp11 version"):
            listing.parse_libp11_version(bad)
    assert listing.libp11_known_types((0, 4, 12)) == ("RSA", "EC")
    assert listing.libp11_known_types((0, 4, 17, 9)) == ("RSA", "EC")
    assert "EC_EDWARDS" in listing.libp11_known_types((0, 4, 18))
    assert "EC_MONTGOMERY" not in listing.libp11_known_types((0, 4, 18))
    assert "EC_MONTGOMERY" in listing.libp11_known_types((0, 5))

    # libp11-native's version, from the pkg-config file it installs into the native sysroot
    lib = tmp_path / "usr" / "lib"
    assert hb.libp11_version(str(lib)) == ""
    (lib / "pkgconfig").mkdir(parents=True)
    (lib / "pkgconfig" / "libp11.pc").write_text(
        "prefix=/usr\nlibdir=${prefix}/lib\n\nName: libp11\nDescription: libp11\nVersion: 0.4.12\n"
        "Libs: -L${libdir} -lp11\n"
    )
    assert hb.libp11_version(str(lib)) == "0.4.12"


# ----------------------------------------------------------------------------- the manifest as GLib reads it


class _KeyFile:
    """GLib's key file parser (what rauc reads a manifest with), through ctypes: the groups,
    and each key as ``g_key_file_get_string`` gives it; None where GLib refuses the file."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("glib-2.0")
        hint = "apt-get install libglib2.0-0 (rauc needs it)"
        require(name is not None, "GLib", hint, env="HSMSIGN_REQUIRE_TOOLS")
        g = ctypes.CDLL(name)
        p, size_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)
        g.g_key_file_new.restype = p
        g.g_key_file_load_from_data.argtypes = [
            p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.POINTER(p)
        ]  # fmt: skip
        g.g_key_file_get_groups.argtypes = [p, size_p]
        g.g_key_file_get_groups.restype = ctypes.POINTER(ctypes.c_char_p)
        g.g_key_file_get_keys.argtypes = [p, ctypes.c_char_p, size_p, ctypes.POINTER(p)]
        g.g_key_file_get_keys.restype = ctypes.POINTER(ctypes.c_char_p)
        g.g_key_file_get_string.argtypes = [p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(p)]
        g.g_key_file_get_string.restype = p
        g.g_key_file_free.argtypes = [p]
        g.g_free.argtypes = [p]
        self.g, self.ctypes = g, ctypes

    def read(self, data: bytes) -> dict[str, dict[str, str | None]] | None:
        g, ct = self.g, self.ctypes
        kf = g.g_key_file_new()
        try:
            if not g.g_key_file_load_from_data(kf, data, len(data), 0, None):
                return None
            out: dict[str, dict[str, str | None]] = {}
            n = ct.c_size_t()
            groups = g.g_key_file_get_groups(kf, ct.byref(n))
            for i in range(n.value):
                m = ct.c_size_t()
                keys = g.g_key_file_get_keys(kf, groups[i], ct.byref(m), None)
                section = out.setdefault(groups[i].decode(errors="surrogateescape"), {})
                for j in range(m.value):
                    value = g.g_key_file_get_string(kf, groups[i], keys[j], None)
                    text = ct.string_at(value).decode(errors="surrogateescape") if value else None
                    section[keys[j].decode(errors="surrogateescape")] = text
                    g.g_free(value)
            return out  # (the lists GLib returns are left to the process: a test's few bytes)
        finally:
            g.g_key_file_free(kf)


@pytest.fixture(scope="module")
def keyfile() -> _KeyFile:
    return _KeyFile()


def _plain_keys(manifest: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """GLib lists a localised key (``key[de]``) under ``key``; rauc reads no localised key."""
    return {group: {k: v for k, v in keys.items() if "[" not in k} for group, keys in manifest.items()}


GLIB_REFUSES = {
    "an empty key": b"[bundle]\n=verity\n",
    "an empty group name": b"[]\nformat=verity\n",
    "a group line with text after it": b"[bundle] x\nformat=verity\n",
    "a form feed after a group": b"[bundle]\x0c\nformat=verity\n",
    "a bracket in a key": b"[bundle]\nformat]=verity\n",
    "text after a locale": b"[bundle]\nformat[de]x=verity\n",
    "a control character in a group name": b"[bun\x01dle]\nformat=verity\n",
    "a NUL byte in a key": b"[bundle]\nform\x00at=verity\n",
}


@pytest.mark.parametrize("case", sorted(GLIB_REFUSES))
def test_what_glib_refuses_in_a_manifest_hsmsign_refuses(keyfile: _KeyFile, case: str) -> None:
    text = GLIB_REFUSES[case]
    assert keyfile.read(text) is None, f"GLib reads {case!r}: the case tests nothing"
    with pytest.raises(VerificationError, match=r"^the manifest, line \d+: "):
        rauc.parse_manifest(text)


def test_manifest_values_are_read_as_glib_reads_them(keyfile: _KeyFile) -> None:
    """Trailing whitespace belongs to the value (rauc sees "verity " and refuses the format;
    hsmsign used to strip it and accept), escapes are read, whitespace before a key or value
    includes CR and form feed, one CR ends a line, a later key wins and a group repeated merges."""
    text = (
        b"[update]\ncompatible=acme \\s board\\t\n\x0cversion=\x0c1.0\r\n"
        b"[bundle]\nformat=verity \nformat=verity\t\n"
        b"[update]\nbuild = 20261202\nnote[de]=ignored\n"
    )
    theirs = keyfile.read(text)
    assert theirs == {
        "update": {"compatible": "acme   board\t", "version": "1.0", "build": "20261202"},
        "bundle": {"format": "verity\t"},
    }
    ours = rauc.parse_manifest(text)
    assert _plain_keys(ours) == theirs
    with pytest.raises(VerificationError, match="a NUL byte"):  # GLib reads "verity": another text
        rauc.parse_manifest(b"[bundle]\nformat=verity\x00x\n")


def test_mutated_manifests_are_read_as_glib_reads_them(keyfile: _KeyFile) -> None:
    """3,000 seeded mutations of a verity bundle's manifest: whatever GLib refuses, hsmsign
    refuses; whatever both read, they read alike. It found the trailing whitespace, the CR and
    form feed before a value, the form feed after a group, empty keys and groups, and NUL."""
    seed = (
        b"[update]\ncompatible=acme-board\nversion=2026.12.1\n\n[bundle]\nformat=verity\n"
        b"verity-hash=" + b"0123456789abcdef" * 4 + b"\nverity-salt=" + b"fedcba9876543210" * 4 + b"\n"
        b"verity-size=8192\n\n[image.rootfs]\nsha256=" + b"a" * 64 + b"\nsize=4194304\n"
        b"filename=rootfs.ext4\n\n[meta.acme]\nnote=a \\s note\\n\n"
    )
    pieces = [b"[", b"]", b"=", b"#", b"\\", b"\\s", b"\n", b"\r", b" ", b"\t", b"\x0b", b"\x0c", b"\x00",
              b"[de]", b"k=v\n", b"[bundle]\n", b"format=plain\n", b";"]  # fmt: skip
    compared = refused = 0
    for text in mutations(seed, pieces, 3000, rng_seed=18):
        theirs = keyfile.read(text)
        try:
            ours: dict[str, dict[str, str]] | None = rauc.parse_manifest(text)
        except VerificationError:
            ours = None
        if theirs is None:
            assert ours is None, text
            refused += 1
        elif ours is not None:
            assert _plain_keys(ours) == theirs, text
            compared += 1
    assert compared > 1000 and refused > 500, (compared, refused)
