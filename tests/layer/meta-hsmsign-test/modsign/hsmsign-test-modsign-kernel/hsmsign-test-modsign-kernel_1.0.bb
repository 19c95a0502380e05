SUMMARY = "Stand-in kernel recipe: oe-core's kernel.bbclass and its do_shared_workdir, no kernel build"
DESCRIPTION = "Only tests/layer/test_bitbake_modsign.py parses this (its local.conf adds it to \
               BBFILES and masks oe-core's recipes). It inherits oe-core's kernel.bbclass, so \
               meta-hsmsign hooks it as it hooks any kernel recipe; no kernel builds offline: \
               do_configure does not run, and do_compile writes the files oe-core's \
               do_shared_workdir copies into the shared kernel build artifacts (and, with \
               HSMSIGN_TEST_KERNEL_KEY = 1, a file named like the kernel build's signing key)."
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
	if [ "${HSMSIGN_TEST_KERNEL_KEY}" = "1" ]; then
		# the names the kernel build gives a generated key (the content is no key)
		echo "stand-in: no key" > certs/signing_key.pem
		echo "stand-in: no certificate" > certs/signing_key.x509
	fi
}
do_compile[cleandirs] = "${B}"
do_compile[dirs] = "${B}"
