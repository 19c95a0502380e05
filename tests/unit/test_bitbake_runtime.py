"""The classes' Python in hsmsign.bitbake: dm-verity inputs, the swupdate sign tool, the token AES helpers."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest
from hsmsign import bitbake as hb


def test_dmverity_inputs_prefer_the_staged_env_and_take_the_newest_image(tmp_path: Path) -> None:
    deploy, staging = tmp_path / "deploy", tmp_path / "staging"
    deploy.mkdir()
    staging.mkdir()
    old = deploy / "img-old.ext4.verity"
    new = deploy / "img-new.ext4.verity"
    for i, path in enumerate((old, new)):
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    os.symlink(new.name, deploy / "img-latest.ext4.verity")
    (deploy / "img-old.ext4.verity.env").write_text("ROOT_HASH=00\n")
    with pytest.raises(hb.TaskError, match=r"no squashfs\.verity image and \.verity\.env"):
        hb.dmverity_inputs(str(deploy), str(staging), "img", "squashfs")
    # older meta-security: the .env next to the image
    assert hb.dmverity_inputs(str(deploy), str(staging), "img", "ext4") == (
        str(deploy / "img-old.ext4.verity.env"),
        str(new),
    )
    # newer meta-security: the .env in STAGING_VERITY_DIR wins
    (staging / "img.ext4.verity.env").write_text("ROOT_HASH=11\n")
    params, image = hb.dmverity_inputs(str(deploy), str(staging), "img", "ext4")
    assert params == str(staging / "img.ext4.verity.env") and image == str(new)


def _swu(**values: str) -> hb.DictData:
    base = {
        "HSMSIGN_CMD": "hsmsign",
        "HSM_PKCS11_URI_SWUPDATE": "pkcs11:token=t;object=swu key?pin-source=file:/run/pin",
        "HSMSIGN_SWUPDATE_DIR": "/work dir",
        "HSMSIGN_SWUPDATE_MODE": "cms",
        "HSMSIGN_SWUPDATE_CERT": "/certs/swu.pem",
    }
    return hb.DictData({**base, **values})


def test_swupdate_sign_tool_is_one_shell_command_with_every_value_quoted() -> None:
    argv = shlex.split(hb.swupdate_sign_tool(_swu()))
    assert argv == [
        "hsmsign", "swupdate", "sign", "--uri", "pkcs11:token=t;object=swu key?pin-source=file:/run/pin",
        "--signing-mode", "cms", "--cert", "/certs/swu.pem",
        "--output", "/work dir/sw-description.sig", "/work dir/sw-description",
    ]
    rsa = shlex.split(hb.swupdate_sign_tool(_swu(HSMSIGN_SWUPDATE_MODE="rsa", SWUPDATE_ENCRYPT_SWDESC="1")))
    assert "--cert" not in rsa and rsa[-1] == "/work dir/sw-description.plain"


class _Flags:
    def __init__(self) -> None:
        self.flags: dict[tuple[str, str], str] = {}

    def getVarFlag(self, name: str, flag: str) -> Any:  # noqa: N802 - BitBake's API
        return self.flags.get((name, flag))

    def setVarFlag(self, name: str, flag: str, value: str) -> None:  # noqa: N802 - BitBake's API
        self.flags[(name, flag)] = value


def test_swupdate_token_aes_helpers() -> None:
    calls: list[tuple[str, ...]] = []
    failures: list[str] = []

    def fail(message: str) -> None:
        failures.append(message)
        raise RuntimeError(message)

    marker = "pkcs11:token=t;object=aes"
    helpers = hb.SwupdateTokenAes(marker, "", True, lambda *a: calls.append(a), fail)
    assert len(helpers.bundle_iv) == 32 and int(helpers.bundle_iv, 16) >= 0
    assert helpers.extract_keys(marker) == (marker, helpers.bundle_iv)
    with pytest.raises(RuntimeError, match="AES key file /keys/aes"):
        helpers.extract_keys("/keys/aes")
    data = _Flags()
    rootfs_iv = helpers.get_iv(data, None, "rootfs.ext4")
    assert rootfs_iv != helpers.bundle_iv and helpers.get_iv(data, None, "rootfs.ext4") == rootfs_iv
    assert helpers.get_iv(data, None, "sw-description") == helpers.bundle_iv
    helpers.encrypt_file("in", "out", marker, rootfs_iv)
    assert calls == [("in", "out", rootfs_iv)]
    with pytest.raises(RuntimeError, match="not the token's"):
        helpers.encrypt_file("in", "out", "/keys/aes", rootfs_iv)
    assert set(helpers.overrides()) == {"swupdate_extract_keys", "swupdate_get_IV", "swupdate_encrypt_file"}
    # scarthgap (no swupdate_get_IV in meta-swupdate): every file gets the bundle IV, which the user may fix
    fixed = hb.SwupdateTokenAes(marker, "ab" * 16, False, lambda *a: None, fail)
    assert fixed.get_iv(_Flags(), None, "rootfs.ext4") == "ab" * 16


def test_warnings_of_finds_hsmsign_warnings_only_and_redacts_them() -> None:
    """What a class shows with bb.warn after a command that succeeded: hsmsign's warning lines
    (both spellings the CLI prints), without their prefix; progress and other lines stay in the
    log; a secret in a warning is redacted like every task output."""
    stderr = "\n".join(
        [
            "hsmsign: warning: token 'acme' also holds 'fw-ed' (Ed25519/Ed448): keep it elsewhere",
            "hashing rootfs.ext4: 50%",
            "hsmsign: WARNING: production signing with a SOFTWARE token (acme) because X=1",
            "hsmsign: warning: URI pkcs11:token=a;object=b?pin-value=hunter2hunter2 was given",
            "hsmsign: warning:   ",
            "  hint: not a warning",
        ]
    )
    found = hb.warnings_of(stderr)
    assert found[:2] == [
        "token 'acme' also holds 'fw-ed' (Ed25519/Ed448): keep it elsewhere",
        "production signing with a SOFTWARE token (acme) because X=1",
    ]
    assert len(found) == 3 and "hunter2hunter2" not in found[2] and "pin-value" in found[2]
    assert hb.warnings_of("") == []
