"""Kernel modules signed in oe-core's real do_package, checked by hsmsign and kmod's modinfo.

A stand-in out-of-tree module recipe (tests/layer/meta-hsmsign-test/modsign/) inherits
oe-core's ``module.bbclass``; since no kernel builds offline, its do_compile makes
relocatable ELF objects with debug info and a ``.modinfo`` section (host gcc) and
do_install puts them where ``modules_install`` does. Everything after that is oe-core's
``do_package``: strip and debug split of PKGD, then PACKAGESPLITFUNCS, whose first function
is the layer's ``hsmsign_sign_modules`` (hsmsign-modsign.bbclass), then
``kernel-module-split``. The layer's own ``hsmsign-modules-cert`` makes the certificate
(development mode: self-signed by the token key, a SoftHSM development token made at run
time).

Offline stand-ins for native recipes: the host's tools (ASSUME_PROVIDED, HOSTTOOLS), the
host's binutils under the target prefix (``x86_64-oe-linux-strip``, ...: MACHINE is
qemux86-64, so the host's binutils handle the target's ELF) and Debian's ``pseudo`` for
pseudo-native (PSEUDO_SYSROOT: do_install and do_package are fakeroot tasks). rpmdeps and
dwarfsrcfiles are left out (SKIP_FILEDEPS, PACKAGE_DEBUG_SPLIT_STYLE =
"debug-without-src"). A stand-in kernel recipe inherits oe-core's ``kernel.bbclass``: its
do_configure is oe-core's, on the Kconfig part of Debian's linux-source
(HSMSIGN_TEST_KCONFIG_TREE, unpacked once per machine by scripts/extract-kconfig-tree) with
a defconfig (64-bit, modules, module signing off), the host's gcc and ld under the target's
names; the layer's postfunc configures module signing with the certificate only and checks it. Its real
``do_shared_workdir`` runs with the layer's prefunc, on a build tree without and with a
``signing_key.pem``. Its do_compile, do_compile_kernelmodules and do_install make what a
kernel build would (a stand-in bzImage, a module from the host's gcc in ${D}/lib/modules);
from there on the tasks are oe-core's: do_package (the kernel's module signed in PKGD),
do_packagedata and do_deploy with MODULE_TARBALL_DEPLOY = "1", whose modules-*.tgz the layer's
postfunc makes again with signed modules.
"""

from __future__ import annotations

import ast
import glob
import lzma
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

from tests.layer import bbenv
from tests.layer.bbenv import SOFTHSM, Build, StandinBuild

MAGIC = b"~Module signature appended~\n"
KERNEL = "hsmsign-test-modsign-kernel"
KERNEL_VERSION = "6.1.0-hsmsign-test"
MODULES = ("hsmsign_test_a", "hsmsign_test_b")
KERNEL_MODULES = ("hsmsign_test_k",)
# installed as CONFIG_MODULE_COMPRESS_XZ leaves them: signed inside, compressed again
KERNEL_MODULES_XZ = ("hsmsign_test_kxz",)
KERNEL_MODULES_ZST = ("hsmsign_test_kzst1", "hsmsign_test_kzst2", "hsmsign_test_kzst3")
SUBJECT_CN = "meta-hsmsign layer test modules"
# the target's binutils and compiler: the host's (x86_64), under the names oe-core calls them by
# (KERNEL_CC and KERNEL_LD: Kconfig asks the compiler and the linker)
CROSS_TOOLS = ("strip", "objcopy", "objdump", "readelf", "nm", "gcc", "ld.bfd", "ar", "as")
TARGET_SYS = "x86_64-oe-linux"
# kmod: /usr/sbin is not on a plain user's PATH
MODINFO = shutil.which("modinfo") or shutil.which("modinfo", path="/usr/sbin:/sbin")
# the Kconfig part of Debian's linux-source (scripts/extract-kconfig-tree; run-layer-tests makes it)
KCONFIG_TREE = os.environ.get("HSMSIGN_TEST_KCONFIG_TREE", "")

pytestmark = [
    *bbenv.NEEDS_BITBAKE,
    bbenv.NEEDS_PYTHON,
    bbenv.NEEDS_PSEUDO,
    pytest.mark.skipif(MODINFO is None, reason="apt-get install kmod"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="apt-get install gcc"),
    pytest.mark.skipif(
        not KCONFIG_TREE or not os.path.isfile(os.path.join(KCONFIG_TREE, "Kconfig")),
        reason="set HSMSIGN_TEST_KCONFIG_TREE (scripts/extract-kconfig-tree DEST)",
    ),
    pytest.mark.skipif(
        shutil.which("flex") is None or shutil.which("bison") is None, reason="apt-get install flex bison"
    ),
]


class ModsignBuild(StandinBuild):
    FOLDER = "modsign"
    KEEP = "kernel/hsmsign-modules-cert"
    NATIVE = (
        "quilt-native patch-replacement-native virtual/fakeroot-native rpm-native dwarfsrcfiles-native "
        "file-native pkgconfig-native pkgconf-native kmod-native depmodwrapper-cross opkg-utils-native "
        "zstd-native bc-native bison-native virtual/cross-cc virtual/cross-binutils "
        # kernel.bbclass
        "gzip-native ncurses-native make-mod-scripts"
    )

    def conf(self, **changes: str) -> None:
        uri = (
            "pkcs11:token=hsmsign-dev;object=test-modules"
            + f"?module-path={SOFTHSM}&pin-source=file:{self.pin_file}"
        )
        settings = {
            "HSM_PKCS11_URI_MODULES": uri,
            "HSMSIGN_MODULES_CERT_SUBJECT": f"CN={SUBJECT_CN}",
            "PREFERRED_PROVIDER_virtual/kernel": "hsmsign-test-modsign-kernel",
            # pseudo-native: the host's pseudo runs the fakeroot tasks (do_install, do_package)
            **bbenv.HOST_PSEUDO,
            # rpm-native (rpmdeps) and dwarfsrcfiles-native are not built offline
            "SKIP_FILEDEPS": "1",
            "PACKAGE_DEBUG_SPLIT_STYLE": "debug-without-src",
            # oe-core's default up to wrynose; master's is "0"
            "MODULE_TARBALL_DEPLOY": "1",
            "HSMSIGN_TEST_KCONFIG_TREE": KCONFIG_TREE,
            **changes,
        }
        # flex and bison: Kconfig's parser (scripts/kconfig, built by do_configure); xz: the stand-in
        # kernel's modules_install compresses a module, and kernel-module-split reads it with xz -dc
        # (a host tool from wrynose on; xz-native on scarthgap)
        hosttools = " ".join([f"{TARGET_SYS}-{t}" for t in CROSS_TOOLS] + ["flex", "bison", "xz"])
        self.write_conf(settings, [f'HOSTTOOLS += "{hosttools}"'])


@pytest.fixture(scope="module")
def modsign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModsignBuild]:
    topdir = bbenv.standin_topdir("modsign", tmp_path_factory)
    devhome, pin, pin_file = bbenv.standin_token(topdir, ("test-modules",))
    # the host's binutils and gcc under the target's names, found by HOSTTOOLS on PATH
    tools = os.path.join(topdir, "target-binutils")
    os.makedirs(tools, exist_ok=True)
    for tool in CROSS_TOOLS:
        link = os.path.join(tools, f"{TARGET_SYS}-{tool}")
        host = shutil.which(tool)
        assert host, f"no {tool} on the host (binutils, gcc)"
        if not os.path.islink(link):
            os.symlink(host, link)
    mb = ModsignBuild(Build(topdir, path_first=tools), pin, devhome, pin_file)
    mb.conf()
    yield mb


@pytest.fixture(scope="module")
def packaged(modsign: ModsignBuild) -> ModsignBuild:
    done = modsign.bitbake("hsmsign-test-module:do_package", f"{KERNEL}:do_deploy")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert modsign.pin not in out
    return modsign


def sections(path: str) -> set[str]:
    done = subprocess.run(["readelf", "-W", "-S", path], capture_output=True, text=True, check=True)
    return set(re.findall(r"\]\s+(\.\S+)", done.stdout))


def body(path: str) -> bytes:
    """The module without its appended signature (as the kernel's mod_verify_sig cuts it)."""
    with open(path, "rb") as fh:
        return unsigned(fh.read(), path)


def unsigned(data: bytes, what: str) -> bytes:
    assert data.endswith(MAGIC), f"{what} is not signed"
    sig_len = int.from_bytes(data[-len(MAGIC) - 4 : -len(MAGIC)], "big")
    return data[: len(data) - len(MAGIC) - 12 - sig_len]


def unzstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True, check=True).stdout


def kernel_zstd(module: bytes, folder: str) -> bytes:
    """What CONFIG_MODULE_COMPRESS_ZSTD's modules_install makes of a module: zstd -T0 on its file."""
    path = os.path.join(folder, "module.ko")
    with open(path, "wb") as fh:
        fh.write(module)
    subprocess.run(["zstd", "-T0", "--rm", "-f", "-q", path], check=True)
    with open(path + ".zst", "rb") as fh:
        data = fh.read()
    os.unlink(path + ".zst")
    return data


def test_packaged_modules_are_stripped_then_signed(packaged: ModsignBuild) -> None:
    cert = os.path.join(packaged.deploy_dir(), "hsmsign-modules.pem")
    assert os.path.getsize(cert) > 0
    workdir = packaged.workdir("hsmsign-test-module")
    # ${nonarch_base_libdir}/modules/<version>/extra: /lib or /usr/lib (usrmerge) by release
    pattern = os.path.join(workdir, "image", "**", "modules", KERNEL_VERSION, "extra")
    found = glob.glob(pattern, recursive=True)
    assert len(found) == 1, found
    moddir = os.path.relpath(found[0], os.path.join(workdir, "image"))
    installed = {m: os.path.join(workdir, "image", moddir, f"{m}.ko") for m in MODULES}
    pkgd = {m: os.path.join(workdir, "package", moddir, f"{m}.ko") for m in MODULES}
    # kernel-module-split made one package per module, each with the signed module from PKGD
    for name in MODULES:
        package = f"kernel-module-{name.replace('_', '-')}-{KERNEL_VERSION}"
        with open(os.path.join(workdir, "packages-split", package, moddir, f"{name}.ko"), "rb") as a:
            with open(pkgd[name], "rb") as b:
                assert a.read() == b.read(), package
    # the debug split's copies (the -dbg package) keep their debug info and no signature
    debug = glob.glob(os.path.join(workdir, "packages-split", "*-dbg", moddir, ".debug", "*.ko"))
    assert sorted(os.path.basename(p) for p in debug) == sorted(f"{m}.ko" for m in MODULES), debug
    for path in debug:
        with open(path, "rb") as fh:
            assert not fh.read().endswith(MAGIC), path
    for name in MODULES:
        # ${D} keeps the unsigned module with its debug info; PKGD's is stripped, then signed
        with open(installed[name], "rb") as fh:
            assert not fh.read().endswith(MAGIC)
        assert ".debug_info" in sections(installed[name])
        unsigned = os.path.join(workdir, f"{name}.body")
        with open(unsigned, "wb") as fh:
            fh.write(body(pkgd[name]))
        found = sections(unsigned)
        assert ".modinfo" in found and not any(s.startswith(".debug_") for s in found), found
        ok = bbenv.hsmsign("modsign", "verify", "--cert", cert, pkgd[name])
        assert ok.returncode == 0, ok.stderr
        for field, want in (("signer", SUBJECT_CN), ("sig_hashalgo", "sha256"), ("name", name)):
            got = subprocess.run([str(MODINFO), "-F", field, pkgd[name]], capture_output=True, text=True)
            assert got.stdout.strip() == want, (field, got.stdout, got.stderr)


def kernel_env(build: ModsignBuild) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The stand-in kernel recipe's variables (``bitbake -e``) and its tasks' flags (_task_deps)."""
    done = build.bitbake("-e", KERNEL)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    values = dict(re.findall(r'^(?:export )?([A-Za-z0-9_]+)="(.*)"$', done.stdout, re.M))
    return values, ast.literal_eval(values["_task_deps"])


def shared_artifacts(build: ModsignBuild) -> str:
    found = glob.glob(
        os.path.join(build.build.topdir, "tmp*", "work-shared", "qemux86-64", "kernel-build-artifacts")
    )
    assert len(found) == 1, found
    return found[0]


def test_kernel_recipe_hooks(packaged: ModsignBuild) -> None:
    """kernel.bbclass recipes: the configuration postfunc (what it does:
    test_kernel_configured_with_the_certificate_only), the certificate before do_configure,
    signing first in do_package."""
    postfuncs = packaged.build.run(
        "-r", KERNEL, "--value", "-q", "-f", "postfuncs", "do_configure", tool="bitbake-getvar"
    )
    assert postfuncs.returncode == 0, (postfuncs.stdout + postfuncs.stderr)[-3000:]
    assert "hsmsign_modsign_kconfig" in postfuncs.stdout.split()
    values, tasks = kernel_env(packaged)
    assert "hsmsign-modules-cert:do_deploy" in tasks["depends"]["do_configure"].split()
    assert "hsmsign-modules-cert:do_deploy" in tasks["depends"]["do_deploy"].split()
    assert values["PACKAGESPLITFUNCS"].split()[0] == "hsmsign_sign_modules"
    # do_shared_workdir ran with the layer's prefunc: the artifacts hold no certs/ at all
    shared = shared_artifacts(packaged)
    with open(os.path.join(shared, "kernel-abiversion"), encoding="utf-8") as fh:
        assert fh.read().strip() == KERNEL_VERSION
    assert not os.path.exists(os.path.join(shared, "certs"))


def compressed_module(workdir: str, name: str, suffix: str) -> tuple[str, bytes, bytes]:
    """The kernel's compressed module NAME+SUFFIX: its path in PKGD, its bytes there, and the bytes
    ${D} installed. Checked on the way: modinfo reads the signer from it, and its
    kernel-module-* package holds the PKGD bytes as they are."""
    (pkgd,) = glob.glob(os.path.join(workdir, "package", "**", f"{name}{suffix}"), recursive=True)
    (installed,) = glob.glob(os.path.join(workdir, "image", "**", f"{name}{suffix}"), recursive=True)
    with open(pkgd, "rb") as fh:
        data = fh.read()
    with open(installed, "rb") as fh:
        original = fh.read()
    got = subprocess.run([str(MODINFO), "-F", "signer", pkgd], capture_output=True, text=True)
    assert got.stdout.strip() == SUBJECT_CN, (got.stdout, got.stderr)
    package = f"kernel-module-{name.replace('_', '-')}-{KERNEL_VERSION}"
    (split,) = glob.glob(
        os.path.join(workdir, "packages-split", package, "**", f"{name}{suffix}"), recursive=True
    )
    with open(split, "rb") as fh:
        assert fh.read() == data, package
    return pkgd, data, original


def test_kernel_compressed_module_signed_inside_in_its_package(packaged: ModsignBuild) -> None:
    """CONFIG_MODULE_COMPRESS_XZ: oe-core's do_package leaves a .ko.xz as it is (no strip); the
    layer signs the module inside and compresses it again with the kernel's xz settings, and
    kernel-module-split (which reads .modinfo through xz -dc) packages the signed one."""
    cert = os.path.join(packaged.deploy_dir(), "hsmsign-modules.pem")
    workdir = packaged.workdir(KERNEL)
    for name in KERNEL_MODULES_XZ:
        pkgd, data, installed = compressed_module(workdir, name, ".ko.xz")
        original = lzma.decompress(installed)
        assert data.startswith(b"\xfd7zXZ\x00")
        listed = subprocess.run(["xz", "--robot", "-lvv", pkgd], capture_output=True, text=True).stdout
        assert "\tCRC32\t" in listed and "--lzma2=dict=1MiB" in listed, listed
        assert unsigned(lzma.decompress(data), pkgd) == original and not original.endswith(MAGIC)
        ok = bbenv.hsmsign("modsign", "verify", "--cert", cert, pkgd)
        assert ok.returncode == 0, ok.stderr


def test_kernel_zstd_modules_signed_inside_as_the_kernel_compresses_them(
    packaged: ModsignBuild, tmp_path: pathlib.Path
) -> None:
    """CONFIG_MODULE_COMPRESS_ZSTD: the layer signs the three .ko.zst modules in one go (one zstd
    process for the group, inside do_package); each comes out as the kernel's own zstd makes it
    from the signed module, byte for byte, and kernel-module-split (which reads .modinfo through
    zstd -dc) packages it."""
    cert = os.path.join(packaged.deploy_dir(), "hsmsign-modules.pem")
    workdir = packaged.workdir(KERNEL)
    pkgd_modules = []
    for name in KERNEL_MODULES_ZST:
        pkgd, data, installed = compressed_module(workdir, name, ".ko.zst")
        original = unzstd(installed)
        signed = unzstd(data)
        assert unsigned(signed, pkgd) == original and not original.endswith(MAGIC)
        assert data == kernel_zstd(signed, str(tmp_path)), pkgd
        pkgd_modules.append(pkgd)
    ok = bbenv.hsmsign("modsign", "verify", "--cert", cert, *pkgd_modules)
    assert ok.returncode == 0 and f"OK: {len(KERNEL_MODULES_ZST)} modules" in ok.stdout, ok.stderr


def kernel_config(build: ModsignBuild) -> tuple[str, set[str]]:
    """The stand-in kernel's build directory (B) and the lines of its .config."""
    b = os.path.join(build.workdir(KERNEL), "build")
    with open(os.path.join(b, ".config"), encoding="utf-8") as fh:
        return b, set(fh.read().splitlines())


def test_kernel_configured_with_the_certificate_only(packaged: ModsignBuild) -> None:
    """oe-core's kernel do_configure (a defconfig with module signing off, olddefconfig) on a real
    kernel tree, then the layer's postfunc: after the kernel's own olddefconfig, the .config holds
    module signatures with the token's certificate only, the copy in B byte for byte the deployed
    certificate, the default hash (sha256) and CONFIG_MODULE_SIG_FORCE; what Kconfig selects from
    them is there too, and the build directory holds no signing key."""
    b, lines = kernel_config(packaged)
    for want in (
        "CONFIG_MODULES=y",
        "CONFIG_MODULE_SIG=y",
        'CONFIG_MODULE_SIG_KEY=""',
        "# CONFIG_MODULE_SIG_ALL is not set",
        "CONFIG_MODULE_SIG_SHA256=y",
        'CONFIG_MODULE_SIG_HASH="sha256"',
        "CONFIG_MODULE_SIG_FORCE=y",
        # selected by Kconfig, not written by the layer: olddefconfig ran on the layer's lines
        "CONFIG_MODULE_SIG_FORMAT=y",
        "CONFIG_SYSTEM_DATA_VERIFICATION=y",
    ):
        assert want in lines, want
    assert not any(line.startswith("CONFIG_MODULE_SIG_ALL=") for line in lines)
    trusted = [line for line in lines if line.startswith("CONFIG_SYSTEM_TRUSTED_KEYS=")]
    assert trusted == [f'CONFIG_SYSTEM_TRUSTED_KEYS="{os.path.join(b, "hsmsign-modules.pem")}"'], trusted
    with open(os.path.join(b, "hsmsign-modules.pem"), "rb") as a:
        with open(os.path.join(packaged.deploy_dir(), "hsmsign-modules.pem"), "rb") as deployed:
            cert = a.read()
            assert cert == deployed.read() and b"-----BEGIN CERTIFICATE-----" in cert
    assert not glob.glob(os.path.join(b, "**", "signing_key.*"), recursive=True)
    with open(os.path.join(packaged.workdir(KERNEL), "temp", "log.do_configure"), encoding="utf-8") as fh:
        log = fh.read()
    assert "olddefconfig" in log and "hsmsign_modsign_kconfig" in log, log[-3000:]


def modules_tarballs(folder: str) -> list[str]:
    """The modules-*.tgz files in ``folder`` (links left out)."""
    return sorted(p for p in glob.glob(os.path.join(folder, "modules-*.tgz")) if not os.path.islink(p))


def kernel_bbclass_tarball(build: ModsignBuild, dest: str) -> str:
    """The modules tarball made again by oe-core's own lines of kernel_do_deploy, as its last run
    expanded them (run.do_deploy: TAR_ARGS from SOURCE_DATE_EPOCH, ``tar $TAR_ARGS -cv -C
    ${D}${root_prefix} lib | gzip -9n``), into ``dest``; from the same ${D}."""
    with open(os.path.join(build.workdir(KERNEL), "temp", "run.do_deploy"), encoding="utf-8") as fh:
        run = fh.read()
    block = re.search(
        r'^\s*if \[ -n "[0-9]*" \]; then\n\s*TAR_ARGS=.*?\| gzip -9n > \$deployDir/(modules-\S+\.tgz)\n',
        run,
        re.S | re.M,
    )
    assert block is not None, "no modules tarball lines in run.do_deploy"
    done = subprocess.run(
        ["sh", "-eu", "-c", f"deployDir={dest}\n{block.group(0)}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return os.path.join(dest, block.group(1))


def members(path: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]


def test_deployed_modules_tarball_holds_signed_modules(packaged: ModsignBuild) -> None:
    """oe-core's kernel do_deploy with MODULE_TARBALL_DEPLOY = "1": the modules-*.tgz in
    DEPLOY_DIR_IMAGE holds every module signed (hsmsign and kmod's modinfo against the deployed
    certificate), and is otherwise what kernel.bbclass's own tar made from ${D}: the same members
    in the same order with the same owners, modes and times, each module's bytes before its
    signature those of ${D}."""
    deploy = packaged.deploy_dir()
    cert = os.path.join(deploy, "hsmsign-modules.pem")
    found = modules_tarballs(deploy)
    assert len(found) == 1, os.listdir(deploy)
    # MODULE_TARBALL_LINK_NAME's link still names it
    links = [p for p in glob.glob(os.path.join(deploy, "modules-*.tgz")) if os.path.islink(p)]
    assert links and all(os.path.realpath(p) == os.path.realpath(found[0]) for p in links), links
    ours = members(found[0])
    scratch = os.path.join(packaged.build.topdir, "modules-tarball-check")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    theirs = members(kernel_bbclass_tarball(packaged, scratch))
    assert [m.name for m, _ in ours] == [m.name for m, _ in theirs]
    modules = []
    for (mine, data), (orig, orig_data) in zip(ours, theirs):
        fields = ("type", "mode", "uid", "gid", "uname", "gname", "mtime", "linkname")
        assert [getattr(mine, f) for f in fields] == [getattr(orig, f) for f in fields], mine.name
        assert (mine.uid, mine.gid) == (0, 0)
        if mine.name.endswith(".ko.xz"):
            # compressed as modules_install compresses: the signature is inside
            assert data.startswith(b"\xfd7zXZ\x00"), mine.name
            inside = lzma.decompress(data)
            assert unsigned(inside, mine.name) == lzma.decompress(orig_data), mine.name
            assert not lzma.decompress(orig_data).endswith(MAGIC), mine.name
            path = os.path.join(scratch, os.path.basename(mine.name))
            with open(path, "wb") as fh:
                fh.write(data)
            modules.append(path)
        elif mine.name.endswith(".ko.zst"):
            assert data.startswith(b"\x28\xb5\x2f\xfd"), mine.name
            inside = unzstd(data)
            assert unsigned(inside, mine.name) == unzstd(orig_data), mine.name
            assert not unzstd(orig_data).endswith(MAGIC), mine.name
            path = os.path.join(scratch, os.path.basename(mine.name))
            with open(path, "wb") as fh:
                fh.write(data)
            modules.append(path)
        elif mine.name.endswith(".ko"):
            assert unsigned(data, mine.name) == orig_data and not orig_data.endswith(MAGIC), mine.name
            path = os.path.join(scratch, os.path.basename(mine.name))
            with open(path, "wb") as fh:
                fh.write(data)
            modules.append(path)
        else:
            assert data == orig_data, mine.name
    assert sorted(os.path.basename(p) for p in modules) == sorted(
        [f"{m}.ko" for m in KERNEL_MODULES]
        + [f"{m}.ko.xz" for m in KERNEL_MODULES_XZ]
        + [f"{m}.ko.zst" for m in KERNEL_MODULES_ZST]
    )
    assert any(m.name.endswith("/modules.order") for m, _ in ours)
    ok = bbenv.hsmsign("modsign", "verify", "--cert", cert, *modules)
    assert ok.returncode == 0, ok.stderr
    for path in modules:
        got = subprocess.run([str(MODINFO), "-F", "signer", path], capture_output=True, text=True)
        assert got.stdout.strip() == SUBJECT_CN, (got.stdout, got.stderr)
    # do_deploy's hash holds the key identity and the certificate (sigdata of the run)
    sigdata = glob.glob(
        os.path.join(packaged.build.topdir, "tmp*", "stamps", "*", KERNEL, "*do_deploy.sigdata.*")
    )
    assert sigdata, "no do_deploy sigdata"
    dump = packaged.build.run(max(sigdata, key=os.path.getmtime), tool="bitbake-dumpsig")
    assert dump.returncode == 0, dump.stderr[-2000:]
    for name in (
        "hsmsign_modules_tarball",
        "hsmsign_modsign_tree",
        "HSMSIGN_KEY_ID_MODULES",
        "HSMSIGN_MODULES_CERT_ID",
    ):
        assert name in dump.stdout, name
    shutil.rmtree(scratch)


def test_deploy_with_a_wrong_key_fails_and_deploys_no_modules_tarball(packaged: ModsignBuild) -> None:
    """A pinned fingerprint that is not the token key's: the kernel's do_deploy fails with
    hsmsign's exit code 4 and leaves no modules tarball, neither in DEPLOYDIR nor in
    DEPLOY_DIR_IMAGE. The wrong pin is set for do_deploy only (a task override, invisible to the
    task hashes, so -f forces the task): with it everywhere, do_package, which runs first,
    would fail on it first."""
    packaged.conf(**{f"HSMSIGN_PUBKEY_SHA256_MODULES:pn-{KERNEL}:task-deploy": "00" * 32})
    try:
        done = packaged.bitbake("-f", "-c", "deploy", KERNEL)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        assert "Task do_deploy failed" in out or "do_deploy: Failed" in out, out[-3000:]
        assert "failed with exit code 4" in out, out[-3000:]
        assert packaged.pin not in out
        assert modules_tarballs(packaged.deploy_dir()) == []
        deploydir = glob.glob(os.path.join(packaged.workdir(KERNEL), "deploy-*"))
        # nor a link to a tarball (MODULE_TARBALL_LINK_NAME)
        for folder in [packaged.deploy_dir(), *deploydir]:
            assert not glob.glob(os.path.join(folder, "modules-*.tgz")), os.listdir(folder)
        assert deploydir
    finally:
        packaged.conf()


def test_deploy_refuses_another_tarball_of_unsigned_modules(packaged: ModsignBuild) -> None:
    """A BSP's do_deploy:append that packs the ${D} modules under its own name: the layer cannot
    know that tarball, so its postfunc checks every archive in DEPLOYDIR; unsigned modules fail
    the task, and neither the archive nor its link is left for sstate to deploy."""
    # also with MODULE_TARBALL_DEPLOY = "0" (master's default), when the layer signs no tarball
    for tarball_deploy in ("1", "0"):
        packaged.conf(HSMSIGN_TEST_EXTRA_TARBALL="vendor-modules.tgz", MODULE_TARBALL_DEPLOY=tarball_deploy)
        try:
            done = packaged.bitbake("-f", "-c", "deploy", KERNEL)
            out = done.stdout + done.stderr
            assert done.returncode != 0, out[-3000:]
            refused = "kernel module(s) without a signature in vendor-modules.tgz in DEPLOYDIR"
            assert refused in out, out[-3000:]
            assert "hsmsign_test_k.ko" in out and "removed" in out
            assert packaged.pin not in out
            deploydir = glob.glob(os.path.join(packaged.workdir(KERNEL), "deploy-*"))
            assert deploydir
            for folder in [packaged.deploy_dir(), *deploydir]:
                names = os.listdir(folder)
                assert not [n for n in names if n.startswith("vendor-modules")], names
                if tarball_deploy == "0":
                    assert not [n for n in names if n.startswith("modules-")], names
        finally:
            packaged.conf()
    # without it, do_deploy passes the check again (the layer's own tarball is signed)
    done = packaged.bitbake("-f", "-c", "deploy", KERNEL)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert len(modules_tarballs(packaged.deploy_dir())) == 1


IMAGE = "hsmsign-test-modules-image"


def test_image_check_of_kernel_modules(packaged: ModsignBuild) -> None:
    """Images get the layer's ROOTFS_POSTPROCESS_COMMAND, which checks every module in the root
    filesystem against the module certificate, whatever package brought it. Run (by the stand-in
    image's test task) on the kernel's deployed modules: they pass; a vendor's prebuilt module,
    which nobody signed, stops the task naming it, or is a warning with
    HSMSIGN_MODULES_SIG_FORCE = "0"."""
    for args, want in (
        (("ROOTFS_POSTPROCESS_COMMAND",), "hsmsign_image_modules_check"),
        (("-f", "depends", "do_rootfs"), "hsmsign-modules-cert:do_deploy"),
    ):
        got = packaged.build.run("-r", IMAGE, "--value", "-q", *args, tool="bitbake-getvar")
        assert got.returncode == 0, (got.stdout + got.stderr)[-3000:]
        assert want in got.stdout.split(), (args, got.stdout)

    done = packaged.bitbake("-c", "hsmsign_test_rootfs", IMAGE)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    logs = glob.glob(os.path.join(packaged.workdir(IMAGE), "temp", "log.do_hsmsign_test_rootfs.*"))
    with open(max(logs, key=os.path.getmtime), encoding="utf-8") as fh:
        log = fh.read()
    count = len(KERNEL_MODULES) + len(KERNEL_MODULES_XZ) + len(KERNEL_MODULES_ZST)
    assert f"the image's {count} kernel modules verify against" in log, log[-3000:]

    packaged.conf(HSMSIGN_TEST_VENDOR_MODULE="1")
    try:
        done = packaged.bitbake("-c", "hsmsign_test_rootfs", IMAGE)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        assert "kernel modules in the image do not verify against the module certificate" in out, out[-3000:]
        assert "${IMAGE_ROOTFS}/lib/modules/" in out and "/extra/vendor.ko is not signed" in out, out[-3000:]
        assert packaged.pin not in out
        packaged.conf(HSMSIGN_TEST_VENDOR_MODULE="1", **{f"HSMSIGN_MODULES_SIG_FORCE:pn-{IMAGE}": "0"})
        done = packaged.bitbake("-c", "hsmsign_test_rootfs", IMAGE)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-3000:]
        assert "WARNING" in out and "vendor.ko is not signed" in out and "taints itself" in out, out[-3000:]
    finally:
        packaged.conf()


def test_shared_workdir_refuses_a_kernel_build_holding_a_signing_key(packaged: ModsignBuild) -> None:
    """A kernel build that made certs/signing_key.pem: do_shared_workdir fails before oe-core
    copies it into the shared kernel build artifacts."""
    packaged.conf(HSMSIGN_TEST_KERNEL_KEY="1")
    try:
        done = packaged.bitbake(f"{KERNEL}:do_shared_workdir")
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        assert "meta-hsmsign: the kernel build holds a module signing key" in out, out[-3000:]
        assert "certs/signing_key.pem" in out
        assert not os.path.exists(os.path.join(shared_artifacts(packaged), "certs"))
        assert packaged.pin not in out
    finally:
        packaged.conf()
        # the stand-in's key-named files (no key inside), out of the kernel's build directory
        for path in glob.glob(os.path.join(packaged.workdir(KERNEL), "build", "certs", "signing_key.*")):
            os.remove(path)


def test_kernel_configured_without_sig_force(packaged: ModsignBuild) -> None:
    """HSMSIGN_MODULES_SIG_FORCE = "0": do_configure runs again (the setting is in its hash) and
    the kernel loads unsigned modules (CONFIG_MODULE_SIG_FORCE not set), still checking signatures.
    This and the next test run after every test that builds the kernel's later tasks: the
    configuration they change would make those run again."""
    packaged.conf(HSMSIGN_MODULES_SIG_FORCE="0")
    try:
        done = packaged.bitbake(f"{KERNEL}:do_configure")
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-3000:]
        assert packaged.pin not in out
        _, lines = kernel_config(packaged)
        assert "# CONFIG_MODULE_SIG_FORCE is not set" in lines
        assert not any(line.startswith("CONFIG_MODULE_SIG_FORCE=") for line in lines)
        assert "CONFIG_MODULE_SIG=y" in lines and 'CONFIG_MODULE_SIG_KEY=""' in lines
    finally:
        packaged.conf()


def test_kernel_configuration_refused_fails_do_configure(packaged: ModsignBuild) -> None:
    """A kernel tree in which module signing cannot be enabled (CONFIG_MODULE_SIG depends on
    BROKEN, as a kernel marks what it cannot build): olddefconfig drops the layer's settings and
    do_configure fails with the layer's error naming them."""
    packaged.conf(HSMSIGN_TEST_KERNEL_NO_MODSIG="1")
    try:
        done = packaged.bitbake(f"{KERNEL}:do_configure")
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        refused = re.search(r"meta-hsmsign: the kernel configuration refused: (.*)", out)
        assert refused is not None, out[-3000:]
        assert "CONFIG_MODULE_SIG=y" in refused.group(1).split(" (")[0].split(", "), refused.group(0)
        assert "Task do_configure failed" in out or "do_configure: Failed" in out, out[-3000:]
        assert packaged.pin not in out
    finally:
        packaged.conf()


def test_no_pin_and_no_private_key_in_tmpdir(packaged: ModsignBuild) -> None:
    """Last: after every build of this module, the failing ones included."""
    bbenv.assert_pin_nowhere(packaged.build, packaged.pin)
    audit = bbenv.hsmsign("audit", *packaged.build.tmpdirs())
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-2000:]
    bbenv.assert_no_secrets(packaged.build, packaged.pin, names=("signing_key.pem", "signing_key.priv"))
