SUMMARY = "Stand-in for oe-core's grub-efi: a real EFI binary as GRUB's image"
DESCRIPTION = "Only tests/layer/test_bitbake_uefi.py parses this (its local.conf adds it to \
               BBFILES and masks oe-core's recipes). Its tasks are oe-core's grub-efi tasks in \
               their order (do_mkimage after do_compile and before do_install, do_deploy after \
               do_install; the same in scarthgap, wrynose and master) and name the image as it \
               does: do_mkimage puts the host's real PE (Debian's systemd-boot, no grub-mkimage \
               here) at ${B}/${GRUB_IMAGE_PREFIX}${GRUB_IMAGE}, which do_install and do_deploy \
               copy as oe-core's recipe does (do_install under the host's pseudo)."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"
INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"
COMPATIBLE_HOST = "x86_64.*-linux"

require conf/image-uefi.conf

inherit deploy nopackages
deltask do_prepare_recipe_sysroot
# no sysroot is populated from this recipe: no cross binutils
POPULATESYSROOTDEPS:class-target = ""

# the image's name as oe-core's grub-efi sets it: bootx64.efi, in ${B} with the prefix
# grub-efi-, when EFI_PROVIDER is grub-efi; grub-efi-bootx64.efi (no prefix) otherwise
GRUB_IMAGE = "${@'' if d.getVar('EFI_PROVIDER') == 'grub-efi' else 'grub-efi-'}${EFI_BOOT_IMAGE}"
GRUB_IMAGE_PREFIX = "${@'grub-efi-' if d.getVar('EFI_PROVIDER') == 'grub-efi' else ''}"
# autotools' build directory, as in oe-core's recipe
B = "${WORKDIR}/build"
HSMSIGN_TEST_GRUB_PE ?= "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_mkimage() {
    install -m 0644 ${HSMSIGN_TEST_GRUB_PE} ${B}/${GRUB_IMAGE_PREFIX}${GRUB_IMAGE}
}
do_mkimage[cleandirs] = "${B}"
do_mkimage[doc] = "What grub-mkimage makes in oe-core's grub-efi: here a copy of HSMSIGN_TEST_GRUB_PE."
addtask mkimage before do_install after do_compile

do_install() {
    install -d ${D}${EFI_FILES_PATH}
    install -m 644 ${B}/${GRUB_IMAGE_PREFIX}${GRUB_IMAGE} ${D}${EFI_FILES_PATH}/${GRUB_IMAGE}
}

do_deploy() {
    install -m 644 ${B}/${GRUB_IMAGE_PREFIX}${GRUB_IMAGE} ${DEPLOYDIR}
}
addtask deploy after do_install before do_build
