SUMMARY = "A slot image for the RAUC bundle test: HSMSIGN_TEST_RAUC_ROOTFS_MIB of fixed bytes, deployed"
DESCRIPTION = "Only tests/layer/test_bitbake_rauc.py parses this. It deploys what an image \
               recipe would: the file a bundle's slot takes from DEPLOY_DIR_IMAGE."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"
INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit deploy nopackages
deltask do_prepare_recipe_sysroot
POPULATESYSROOTDEPS:class-target = ""

do_configure[noexec] = "1"
do_compile[noexec] = "1"
do_install[noexec] = "1"

# 1 MiB by default; the casync test takes 16 (rauc convert refuses a verity bundle whose
# casync index fits in 4 KiB), and no block repeats, so that casync's chunks do not collapse
HSMSIGN_TEST_RAUC_ROOTFS_MIB ?= "1"

python do_deploy() {
    import hashlib
    mib = int(d.getVar("HSMSIGN_TEST_RAUC_ROOTFS_MIB"))
    with open(os.path.join(d.getVar("DEPLOYDIR"), "hsmsign-test-rootfs.img"), "wb") as fh:
        for i in range(mib * 256):
            fh.write(b"".join(hashlib.sha256(b"hsmsign-test-rauc %d %d" % (i, j)).digest() for j in range(128)))
}
addtask deploy before do_build after do_compile
