SUMMARY = "Stand-in out-of-tree kernel module recipe: oe-core's module.bbclass packaging, no kernel build"
DESCRIPTION = "Only tests/layer/test_bitbake_modsign.py parses this (its local.conf adds it to \
               BBFILES and masks oe-core's recipes). It inherits oe-core's module.bbclass, but \
               no kernel can be built offline: do_compile makes relocatable ELF objects with the \
               host gcc (debug info, a .modinfo section) and do_install puts them where \
               module.bbclass's modules_install does, ${D}/lib/modules/<version>/extra. \
               do_package is oe-core's: strip and debug split, then PACKAGESPLITFUNCS \
               (meta-hsmsign's signing first, then kernel-module-split)."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit module

# what module.bbclass and module-base.bbclass would take from a kernel build
# (make-mod-scripts, the kernel's kernel-abiversion in the shared work directory)
INHIBIT_DEFAULT_DEPS = "1"
DEPENDS = ""
do_configure[depends] = ""
deltask do_prepare_recipe_sysroot
# no sysroot is populated from this recipe: no cross binutils
POPULATESYSROOTDEPS:class-target = ""
KERNEL_VERSION = "6.1.0-hsmsign-test"
HSMSIGN_TEST_MODULES ?= "hsmsign_test_a hsmsign_test_b"

do_configure[noexec] = "1"

do_compile() {
	for m in ${HSMSIGN_TEST_MODULES}; do
		cat > $m.c <<EOC
#define MODINFO(id, text) static const char id[] __attribute__((section(".modinfo"), used, aligned(1))) = text
MODINFO(license, "license=GPL");
MODINFO(description, "description=meta-hsmsign test module $m");
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
do_compile[cleandirs] = "${B}"
do_compile[dirs] = "${B}"

do_install() {
	install -d ${D}${nonarch_base_libdir}/modules/${KERNEL_VERSION}/extra
	for m in ${HSMSIGN_TEST_MODULES}; do
		install -m 0644 ${B}/$m.ko ${D}${nonarch_base_libdir}/modules/${KERNEL_VERSION}/extra/
	done
}

# The test's local.conf has the host's pseudo run the fakeroot tasks (no pseudo-native
# offline), so virtual/fakeroot-native is assumed: BitBake cannot resolve a setscene task's
# dependency on an assumed target.
python () {
    d.setVarFlag("do_package_setscene", "depends", "")
}
