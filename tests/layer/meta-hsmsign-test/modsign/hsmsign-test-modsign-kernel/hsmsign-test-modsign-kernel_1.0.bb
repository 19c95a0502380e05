SUMMARY = "Stand-in kernel recipe: oe-core's kernel.bbclass from do_configure to do_deploy, no kernel build"
DESCRIPTION = "Only tests/layer/test_bitbake_modsign.py parses this (its local.conf adds it to \
               BBFILES and masks oe-core's recipes). It inherits oe-core's kernel.bbclass, so \
               meta-hsmsign hooks it as it hooks any kernel recipe. do_configure is oe-core's, \
               on the Kconfig part of Debian's linux-source (HSMSIGN_TEST_KCONFIG_TREE, made by \
               scripts/extract-kconfig-tree) with a defconfig: meta-hsmsign's postfunc \
               runs on it. No kernel builds offline: do_compile writes the other files oe-core's \
               do_shared_workdir, do_package and do_deploy read (System.map, a stand-in kernel \
               image under KERNEL_OUTPUT_DIR; with HSMSIGN_TEST_KERNEL_KEY = 1, a file named \
               like the kernel build's signing key), do_compile_kernelmodules makes a \
               relocatable ELF module with the host gcc and do_install puts it and the image \
               where kernel_do_install does. do_shared_workdir, do_package, do_packagedata and \
               do_deploy are oe-core's."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit kernel

# what kernel.bbclass takes from a toolchain and native tools
INHIBIT_DEFAULT_DEPS = "1"
DEPENDS = ""
deltask do_prepare_recipe_sysroot
# no sysroot is populated from this recipe: no cross binutils
POPULATESYSROOTDEPS:class-target = ""
KERNEL_VERSION = "6.1.0-hsmsign-test"
HSMSIGN_TEST_KERNEL_KEY ??= "0"

HSMSIGN_TEST_KCONFIG_TREE ??= ""
# KERNEL_CC is the host's gcc (12 on Debian bookworm), which has no -fcanon-prefix-map (GCC 13)
DEBUG_PREFIX_MAP:remove = "-fcanon-prefix-map"
# 1: a kernel tree whose module signing depends on BROKEN (as a kernel marks what it cannot
# build), so CONFIG_MODULE_SIG cannot be enabled
HSMSIGN_TEST_KERNEL_NO_MODSIG ??= "0"

# the base configuration, which kernel_do_configure copies to ${B}/.config: 64-bit, modules,
# module signing off
SRC_URI = "file://defconfig"

# S (work-shared): one symlink per entry of the kernel tree (kernel_do_configure writes
# ${S}/.scmversion; the shared tree stays as it is). kernel_do_configure then runs
# olddefconfig on the defconfig, and meta-hsmsign's postfunc its own.
do_configure:prepend() {
	tree="${HSMSIGN_TEST_KCONFIG_TREE}"
	if [ ! -f "$tree/Kconfig" ]; then
		bbfatal "no kernel tree in HSMSIGN_TEST_KCONFIG_TREE ('$tree'): scripts/extract-kconfig-tree DEST"
	fi
	find ${S} -mindepth 1 -maxdepth 1 -exec rm -rf {} +
	for f in "$tree"/*; do
		ln -s "$f" ${S}/
	done
	if [ "${HSMSIGN_TEST_KERNEL_NO_MODSIG}" = "1" ]; then
		rm ${S}/kernel
		cp -rs "$tree/kernel" ${S}/kernel
		rm ${S}/kernel/module/Kconfig
		sed '/^config MODULE_SIG$/a\	depends on BROKEN' "$tree/kernel/module/Kconfig" > ${S}/kernel/module/Kconfig
	fi
	# a new configuration from the defconfig on every run
	rm -f ${B}/.config
}
do_configure[vardepsexclude] += "HSMSIGN_TEST_KCONFIG_TREE"

do_compile() {
	# the .config is do_configure's
	mkdir -p include/config include/generated certs
	cp .config include/config/auto.conf
	echo "${KERNEL_VERSION}" > include/config/kernel.release
	printf '#define UTS_RELEASE "%s"\n' "${KERNEL_VERSION}" > include/generated/utsrelease.h
	echo "ffffffff81000000 T _stext" > System.map
	: > Module.symvers
	# what kernel_do_deploy installs for each KERNEL_IMAGETYPES (bzImage on qemux86-64)
	mkdir -p ${KERNEL_OUTPUT_DIR}
	for imageType in ${KERNEL_IMAGETYPES}; do
		echo "stand-in $imageType" > ${KERNEL_OUTPUT_DIR}/$imageType
	done
	if [ "${HSMSIGN_TEST_KERNEL_KEY}" = "1" ]; then
		# the names the kernel build gives a generated key (the content is no key)
		echo "stand-in: no key" > certs/signing_key.pem
		echo "stand-in: no certificate" > certs/signing_key.x509
	fi
}
do_compile[dirs] = "${B}"

# the kernel's own modules: one relocatable ELF object with debug info and a .modinfo section
HSMSIGN_TEST_KERNEL_MODULES ?= "hsmsign_test_k"
# and one installed as CONFIG_MODULE_COMPRESS_XZ's modules_install leaves it (scripts/Makefile.modinst)
HSMSIGN_TEST_KERNEL_MODULES_XZ ?= "hsmsign_test_kxz"
# and three as CONFIG_MODULE_COMPRESS_ZSTD's leaves them (zstd reads each module's file)
HSMSIGN_TEST_KERNEL_MODULES_ZST ?= "hsmsign_test_kzst1 hsmsign_test_kzst2 hsmsign_test_kzst3"
do_compile_kernelmodules() {
	for m in ${HSMSIGN_TEST_KERNEL_MODULES} ${HSMSIGN_TEST_KERNEL_MODULES_XZ} ${HSMSIGN_TEST_KERNEL_MODULES_ZST}; do
		cat > $m.c <<EOC
#define MODINFO(id, text) static const char id[] __attribute__((section(".modinfo"), used, aligned(1))) = text
MODINFO(license, "license=GPL");
MODINFO(description, "description=meta-hsmsign test kernel module $m");
MODINFO(name, "name=$m");
MODINFO(depends, "depends=");
MODINFO(vermagic, "vermagic=${KERNEL_VERSION} SMP mod_unload ");
static int value = 42;
int init_module(void) { return value - 42; }
void cleanup_module(void) { value = 0; }
EOC
		${BUILD_CC} -g -O1 -fno-pic -c -o $m.ko $m.c
	done
}
do_compile_kernelmodules[dirs] = "${B}"

# what kernel_do_install's modules_install and image installation leave in ${D}
do_install() {
	moddir=${D}${nonarch_base_libdir}/modules/${KERNEL_VERSION}
	install -d $moddir/kernel/drivers/misc ${D}/${KERNEL_IMAGEDEST}
	: > $moddir/modules.order
	for m in ${HSMSIGN_TEST_KERNEL_MODULES}; do
		install -m 0644 ${B}/$m.ko $moddir/kernel/drivers/misc/
		echo kernel/drivers/misc/$m.ko >> $moddir/modules.order
	done
	for m in ${HSMSIGN_TEST_KERNEL_MODULES_XZ}; do
		xz --check=crc32 --lzma2=dict=1MiB -c ${B}/$m.ko > $moddir/kernel/drivers/misc/$m.ko.xz
		chmod 0644 $moddir/kernel/drivers/misc/$m.ko.xz
		echo kernel/drivers/misc/$m.ko >> $moddir/modules.order
	done
	for m in ${HSMSIGN_TEST_KERNEL_MODULES_ZST}; do
		install -m 0644 ${B}/$m.ko $moddir/kernel/drivers/misc/
		zstd -T0 --rm -f -q $moddir/kernel/drivers/misc/$m.ko
		echo kernel/drivers/misc/$m.ko >> $moddir/modules.order
	done
	: > $moddir/modules.builtin
	for imageType in ${KERNEL_IMAGETYPES}; do
		install -m 0644 ${KERNEL_OUTPUT_DIR}/$imageType ${D}/${KERNEL_IMAGEDEST}/$imageType-${KERNEL_VERSION}
	done
	install -m 0644 System.map ${D}/${KERNEL_IMAGEDEST}/System.map-${KERNEL_VERSION}
	install -m 0644 .config ${D}/${KERNEL_IMAGEDEST}/config-${KERNEL_VERSION}
}
do_install[dirs] = "${B}"

# a BSP's own tarball of the modules under another name, with a link to it (the layer's
# do_deploy postfunc refuses it: its modules are unsigned)
HSMSIGN_TEST_EXTRA_TARBALL ?= ""
do_deploy:append() {
	if [ -n "${HSMSIGN_TEST_EXTRA_TARBALL}" ]; then
		tar -czf ${DEPLOYDIR}/${HSMSIGN_TEST_EXTRA_TARBALL} -C ${D}${root_prefix} lib
		ln -sf ${HSMSIGN_TEST_EXTRA_TARBALL} ${DEPLOYDIR}/vendor-modules-latest.tgz
	fi
}

# The test's local.conf has the host's pseudo run the fakeroot tasks (no pseudo-native
# offline), so virtual/fakeroot-native is assumed: BitBake cannot resolve a setscene task's
# dependency on an assumed target.
python () {
    d.setVarFlag("do_package_setscene", "depends", "")
}
