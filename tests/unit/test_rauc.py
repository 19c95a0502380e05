"""RAUC: the bundle layout and manifest parsing (hsmsign.formats.rauc) and what the layer hands
rauc at task time (hsmsign.bitbake.rauc_env). Signed bundles are tests/integration/test_rauc.py."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hsmsign import bitbake as hb
from hsmsign.errors import ConfigError, VerificationError
from hsmsign.formats import rauc

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
                   {"verity-size": "100"}, {"verity-size": "0"}, {"verity-size": "-4096"}):  # fmt: skip
        with pytest.raises(VerificationError):
            rauc.verity_params({"bundle": {**good["bundle"], **change}}, "b")


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
    for bad in ("", "new", "0.4.x", "v0.4.12"):
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
