"""The mkimage drop-in's command-line handling (no token, no mkimage run)."""

from __future__ import annotations

import pytest
from hsmsign.commands import mkimage
from hsmsign.errors import ConfigError


def test_oe_core_kernel_fitimage_call_is_split_into_mkimage_work_and_signing():
    argv = ["-D", "-I dts -O dtb -p 2000", "-F", "-k", "token=acme;object=fit", "-K", "u-boot.dtb", "-r",
            "--comment", "release 7", "-o", "sha256,rsa3072", "fitImage"]  # fmt: skip
    parsed = mkimage.parse_mkimage_args(argv)
    assert mkimage.is_uri_key(parsed)
    assert parsed.values["k"] == "token=acme;object=fit" and parsed.values["c"] == "release 7"
    assert parsed.has("r") and parsed.has("F")
    # the real mkimage gets everything but the signing options, and the temporary file as image
    assert mkimage._rebuild(parsed, "/tmp/x.itb") == [
        "-D", "-I dts -O dtb -p 2000", "-F", "-o", "sha256,rsa3072", "/tmp/x.itb",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "uri"),
    [
        (["-F", "-k", "pkcs11:token=a;object=b", "x.itb"], True),
        (["-F", "-k", "token=a", "x.itb"], True),
        (["-F", "-k", "keys", "-N", "pkcs11", "x.itb"], True),
        (["-F", "-k", "/", "x.itb"], False),  # an existing key directory: plain mkimage
        (["-f", "auto", "-d", "Image", "x.itb"], False),
        (["-l", "x.itb"], False),
    ],
)
def test_uri_detection(argv, uri):
    assert mkimage.is_uri_key(mkimage.parse_mkimage_args(argv)) is uri


def test_uri_without_object_takes_the_key_name_hint():
    assert mkimage.normalise_uri("token=acme") == "pkcs11:token=acme"
    assert mkimage.uri_for_hint("pkcs11:token=acme?pin-source=file:/p", "spl 2026") == (
        "pkcs11:token=acme;object=spl%202026?pin-source=file:/p"
    )
    fixed = "pkcs11:token=acme;object=fit"
    assert mkimage.uri_for_hint(fixed, "other") == fixed
    with pytest.raises(ConfigError, match="names no object"):
        mkimage.uri_for_hint("pkcs11:token=acme", None)


def test_bad_mkimage_options_are_config_errors():
    with pytest.raises(ConfigError, match="mkimage"):
        mkimage.parse_mkimage_args(["-k"])
    with pytest.raises(ConfigError):
        mkimage.parse_mkimage_args(["--no-such-option", "x"])


@pytest.mark.parametrize("setting", ["/nonexistent/uboot-mkimage", "uboot-mkimage-not-in-path", ""])
def test_dropin_without_a_real_mkimage_is_a_configuration_error(
    tmp_path, monkeypatch, capsys, setting: str
) -> None:
    from hsmsign.cli import main

    image = tmp_path / "fitImage"
    image.write_bytes(b"not read: the missing mkimage is found first")
    monkeypatch.setenv("PATH", str(tmp_path))  # no mkimage anywhere
    if setting:
        monkeypatch.setenv("HSMSIGN_MKIMAGE", setting)
    else:
        monkeypatch.delenv("HSMSIGN_MKIMAGE", raising=False)
    rc = main(["mkimage", "-F", "-k", "pkcs11:token=t;object=k", "-r", str(image)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "HSMSIGN_MKIMAGE" in err and "u-boot-tools-native" in err
    assert "internal error" not in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["fitImage"]  # no temporary copy left
