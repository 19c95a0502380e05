SUMMARY = "Stand-in kernel recipe: oe-core's kernel.bbclass from do_shared_workdir to do_deploy, no kernel build"
DESCRIPTION = "Only tests/layer/test_bitbake_modsign.py parses this (its local.conf adds it to \
               BBFILES and masks oe-core's recipes). It inherits oe-core's kernel.bbclass, so \
               meta-hsmsign hooks it as it hooks any kernel recipe; no kernel builds offline: \
               do_configure does not run, do_compile writes the files oe-core's \
               do_shared_workdir, do_package and do_deploy read (a .config with \
               CONFIG_MODULES=y, System.map, a stand-in kernel image under KERNEL_OUTPUT_DIR; \
               with HSMSIGN_TEST_KERNEL_KEY = 1, a file named like the kernel build's signing \
               key), do_compile_kernelmodules makes a relocatable ELF module with the host gcc \
               and do_install puts it and the image where kernel_do_install does. \
               do_shared_workdir, do_package, do_packagedata and do_deploy are oe-core's."
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

do_configure[noexec] = "1"

do_compile() {
	mkdir -p include/config include/generated certs
	printf 'CONFIG_MODULES=y\nCONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY=""\n' > .config
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
do_compile[cleandirs] = "${B}"
do_compile[dirs] = "${B}"

# the kernel's own modules: one relocatable ELF object with debug info and a .modinfo section
HSMSIGN_TEST_KERNEL_MODULES ?= "hsmsign_test_k"
do_compile_kernelmodules() {
	for m in ${HSMSIGN_TEST_KERNEL_MODULES}; do
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
	: > $moddir/modules.builtin
	for imageType in ${KERNEL_IMAGETYPES}; do
		install -m 0644 ${KERNEL_OUTPUT_DIR}/$imageType ${D}/${KERNEL_IMAGEDEST}/$imageType-${KERNEL_VERSION}
	done
	install -m 0644 System.map ${D}/${KERNEL_IMAGEDEST}/System.map-${KERNEL_VERSION}
	install -m 0644 .config ${D}/${KERNEL_IMAGEDEST}/config-${KERNEL_VERSION}
}
do_install[dirs] = "${B}"

# The test's local.conf has the host's pseudo run the fakeroot tasks (no pseudo-native
# offline), so virtual/fakeroot-native is assumed: BitBake cannot resolve a setscene task's
# dependency on an assumed target.
python () {
    d.setVarFlag("do_package_setscene", "depends", "")
}
