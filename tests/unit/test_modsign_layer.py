"""The layer side of module signing: where the hook sits in oe-core's do_package, the kernel
configuration it writes, and the helpers hsmsign-modsign.bbclass calls."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hsmsign import bitbake as hb
from hsmsign import roles

ROOT = Path(__file__).resolve().parents[2]
CLASS = ROOT / "meta-hsmsign" / "classes" / "hsmsign-modsign.bbclass"
SNAPSHOTS = Path(os.environ.get("HSMSIGN_YOCTO_CACHE", "/home/bbuser/.cache/hsmsign/yocto"))
RELEASES = ("scarthgap", "wrynose", "master")


@pytest.mark.parametrize("release", RELEASES)
def test_oe_core_strips_before_packagesplitfuncs(release: str) -> None:
    """The hook's premise in each release: do_package strips PKGD, then runs PACKAGESPLITFUNCS,
    which hand the files to the packages; so the first PACKAGESPLITFUNCS sees stripped modules."""
    package = SNAPSHOTS / release / "openembedded-core" / "meta" / "classes-global" / "package.bbclass"
    if not package.exists():
        pytest.skip(f"no {release} snapshot in {SNAPSHOTS}")
    text = package.read_text(encoding="utf-8")
    body = re.search(r"^python do_package \(\) \{\n(.*?)^\}", text, re.S | re.M)
    assert body is not None
    code = body.group(1)
    order = [
        code.index("PACKAGE_PREPROCESS_FUNCS"),
        code.index("oe.package.process_split_and_strip_files(d)"),
        code.index("PACKAGESPLITFUNCS"),
        code.index("PACKAGEFUNCS'"),
    ]
    assert order == sorted(order), order
    # and oe-core's strip leaves a signed module alone (so re-packaging never breaks one)
    lib = (SNAPSHOTS / release / "openembedded-core" / "meta" / "lib" / "oe" / "package.py").read_text()
    assert "is_kernel_module_signed(file)" in lib and "Module signature appended" in lib


def test_class_signs_first_in_packagesplitfuncs_and_configures_kernels() -> None:
    text = CLASS.read_text(encoding="utf-8")
    assert 'd.prependVar("PACKAGESPLITFUNCS", "hsmsign_sign_modules ")' in text
    assert '"do_configure", "postfuncs", " hsmsign_modsign_kconfig"' in text
    assert '"do_shared_workdir", "prefuncs", " hsmsign_modsign_nokey"' in text
    assert 'inherits_class("kernel", d)' in text and 'inherits_class("module", d)' in text
    main = (ROOT / "meta-hsmsign" / "classes" / "hsmsign.bbclass").read_text(encoding="utf-8")
    assert re.search(r"^inherit .*\bhsmsign-modsign\b", main, re.M)


def test_modules_role_defaults_to_the_kernel_fit_key() -> None:
    assert [r.name for r in roles.chain("MODULES")] == ["MODULES", "FITIMAGE", "UBOOT", "DEFAULT"]
    d = hb.DictData(
        {"HSM_PKCS11_URI": "pkcs11:token=t;object=a", "HSM_PKCS11_URI_UBOOT": "pkcs11:token=t;object=u"}
    )
    assert hb.role_uri(d, "MODULES") == "pkcs11:token=t;object=u"
    d = hb.DictData(
        {"HSM_PKCS11_URI": "pkcs11:token=t;object=a", "HSM_PKCS11_URI_MODULES": "pkcs11:token=t;object=m"}
    )
    assert hb.role_uri(d, "MODULES") == "pkcs11:token=t;object=m"
    assert hb.role_uri(d, "FITIMAGE") == "pkcs11:token=t;object=a"


def test_kernel_configuration_has_the_certificate_and_no_key() -> None:
    lines = hb.modsign_kconfig("/b/hsmsign-modules.pem", "sha384", force=True)
    assert 'CONFIG_SYSTEM_TRUSTED_KEYS="/b/hsmsign-modules.pem"' in lines
    assert 'CONFIG_MODULE_SIG_KEY=""' in lines
    assert "# CONFIG_MODULE_SIG_ALL is not set" in lines
    assert "CONFIG_MODULE_SIG_FORCE=y" in lines
    assert "CONFIG_MODULE_SIG_SHA384=y" in lines and "# CONFIG_MODULE_SIG_SHA256 is not set" in lines
    assert "# CONFIG_MODULE_SIG_FORCE is not set" in hb.modsign_kconfig("/c.pem", "sha256", force=False)
    with pytest.raises(hb.TaskError, match="HSMSIGN_MODULES_HASH 'md5'"):
        hb.modsign_kconfig("/c.pem", "md5", force=True)


def test_kconfig_mismatches_reads_a_config_as_olddefconfig_leaves_it() -> None:
    wanted = hb.modsign_kconfig("/c.pem", "sha256", force=True)
    good = "\n".join(["CONFIG_X=y", *wanted])
    assert hb.kconfig_mismatches(good, wanted) == []
    # a BSP that forces MODULE_SIG_ALL back on, and a kernel without MODULE_SIG_FORCE
    bad = good.replace("# CONFIG_MODULE_SIG_ALL is not set", "CONFIG_MODULE_SIG_ALL=y").replace(
        "CONFIG_MODULE_SIG_FORCE=y", ""
    )
    assert hb.kconfig_mismatches(bad, wanted) == [
        "CONFIG_MODULE_SIG_FORCE=y",
        "# CONFIG_MODULE_SIG_ALL is not set",
    ]


def test_kernel_modules_found_as_oe_core_finds_them(tmp_path: Path) -> None:
    mods = tmp_path / "lib" / "modules" / "6.6.0" / "kernel" / "drivers"
    mods.mkdir(parents=True)
    (mods / "a.ko").write_bytes(b"\x7fELF" + b"\0" * 60)
    (mods / "b.ko.xz").write_bytes(b"\xfd7zXZ")
    (mods / "notelf.ko").write_bytes(b"text")
    os.symlink("a.ko", mods / "link.ko")
    other = tmp_path / "usr" / "share"
    other.mkdir(parents=True)
    (other / "c.ko").write_bytes(b"\x7fELF")
    usr = tmp_path / "usr" / "lib" / "modules" / "6.6.0" / "updates"
    usr.mkdir(parents=True)
    (usr / "d.ko").write_bytes(b"\x7fELF")
    # oe-core's debug split: the -dbg package's copy is no module to sign
    (usr / ".debug").mkdir()
    (usr / ".debug" / "d.ko").write_bytes(b"\x7fELF")
    modules, compressed = hb.kernel_modules(str(tmp_path))
    assert modules == [str(mods / "a.ko"), str(usr / "d.ko")]
    assert compressed == [str(mods / "b.ko.xz")]
    assert hb.batches([str(i) for i in range(5)], 2) == [["0", "1"], ["2", "3"], ["4"]]


def test_private_key_files(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "signing_key.x509").write_bytes(b"")
    assert hb.private_key_files(str(tmp_path)) == []
    (tmp_path / "certs" / "signing_key.pem").write_bytes(b"x")
    assert hb.private_key_files(str(tmp_path)) == [str(tmp_path / "certs" / "signing_key.pem")]
