SUMMARY = "meta-hsmsign layer test: one signing task through the class runner"
DESCRIPTION = "Writes a payload and signs it with HSM_PKCS11_URI_ROOTFS through \
               hsmsign_run (PIN from BB_ORIGENV when HSMSIGN_PIN_ENV is set)."
HOMEPAGE = "https://github.com/meta-hsmsign/meta-hsmsign"
BUGTRACKER = "https://github.com/meta-hsmsign/meta-hsmsign/issues"
CVE_PRODUCT = "hsmsign-test"
SECTION = "devel"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

INHIBIT_DEFAULT_DEPS = "1"
# offline: no sysroot, no packages (no cross binutils, no rpm-native)
deltask do_prepare_recipe_sysroot
do_patch[depends] = ""
POPULATESYSROOTDEPS:class-target = ""
inherit nopackages

HSMSIGN_TEST_OUT ?= "${WORKDIR}/hsmsign-test"

do_hsmsign_test[doc] = "Sign a payload with the token key and export the public key."
python do_hsmsign_test() {
    out = d.getVar("HSMSIGN_TEST_OUT")
    os.makedirs(out, exist_ok=True)
    payload = os.path.join(out, "payload.bin")
    with open(payload, "wb") as fh:
        fh.write(b"meta-hsmsign layer test payload\n" * 64)
    uri = hsmsign.bitbake.role_uri(d, "ROOTFS")
    hsmsign_run(d, ["sign", "--uri", uri, "--output", payload + ".sig", payload], "ROOTFS")
    hsmsign_run(d, ["pubkey", "--uri", uri, "--output", os.path.join(out, "pubkey.pem")], "ROOTFS")
}
do_hsmsign_test[nostamp] = "1"
addtask hsmsign_test

# nooelint: oelint.task.noanonpython - hooks the test task like the artifact classes hook theirs
python () {
    hsmsign_hook_task(d, "do_hsmsign_test", "ROOTFS")
}
