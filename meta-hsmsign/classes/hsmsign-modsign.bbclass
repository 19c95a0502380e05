# nooelint: oelint.bbclass.underscores - names fixed by the design (hsmsign-<artifact>, like oe-core's uboot-sign)
# hsmsign-modsign.bbclass: Linux kernel modules signed through the token.
#
# Inherited by hsmsign.bbclass (INHERIT += "hsmsign"). Key: HSM_PKCS11_URI_MODULES
# (defaults to the kernel FIT key, HSM_PKCS11_URI_FITIMAGE). No private key exists in
# the build: the kernel is configured with the certificate only.
#
#   * Kernel recipes (kernel.bbclass, linux-yocto included): a postfunc of do_configure
#     sets CONFIG_MODULE_SIG, CONFIG_MODULE_SIG_KEY="" (the kernel build generates no
#     certs/signing_key.pem), CONFIG_MODULE_SIG_ALL off (modules_install signs nothing),
#     CONFIG_SYSTEM_TRUSTED_KEYS = the token key's certificate, the hash
#     (HSMSIGN_MODULES_HASH) and CONFIG_MODULE_SIG_FORCE (HSMSIGN_MODULES_SIG_FORCE),
#     runs olddefconfig and fails when a setting did not stick. do_shared_workdir then
#     refuses to run when a signing_key.pem or signing_key.priv exists in ${B}.
#   * Every recipe that packages modules (kernel.bbclass, module.bbclass): in do_package,
#     oe-core strips the files in PKGD (process_split_and_strip_files, which leaves signed
#     modules alone), then runs PACKAGESPLITFUNCS, which split PKGD into the packages. The
#     class puts hsmsign_sign_modules first in PACKAGESPLITFUNCS: every *.ko below
#     lib/modules/ in PKGD (not the debug split's .debug/ copies) is signed after stripping
#     and before any package gets it. The order is the same in scarthgap, wrynose and
#     master (package.bbclass do_package).
#     One 'hsmsign modsign' process per 500 modules: one token login, one signature each.
#   * Kernel recipes with MODULE_TARBALL_DEPLOY = "1": kernel_do_deploy tars the unsigned
#     modules of ${D}${root_prefix}/lib into modules-${MODULE_TARBALL_NAME}.tgz in DEPLOYDIR.
#     hsmsign_modules_tarball, a postfunc of do_deploy placed before sstate_task_postfunc
#     (which copies DEPLOYDIR into DEPLOY_DIR_IMAGE), signs a copy of that tree with the
#     function do_package uses (hsmsign_modsign_tree), and tars it again as kernel_do_deploy
#     does (same TAR_ARGS, gzip -9n, the originals' times), renamed over the tarball. ${D},
#     not PKGD: do_package may come from sstate, and then PKGD does not exist. A failure
#     removes the tarball and its link: no unsigned tarball is deployed. Then, whatever
#     MODULE_TARBALL_DEPLOY is, every other tar archive in DEPLOYDIR with an unsigned module
#     (a BSP's own tarball) fails the task and is removed. The same in scarthgap, wrynose
#     and master.
#   * Images (image.bbclass): a ROOTFS_POSTPROCESS_COMMAND checks every module in the
#     root filesystem against the certificate (HSMSIGN_MODULES_IMAGE_CHECK), whatever package
#     brought it: a prebuilt .ko from a recipe that inherits neither module nor kernel stops
#     do_rootfs (a warning with HSMSIGN_MODULES_SIG_FORCE = "0").
#   * The certificate: the recipe hsmsign-modules-cert deploys it as hsmsign-modules.pem
#     and .der (HSMSIGN_MODULES_CERT, or a self-signed one in development mode).
#
#   INHERIT += "hsmsign"
#   HSM_PKCS11_URI_MODULES = "pkcs11:token=acme-prod;object=kernel-modules"
#   HSMSIGN_MODULES_CERT = "/etc/acme/kernel-modules.pem"
#
# See docs/modsign.md.

HSMSIGN_MODSIGN ??= "1"
HSMSIGN_MODSIGN[doc] = "1: configure kernels with the token's module-signing certificate only and sign every packaged kernel module with HSM_PKCS11_URI_MODULES. 0: leave kernels and modules alone."

HSMSIGN_MODULES_CERT ??= ""
HSMSIGN_MODULES_CERT[doc] = "PEM or DER certificate of HSM_PKCS11_URI_MODULES's key: built into the kernel (CONFIG_SYSTEM_TRUSTED_KEYS) and named in every module signature. Empty: hsmsign-modules-cert makes a self-signed one from the token key (development mode only)."

HSMSIGN_MODULES_CERT_SUBJECT ??= "CN=${@d.getVar('DISTRO') or 'Yocto'} kernel modules (meta-hsmsign development)"
HSMSIGN_MODULES_CERT_SUBJECT[doc] = "Subject of the self-signed module certificate made when HSMSIGN_MODULES_CERT is empty."

HSMSIGN_MODULES_HASH ??= "sha256"
HSMSIGN_MODULES_HASH[doc] = "Hash of the module signatures (sha256, sha384, sha512); the kernel is configured with the same CONFIG_MODULE_SIG_<HASH>."

HSMSIGN_MODULES_SIG_FORCE ??= "1"
HSMSIGN_MODULES_SIG_FORCE[doc] = "1: CONFIG_MODULE_SIG_FORCE=y, the kernel refuses unsigned modules and modules signed by another key. 0: it loads them and taints itself."

HSMSIGN_MODULES_IMAGE_CHECK ??= "1"
HSMSIGN_MODULES_IMAGE_CHECK[doc] = "1: every kernel module in an image's root filesystem must verify against the module certificate (a ROOTFS_POSTPROCESS_COMMAND); with HSMSIGN_MODULES_SIG_FORCE = 1 one that does not stops do_rootfs, else it is a warning. 0: no check."

HSMSIGN_MODULES_CERT_FILE ?= "${DEPLOY_DIR_IMAGE}/hsmsign-modules.pem"
HSMSIGN_MODULES_CERT_FILE[doc] = "The module certificate the kernel and the signing tasks use: what hsmsign-modules-cert deployed."

HSMSIGN_MODULES_BATCH ??= "500"
HSMSIGN_MODULES_BATCH[doc] = "Modules per 'hsmsign modsign' process (one token login each)."

# Sign every kernel module below ROOT (kernel_modules: *.ko below lib/modules/, and the
# compressed .ko.gz/.ko.xz/.ko.zst of CONFIG_MODULE_COMPRESS_*, signed inside and compressed
# again; not the debug split's .debug/ copies) with HSM_PKCS11_URI_MODULES,
# HSMSIGN_MODULES_BATCH per 'hsmsign modsign' process, under the per-token lock. Returns how many.
# Shared by do_package (PKGD) and the kernel's do_deploy (the modules tarball).
def hsmsign_modsign_tree(d, root, what):
    modules = hsmsign.bitbake.kernel_modules(root)
    if not modules:
        return 0
    cert = d.getVar("HSMSIGN_MODULES_CERT_FILE")
    if not os.path.isfile(cert):
        bb.fatal("meta-hsmsign: no module certificate %s (hsmsign-modules-cert:do_deploy writes it)" % cert)
    uri = hsmsign.bitbake.role_uri(d, "MODULES")
    lock = hsmsign.bitbake.lockfile(d, "MODULES")
    lf = bb.utils.lockfile(lock) if lock else None
    try:
        for batch in hsmsign.bitbake.batches(modules, int(d.getVar("HSMSIGN_MODULES_BATCH") or "500")):
            hsmsign_run(d, ["modsign", "--uri", uri, "--cert", cert,
                            "--hash", d.getVar("HSMSIGN_MODULES_HASH")] + batch, "MODULES")
    finally:
        if lf:
            bb.utils.unlockfile(lf)
    bb.note("meta-hsmsign: signed %d kernel modules %s with %s" % (len(modules), what, hsmsign.bitbake.uri_identity(uri)))
    return len(modules)
hsmsign_modsign_tree[vardeps] += "HSMSIGN_KEY_ID_MODULES HSMSIGN_MODULES_CERT_ID HSMSIGN_MODULES_HASH HSMSIGN_CMD"
hsmsign_modsign_tree[vardepsexclude] += "HSMSIGN_MODULES_BATCH"

# do_package: after oe-core stripped PKGD, before PACKAGESPLITFUNCS hands files to packages
hsmsign_sign_modules[doc] = "First of PACKAGESPLITFUNCS: sign every kernel module in PKGD (stripped by then) with HSM_PKCS11_URI_MODULES."
python hsmsign_sign_modules() {
    hsmsign_modsign_tree(d, d.getVar("PKGD"), "in PKGD")
}
hsmsign_sign_modules[vardeps] += "hsmsign_modsign_tree"

# kernel do_deploy postfunc: kernel_do_deploy tars ${D}${root_prefix}/lib (unsigned, unstripped
# modules) into modules-${MODULE_TARBALL_NAME}.tgz. Sign a copy of that tree and tar it again as
# kernel_do_deploy does, over the tarball, before sstate hands DEPLOYDIR to DEPLOY_DIR_IMAGE.
# ${D} rather than PKGD: do_package may come from sstate, and then PKGD does not exist.
# Then every other tar archive in DEPLOYDIR (a BSP's do_deploy:append packing modules under its
# own name) must hold signed modules only, or the task fails and removes it.
hsmsign_modules_tarball[doc] = "Postfunc of the kernel's do_deploy: the modules-*.tgz tarball made again with every module signed by HSM_PKCS11_URI_MODULES, and no other archive in DEPLOYDIR with unsigned modules; on failure no such tarball is left."
python hsmsign_modules_tarball() {
    import shutil
    deploydir = d.getVar("DEPLOYDIR")
    if d.getVar("KERNEL_DEPLOYSUBDIR"):
        deploydir = os.path.join(deploydir, d.getVar("KERNEL_DEPLOYSUBDIR"))
    tarball = os.path.join(deploydir, "modules-%s.tgz" % d.getVar("MODULE_TARBALL_NAME"))
    link = d.getVar("MODULE_TARBALL_LINK_NAME")
    link = os.path.join(deploydir, "modules-%s.tgz" % link) if link else ""
    if os.path.isfile(tarball):
        # kernel_do_deploy: tar -C ${D}${root_prefix} lib
        tree = os.path.join(d.getVar("D") + d.getVar("root_prefix"), "lib")
        scratch = os.path.join(d.getVar("WORKDIR"), "hsmsign-modules-tarball")
        try:
            try:
                bb.utils.remove(scratch, recurse=True)
                shutil.copytree(tree, os.path.join(scratch, "lib"), symlinks=True)
                if hsmsign_modsign_tree(d, scratch, "for " + os.path.basename(tarball)):
                    hsmsign.bitbake.copy_times(tree, os.path.join(scratch, "lib"))
                    hsmsign.bitbake.write_modules_tarball(scratch, tarball, d.getVar("SOURCE_DATE_EPOCH") or "")
            except (hsmsign.bitbake.TaskError, OSError) as exc:
                bb.fatal("meta-hsmsign: %s not signed: %s" % (os.path.basename(tarball), exc))
        except BaseException:
            # fail closed: no unsigned modules tarball (nor a link to it) left for sstate to deploy
            for path in (tarball, link):
                if path and os.path.lexists(path):
                    os.remove(path)
            raise
        finally:
            bb.utils.remove(scratch, recurse=True)
    else:
        bb.debug(1, "meta-hsmsign: no %s (CONFIG_MODULES is off): nothing to sign" % tarball)
    # the other archives: signed by nobody here, so they must hold no unsigned module
    top = d.getVar("DEPLOYDIR")
    try:
        unsigned = hsmsign.bitbake.unsigned_modules_in_archives(top, skip=[tarball])
    except hsmsign.bitbake.TaskError as exc:
        bb.fatal("meta-hsmsign: %s" % exc)
    if unsigned:
        archives = sorted({archive for archive, _member in unsigned})
        for archive in archives:
            os.remove(archive)
        for root, _dirs, files in os.walk(top):  # and the links that named them
            for name in files:
                path = os.path.join(root, name)
                if os.path.islink(path) and os.path.realpath(path) in archives:
                    os.remove(path)
        bb.fatal("meta-hsmsign: %d kernel module(s) without a signature in %s in DEPLOYDIR (e.g. %s), packed by "
                 "a do_deploy step the layer does not sign; removed. Pack modules from PKGD after do_package "
                 "(signed there), sign them first (hsmsign_modsign_tree in hsmsign-modsign.bbclass), or leave "
                 "them to kernel_do_deploy's modules tarball, which the layer signs"
                 % (len(unsigned), ", ".join(os.path.relpath(a, top) for a in archives), unsigned[0][1]))
}
hsmsign_modules_tarball[vardeps] += "hsmsign_modsign_tree"

# image ROOTFS_POSTPROCESS_COMMAND: every module the image holds, whatever package brought it
# (a vendor's prebuilt .ko in a recipe that inherits neither module nor kernel is signed by
# nobody), is checked as the kernel will check it: against the module certificate
hsmsign_image_modules_check[doc] = "ROOTFS_POSTPROCESS_COMMAND of images: every kernel module in IMAGE_ROOTFS verifies against the module certificate (hsmsign modsign verify)."
python hsmsign_image_modules_check() {
    root = d.getVar("IMAGE_ROOTFS")
    modules = hsmsign.bitbake.image_kernel_modules(root)
    if not modules:
        return
    cert = d.getVar("HSMSIGN_MODULES_CERT_FILE")
    if not os.path.isfile(cert):
        bb.fatal("meta-hsmsign: no module certificate %s to check the image's kernel modules against "
                 "(hsmsign-modules-cert:do_deploy writes it)" % cert)
    failures = []
    for batch in hsmsign.bitbake.batches(modules, int(d.getVar("HSMSIGN_MODULES_BATCH") or "500")):
        try:
            hsmsign.bitbake.run(d, ["modsign", "verify", "--cert", cert] + batch, "MODULES",
                                d.getVar("BB_ORIGENV", False),
                                shown="hsmsign modsign verify --cert %s <%d modules>" % (cert, len(batch)))
        except hsmsign.bitbake.TaskError as exc:
            failures.append(str(exc).split(":\n", 1)[-1].replace(root, "${IMAGE_ROOTFS}"))
    if not failures:
        bb.note("meta-hsmsign: the image's %d kernel modules verify against %s" % (len(modules), cert))
        return
    message = ("meta-hsmsign: kernel modules in the image do not verify against the module certificate, so the "
               "kernel would refuse them: %s. Which package brought one: oe-pkgdata-util find-path PATH. Modules "
               "of recipes that inherit neither module nor kernel are not signed by the layer: inherit module, "
               "or leave them out" % "; ".join(failures))
    if d.getVar("HSMSIGN_MODULES_SIG_FORCE") == "1":
        bb.fatal(message)
    bb.warn(message + " (HSMSIGN_MODULES_SIG_FORCE = 0: the kernel loads them and taints itself)")
}
hsmsign_image_modules_check[vardeps] += "HSMSIGN_MODULES_CERT_ID HSMSIGN_MODULES_SIG_FORCE HSMSIGN_CMD"
hsmsign_image_modules_check[vardepsexclude] += "BB_ORIGENV HSMSIGN_MODULES_BATCH"

# kernel do_configure postfunc: the certificate-only module signing configuration
hsmsign_modsign_kconfig[doc] = "Postfunc of the kernel's do_configure: CONFIG_MODULE_SIG with the token's certificate only (no signing key), checked after olddefconfig."
python hsmsign_modsign_kconfig() {
    import shutil
    b = d.getVar("B")
    cert = os.path.join(b, "hsmsign-modules.pem")
    source = d.getVar("HSMSIGN_MODULES_CERT_FILE")
    try:
        shutil.copyfile(source, cert)
    except OSError as exc:
        bb.fatal("meta-hsmsign: cannot read the module certificate %s (%s); it is what hsmsign-modules-cert "
                 "deploys: check HSMSIGN_MODULES_CERT_FILE and HSMSIGN_MODULES_CERT" % (source, exc.strerror or exc))
    wanted = hsmsign.bitbake.modsign_kconfig(cert, d.getVar("HSMSIGN_MODULES_HASH"),
                                             d.getVar("HSMSIGN_MODULES_SIG_FORCE") == "1")
    config = os.path.join(b, ".config")
    with open(config, "a", encoding="utf-8") as fh:
        fh.write("\n# meta-hsmsign: module signatures, certificate only\n" + "\n".join(wanted) + "\n")
    bb.build.exec_func("hsmsign_modsign_olddefconfig", d)
    with open(config, encoding="utf-8") as fh:
        missing = hsmsign.bitbake.kconfig_mismatches(fh.read(), wanted)
    if missing:
        bb.fatal("meta-hsmsign: the kernel configuration refused: %s (does this kernel have "
                 "CONFIG_MODULE_SIG? is a setting forced by the BSP?)" % ", ".join(missing))
}
hsmsign_modsign_kconfig[vardeps] += "HSMSIGN_MODULES_CERT_ID HSMSIGN_MODULES_HASH HSMSIGN_MODULES_SIG_FORCE"

hsmsign_modsign_olddefconfig() {
    oe_runmake -C ${S} O=${B} olddefconfig
}

# kernel do_shared_workdir prefunc: oe-core copies certs/signing_key.* into the shared
# kernel build artifacts; with the configuration above there is no private key to copy
hsmsign_modsign_nokey[doc] = "Prefunc of the kernel's do_shared_workdir: no signing_key.pem or signing_key.priv in the kernel build tree."
python hsmsign_modsign_nokey() {
    found = hsmsign.bitbake.private_key_files(d.getVar("B"))
    if found:
        bb.fatal("meta-hsmsign: the kernel build holds a module signing key (%s); remove it (bitbake -c cleansstate "
                 "the kernel) and keep CONFIG_MODULE_SIG_KEY empty" % found[0])
}

def hsmsign_modules_cert_id(d):
    import hashlib
    path = d.getVar("HSMSIGN_MODULES_CERT")
    if not path:
        return "self-signed"
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return "missing:" + path

HSMSIGN_MODULES_CERT_ID = "${@hsmsign_modules_cert_id(d)}"
HSMSIGN_MODULES_CERT_ID[vardepvalue] = "${HSMSIGN_MODULES_CERT_ID}"

# nooelint: oelint.task.noanonpython - the hooks depend on the inherited classes, known only after parsing
python () {
    if not hsmsign.bitbake.enabled(d) or d.getVar("HSMSIGN_MODSIGN") != "1":
        return
    if bb.data.inherits_class("image", d):
        if d.getVar("HSMSIGN_MODULES_IMAGE_CHECK") == "1":
            d.appendVar("ROOTFS_POSTPROCESS_COMMAND", " hsmsign_image_modules_check")
            d.appendVarFlag("do_rootfs", "depends", " hsmsign-modules-cert:do_deploy")
            if d.getVar("HSMSIGN_CMD") == "hsmsign":
                d.appendVar("DEPENDS", " hsmsign-native")
        return
    is_kernel = bb.data.inherits_class("kernel", d)
    if not (is_kernel or bb.data.inherits_class("module", d)) or bb.data.inherits_class("nopackages", d):
        return
    if is_kernel:
        d.appendVarFlag("do_configure", "postfuncs", " hsmsign_modsign_kconfig")
        d.appendVarFlag("do_configure", "depends", " hsmsign-modules-cert:do_deploy")
        d.appendVarFlag("do_configure", "vardeps", " hsmsign_modsign_kconfig")
        d.appendVarFlag("do_shared_workdir", "prefuncs", " hsmsign_modsign_nokey")
    if is_kernel:
        # before sstate_task_postfunc (when sstate.bbclass's anonymous function ran first), which
        # copies DEPLOYDIR into DEPLOY_DIR_IMAGE: only the signed tarball is deployed. Also with
        # MODULE_TARBALL_DEPLOY = "0" (master's default): then it signs nothing, but still
        # refuses a BSP's own tarball of unsigned modules
        postfuncs = (d.getVarFlag("do_deploy", "postfuncs") or "").split()
        at = postfuncs.index("sstate_task_postfunc") if "sstate_task_postfunc" in postfuncs else len(postfuncs)
        postfuncs.insert(at, "hsmsign_modules_tarball")
        d.setVarFlag("do_deploy", "postfuncs", " ".join(postfuncs))
        d.appendVarFlag("do_deploy", "vardeps", " hsmsign_modules_tarball")
        d.appendVarFlag("do_deploy", "depends", " hsmsign-modules-cert:do_deploy")
        d.setVarFlag("do_deploy", "hsmsign_role", "MODULES")
    d.prependVar("PACKAGESPLITFUNCS", "hsmsign_sign_modules ")
    d.appendVarFlag("do_package", "depends", " hsmsign-modules-cert:do_deploy")
    d.setVarFlag("do_package", "hsmsign_role", "MODULES")
    if d.getVar("HSMSIGN_CMD") == "hsmsign":
        d.appendVar("DEPENDS", " hsmsign-native")
}
