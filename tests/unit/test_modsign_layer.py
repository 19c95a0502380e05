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


def snapshot_function(release: str, path: str, head: str) -> str:
    """The body of a function (``head`` a regex of its name) in an OE-Core class of the
    release's snapshot (skips without the snapshot)."""
    cls = SNAPSHOTS / release / "openembedded-core" / "meta" / path
    if not cls.exists():
        pytest.skip(f"no {release} snapshot in {SNAPSHOTS}")
    found = re.search(rf"^{head} \{{\n(.*?)^\}}", cls.read_text(encoding="utf-8"), re.S | re.M)
    assert found is not None, f"{head} not in {cls}"
    return found.group(1)


@pytest.mark.parametrize("release", RELEASES)
def test_oe_core_strips_before_packagesplitfuncs(release: str) -> None:
    """The hook's premise in each release: do_package strips PKGD, then runs PACKAGESPLITFUNCS,
    which hand the files to the packages; so the first PACKAGESPLITFUNCS sees stripped modules."""
    code = snapshot_function(release, "classes-global/package.bbclass", r"python do_package \(\)")
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
    (mods / "e.ko.gz").write_bytes(b"\x1f\x8b")
    (usr / "f.ko.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    (usr / "g.ko.bz2").write_bytes(b"BZh")  # no kernel compresses modules with bzip2
    assert hb.kernel_modules(str(tmp_path)) == [
        str(mods / "a.ko"),
        str(mods / "b.ko.xz"),
        str(mods / "e.ko.gz"),
        str(usr / "d.ko"),
        str(usr / "f.ko.zst"),
    ]
    assert hb.batches([str(i) for i in range(5)], 2) == [["0", "1"], ["2", "3"], ["4"]]


def test_private_key_files(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "signing_key.x509").write_bytes(b"")
    assert hb.private_key_files(str(tmp_path)) == []
    (tmp_path / "certs" / "signing_key.pem").write_bytes(b"x")
    assert hb.private_key_files(str(tmp_path)) == [str(tmp_path / "certs" / "signing_key.pem")]


def kernel_tarball_block(release: str) -> str:
    """The lines of oe-core's kernel_do_deploy that make the modules tarball (skips without the
    release's snapshot)."""
    body = snapshot_function(release, "classes-recipe/kernel.bbclass", r"kernel_do_deploy\(\)")
    block = re.search(
        r'^\t\tif \[ -n "\$\{SOURCE_DATE_EPOCH\}" \]; then\n.*?\| gzip -9n > '
        r"\$deployDir/modules-\$\{MODULE_TARBALL_NAME\}\.tgz\n",
        body,
        re.S | re.M,
    )
    assert block is not None, "kernel_do_deploy no longer makes modules-${MODULE_TARBALL_NAME}.tgz this way"
    return block.group(0)


@pytest.mark.parametrize("release", RELEASES)
def test_oe_core_deploys_the_modules_tarball_from_d_into_deploydir(release: str) -> None:
    """The tarball hook's premises in each release: kernel_do_deploy tars ${D}${root_prefix}/lib
    into $deployDir (DEPLOYDIR, or its KERNEL_DEPLOYSUBDIR), which sstate copies to
    DEPLOY_DIR_IMAGE in sstate_task_postfunc, put after every other postfunc."""
    block = kernel_tarball_block(release)
    assert 'TAR_ARGS="--sort=name --clamp-mtime --mtime=@${SOURCE_DATE_EPOCH}"' in block
    assert 'TAR_ARGS="$TAR_ARGS --owner=0 --group=0"' in block
    assert "tar $TAR_ARGS -cv -C ${D}${root_prefix} lib | gzip -9n" in block
    meta = SNAPSHOTS / release / "openembedded-core" / "meta"
    kernel = (meta / "classes-recipe" / "kernel.bbclass").read_text(encoding="utf-8")
    assert 'deployDir="${DEPLOYDIR}/${KERNEL_DEPLOYSUBDIR}"' in kernel
    deploy = (meta / "classes-recipe" / "deploy.bbclass").read_text(encoding="utf-8")
    assert 'do_deploy[sstate-inputdirs] = "${DEPLOYDIR}"' in deploy
    assert 'do_deploy[sstate-outputdirs] = "${DEPLOY_DIR_IMAGE}"' in deploy
    sstate = (meta / "classes-global" / "sstate.bbclass").read_text(encoding="utf-8")
    assert '+ ["sstate_task_postfunc"] +' in sstate


def test_class_rebuilds_the_modules_tarball_before_sstate() -> None:
    text = CLASS.read_text(encoding="utf-8")
    assert 'postfuncs.insert(at, "hsmsign_modules_tarball")' in text
    assert 'postfuncs.index("sstate_task_postfunc")' in text
    # for every kernel: it signs kernel_do_deploy's tarball when MODULE_TARBALL_DEPLOY made one,
    # and checks the other archives in DEPLOYDIR in any case (test_bitbake_modsign runs both)
    assert 'd.getVar("MODULE_TARBALL_DEPLOY")' not in text
    assert "unsigned_modules_in_archives(top, skip=[tarball])" in text
    # one signing function for PKGD and the tarball
    assert text.count('hsmsign_run(d, ["modsign"') == 1


def module_tree(top: Path) -> Path:
    """A ${D}${root_prefix} with a module tree as modules_install leaves it."""
    mods = top / "lib" / "modules" / "6.6.0-test"
    (mods / "kernel" / "drivers" / "misc").mkdir(parents=True)
    (mods / "kernel" / "drivers" / "misc" / "a.ko").write_bytes(b"\x7fELF" + b"a" * 200)
    (mods / "kernel" / "b.ko").write_bytes(b"\x7fELF" + b"b" * 100)
    (mods / "modules.order").write_text("kernel/b.ko\nkernel/drivers/misc/a.ko\n")
    (mods / "kernel" / "b.ko").chmod(0o600)
    os.symlink("kernel/b.ko", mods / "b-link.ko")
    (top / "lib" / "firmware").mkdir()
    for path in sorted(top.rglob("*")):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    return top


@pytest.mark.parametrize("epoch", ["1600000000", ""])
def test_modules_tarball_is_made_as_kernel_do_deploy_makes_it(tmp_path: Path, epoch: str) -> None:
    """write_modules_tarball gives the bytes oe-core's own lines give for the same tree, with
    SOURCE_DATE_EPOCH set (clamped mtimes) and without it."""
    import subprocess

    block = kernel_tarball_block("wrynose")
    tree = module_tree(tmp_path / "image")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    script = (
        block.replace("${SOURCE_DATE_EPOCH}", epoch)
        .replace("${D}${root_prefix}", str(tree))
        .replace("${MODULE_TARBALL_NAME}", "test")
    )
    done = subprocess.run(
        ["sh", "-eu", "-c", f"deployDir={theirs}\n{script}"], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    ours = tmp_path / "ours" / "modules-test.tgz"
    ours.parent.mkdir()
    ours.write_bytes(b"the unsigned one")
    hb.write_modules_tarball(str(tree), str(ours), epoch)
    assert ours.read_bytes() == (theirs / "modules-test.tgz").read_bytes()
    assert os.listdir(ours.parent) == ["modules-test.tgz"]


def test_copy_times_restores_what_signing_changed(tmp_path: Path) -> None:
    import shutil

    tree = module_tree(tmp_path / "image")
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    module = copy / "lib" / "modules" / "6.6.0-test" / "kernel" / "b.ko"
    (module.parent / "b.ko.new").write_bytes(b"\x7fELF signed")
    os.replace(module.parent / "b.ko.new", module)  # as hsmsign modsign commits a module
    hb.copy_times(str(tree), str(copy))
    for path in [tree, *tree.rglob("*")]:
        other = copy / path.relative_to(tree)
        assert os.lstat(other).st_mtime_ns == os.lstat(path).st_mtime_ns, other


def test_modules_tarball_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    tarball = tmp_path / "modules-test.tgz"
    tarball.write_bytes(b"old")
    with pytest.raises(hb.TaskError, match="failed with exit code"):
        hb.write_modules_tarball(str(tmp_path / "missing"), str(tarball), "")
    assert tarball.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["modules-test.tgz"]
    assert hb.modules_tar_args("5") == [
        "--sort=name",
        "--clamp-mtime",
        "--mtime=@5",
        "--owner=0",
        "--group=0",
    ]
    assert hb.modules_tar_args("") == ["--owner=0", "--group=0"]


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    import io
    import tarfile

    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unsigned_modules_in_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the kernel's do_deploy postfunc refuses to let sstate deploy: archives in DEPLOYDIR
    (other than the modules tarball it signed) with kernel modules that carry no signature."""
    import lzma
    import shutil
    import subprocess

    from hsmsign.formats import modcompress, modsig

    elf = b"\x7fELF" + b"\0" * 60
    signed = elf + b"pkcs7" + modsig.MAGIC
    xz = lzma.compress(elf, check=lzma.CHECK_CRC32)
    deploy = tmp_path / "deploy"
    (deploy / "sub").mkdir(parents=True)
    ours = _tar(deploy / "modules-6.6.tgz", {"lib/modules/6.6/kernel/a.ko": elf})  # signed by the layer
    _tar(
        deploy / "all-signed.tar.gz",
        {
            "lib/modules/6.6/kernel/a.ko": signed,
            "lib/modules/6.6/kernel/b.ko.xz": lzma.compress(signed, check=lzma.CHECK_CRC32),
            "lib/modules/6.6/kernel/.debug/a.ko": elf,  # the debug split's copy: no module to load
            "lib/modules/6.6/modules.order": b"kernel/a.ko\n",
            "usr/share/doc/x.ko": elf,  # not below lib/modules
            "lib/modules/6.6/kernel/notelf.ko": b"text",
        },
    )
    custom = _tar(
        deploy / "sub" / "vendor-modules.tar.xz",
        {"./lib/modules/6.6/extra/v.ko": elf, "./lib/modules/6.6/extra/w.ko.xz": xz},
        "w:xz",
    )
    os.symlink(custom.name, deploy / "sub" / "vendor-modules-latest.tar.xz")
    (deploy / "bzImage").write_bytes(b"kernel")
    found = hb.unsigned_modules_in_archives(str(deploy), skip=[str(ours)])
    assert found == [
        (str(custom), "./lib/modules/6.6/extra/v.ko"),
        (str(custom), "./lib/modules/6.6/extra/w.ko.xz"),
    ]
    assert hb.unsigned_modules_in_archives(str(deploy), skip=[str(ours), str(custom)]) == []
    assert hb.unsigned_modules_in_archives(str(deploy / "sub"), skip=[str(custom)]) == []
    # the layer's own tarball is checked like any other when it is not skipped
    assert (str(ours), "lib/modules/6.6/kernel/a.ko") in hb.unsigned_modules_in_archives(str(deploy))
    if shutil.which("zstd"):
        plain = _tar(tmp_path / "plain.tar", {"lib/modules/6.6/z.ko": elf}, "w")
        zst = deploy / "z.tar.zst"
        subprocess.run(["zstd", "-q", "-f", str(plain), "-o", str(zst)], check=True)
        assert (str(zst), "lib/modules/6.6/z.ko") in hb.unsigned_modules_in_archives(
            str(deploy), skip=[str(ours), str(custom)]
        )
        zst.unlink()
        # .ko.zst members are decompressed by one zstd process per 32: every one is still looked at
        packed = {n: modcompress.compress(elf if n in (3, 35) else signed, "zstd", "m.ko") for n in range(40)}
        many = _tar(deploy / "zst-modules.tgz", {f"lib/modules/6.6/m{n}.ko.zst": packed[n] for n in packed})
        assert hb.unsigned_modules_in_archives(str(deploy), skip=[str(ours), str(custom)]) == [
            (str(many), "lib/modules/6.6/m3.ko.zst"),
            (str(many), "lib/modules/6.6/m35.ko.zst"),
        ]
        packed[20] = packed[20][:-8]
        _tar(many, {f"lib/modules/6.6/m{n}.ko.zst": packed[n] for n in packed})
        with pytest.raises(hb.TaskError, match=r"zst-modules\.tgz.*m20\.ko\.zst: corrupt zstd data"):
            hb.unsigned_modules_in_archives(str(deploy), skip=[str(ours), str(custom)])
        many.unlink()
    # what cannot be read fails closed, naming the archive
    broken = deploy / "broken.tgz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(hb.TaskError, match=r"cannot read .*broken\.tgz to check its kernel modules"):
        hb.unsigned_modules_in_archives(str(deploy), skip=[str(ours), str(custom)])
    broken.unlink()
    _tar(deploy / "badxz.tgz", {"lib/modules/6.6/c.ko.xz": b"\xfd7zXZ\x00cut"})
    with pytest.raises(hb.TaskError, match=r"badxz\.tgz.*corrupt xz data"):
        hb.unsigned_modules_in_archives(str(deploy), skip=[str(ours), str(custom)])
    (deploy / "badxz.tgz").unlink()
    _tar(deploy / "big.tgz", {"lib/modules/6.6/huge.ko": elf + bytes(200)})
    monkeypatch.setattr(modcompress, "MAX_MODULE", 100)
    with pytest.raises(hb.TaskError, match=r"big\.tgz: lib/modules/6\.6/huge\.ko has 264 bytes, more than"):
        hb.unsigned_modules_in_archives(str(deploy), skip=[str(ours), str(custom)])


def test_a_corrupt_zstd_modules_archive_fails_closed(tmp_path: Path) -> None:
    """A .tar.zst cut short may still end on a tar member boundary: zstd's exit status counts."""
    import shutil
    import subprocess

    if shutil.which("zstd") is None:
        pytest.skip("apt-get install zstd")
    elf = b"\x7fELF" + b"\0" * 60
    plain = _tar(tmp_path / "m.tar", {"lib/modules/6.6/a.ko": elf + os.urandom(20000)}, "w")
    packed = subprocess.run(["zstd", "-q", "-c", str(plain)], capture_output=True, check=True).stdout
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "cut.tar.zst").write_bytes(packed[: len(packed) - 8])
    with pytest.raises(hb.TaskError, match=r"cannot read .*cut\.tar\.zst to check its kernel modules"):
        hb.unsigned_modules_in_archives(str(deploy))
    (deploy / "cut.tar.zst").write_bytes(packed[:4] + b"\0" * 64)
    with pytest.raises(hb.TaskError, match=r"cannot read .*cut\.tar\.zst"):
        hb.unsigned_modules_in_archives(str(deploy))


def test_image_kernel_modules_walk_only_the_module_folders(tmp_path: Path) -> None:
    """The image check looks in lib/modules and usr/lib/modules only, each module once with
    usrmerge (lib -> usr/lib), and never through a link out of the image."""
    elf = b"\x7fELF" + b"\0" * 60
    merged = tmp_path / "merged"
    mods = merged / "usr" / "lib" / "modules" / "6.6" / "kernel"
    mods.mkdir(parents=True)
    (mods / "a.ko").write_bytes(elf)
    (mods / "b.ko.xz").write_bytes(b"\xfd7zXZ\x00")
    os.symlink("usr/lib", merged / "lib")
    (merged / "usr" / "share").mkdir()
    (merged / "usr" / "share" / "c.ko").write_bytes(elf)  # not below lib/modules
    assert hb.image_kernel_modules(str(merged)) == [str(mods / "a.ko"), str(mods / "b.ko.xz")]
    split = tmp_path / "split"
    (split / "lib" / "modules" / "6.6").mkdir(parents=True)
    (split / "lib" / "modules" / "6.6" / "d.ko").write_bytes(elf)
    host = tmp_path / "host"
    (host / "lib" / "modules").mkdir(parents=True)
    (host / "lib" / "modules" / "e.ko").write_bytes(elf)
    (split / "usr").mkdir()
    os.symlink(str(host / "lib"), split / "usr" / "lib")  # an absolute link out of the image
    assert hb.image_kernel_modules(str(split)) == [str(split / "lib" / "modules" / "6.6" / "d.ko")]
    assert hb.image_kernel_modules(str(tmp_path / "empty")) == []
