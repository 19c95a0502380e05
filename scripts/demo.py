#!/usr/bin/env python3
"""The meta-hsmsign demo: every artifact signed on a development token, each checked
by the verifier the device (or its tooling) runs. Run it through ./scripts/demo.

Everything happens in a fresh temporary directory: its own SoftHSM development
token (hsmsign dev-init), its own keys, its own artifacts. Nothing is written
elsewhere; --keep leaves the directory for a look around.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "meta-hsmsign" / "lib"
WIDTH = 100
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")  # Debian's systemd-boot-efi
MODULE_MAGIC = b"~Module signature appended~\n"


class Demo:
    def __init__(self, work: Path, verbose: bool) -> None:
        self.work = work
        self.verbose = verbose
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIB), self.env.get("PYTHONPATH", "")]))
        self.env["HSMSIGN_DEV_HOME"] = str(work / "dev-token")
        if (LIB / "hsmsign" / "commands" / "ledger.py").exists():
            self.env["HSMSIGN_LEDGER"] = str(work / "deploy" / "hsmsign-ledger.jsonl")
        for name in ("HSM_PKCS11_URI", "HSMSIGN_PUBKEY_SHA256", "HSMSIGN_ALLOW_SOFTWARE_TOKEN"):
            self.env.pop(name, None)
        self.rows: list[tuple[str, str, str, bool]] = []
        self.steps = 0
        self.deploy = work / "deploy"
        self.deploy.mkdir(parents=True)

    # ---------------------------------------------------------------- helpers
    def run(
        self,
        argv: Sequence[str],
        *,
        ok_codes: Sequence[int] = (0,),
        show: bool = True,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        shown = " ".join(_short(a, self.work) for a in argv)
        if show:
            print(textwrap.shorten("  $ " + shown, WIDTH, placeholder=" ..."))
        done = _run(list(argv), env=self.env, cwd=cwd)
        if self.verbose or done.returncode not in ok_codes:
            for line in (done.stdout + done.stderr).strip().splitlines()[:25]:
                print("    " + textwrap.shorten(line, WIDTH - 4, placeholder=" ..."))
        if done.returncode not in ok_codes:
            raise DemoFailed(f"{argv[0]} exited with {done.returncode}")
        return done

    def hsmsign(self, *argv: str, ok_codes: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
        print(
            textwrap.shorten(
                "  $ hsmsign " + " ".join(_short(a, self.work) for a in argv), WIDTH, placeholder=" ..."
            )
        )
        done = self.run([sys.executable, "-m", "hsmsign", *argv], ok_codes=ok_codes, show=False)
        return done

    def certificate(self, role: str, what: str, path: Path, eku: str | None = None) -> None:
        """A self-signed development certificate of ``role``'s token key (what a device would trust)."""
        subject = f"CN=meta-hsmsign demo {what} (DEVELOPMENT)"
        usage = ["--eku", eku] if eku else []
        self.hsmsign("cert", "--uri", self.uris[role], "--subject", subject, *usage, "--output", str(path))

    def step(self, title: str) -> None:
        self.steps += 1
        print(f"\n== {self.steps}. {title}")

    def result(self, artifact: str, verifier: str, accepted: bool, expect_accept: bool = True) -> None:
        verdict = "accepted" if accepted else "refused"
        ok = accepted == expect_accept
        self.rows.append((artifact, verifier, verdict, ok))
        print(f"  -> {verifier}: {verdict}{'' if ok else '   <-- UNEXPECTED'}")

    # ---------------------------------------------------------------- steps
    def dev_token(self) -> None:
        self.step("A development token (SoftHSM), one development key per role")
        done = self.hsmsign("dev-init", "--json")
        dev = json.loads(done.stdout)
        self.env["SOFTHSM2_CONF"] = dev["conf"]
        self.env["HSMSIGN_MODE"] = "development"
        self.uris = {role: entry["uri"] for role, entry in dev["keys"].items()}
        for role, entry in dev["keys"].items():
            fp = entry.get("fingerprint") or ""
            print(f"     {role:<9} {entry['label']:<13} {entry['type']:<9} {fp[:32]}")
        print("     (keys are generated inside the token: sensitive, never extractable)")

    def rootfs(self) -> None:
        self.step("Root filesystem: detached signature, dm-verity root hash signature")
        image = self.deploy / "core-image-demo.ext4"
        src = self.work / "rootfs"
        (src / "etc").mkdir(parents=True)
        (src / "etc" / "os-release").write_text('NAME="meta-hsmsign demo"\n')
        (src / "bin").mkdir()
        (src / "bin" / "payload").write_bytes(os.urandom(6 << 20))
        self.run(["mke2fs", "-q", "-t", "ext4", "-d", str(src), "-b", "4096", str(image), "16M"])
        sig = self.deploy / "core-image-demo.ext4.sig"
        self.hsmsign("sign", "--uri", self.uris["rootfs"], "--output", str(sig), str(image))
        pub = self.work / "rootfs-pub.pem"
        self.hsmsign("pubkey", "--uri", self.uris["rootfs"], "--output", str(pub))
        done = self.run(
            ["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(image)],
            ok_codes=(0, 1),
        )
        self.result("rootfs image (detached)", "openssl dgst -verify", done.returncode == 0)

        cert = self.deploy / "rootfs-verity-signer.pem"
        self.certificate("rootfs", "rootfs", cert, "codeSigning")
        tree = self.deploy / "core-image-demo.ext4.verity"
        roothash = self.deploy / "core-image-demo.ext4.roothash"
        p7s = self.deploy / "core-image-demo.ext4.roothash.p7s"
        self.hsmsign(
            "verity",
            "sign",
            "--uri",
            self.uris["rootfs"],
            "--cert",
            str(cert),
            "--image",
            str(image),
            "--hash-tree",
            str(tree),
            "--root-hash-output",
            str(roothash),
            "--output",
            str(p7s),
        )
        root_hex = roothash.read_text().strip()
        done = self.run(["veritysetup", "verify", str(image), str(tree), root_hex], ok_codes=(0, 1, 2))
        self.result("rootfs dm-verity hash tree", "veritysetup verify", done.returncode == 0)
        done = self.run(
            [
                "openssl",
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-in",
                str(p7s),
                "-content",
                str(roothash),
                "-CAfile",
                str(cert),
                "-purpose",
                "any",
                "-out",
                os.devnull,
            ],
            ok_codes=(0, 4),
        )
        self.result("dm-verity root hash (PKCS#7)", "openssl cms -verify", done.returncode == 0)
        self.image = image

    def swupdate(self) -> None:
        self.step("swupdate bundle: CMS signature over sw-description")
        cert = self.deploy / "swupdate-signer.pem"
        self.certificate("swupdate", "swupdate", cert, "emailProtection")
        payload = self.work / "rootfs.ext4.gz"
        shutil.copyfile(self.image, payload)
        import hashlib

        digest = hashlib.sha256(payload.read_bytes()).hexdigest()
        desc = self.work / "sw-description"
        desc.write_text(
            textwrap.dedent(f"""\
            software = {{
                version = "1.0.0";
                description = "meta-hsmsign demo update";
                hardware-compatibility = [ "1.0" ];
                images: (
                    {{
                        filename = "rootfs.ext4.gz";
                        device = "/dev/null";
                        sha256 = "{digest}";
                    }}
                );
            }}
            """)
        )
        swu = self.deploy / "demo-update.swu"
        self.hsmsign(
            "swupdate",
            "bundle",
            "--uri",
            self.uris["swupdate"],
            "--cert",
            str(cert),
            "--sw-description",
            str(desc),
            "--output",
            str(swu),
            str(payload),
        )
        done = self.run(
            ["swupdate", "-H", "demo-board:1.0", "-c", "-i", str(swu), "-k", str(cert)], ok_codes=(0, 1)
        )
        self.result("swupdate bundle (.swu)", "swupdate -c -k", done.returncode == 0)
        self.swu = swu
        self.swu_cert = cert

    def rauc(self) -> None:
        self.step("RAUC bundle: rauc signs through the token, hsmsign checks key and bundle")
        cert = self.deploy / "rauc-signer.pem"
        self.certificate("rauc", "RAUC", cert)
        src = self.work / "rauc-bundle"
        src.mkdir()
        shutil.copyfile(self.image, src / "rootfs.ext4")
        (src / "manifest.raucm").write_text(
            "[update]\ncompatible=demo-board\nversion=1.0.0\n\n[bundle]\nformat=verity\n\n"
            "[image.rootfs]\nfilename=rootfs.ext4\n"
        )
        bundle = self.deploy / "demo-update.raucb"
        self.hsmsign("rauc", "bundle", "--uri", self.uris["rauc"], "--cert", str(cert), str(src), str(bundle))
        done = self.run(["rauc", "info", f"--keyring={cert}", str(bundle)], ok_codes=(0, 1))
        self.result("RAUC bundle (.raucb)", "rauc info --keyring", done.returncode == 0)
        done = self.hsmsign("rauc", "verify", "--cert", str(cert), str(bundle), ok_codes=(0, 6))
        self.result("RAUC bundle, every payload block", "hsmsign rauc verify", done.returncode == 0)
        changed = self.work / "changed.raucb"
        data = bytearray(bundle.read_bytes())
        data[4096] ^= 1  # one payload byte, after signing
        changed.write_bytes(bytes(data))
        done = self.hsmsign("rauc", "verify", "--cert", str(cert), str(changed), ok_codes=(0, 6))
        self.result("the same, one payload byte changed", "hsmsign rauc verify", done.returncode == 0, False)

    def encryption(self) -> None:
        self.step("Encrypted image: AES-256-CBC with a key that stays in the token")
        enc = self.deploy / "core-image-demo.ext4.enc"
        iv_file = self.work / "image.iv"
        self.hsmsign(
            "encrypt",
            "--uri",
            self.uris["encrypt"],
            "--in",
            str(self.image),
            "--out",
            str(enc),
            "--iv-output",
            str(iv_file),
        )
        iv = iv_file.read_text().strip()
        # the independent check: OpenSC's pkcs11-tool decrypts in the same token, we compare
        pin = Path(self.env["HSMSIGN_DEV_HOME"], "user-pin").read_text().strip()
        module = self.uris["encrypt"].split("module-path=")[1].split("&")[0]
        back = self.work / "decrypted.ext4"
        token_uri = "pkcs11:token=hsmsign-dev?" + self.uris["encrypt"].split("?", 1)[1]
        listing = json.loads(
            self.run(
                [sys.executable, "-m", "hsmsign", "info", "--uri", token_uri, "--json"], show=False
            ).stdout
        )
        key_id = next(k["id"] for k in listing["keys"] if k["label"] == "dev-encrypt")
        done = self.run(
            [
                "pkcs11-tool",
                "--module",
                module,
                "--token-label",
                "hsmsign-dev",
                "--login",
                "--pin",
                pin,
                "--decrypt",
                "-m",
                "AES-CBC-PAD",
                "--iv",
                iv,
                "--id",
                key_id,
                "-i",
                str(enc),
                "-o",
                str(back),
            ],
            ok_codes=(0, 1),
            show=False,
        )
        print(
            "  $ pkcs11-tool --decrypt -m AES-CBC-PAD --iv IV --id ID -i IMG.enc -o decrypted  (same token)"
        )
        same = done.returncode == 0 and back.read_bytes() == self.image.read_bytes()
        self.result("encrypted rootfs image", "pkcs11-tool --decrypt + cmp", same)

    def fit(self) -> None:
        tools = _uboot_tools()
        self.step("U-Boot verified boot: U-Boot FIT checked by SPL, kernel FIT checked by U-Boot")
        if tools is None:
            print("  (U-Boot's fit_check_sign is not built: run ./scripts/install-deps; skipping)")
            self.rows.append(("U-Boot and kernel FIT", "fit_check_sign not built", "skipped", False))
            return
        board = self.work / "board.dts"
        board.write_text('/dts-v1/;\n/ { model = "meta-hsmsign demo board"; compatible = "demo,board"; };\n')
        self.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(self.work / "board.dtb"), str(board)])
        (self.work / "u-boot-nodtb.bin").write_bytes(os.urandom(600 << 10))
        (self.work / "Image").write_bytes(os.urandom(2 << 20))
        # U-Boot proper in a FIT signed with the U-Boot key; its public key goes into SPL's DTB
        self._fit_case(
            "u-boot.its",
            _ITS_UBOOT,
            "u-boot.itb",
            "uboot",
            "dev-uboot",
            "spl.dtb",
            "U-Boot FIT (SPL's check)",
            tools,
        )
        # the kernel FIT signed with the fitimage key; its public key goes into U-Boot's DTB
        self._fit_case(
            "kernel.its",
            _ITS_KERNEL,
            "fitImage",
            "fitimage",
            "dev-fitimage",
            "u-boot.dtb",
            "kernel fitImage (U-Boot's check)",
            tools,
        )
        fit = self.deploy / "fitImage"
        control = self.deploy / "u-boot.dtb"
        tampered = self.work / "fitImage.tampered"
        data = bytearray(fit.read_bytes())
        data[len(data) // 2] ^= 0x01  # inside the kernel image
        tampered.write_bytes(bytes(data))
        bad = self.run(
            [str(tools / "fit_check_sign"), "-f", str(tampered), "-k", str(control)],
            ok_codes=(0, 1, 255),
            show=False,
        )
        print("  $ fit_check_sign -f fitImage.tampered -k u-boot.dtb   (one byte of the kernel flipped)")
        self.result(
            "kernel fitImage, one byte changed",
            "U-Boot fit_check_sign",
            bad.returncode == 0,
            expect_accept=False,
        )

    def _fit_case(
        self,
        its_name: str,
        its_text: str,
        fit_name: str,
        role: str,
        hint: str,
        dtb_name: str,
        label: str,
        tools: Path,
    ) -> None:
        its = self.work / its_name
        its.write_text(its_text.replace("@HINT@", hint))
        fit = self.deploy / fit_name
        self.run([str(tools / "mkimage"), "-q", "-f", str(its), str(fit)], cwd=self.work)
        self.hsmsign("fit", "sign", "--uri", self.uris[role], "--key-name", hint, str(fit))
        control = self.deploy / dtb_name
        shutil.copyfile(self.work / "board.dtb", control)
        self.hsmsign(
            "fit",
            "add-key",
            "--uri",
            self.uris[role],
            "--key-name",
            hint,
            "--dtb",
            str(control),
            "--required",
            "conf",
        )
        done = self.run(
            [str(tools / "fit_check_sign"), "-f", str(fit), "-k", str(control)], ok_codes=(0, 1, 255)
        )
        self.result(label, "U-Boot fit_check_sign", done.returncode == 0)

    def uefi(self) -> None:
        self.step("UEFI Secure Boot: systemd-boot signed (Authenticode), booted by OVMF")
        if not SYSTEMD_BOOT.exists():
            print(
                "  (no systemd-boot: apt-get install systemd-boot-efi, or ./scripts/install-deps; skipping)"
            )
            self.rows.append(("systemd-boot (UEFI)", "systemd-boot-efi not installed", "skipped", False))
            return
        cert = self.deploy / "uefi-db.pem"
        self.certificate("uefi", "Secure Boot db", cert, "codeSigning")
        self.hsmsign("pe", "esl", "--cert", str(cert), "--output", str(self.deploy / "uefi-db.esl"))
        signed = self.deploy / "systemd-bootx64.efi"
        self.hsmsign("pe", "sign", "--uri", self.uris["uefi"], "--cert", str(cert), "--output", str(signed),
                     str(SYSTEMD_BOOT))  # fmt: skip
        done = self.run(["sbverify", "--cert", str(cert), str(signed)], ok_codes=(0, 1))
        self.result("systemd-boot (UEFI)", "sbverify --cert", done.returncode == 0)
        done = self.run(
            ["osslsigncode", "verify", "-CAfile", str(cert), "-in", str(signed)], ok_codes=(0, 1, 255)
        )
        self.result("systemd-boot (UEFI)", "osslsigncode verify", done.returncode == 0)
        tampered = self.work / "systemd-bootx64.tampered.efi"
        data = bytearray(signed.read_bytes())
        data[len(data) // 3] ^= 0x01  # inside the code section, covered by the Authenticode digest
        tampered.write_bytes(bytes(data))

        # the firmware's own check: OVMF with Secure Boot on and the token's certificate as
        # PK, KEK and db boots the signed binary and refuses the changed one
        sys.path.insert(0, str(ROOT))
        from tests.integration import ovmf  # the boot helper the tests use

        why = ovmf.missing()
        if why is not None:
            print(f"  (OVMF boot not possible: {why}; skipping)")
            self.rows.append(("systemd-boot (UEFI)", why, "skipped", False))
            return
        variables = ovmf.enrolled_vars(cert, self.work / "OVMF_VARS.secure-boot.fd")
        print("  $ virt-fw-vars --set-pk/--add-kek/--add-db uefi-db.pem --sb  (OVMF's variable store)")
        for image, label, want in ((signed, "", True), (tampered, ", one byte changed", False)):
            print(f"  $ qemu-system-x86_64 ... OVMF Secure Boot, EFI/BOOT/BOOTX64.EFI = {image.name}")
            booted = ovmf.boot(image, variables, timeout=60)
            if booted.verdict not in ("accepted", "refused"):
                print(f"    no verdict on the serial console ({booted.verdict} after {booted.seconds:.0f} s)")
                self.rows.append(
                    (f"systemd-boot (UEFI){label}", "OVMF with Secure Boot", booted.verdict, False)
                )
                continue
            accepted = booted.verdict == "accepted"
            self.result(f"systemd-boot (UEFI){label}", "OVMF with Secure Boot (QEMU)", accepted, want)

    def modules(self) -> None:
        self.step("Kernel modules: the kernel's appended PKCS#7, as scripts/sign-file writes it")
        if shutil.which("gcc") is None:
            print("  (no gcc to build the demo module: apt-get install gcc; skipping)")
            self.rows.append(("kernel module", "gcc not installed", "skipped", False))
            return
        cert = self.deploy / "modules-signer.pem"
        self.certificate("modules", "kernel modules", cert, "codeSigning")
        # an ELF object with a .modinfo section, as a module has; the kernel's own check
        # (CONFIG_MODULE_SIG_FORCE, booted in QEMU) is in tests/integration/test_modsign.py
        src = self.work / "hello.c"
        src.write_text(
            'static const char modinfo[] __attribute__((section(".modinfo"), used)) =\n'
            '    "license=GPL\\0name=hello\\0description=meta-hsmsign demo module";\n'
            "int hello_init(void) { return 0; }\n"
        )
        module = self.deploy / "hello.ko"
        self.run(["gcc", "-c", "-O1", str(src), "-o", str(module)])
        self.hsmsign("modsign", "--uri", self.uris["modules"], "--cert", str(cert), str(module))
        # kmod reads the signature block as the kernel lays it out (it checks nothing)
        for field in ("signer", "sig_hashalgo"):
            value = self.run(["modinfo", "-F", field, str(module)], show=False).stdout.strip()
            print(f"  $ modinfo -F {field} deploy/hello.ko   -> {value}")
        body, pkcs7 = _module_split(module.read_bytes())
        for content, label, want in ((body, "", True), (_flip_middle(body), ", one byte changed", False)):
            (self.work / "hello.body").write_bytes(content)
            (self.work / "hello.p7s").write_bytes(pkcs7)
            p7s, part = str(self.work / "hello.p7s"), str(self.work / "hello.body")
            done = self.run(
                ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", p7s, "-content", part,
                 "-certfile", str(cert), "-CAfile", str(cert), "-purpose", "any", "-out", os.devnull],
                ok_codes=(0, 4),
                show=not label,
            )  # fmt: skip
            if label:
                print("  $ openssl cms -verify ... -content hello.body   (one byte of the module changed)")
            self.result(f"kernel module (.ko){label}", "openssl cms -verify", done.returncode == 0, want)

    def manifest(self) -> None:
        self.step("The deploy directory: a signed manifest of every artifact")
        files = sorted(p for p in self.deploy.iterdir() if p.is_file() and not p.name.startswith("hsmsign-"))
        cert = self.deploy / "rootfs-verity-signer.pem"
        manifest = self.deploy / "MANIFEST.json"
        self.hsmsign(
            "manifest",
            "--uri",
            self.uris["rootfs"],
            "--cert",
            str(cert),
            "--output",
            str(manifest),
            *[str(f) for f in files],
        )
        done = self.hsmsign("manifest", "verify", "--cert", str(cert), str(manifest), ok_codes=(0, 6))
        self.result(f"manifest of {len(files)} files", "hsmsign manifest verify", done.returncode == 0)

    def fail_closed(self) -> None:
        self.step("Fail closed: production policy refuses the development token")
        out = self.work / "should-not-exist.sig"
        done = self.hsmsign(
            "sign",
            "--mode",
            "production",
            "--uri",
            self.uris["rootfs"],
            "--output",
            str(out),
            str(self.image),
            ok_codes=(4,),
        )
        print("    " + done.stderr.strip().splitlines()[0][: WIDTH - 4])
        self.result(
            "production build, dev key",
            "hsmsign policy (exit 4, nothing written)",
            done.returncode == 0 or out.exists(),
            expect_accept=False,
        )

    def audit(self) -> None:
        self.step("Leak audit: a setup script like the one in the 2022 head-unit incident")
        layer = self.work / "meta-vendor"
        (layer / "conf").mkdir(parents=True)
        (layer / "conf" / "setup-build.sh").write_text(
            "#!/bin/sh\n# published for open-source compliance\n"
            "export FW_AES_KEY=2b7e151628aed2a6abf7158809cf4f3c\n"
        )
        done = self.hsmsign("audit", str(layer), ok_codes=(0, 1, 2, 3, 4, 5, 6, 7))
        for line in done.stdout.strip().splitlines()[:4]:
            print("    " + textwrap.shorten(line, WIDTH - 4, placeholder=" ..."))
        found = done.returncode not in (0, 2) and "setup-build.sh" in done.stdout
        leaked = "2b7e151628aed2a6abf7158809cf4f3c" in done.stdout + done.stderr
        # "refused" is the good outcome: the audit flags the tree (and never prints the key)
        self.result(
            "setup script with a published AES key",
            "hsmsign audit (finding, key redacted)",
            not (found and not leaked),
            expect_accept=False,
        )

    def ledger(self) -> None:
        self.step("The signing ledger: one hash-chained line per signature")
        path = Path(self.env.get("HSMSIGN_LEDGER", "/nonexistent"))
        if not path.exists():
            print("  (no ledger written)")
            return
        lines = path.read_text().splitlines()
        done = self.hsmsign("ledger", "verify", "--ledger", str(path), ok_codes=(0, 6))
        self.result(f"ledger of {len(lines)} signatures", "hsmsign ledger verify", done.returncode == 0)

    def table(self, elapsed: float) -> bool:
        print("\n" + "=" * WIDTH)
        print(f"{'artifact':<38} {'checked by':<42} {'result':<9} {'expected':>8}")
        print("-" * WIDTH)
        for artifact, verifier, verdict, good in self.rows:
            print(f"{artifact[:38]:<38} {verifier[:42]:<42} {verdict:<10} {'yes' if good else 'NO':>7}")
        print("-" * WIDTH)
        ok = all(row[3] for row in self.rows)
        summary = "all as expected" if ok else "SOME NOT AS EXPECTED"
        print(f"{len(self.rows)} checks, {summary} in {elapsed:.1f} s.")
        print(
            "Keys never left the token; no PIN was printed or written anywhere but the dev token's own files."
        )
        return ok


_ITS_UBOOT = """\
/dts-v1/;
/ {
    description = "meta-hsmsign demo U-Boot FIT";
    #address-cells = <1>;
    images {
        uboot {
            data = /incbin/("u-boot-nodtb.bin");
            type = "standalone"; os = "u-boot"; arch = "arm64"; compression = "none";
            load = <0x80200000>; entry = <0x80200000>;
            hash-1 { algo = "sha256"; };
        };
        fdt-1 {
            data = /incbin/("board.dtb");
            type = "flat_dt"; arch = "arm64"; compression = "none";
            hash-1 { algo = "sha256"; };
        };
    };
    configurations {
        default = "conf-1";
        conf-1 {
            firmware = "uboot"; loadables = "uboot"; fdt = "fdt-1";
            signature-1 {
                algo = "sha256,rsa2048"; key-name-hint = "@HINT@"; sign-images = "firmware", "fdt";
            };
        };
    };
};
"""

_ITS_KERNEL = """\
/dts-v1/;
/ {
    description = "meta-hsmsign demo kernel FIT";
    #address-cells = <1>;
    images {
        kernel-1 {
            data = /incbin/("Image");
            type = "kernel"; arch = "arm64"; os = "linux"; compression = "none";
            load = <0x80080000>; entry = <0x80080000>;
            hash-1 { algo = "sha256"; };
        };
        fdt-1 {
            data = /incbin/("board.dtb");
            type = "flat_dt"; arch = "arm64"; compression = "none";
            hash-1 { algo = "sha256"; };
        };
    };
    configurations {
        default = "conf-1";
        conf-1 {
            kernel = "kernel-1"; fdt = "fdt-1";
            signature-1 { algo = "sha256,rsa2048"; key-name-hint = "@HINT@"; sign-images = "kernel", "fdt"; };
        };
    };
};
"""


class DemoFailed(Exception):
    pass


def _run(
    argv: list[str], *, env: dict[str, str], cwd: Path | None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command until *it* exits (at most ``timeout`` seconds), then end what is left of
    its process group. swupdate -c now and then leaves a forked helper blocked for ever on
    its notify socket and holding stdout: waiting for the output's end would hang the demo."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, env=env,
                                cwd=cwd, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if code is None:
            raise DemoFailed(f"{argv[0]} did not finish in {timeout:.0f} s")
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, code, out.read(), err.read())


def _module_split(module: bytes) -> tuple[bytes, bytes]:
    """A signed module's body and PKCS#7, cut as the kernel's mod_verify_sig cuts them: the
    magic string at the end, before it struct module_signature (12 bytes, the signature's
    length in the last 4), before that the signature."""
    end = len(module) - len(MODULE_MAGIC) - 12
    if not module.endswith(MODULE_MAGIC) or end < 0:
        raise DemoFailed("the module carries no appended signature")
    size = int.from_bytes(module[end + 8 : end + 12], "big")
    if size > end:
        raise DemoFailed("the module's signature length is larger than the module")
    return module[: end - size], module[end - size : end]


def _flip_middle(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


def _short(arg: str, work: Path) -> str:
    arg = arg.replace(str(work) + "/", "")
    if arg.startswith("pkcs11:"):
        arg = "'" + arg.split("?")[0] + "?...'"
    return arg


def _uboot_tools() -> Path | None:
    """U-Boot's host tools built by scripts/deps/fit.setup (or where HSMSIGN_UBOOT_TOOLS points)."""
    explicit = os.environ.get("HSMSIGN_UBOOT_TOOLS")
    if explicit and os.path.exists(os.path.join(explicit, "fit_check_sign")):
        return Path(explicit)
    cache = Path(os.environ.get("HSMSIGN_CACHE", os.path.expanduser("~/.cache/hsmsign"))) / "uboot-tools"
    built = sorted(cache.glob("*/fit_check_sign"))
    return built[-1].parent if built else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("-v", "--verbose", action="store_true", help="show each command's output")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsmsign-demo-"))
    demo = Demo(work, args.verbose)
    start = time.monotonic()
    print(f"meta-hsmsign demo in {work}")
    ok = False
    try:
        for step in (
            demo.dev_token,
            demo.rootfs,
            demo.swupdate,
            demo.rauc,
            demo.encryption,
            demo.fit,
            demo.uefi,
            demo.modules,
            demo.manifest,
            demo.fail_closed,
            demo.audit,
            demo.ledger,
        ):
            try:
                step()
            except DemoFailed as exc:
                print(f"  !! {exc}")
                demo.rows.append((step.__name__, "step failed", "FAILED", False))
        ok = demo.table(time.monotonic() - start)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
