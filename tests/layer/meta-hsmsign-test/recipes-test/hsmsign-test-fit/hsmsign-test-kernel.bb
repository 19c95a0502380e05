SUMMARY = "meta-hsmsign layer test: stand-in kernel artifacts for the kernel FIT"
DESCRIPTION = "Deploys linux.bin, linux_comp and a device tree the way \
               kernel-fit-extra-artifacts does, for linux-yocto-fitimage \
               (wrynose and later), into one folder per test variant."
HOMEPAGE = "https://github.com/meta-hsmsign/meta-hsmsign"
BUGTRACKER = "https://github.com/meta-hsmsign/meta-hsmsign/issues"
SECTION = "kernel"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

PROVIDES = "virtual/kernel"
INHIBIT_DEFAULT_DEPS = "1"
deltask do_prepare_recipe_sysroot
do_patch[depends] = ""
# no sysroot is populated from these recipes: no cross binutils
POPULATESYSROOTDEPS:class-target = ""
inherit deploy nopackages

HSMSIGN_TEST_VARIANTS ??= "rsa2048 pss3072 ecdsa256 individual separate"

do_configure[noexec] = "1"

do_compile() {
	cd ${B}
	printf '/dts-v1/;\n/ {\n\tmodel = "meta-hsmsign test board";\n\tcompatible = "hsmsign,test-board";\n\t#address-cells = <1>;\n\t#size-cells = <1>;\n\tmemory@80000000 { device_type = "memory"; reg = <0x80000000 0x8000000>; };\n};\n' > board.dts
	dtc -I dts -O dtb -o board.dtb board.dts
	yes 'meta-hsmsign stand-in kernel Image' | head -c 262144 > linux.bin
}

do_deploy() {
	for variant in ${HSMSIGN_TEST_VARIANTS}; do
		install -d ${DEPLOYDIR}/$variant
		install -m 0644 ${B}/linux.bin ${DEPLOYDIR}/$variant/linux.bin
		printf none > ${DEPLOYDIR}/$variant/linux_comp
		for dtb in ${KERNEL_DEVICETREE}; do
			install -m 0644 ${B}/board.dtb ${DEPLOYDIR}/$variant/$(basename $dtb)
		done
	done
}
addtask deploy after do_compile
