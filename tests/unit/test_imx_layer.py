"""The layer side of i.MX signing: what hsmsign-imx.bbclass reads from meta-freescale, the
helpers it calls, and the SPSDK Python it runs (no SPSDK here: its absence is what is checked).

The premises are read from meta-freescale itself in each release snapshot (scarthgap,
wrynose, master): the names imx-boot's do_compile gives its images, the flash.bin of
imx-boot-container, and the SoC overrides of imx-base.inc. The signing itself runs in
tests/layer/test_bitbake_imx.py (real BitBake, SPSDK, nxpimage ahab verify).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest
from hsmsign import bitbake as hb

ROOT = Path(__file__).resolve().parents[2]
CLASS = ROOT / "meta-hsmsign" / "classes" / "hsmsign-imx.bbclass"
SNAPSHOTS = Path(os.environ.get("HSMSIGN_YOCTO_CACHE", "/home/bbuser/.cache/hsmsign/yocto"))
RELEASES = ("scarthgap", "wrynose", "master")
SIGN = "pkcs11:token=acme;object=imx-srk1?pin-source=file:/run/pin"
SRKS = " ".join(f"pkcs11:token=acme;object=imx-srk{i}" for i in range(4))


def freescale(release: str) -> Path:
    top = SNAPSHOTS / release / "meta-freescale"
    if not top.is_dir():
        pytest.skip(f"no {release} meta-freescale in {SNAPSHOTS}")
    return top


def body(text: str, name: str) -> str:
    found = re.search(rf"^{re.escape(name)}\s*\(\)\s*\{{\n(.*?)^\}}", text, re.S | re.M)
    assert found is not None, f"no {name}() in meta-freescale"
    return found.group(1)


@pytest.mark.parametrize("release", RELEASES)
def test_imx_boot_leaves_the_images_the_class_signs(release: str) -> None:
    """imx-boot's do_compile copies flash.bin to ${S}/${BOOT_CONFIG_MACHINE_EXTRA}-${target}, and
    do_install and do_deploy take exactly those files: signing them in between signs both."""
    text = (freescale(release) / "recipes-bsp" / "imx-mkimage" / "imx-boot_1.0.bb").read_text()
    name = 'BOOT_CONFIG_MACHINE_EXTRA="imx-boot${BOOT_VARIANT}-${MACHINE}-${UBOOT_CONFIG_EXTRA}.bin"'
    compile_, install, deploy = body(text, "do_compile"), body(text, "do_install"), body(text, "do_deploy")
    for code in (compile_, install, deploy):
        assert name in code and "for target in ${IMXBOOT_TARGETS}" in code
    assert "cp ${BOOT_STAGING}/flash.bin ${S}/${BOOT_CONFIG_MACHINE_EXTRA}-${target}" in compile_
    assert "install -m 0644 ${S}/${BOOT_CONFIG_MACHINE_EXTRA}-${target} ${D}/boot/" in install
    assert "install -m 0644 ${S}/${BOOT_CONFIG_MACHINE_EXTRA}-${target} ${DEPLOYDIR}" in deploy
    assert re.search(r"^addtask deploy before do_build after do_compile$", text, re.M)
    # the class's names for the same files
    images = hb.imx_boot_images("/s", "imx93evk", "", "sd fspi", "flash_singleboot flash_singleboot_flexspi")
    assert images[0] == ("/s/imx-boot-imx93evk-sd.bin-flash_singleboot", "flash_singleboot")
    assert [p for p, _ in images][-1] == "/s/imx-boot-imx93evk-fspi.bin-flash_singleboot_flexspi"
    assert hb.imx_boot_images("/s", "m", "-v", "sd", "t") == [("/s/imx-boot-v-m-sd.bin-t", "t")]


@pytest.mark.parametrize("release", RELEASES)
def test_imx_boot_container_leaves_flash_bin_per_u_boot_build(release: str, tmp_path: Path) -> None:
    """U-Boot's build directory per configuration: <config> on scarthgap, <config>-<type> later."""
    text = (freescale(release) / "classes" / "imx-boot-container.bbclass").read_text()
    deploy = body(text, "do_deploy:append")
    if release == "scarthgap":
        assert "install -m 0644 ${B}/${config}/flash.bin" in deploy
        (tmp_path / "imx8mp_evk_defconfig").mkdir()
        (tmp_path / "imx8mp_evk_defconfig" / "flash.bin").write_bytes(b"x")
        built = tmp_path / "imx8mp_evk_defconfig" / "flash.bin"
    else:
        assert 'builddir="${config}-${type}"' in deploy
        assert "install -m 0644 ${B}/${builddir}/flash.bin" in deploy
        (tmp_path / "imx8mp_evk_defconfig-sd").mkdir()
        (tmp_path / "imx8mp_evk_defconfig-sd" / "flash.bin").write_bytes(b"x")
        built = tmp_path / "imx8mp_evk_defconfig-sd" / "flash.bin"
    assert hb.imx_container_images(str(tmp_path), "imx8mp_evk_defconfig", "sd") == [(str(built), "flash.bin")]
    assert hb.imx_container_images("/b", "cfg", "") == [("/b/flash.bin", "flash.bin")]


@pytest.mark.parametrize("release", RELEASES)
def test_every_soc_of_imx_base_maps_to_its_boot_rom(release: str) -> None:
    """The overrides imx-base.inc gives each SoC decide AHAB (with a family) or HAB (8M)."""
    text = (freescale(release) / "conf" / "machine" / "include" / "imx-base.inc").read_text()
    line = r'^MACHINEOVERRIDES_EXTENDER:(mx\w+):use-nxp-bsp\s*=\s*"([^"]*)"'
    extenders = dict(re.findall(line, text, re.M))
    expected = {
        "mx8mm": ("hab", ""),
        "mx8mn": ("hab", ""),
        "mx8mp": ("hab", ""),
        "mx8mq": ("hab", ""),
        "mx8qm": ("ahab", "mimx8qm"),
        "mx8qxp": ("ahab", "mimx8qxp"),
        "mx8dx": ("ahab", "mimx8qxp"),
        "mx8dxl": ("ahab", "mimx8dxl"),
        "mx8ulp": ("ahab", "mimx8ulp"),
        "mx91": ("ahab", "mimx9131"),
        "mx93": ("ahab", "mimx9352"),
        "mx95": ("ahab", "mimx9596"),
    }
    for soc, (kind, family) in expected.items():
        assert soc in extenders, soc
        assert hb.imx_soc(extenders[soc])[:2] == (kind, family), soc
    # i.MX 6/7 (HAB, no imx-boot) are none of them: the task asks for HSMSIGN_IMX_FAMILY
    assert hb.imx_soc(extenders["mx6q"]) == ("", "", "")
    # HSMSIGN_IMX_FAMILY names the part of an AHAB SoC, and never turns 8M into AHAB
    assert hb.imx_soc(extenders["mx93"], "mimx9331")[:2] == ("ahab", "mimx9331")
    assert hb.imx_soc(extenders["mx8mp"], "mimx9352")[:2] == ("hab", "")
    assert hb.imx_soc("qemuarm64", "mimx9352")[:2] == ("ahab", "mimx9352")


def test_srk_table_needs_four_keys_with_the_signing_key_among_them() -> None:
    uris, used = hb.imx_srk_uris(SIGN, SRKS)
    assert len(uris) == 4 and used == 1  # matched by identity: the PIN source does not count
    with pytest.raises(hb.TaskError, match="names 1 key.*holds 4"):
        hb.imx_srk_uris(SIGN, "pkcs11:token=acme;object=imx-srk1")
    with pytest.raises(hb.TaskError, match="names 0 key"):
        hb.imx_srk_uris(SIGN, "")
    with pytest.raises(hb.TaskError, match="HSM_PKCS11_URI_IMX is not one of HSMSIGN_IMX_SRK_URIS"):
        hb.imx_srk_uris("pkcs11:token=acme;object=other", SRKS)


def test_generated_ahab_configuration_and_memory_types() -> None:
    config = hb.imx_ahab_config("mimx9352", ["/w/srk0.pem", "/w/srk1.pem", "/w/srk2.pem", "/w/srk3.pem"], 1)
    assert config["family"] == "mimx9352" and config["srk_set"] == "oem" and config["used_srk_id"] == 1
    assert config["srk_table"] == {"srk_array": ["/w/srk0.pem", "/w/srk1.pem", "/w/srk2.pem", "/w/srk3.pem"]}
    assert config["signer"].startswith("type=hsmsign;")  # replaced by 'hsmsign imx ahab sign --uri'
    assert hb.imx_mem_type("flash_singleboot") == "serial_downloader"
    assert hb.imx_mem_type("flash_singleboot_flexspi") == "flexspi_nor"
    assert hb.imx_mem_type("flash_singleboot", "emmc_boot") == "emmc_boot"


def test_spsdk_python_missing_or_unusable_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(hb.TaskError, match=r"HSMSIGN_SPSDK_PYTHON is empty.*pip install 'hsmsign\[nxp\]'"):
        hb.spsdk_command("")
    with pytest.raises(hb.TaskError, match="not an absolute path"):
        hb.spsdk_command("python3")
    plain = tmp_path / "python3"
    plain.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(hb.TaskError, match="the build user can run"):
        hb.spsdk_command(str(plain))
    plain.chmod(plain.stat().st_mode | stat.S_IXUSR)
    argv, env = hb.spsdk_command(str(plain))
    assert argv == [str(plain), "-m", "hsmsign"]
    assert env["PYTHONPATH"] == str(ROOT / "meta-hsmsign" / "lib") and env["PYTHONNOUSERSITE"] == "1"
    # a Python without SPSDK (this one): the probe names the variable and the fix
    try:
        import spsdk  # noqa: F401
    except ImportError:
        wanted = r"HSMSIGN_SPSDK_PYTHON = .* cannot import SPSDK.*hsmsign\[nxp\]"
        with pytest.raises(hb.TaskError, match=wanted):
            hb.spsdk_check(sys.executable)


def test_run_names_hsmsign_spsdk_python_when_it_cannot_run(tmp_path: Path) -> None:
    d = hb.DictData({"HSMSIGN_MODE": "development", "HSM_PKCS11_URI": "pkcs11:token=t;object=k"})
    gone = str(tmp_path / "venv" / "bin" / "python3")
    with pytest.raises(hb.TaskError, match="HSMSIGN_SPSDK_PYTHON = .*not an absolute path the build user"):
        hb.run(d, ["imx", "srk"], "IMX", {}, spsdk_python=gone)


def test_hab_refusal_says_what_to_do() -> None:
    text = hb.IMX_HAB_REFUSAL.format(soc="mx8mp-generic-bsp", pn="imx-boot")
    assert "SPSDK" in text and "i.MX 8M" in text and "CST" in text
    assert 'HSMSIGN_IMX_SIGN = ""' in text and "\n" not in text


def test_class_hooks_and_hashes() -> None:
    text = CLASS.read_text(encoding="utf-8")
    main = (ROOT / "meta-hsmsign" / "classes" / "hsmsign.bbclass").read_text(encoding="utf-8")
    assert re.search(r"^inherit .*\bhsmsign-imx\b", main, re.M)
    assert "HSMSIGN_KEY_ID_IMX = \"${@hsmsign.bitbake.key_identity(d, 'IMX')}\"\n" in main
    # between do_compile and what takes the images: do_install (package) and do_deploy
    assert text.count('bb.build.addtask("do_hsmsign_imx", "do_install do_deploy", "do_compile", d)') == 2
    assert 'd.getVar("PN") == "imx-boot"' in text and 'inherits_class("imx-boot-container", d)' in text
    assert 'd.appendVarFlag("do_deploy", "postfuncs", " hsmsign_imx_deploy_srk")' in text
    # the key, the SRK table's keys and the configuration in the hashes of do_compile and the task
    assert 'for task in ("do_compile", "do_hsmsign_imx"):' in text
    for name in ("HSMSIGN_KEY_ID_IMX", "HSMSIGN_IMX_SRK_ID", "HSMSIGN_IMX_CONFIG_ID"):
        assert name in text
    assert 'do_hsmsign_imx[vardepsexclude] = "BB_ORIGENV"' in text
    # the 8M refusal comes before anything is signed
    task = text[text.index("python do_hsmsign_imx()") :]
    assert task.index("IMX_HAB_REFUSAL") < task.index("imx_sign_images")
