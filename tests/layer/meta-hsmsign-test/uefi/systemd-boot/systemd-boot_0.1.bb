SUMMARY = "Stand-in for oe-core's systemd-boot: Debian's systemd-boot EFI binary, built nowhere"
DESCRIPTION = "Only tests/layer/test_bitbake_uefi.py parses this (its local.conf adds it to \
               BBFILES and masks oe-core's recipes). do_compile puts the host's real PE where \
               oe-core's systemd-boot leaves its own (src/boot/efi/ on scarthgap, src/boot/ \
               later); do_install and do_deploy are oe-core's."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"
INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit deploy nopackages
deltask do_prepare_recipe_sysroot
# no sysroot is populated from this recipe: no cross binutils
POPULATESYSROOTDEPS:class-target = ""

HSMSIGN_TEST_SYSTEMD_BOOT ?= "/usr/lib/systemd/boot/efi"
HSMSIGN_TEST_BOOT_SUBDIR ?= "${@'src/boot/efi' if 'scarthgap' in (d.getVar('LAYERSERIES_CORENAMES') or '').split()[:1] else 'src/boot'}"
EFI_FILES_PATH ?= "/boot/EFI/BOOT"

do_configure[noexec] = "1"

do_compile() {
	install -d ${B}/${HSMSIGN_TEST_BOOT_SUBDIR}
	install -m 0644 ${HSMSIGN_TEST_SYSTEMD_BOOT}/systemd-bootx64.efi ${B}/${HSMSIGN_TEST_BOOT_SUBDIR}/
	install -m 0644 ${HSMSIGN_TEST_SYSTEMD_BOOT}/linuxx64.efi.stub ${B}/${HSMSIGN_TEST_BOOT_SUBDIR}/
}
do_compile[cleandirs] = "${B}"

do_install() {
	install -d ${D}${EFI_FILES_PATH}
	install ${B}/${HSMSIGN_TEST_BOOT_SUBDIR}/systemd-boot*.efi ${D}${EFI_FILES_PATH}/bootx64.efi
}

do_deploy() {
	install ${B}/${HSMSIGN_TEST_BOOT_SUBDIR}/systemd-boot*.efi ${DEPLOYDIR}
	install ${B}/${HSMSIGN_TEST_BOOT_SUBDIR}/linux*.efi.stub ${DEPLOYDIR}
}
addtask deploy before do_build after do_compile
