SUMMARY = "meta-hsmsign layer test: oe-core's uki.bbclass with a stand-in do_uki"
DESCRIPTION = "Inherits oe-core's uki class (wrynose and later) so that hsmsign-uefi.bbclass \
               hooks do_uki as in an image recipe; do_uki itself is replaced: instead of \
               ukify it deploys Debian's systemd-boot stub (a real PE) as UKI_FILENAME. \
               Skipped where oe-core has no uki class (scarthgap)."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"
INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

HSMSIGN_TEST_UKI_CLASS = "${@'uki' if bb.utils.which(d.getVar('BBPATH'), 'classes-recipe/uki.bbclass') else ''}"
inherit nopackages ${HSMSIGN_TEST_UKI_CLASS}
deltask do_prepare_recipe_sysroot
POPULATESYSROOTDEPS:class-target = ""

# what ukify would need (kernel, initramfs, systemd-boot-native) is not built here
INITRAMFS_IMAGE = ""
DEPENDS:remove = "systemd-boot-native virtual/cross-binutils virtual/kernel os-release"
do_uki[depends] = "systemd-boot:do_deploy"
HSMSIGN_TEST_SYSTEMD_BOOT ?= "/usr/lib/systemd/boot/efi"

python do_uki() {
    import shutil
    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    os.makedirs(deploy, exist_ok=True)
    shutil.copyfile(os.path.join(d.getVar("HSMSIGN_TEST_SYSTEMD_BOOT"), "linuxx64.efi.stub"),
                    os.path.join(deploy, d.getVar("UKI_FILENAME")))
}

python () {
    if not d.getVar("HSMSIGN_TEST_UKI_CLASS"):
        raise bb.parse.SkipRecipe("oe-core has no uki.bbclass in this release")
}
