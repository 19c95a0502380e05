"""One role table: the bbclass ``??=`` chain, bitbake.py, devtoken and the settings agree with it."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from hsmsign import bitbake as hb
from hsmsign import devtoken, roles
from hsmsign.errors import ConfigError
from hsmsign.settings import PinnedFingerprints as PF
from hsmsign.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BBCLASS = ROOT / "meta-hsmsign" / "classes" / "hsmsign.bbclass"
FP_A, FP_B, FP_C = "aa" * 32, "bb" * 32, "cc" * 32


def class_defaults() -> dict[str, str]:
    text = BBCLASS.read_text(encoding="utf-8")
    return dict(re.findall(r'^(HSM_PKCS11_URI\w*) \?\?= "(.*)"$', text, re.M))


def test_bbclass_chain_is_the_role_table() -> None:
    defaults = class_defaults()
    for role in roles.ROLE_TABLE:
        assert role.variable in defaults, f"{role.variable} has no ??= default in hsmsign.bbclass"
        if role.name == roles.DEFAULT:
            continue  # the development token's URI, not a chain
        want = "${" + roles.BY_NAME[role.fallback].variable + "}" if role.fallback else ""
        assert defaults[role.variable] == want, f"{role.variable}: class says {defaults[role.variable]!r}"
    assert set(defaults) == {r.variable for r in roles.ROLE_TABLE}


def test_bbclass_header_comment_shows_the_same_chain() -> None:
    text = BBCLASS.read_text(encoding="utf-8")
    shown = dict(re.findall(r'^#\s+(HSM_PKCS11_URI_\w+)\s+\?\?= "([^"]*)"', text, re.M))
    assert shown == {k: v for k, v in class_defaults().items() if k != "HSM_PKCS11_URI"}


def test_fitimage_key_is_the_uboot_key_unless_set() -> None:
    d = hb.DictData(
        {"HSM_PKCS11_URI": "pkcs11:token=t;object=all", "HSM_PKCS11_URI_UBOOT": "pkcs11:token=t;object=ub"}
    )
    assert hb.role_uri(d, "FITIMAGE") == hb.role_uri(d, "UBOOT") == "pkcs11:token=t;object=ub"
    assert hb.role_uri(d, "SPL") == "pkcs11:token=t;object=ub"
    assert hb.role_uri(d, "ROOTFS") == "pkcs11:token=t;object=all"
    assert hb.role_uri(d, "ENCRYPT") == ""


def test_devtoken_and_bitbake_use_the_table() -> None:
    assert hb.ROLES == tuple(r.name for r in roles.ROLE_TABLE[1:])
    for role in roles.ROLE_TABLE:
        assert devtoken.ROLES[role.name.lower()] == (role.dev_label, role.key_type)
        assert devtoken.ROLE_VARIABLES[role.name.lower()] == role.variable


def test_pin_follows_the_uri_chain_and_never_reaches_the_aes_key() -> None:
    d = hb.DictData({"HSMSIGN_PUBKEY_SHA256": FP_A, "HSMSIGN_PUBKEY_SHA256_UBOOT": FP_B})
    assert hb.pubkey_fingerprint(d, "ROOTFS") == FP_A
    assert hb.pubkey_fingerprint(d, "FITIMAGE") == FP_B
    assert hb.fingerprint_variable(d, "SPL") == "HSMSIGN_PUBKEY_SHA256_UBOOT"
    assert hb.pubkey_fingerprint(d, "ENCRYPT") == ""
    settings = Settings(fingerprints={"HSMSIGN_PUBKEY_SHA256": FP_A, "HSMSIGN_PUBKEY_SHA256_SPL": FP_C})
    assert settings.fingerprints_for_role("SPL") == [PF("HSMSIGN_PUBKEY_SHA256_SPL", (FP_C,))]
    assert settings.fingerprints_for_role("FITIMAGE") == [PF("HSMSIGN_PUBKEY_SHA256", (FP_A,))]
    assert settings.fingerprints_for_role("ENCRYPT") == []


def test_child_env_hands_the_roles_pins_and_reads_back_the_same() -> None:
    d = hb.DictData(
        {
            "HSMSIGN_MODE": "development",
            "HSM_PKCS11_URI": "pkcs11:token=t;object=a",
            "HSM_PKCS11_URI_FITIMAGE": "pkcs11:token=t;object=fit",
            "HSMSIGN_PUBKEY_SHA256": FP_A,
            "HSMSIGN_PUBKEY_SHA256_FITIMAGE": "sha256:" + FP_B.upper(),
            "HSMSIGN_UBOOT_REQUIRED": "conf",
        }
    )
    env = hb.child_env(d, {}, "SPL")
    assert env["HSMSIGN_ROLE"] == "SPL" and env["HSMSIGN_PUBKEY_SHA256"] == FP_A
    back = Settings.from_env(env)
    assert back.mode == "development" and back.fit_required == "conf"
    assert back.fingerprints_for_role() == [PF("HSMSIGN_PUBKEY_SHA256", (FP_A,))]
    assert back.fingerprints_for_role("FITIMAGE") == [PF("HSMSIGN_PUBKEY_SHA256_FITIMAGE", (FP_B,))]
    # the U-Boot task signs with two roles' keys: the child knows which URI is whose
    assert back.role_uris["FITIMAGE"] == "pkcs11:token=t;object=fit"
    assert back.role_uris["SPL"] == "pkcs11:token=t;object=a"
    assert Settings.from_env(back.to_env()) == back
    rootfs = hb.child_env(d, {}, "ROOTFS")
    assert "HSM_PKCS11_URI_FITIMAGE" not in rootfs and rootfs["HSMSIGN_ROLE"] == "ROOTFS"


def test_settings_refuse_bad_values_with_the_variable_named() -> None:
    with pytest.raises(ConfigError, match="HSMSIGN_PUBKEY_SHA256_ROOTFS"):
        Settings.from_env({"HSMSIGN_PUBKEY_SHA256_ROOTFS": "not-a-fingerprint"})
    with pytest.raises(ConfigError, match="HSMSIGN_FIT_REQUIRED"):
        Settings.from_env({"HSMSIGN_FIT_REQUIRED": "sometimes"})
    with pytest.raises(ConfigError, match="unknown key role"):
        Settings.from_env({"HSMSIGN_ROLE": "kernel"})
    bad = hb.DictData({"HSM_PKCS11_URI": "pkcs11:token=t;object=a", "HSMSIGN_PUBKEY_SHA256": "xyz"})
    with pytest.raises(hb.TaskError, match="HSMSIGN_PUBKEY_SHA256"):
        hb.child_env(bad, {}, "ROOTFS")


# ------------------------------------------------------------------ task-side failures of HSMSIGN_CMD


def _run(tmp_path: Path, cmd: str) -> str:
    d = hb.DictData({"HSM_PKCS11_URI": "pkcs11:token=t;object=a", "HSMSIGN_CMD": cmd})
    with pytest.raises(hb.TaskError) as err:
        hb.run(d, ["sign", "x"], "ROOTFS", {}, base_env={"PATH": "/usr/bin:/bin"}, cwd=str(tmp_path))
    text = str(err.value)
    assert "Traceback" not in text
    return text


def test_run_names_hsmsign_cmd_when_the_command_cannot_run(tmp_path: Path) -> None:
    text = _run(tmp_path, str(tmp_path / "no-such-hsmsign"))
    assert text.startswith("HSMSIGN_CMD:") and "not found" in text
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    if os.geteuid() != 0:  # root may execute anything with an x bit; this one has none anyway
        text = _run(tmp_path, str(script))
        assert text.startswith("HSMSIGN_CMD:") and "cannot be run" in text
    # an interpreter the build user cannot find: the kernel reports the script as not found
    script2 = tmp_path / "bad-interpreter"
    script2.write_text("#!/nonexistent/python3\n")
    script2.chmod(script2.stat().st_mode | stat.S_IXUSR)
    assert _run(tmp_path, str(script2)).startswith("HSMSIGN_CMD:")


def test_run_reports_a_signal_and_an_exit_code_in_one_line(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    killed.write_text("#!/bin/sh\nkill -9 $$\n")
    killed.chmod(0o755)
    text = _run(tmp_path, str(killed))
    assert "killed by SIGKILL" in text and "nothing was signed" in text
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'hsmsign: error: the key is wrong' >&2\nexit 4\n")
    failing.chmod(0o755)
    text = _run(tmp_path, str(failing))
    first = text.splitlines()[0]
    assert "exit code 4 (policy refusal)" in first
    assert "the key is wrong" in text


def test_settings_are_an_immutable_value() -> None:
    one = Settings(mode="development", fingerprints={"HSMSIGN_PUBKEY_SHA256": FP_A})
    assert one == Settings(mode="development", fingerprints={"HSMSIGN_PUBKEY_SHA256": FP_A})
    assert one != Settings(mode="development") and Settings() == Settings(mode="production")
    assert Settings().fingerprints == {} and Settings().role_uris == {}
    assert "mode='development'" in repr(one)
    with pytest.raises(AttributeError, match="immutable"):
        one.mode = "production"  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(one)  # holds dicts, as the dataclass it was
    with pytest.raises(ConfigError, match="HSMSIGN_MODE='test'"):
        Settings(mode="test")
    assert Settings(mode="test", check=False).mode == "test"
    import copy
    import pickle

    for made in (copy.copy(one), copy.deepcopy(one), pickle.loads(pickle.dumps(one))):  # noqa: S301
        assert made == one and made.fingerprints == {"HSMSIGN_PUBKEY_SHA256": FP_A}
