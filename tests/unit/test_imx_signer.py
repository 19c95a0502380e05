"""SPSDK signer strings, PINs in them (audit, production), and 'hsmsign imx' without SPSDK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hsmsign.audit import scan_text
from hsmsign.errors import ConfigError
from hsmsign.nxp import signer
from hsmsign.uri import Pkcs11Uri

LIB = Path(__file__).resolve().parents[2] / "meta-hsmsign" / "lib"


def spsdk_split(text: str) -> dict[str, str]:
    """SPSDK's own parsing of a signer string (ServiceProvider.convert_params): one '=' per part."""
    out = {}
    for part in text.split(";"):
        key, value = part.split("=")  # raises on a second '=' as SPSDK does
        out[key] = value
    return out


@pytest.mark.parametrize(
    "uri",
    [
        "pkcs11:token=acme%20prod;object=imx-srk0?pin-source=file:/run/secrets/hsm-pin",
        "pkcs11:token=a%3Db;id=%01%02;slot-id=3?module-path=/usr/lib/softhsm/libsofthsm2.so",
        "pkcs11:serial=0042;object=srk%3B1",
    ],
)
def test_signer_string_survives_spsdk_parsing_and_names_the_same_key(uri: str) -> None:
    text = signer.signer_string(uri, pin_env="HSM_PIN")
    params = spsdk_split(text)
    assert params["type"] == "hsmsign" and params["pin_env"] == "HSM_PIN"
    assert Pkcs11Uri.parse(signer.uri_from_params(params)) == Pkcs11Uri.parse(uri)


def test_uri_from_environment_and_errors() -> None:
    env = {"HSM_PKCS11_URI_IMX": "pkcs11:token=t;object=k"}
    assert signer.uri_from_params({"type": "hsmsign", "uri_env": "HSM_PKCS11_URI_IMX"}, env) == env[
        "HSM_PKCS11_URI_IMX"
    ]
    with pytest.raises(ConfigError, match="not set"):
        signer.uri_from_params({"uri_env": "NOPE"}, {})
    with pytest.raises(ConfigError, match="names no key"):
        signer.uri_from_params({"type": "hsmsign"}, {})
    with pytest.raises(ConfigError, match="pin-value"):
        signer.signer_string("pkcs11:token=t;object=k?pin-value=1234")


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ("signer: type=pkcs11;so_path=/usr/lib/libsofthsm2.so;token_label=t;key_label=k;pin=1234", True),
        ('  "signer": "type=hsmsign;token=t;object=k;pin-value=1234",', True),
        ("Signer: type=pkcs11;so_path=/x.so;user_pin=8642;key_id=01", True),
        ("signer: type=pkcs11;so_path=/x.so;pin=$HSM_PIN", False),
        ("signer: type=pkcs11;so_path=/x.so;pin=/run/secrets/pin", False),
        ("signer: type=hsmsign;token=t;object=k;pin-source=file:/run/pin", False),
        ("signer: type=file;file_path=key.pem", False),
    ],
)
def test_pins_in_spsdk_signer_strings(line: str, flagged: bool) -> None:
    found = signer.pin_findings("family: mimx9352\n" + line + "\n")
    assert bool(found) is flagged
    if found:
        assert found[0].line == 2 and "1234" not in found[0].excerpt and "8642" not in found[0].excerpt
    audit = [f for f in scan_text("family: mimx9352\n" + line + "\n", "ahab.yaml") if f.kind == "spsdk-pin"]
    assert bool(audit) is flagged
    for f in audit:
        assert "1234" not in f.format() and "8642" not in f.format() and f.severity == "error"


HIDE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "spsdk" or name.startswith("spsdk."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from hsmsign.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_imx_without_spsdk_is_one_line_with_the_extra_to_install(tmp_path: Path) -> None:
    config = tmp_path / "ahab.yaml"
    config.write_text("family: mimx9352\nsigner: type=file;file_path=k.pem\n")
    image = tmp_path / "flash.bin"
    image.write_bytes(b"\0" * 64)
    for argv in (
        ["imx", "ahab", "sign", "--config", str(config), "-o", str(tmp_path / "o.bin"), str(image)],
        ["imx", "hab", "sign", "--config", str(config), "-o", str(tmp_path / "o.bin")],
        ["imx", "srk", "--kind", "ahab", "--table", str(tmp_path / "t"), "--fuses", str(tmp_path / "f")],
    ):
        done = subprocess.run(
            [sys.executable, "-c", HIDE, *argv, "--mode", "development",
             "--uri", "pkcs11:token=t;object=k?module-path=/nonexistent/module.so"],
            env={**os.environ, "PYTHONPATH": str(LIB)}, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "SPSDK" in done.stderr and "pip install 'hsmsign[nxp]'" in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 2
        assert not (tmp_path / "o.bin").exists() and not (tmp_path / "t").exists()


def test_pin_in_the_configuration_is_refused_in_production_before_spsdk_loads(tmp_path: Path) -> None:
    config = tmp_path / "ahab.yaml"
    config.write_text("family: mimx9352\nsigner: type=pkcs11;so_path=/x.so;pin=2468\n")
    image = tmp_path / "flash.bin"
    image.write_bytes(b"\0" * 64)
    done = subprocess.run(
        [sys.executable, "-c", HIDE, "imx", "ahab", "sign", "--config", str(config), "-o",
         str(tmp_path / "o.bin"), str(image), "--mode", "production", "--uri", "pkcs11:token=t;object=k"],
        env={**os.environ, "PYTHONPATH": str(LIB)}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert "holds a PIN" in done.stderr and "2468" not in done.stderr
    assert not (tmp_path / "o.bin").exists()
