SUMMARY = "meta-hsmsign layer test: the image check of kernel modules on a stand-in root filesystem"
DESCRIPTION = "An image recipe (image.bbclass) whose test task unpacks the kernel's deployed \
               modules tarball into a stand-in root filesystem, optionally adds a prebuilt \
               unsigned module, and runs the layer's ROOTFS_POSTPROCESS_COMMAND on it \
               (do_rootfs itself needs package-manager natives that do not build offline)."
HOMEPAGE = "https://github.com/meta-hsmsign/meta-hsmsign"
BUGTRACKER = "https://github.com/meta-hsmsign/meta-hsmsign/issues"
LICENSE = "MIT"

inherit image

IMAGE_INSTALL = ""
IMAGE_LINGUAS = ""
IMAGE_FSTYPES = "tar"

# offline: the tasks whose dependencies are package-manager, QEMU and SDK natives are left
# out (below; their flags, do_rootfs's included, stay for the test to read); the test task
# runs the layer's ROOTFS_POSTPROCESS_COMMAND itself
KERNEL_DEPLOY_DEPEND = ""
# qemux86-64's qemuboot wants qemu-system-native
IMAGE_CLASSES:remove = "qemuboot"

# 1: a vendor's prebuilt module (no module.bbclass, so nobody signed it) is in the root filesystem too
HSMSIGN_TEST_VENDOR_MODULE ?= "0"

do_hsmsign_test_rootfs[doc] = "Unpack the deployed modules tarball into a stand-in rootfs and run the layer's image check on it."
python do_hsmsign_test_rootfs() {
    import glob
    import subprocess
    import tarfile
    root = d.expand("${WORKDIR}/test-rootfs")
    bb.utils.remove(root, recurse=True)
    bb.utils.mkdirhier(root)
    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    tarballs = [p for p in glob.glob(os.path.join(deploy, "modules-*.tgz")) if not os.path.islink(p)]
    if len(tarballs) != 1:
        bb.fatal("expected one modules tarball in %s, found %s" % (deploy, tarballs))
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(root)
    if d.getVar("HSMSIGN_TEST_VENDOR_MODULE") == "1":
        moddir = glob.glob(os.path.join(root, "lib", "modules", "*"))[0]
        extra = os.path.join(moddir, "extra")
        bb.utils.mkdirhier(extra)
        src = os.path.join(d.getVar("WORKDIR"), "vendor.c")
        with open(src, "w") as fh:
            fh.write('static const char n[] __attribute__((section(".modinfo"), used)) = "name=vendor";\n')
        subprocess.run(d.getVar("BUILD_CC").split() + ["-c", "-o", os.path.join(extra, "vendor.ko"), src], check=True)
    d.setVar("IMAGE_ROOTFS", root)
    bb.build.exec_func("hsmsign_image_modules_check", d)
}
do_hsmsign_test_rootfs[depends] += "hsmsign-test-modsign-kernel:do_deploy hsmsign-modules-cert:do_deploy"
do_hsmsign_test_rootfs[nostamp] = "1"
addtask hsmsign_test_rootfs

# nooelint: oelint.task.noanonpython - image.bbclass's tasks and DEPENDS exist only after its own anonymous function
python () {
    for task in list(d.getVar("__BBTASKS", False) or []):
        if task.startswith(("do_image", "do_rootfs", "do_populate_sdk", "do_sdk_depends", "do_testimage",
                            "do_prepare_recipe_sysroot")):
            bb.build.deltask(task, d)
    d.setVar("DEPENDS", "")
    d.setVar("RDEPENDS", "")
}
