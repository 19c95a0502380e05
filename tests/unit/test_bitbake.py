"""hsmsign.bitbake with a dict-backed datastore: role URIs, key identity, checks, PIN hand-over."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hsmsign import bitbake as hb

URI = "pkcs11:token=acme-prod;object=fw-signing"
FP = "ab" * 32


def data(**values: str) -> hb.DictData:
    base = {"HSMSIGN_MODE": "production", "HSMSIGN_ENABLE": "1"}
    base.update(values)
    return hb.DictData(base)


def test_role_uri_falls_back_to_default_and_spl_to_uboot() -> None:
    d = data(HSM_PKCS11_URI=URI, HSM_PKCS11_URI_UBOOT="pkcs11:token=t;object=uboot")
    assert hb.role_uri(d, "ROOTFS") == URI
    assert hb.role_uri(d, "SPL") == "pkcs11:token=t;object=uboot"
    # the AES key never defaults to a signing key
    assert hb.role_uri(d, "ENCRYPT") == ""


def test_dictdata_expands_references() -> None:
    d = data(HSM_PKCS11_URI=URI, HSM_PKCS11_URI_ROOTFS="${HSM_PKCS11_URI}")
    assert hb.role_uri(d, "ROOTFS") == URI


def test_key_identity_drops_pin_source_keeps_key_and_pin() -> None:
    a = data(HSM_PKCS11_URI=URI + "?pin-source=file:/run/a", HSMSIGN_PUBKEY_SHA256=FP)
    b = data(HSM_PKCS11_URI=URI + "?pin-source=file:/other/b", HSMSIGN_PUBKEY_SHA256=FP)
    c = data(HSM_PKCS11_URI="pkcs11:token=acme-prod;object=fw-2027", HSMSIGN_PUBKEY_SHA256=FP)
    assert hb.key_identity(a, "ROOTFS") == hb.key_identity(b, "ROOTFS")
    assert "pin-source" not in hb.key_identity(a, "ROOTFS")
    assert hb.key_identity(a, "ROOTFS") != hb.key_identity(c, "ROOTFS")
    assert FP in hb.key_identity(a, "ROOTFS")
    # a role pin overrides the global one
    e = data(HSM_PKCS11_URI=URI, HSMSIGN_PUBKEY_SHA256=FP, HSMSIGN_PUBKEY_SHA256_ROOTFS="cd" * 32)
    assert "cd" * 32 in hb.key_identity(e, "ROOTFS")


def test_broken_uri_identity_never_echoes_the_text() -> None:
    ident = hb.uri_identity("pkcs11:token=x?pin-value=123456&&&%zz")
    assert "123456" not in ident


def test_pin_value_anywhere_is_fatal_in_both_modes() -> None:
    for mode in ("production", "development"):
        d = data(HSMSIGN_MODE=mode, HSM_PKCS11_URI=URI + "?pin-value=1234")
        problems = [p for p in hb.check_config(d) if p.fatal]
        assert any(p.variable == "HSM_PKCS11_URI" and "pin-value" in p.message for p in problems)
        assert all("1234" not in p.format() for p in problems)


def test_pin_value_in_other_scanned_variable() -> None:
    d = data(HSM_PKCS11_URI=URI, MY_SIGN_URI="pkcs11:token=x?pin-value=9999")
    problems = hb.check_config(d, ["MY_SIGN_URI"])
    assert [p.variable for p in problems if p.fatal] == ["MY_SIGN_URI"]


def test_private_key_in_variable_is_fatal() -> None:
    pem = "-----BEGIN " + "PRIVATE KEY-----\\nMIIB\\n-----END " + "PRIVATE KEY-----"
    d = data(HSM_PKCS11_URI=URI, SOME_KEY=pem)
    problems = hb.check_config(d, ["SOME_KEY"])
    assert any(p.variable == "SOME_KEY" and p.fatal and "private key" in p.message for p in problems)


def test_key_file_variables_fatal_in_production_warning_in_development(tmp_path: object) -> None:
    keydir = os.path.join(str(tmp_path), "keys")
    os.makedirs(keydir)
    with open(os.path.join(keydir, "dev.key"), "w") as fh:
        fh.write("not really a key\n")
    prod = data(HSM_PKCS11_URI=URI, UBOOT_SIGN_KEYDIR=keydir, SWUPDATE_PRIVATE_KEY="/k/priv.pem")
    names = {p.variable: p for p in hb.check_config(prod)}
    assert names["UBOOT_SIGN_KEYDIR"].fatal and "dev.key" in names["UBOOT_SIGN_KEYDIR"].message
    assert names["SWUPDATE_PRIVATE_KEY"].fatal
    assert "remove SWUPDATE_PRIVATE_KEY" in names["SWUPDATE_PRIVATE_KEY"].fix
    dev = data(
        HSMSIGN_MODE="development", HSM_PKCS11_URI=URI, UBOOT_SIGN_KEYDIR=keydir, SWUPDATE_CMS_KEY="/k/c.key"
    )
    found = {p.variable: p for p in hb.check_config(dev)}
    assert not found["UBOOT_SIGN_KEYDIR"].fatal and not found["SWUPDATE_CMS_KEY"].fatal


def test_keydir_that_is_a_uri_or_holds_no_keys_is_fine(tmp_path: object) -> None:
    d = data(HSM_PKCS11_URI=URI, UBOOT_SIGN_KEYDIR=URI, SPL_SIGN_KEYDIR=str(tmp_path))
    assert [p for p in hb.check_config(d) if p.fatal] == []


def test_keygen_variable_refused_in_production() -> None:
    d = data(HSM_PKCS11_URI=URI, FIT_GENERATE_KEYS="1")
    assert any(p.variable == "FIT_GENERATE_KEYS" and p.fatal for p in hb.check_config(d))


def test_no_uri_is_a_warning_and_disable_is_fatal_only_in_production() -> None:
    problems = hb.check_config(data())
    assert [(p.variable, p.fatal) for p in problems] == [("HSM_PKCS11_URI", False)]
    off_prod = hb.check_config(data(HSMSIGN_ENABLE="0"))
    assert any(p.variable == "HSMSIGN_ENABLE" and p.fatal and "UNSIGNED" in p.message for p in off_prod)
    off_dev = hb.check_config(data(HSMSIGN_ENABLE="0", HSMSIGN_MODE="development"))
    assert any(p.variable == "HSMSIGN_ENABLE" and not p.fatal for p in off_dev)


def test_bad_uri_mode_and_fingerprint_reported() -> None:
    d = data(HSM_PKCS11_URI="file:/keys/x.pem", HSMSIGN_MODE="prod", HSMSIGN_PUBKEY_SHA256="xyz")
    variables = {p.variable for p in hb.check_config(d) if p.fatal}
    assert {"HSM_PKCS11_URI", "HSMSIGN_MODE", "HSMSIGN_PUBKEY_SHA256"} <= variables
    # an unknown mode counts as production
    assert hb.mode(d) == "production"


def test_uboot_required_policy_checked_and_handed_to_fit_tasks_only() -> None:
    bad = hb.check_config(data(HSM_PKCS11_URI=URI, HSMSIGN_UBOOT_REQUIRED="always"))
    assert [(p.variable, p.fatal) for p in bad] == [("HSMSIGN_UBOOT_REQUIRED", True)]
    bad_mode = hb.check_config(data(HSM_PKCS11_URI=URI, HSMSIGN_UBOOT_REQUIRED_MODE="some"))
    assert [(p.variable, p.fatal) for p in bad_mode] == [("HSMSIGN_UBOOT_REQUIRED_MODE", True)]
    # keys U-Boot never enforces: refused in production, a warning in development
    none_prod = hb.check_config(data(HSM_PKCS11_URI=URI, HSMSIGN_UBOOT_REQUIRED="none"))
    assert [(p.variable, p.fatal) for p in none_prod] == [("HSMSIGN_UBOOT_REQUIRED", True)]
    assert "never enforce" in none_prod[0].message
    none_dev = hb.check_config(
        data(HSM_PKCS11_URI=URI, HSMSIGN_UBOOT_REQUIRED="none", HSMSIGN_MODE="development")
    )
    assert [(p.variable, p.fatal) for p in none_dev] == [("HSMSIGN_UBOOT_REQUIRED", False)]
    assert hb.check_config(data(HSM_PKCS11_URI=URI, HSMSIGN_UBOOT_REQUIRED="image")) == []

    d = data(
        HSM_PKCS11_URI=URI,
        HSMSIGN_UBOOT_REQUIRED="conf",
        HSMSIGN_UBOOT_REQUIRED_MODE="any",
        HSMSIGN_FIT_CHECK_SIGN="uboot-fit_check_sign",
    )
    for role in ("UBOOT", "SPL", "FITIMAGE"):
        env = hb.child_env(d, {}, role)
        assert env["HSMSIGN_FIT_REQUIRED"] == "conf" and env["HSMSIGN_FIT_REQUIRED_MODE"] == "any"
        assert env["HSMSIGN_FIT_CHECK_SIGN"] == "uboot-fit_check_sign"
    assert not [k for k in hb.child_env(d, {}, "ROOTFS") if k.startswith("HSMSIGN_FIT_")]
    # empty: nothing handed over, the drop-in then does what mkimage -r does
    assert "HSMSIGN_FIT_REQUIRED" not in hb.child_env(data(HSM_PKCS11_URI=URI), {}, "SPL")


def test_image_key_name_defaults_next_to_the_configuration_key() -> None:
    assert hb.img_key_name(data(HSM_PKCS11_URI=URI)) == "fw-signing-img"
    assert hb.img_key_name(data(HSM_PKCS11_URI=URI, UBOOT_SIGN_IMG_KEYNAME="img-2026")) == "img-2026"


def test_child_env_reads_pin_from_origenv_only() -> None:
    d = data(HSM_PKCS11_URI=URI, HSMSIGN_PIN_ENV="CI_HSM_PIN", HSM_PKCS11_MODULE="/usr/lib/x.so")
    env = hb.child_env(d, {"CI_HSM_PIN": "fake-pin-0000", "HOME": "/home/u"}, "ROOTFS")
    assert env["CI_HSM_PIN"] == "fake-pin-0000"
    assert env["HSMSIGN_PIN_ENV"] == "CI_HSM_PIN"
    assert env["HSM_PKCS11_MODULE"] == "/usr/lib/x.so"
    assert env["HSMSIGN_MODE"] == "production"
    with pytest.raises(hb.TaskError, match="CI_HSM_PIN is not set"):
        hb.child_env(d, {}, "ROOTFS")
    # a pin-source in the URI makes the variable optional
    d2 = data(HSM_PKCS11_URI=URI + "?pin-source=file:/run/pin", HSMSIGN_PIN_ENV="CI_HSM_PIN")
    assert "CI_HSM_PIN" not in hb.child_env(d2, {}, "ROOTFS")


def test_run_hands_pin_in_environment_not_argv(tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "seen")
    script = os.path.join(str(tmp_path), "fake-hsmsign")
    with open(script, "w") as fh:
        fh.write(
            f"#!{sys.executable}\nimport os, sys, json\n"
            f"json.dump({{'argv': sys.argv[1:], 'pin': os.environ.get('CI_HSM_PIN')}}, open({out!r}, 'w'))\n"
        )
    os.chmod(script, 0o700)
    d = data(HSM_PKCS11_URI=URI, HSMSIGN_PIN_ENV="CI_HSM_PIN", HSMSIGN_CMD=script)
    hb.run(d, ["sign", "--output", "x.sig", "x"], "ROOTFS", {"CI_HSM_PIN": "fake-pin-0000"}, base_env={})
    import json

    seen = json.load(open(out))
    assert seen["pin"] == "fake-pin-0000"
    assert "fake-pin-0000" not in " ".join(seen["argv"])
    assert seen["argv"] == ["sign", "--output", "x.sig", "x"]


def test_run_failure_is_task_error_with_redacted_command(tmp_path: object) -> None:
    d = data(HSM_PKCS11_URI=URI, HSMSIGN_CMD=f"{sys.executable} -c 'import sys; sys.exit(5)'")
    with pytest.raises(hb.TaskError, match="exit code 5") as err:
        hb.run(d, ["sign", "--uri", "pkcs11:token=x?pin-value=1234"], "ROOTFS", {})
    assert "1234" not in str(err.value)
    missing = data(HSM_PKCS11_URI=URI, HSMSIGN_CMD="/nonexistent/hsmsign")
    with pytest.raises(hb.TaskError, match="hsmsign-native"):
        hb.run(missing, ["info"], "ROOTFS", {})


def test_lockfile_per_token_and_off_switch() -> None:
    d = data(HSM_PKCS11_URI=URI, TMPDIR="/b/tmp")
    assert hb.lockfile(d, "ROOTFS") == "/b/tmp/hsmsign-token-acme-prod.lock"
    other = data(HSM_PKCS11_URI=URI, HSM_PKCS11_URI_SWUPDATE="pkcs11:token=swu;object=k", TMPDIR="/b/tmp")
    assert hb.lockfile(other, "SWUPDATE") != hb.lockfile(other, "ROOTFS")
    assert hb.lockfile(data(HSM_PKCS11_URI=URI, TMPDIR="/t", HSMSIGN_LOCK="0"), "ROOTFS") == ""


def test_dev_default_uri_only_in_development(tmp_path: object) -> None:
    d = data(HSMSIGN_MODE="development", HSMSIGN_DEV_HOME=str(tmp_path), HSMSIGN_DEV_MODULE="/lib/s.so")
    uri = hb.dev_default_uri(d)
    assert uri.startswith("pkcs11:token=hsmsign-dev;object=dev-signing?")
    assert f"pin-source=file:{tmp_path}/user-pin" in uri and "pin-value" not in uri
    assert hb.dev_default_uri(data()) == ""


def test_key_name_from_uri_object() -> None:
    assert hb.key_name(data(HSM_PKCS11_URI=URI), "FITIMAGE") == "fw-signing"
    assert hb.key_name(data(HSM_PKCS11_URI="pkcs11:token=t"), "SPL") == "hsmsign-spl"


def test_module_has_no_third_party_or_bb_imports() -> None:
    code = (
        "import sys, hsmsign.bitbake; bad = [m for m in sys.modules "
        "if m.split('.')[0] in ('bb', 'pkcs11', 'cryptography', 'asn1crypto')]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    lib = os.path.join(os.path.dirname(__file__), "..", "..", "meta-hsmsign", "lib")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": lib}, check=False)
    assert done.returncode == 0


def test_verity_root_hash_from_meta_oe_and_meta_security(tmp_path: object) -> None:
    root = "3f" * 32
    params = os.path.join(str(tmp_path), "core.ext4.verity-params")
    with open(params, "w") as fh:  # meta-oe image_types_verity
        fh.write(f"VERITY_DATA_BLOCK_SIZE=4096\nVERITY_ROOT_HASH={root.upper()}\nVERITY_SALT=ab\n")
    assert hb.verity_root_hash(params) == root
    env = os.path.join(str(tmp_path), "core.ext4.verity.env")
    with open(env, "w") as fh:  # meta-security dm-verity-img, from 'veritysetup format' output
        fh.write(f"UUID=8a678132-d493-401d-a0f6-903006c0a5d8\nHASH_TYPE=1\nROOT_HASH={root}\nDATA_SIZE=8192\n")
    assert hb.verity_root_hash(env) == root
    broken = os.path.join(str(tmp_path), "broken.env")
    with open(broken, "w") as fh:
        fh.write("ROOT_HASH=not-a-hash\n")
    with pytest.raises(hb.TaskError, match="no root hash"):
        hb.verity_root_hash(broken)
    with pytest.raises(hb.TaskError, match="cannot read"):
        hb.verity_root_hash(os.path.join(str(tmp_path), "missing.env"))
