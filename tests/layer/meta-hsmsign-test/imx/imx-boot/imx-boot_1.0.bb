SUMMARY = "Stand-in for meta-freescale's imx-boot: a test AHAB image, built nowhere"
DESCRIPTION = "Only tests/layer/test_bitbake_imx.py parses this (its local.conf adds it to \
               BBFILES and masks the other recipes). do_compile puts the test's unsigned AHAB \
               image (nxpimage ahab export) where meta-freescale's imx-boot leaves its images: \
               ${S}/imx-boot${BOOT_VARIANT}-${MACHINE}-<UBOOT_CONFIG>.bin-<IMXBOOT_TARGETS>; \
               do_install and do_deploy install and deploy them as imx-boot's do."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"
INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit deploy nopackages
deltask do_prepare_recipe_sysroot
POPULATESYSROOTDEPS:class-target = ""

# the unsigned image, made by the test at run time
HSMSIGN_TEST_IMX_IMAGE ?= ""
UBOOT_CONFIG ?= "sd"
IMXBOOT_TARGETS ?= "flash_singleboot"
BOOT_VARIANT ?= ""

do_configure[noexec] = "1"

do_compile() {
	for type in ${UBOOT_CONFIG}; do
		for target in ${IMXBOOT_TARGETS}; do
			install -m 0644 ${HSMSIGN_TEST_IMX_IMAGE} ${S}/imx-boot${BOOT_VARIANT}-${MACHINE}-${type}.bin-${target}
		done
	done
}
do_compile[cleandirs] = "${S}"
do_compile[file-checksums] += "${HSMSIGN_TEST_IMX_IMAGE}:True"

do_install() {
	install -d ${D}/boot
	for type in ${UBOOT_CONFIG}; do
		for target in ${IMXBOOT_TARGETS}; do
			install -m 0644 ${S}/imx-boot${BOOT_VARIANT}-${MACHINE}-${type}.bin-${target} ${D}/boot/
		done
	done
}

do_deploy() {
	for type in ${UBOOT_CONFIG}; do
		for target in ${IMXBOOT_TARGETS}; do
			install -m 0644 ${S}/imx-boot${BOOT_VARIANT}-${MACHINE}-${type}.bin-${target} ${DEPLOYDIR}
		done
		if [ ! -e ${DEPLOYDIR}/imx-boot ]; then
			ln -sf imx-boot${BOOT_VARIANT}-${MACHINE}-${type}.bin-$(echo ${IMXBOOT_TARGETS} | cut -d' ' -f1) ${DEPLOYDIR}/imx-boot
		fi
	done
}
addtask deploy before do_build after do_compile
