"""Boot an EFI binary in QEMU (TCG) with OVMF and Secure Boot on; read the verdict on the serial console.

The firmware is Debian's ``OVMF_CODE_4M.fd`` (Secure Boot without SMM, which
TCG runs faster than the SMM build) with a copy of ``OVMF_VARS_4M.fd`` whose PK,
KEK and db hold the test certificate and whose SecureBootEnable is set
(``virt-fw-vars`` from PyPI virt-firmware). The binary is ``EFI/BOOT/BOOTX64.EFI``
on a read-only FAT drive that QEMU builds from a directory.

Verdicts, from what the firmware and systemd-boot print on the serial console:

* ``accepted``: systemd-boot ran and drew its menu (its "Reboot Into Firmware
  Interface" entry);
* ``refused``: OVMF's boot manager says the image failed to load with "Access
  Denied" (``EFI_SECURITY_VIOLATION`` from DxeImageVerificationLib is reported
  that way by BdsDxe);
* ``timeout``: neither within the time bound.

QEMU is killed as soon as the verdict is known: a boot takes a few seconds.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
ACCEPTED = b"Reboot Into Firmware Interface"
REFUSED = (b"Access Denied", b"Security Violation")
BOOT_TIMEOUT = float(os.environ.get("HSMSIGN_OVMF_TIMEOUT", "120"))


@dataclass
class Boot:
    verdict: str
    seconds: float
    console: str


def missing() -> str | None:
    """What is missing to run the boot test (None: all there)."""
    if not OVMF_CODE.exists() or not OVMF_VARS.exists():
        return "apt-get install ovmf"
    if shutil.which("qemu-system-x86_64") is None:
        return "apt-get install qemu-system-x86"
    if virt_fw_vars() is None:
        return "pip install virt-firmware (scripts/deps/uefi.pip)"
    return None


def virt_fw_vars() -> str | None:
    import sys

    here = Path(sys.executable).parent / "virt-fw-vars"
    return str(here) if here.exists() else shutil.which("virt-fw-vars")


def enrolled_vars(cert_pem: Path, out: Path) -> Path:
    """An OVMF variable store with ``cert_pem`` as PK, KEK and db, Secure Boot on."""
    tool = virt_fw_vars()
    assert tool is not None  # noqa: S101 - missing() is checked first
    owner = str(uuid.uuid4())
    subprocess.run(
        [
            tool,
            "-i", str(OVMF_VARS),
            "-o", str(out),
            "--set-pk", owner, str(cert_pem),
            "--add-kek", owner, str(cert_pem),
            "--add-db", owner, str(cert_pem),
            "--sb",
        ],
        check=True,
        capture_output=True,
    )
    return out


def boot(efi: Path, vars_template: Path, timeout: float = BOOT_TIMEOUT) -> Boot:
    """Boot ``efi`` as the removable-media loader under Secure Boot; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="hsmsign-ovmf-") as tmp:
        esp = Path(tmp) / "esp"
        (esp / "EFI" / "BOOT").mkdir(parents=True)
        shutil.copyfile(efi, esp / "EFI" / "BOOT" / "BOOTX64.EFI")
        (esp / "loader").mkdir()
        (esp / "loader" / "loader.conf").write_text("timeout menu-force\n")
        variables = Path(tmp) / "vars.fd"
        shutil.copyfile(vars_template, variables)
        cmd = [
            "qemu-system-x86_64",
            "-machine", "q35",
            "-accel", "tcg",
            "-m", "256",
            "-nodefaults",
            "-display", "none",
            "-serial", "stdio",
            "-monitor", "none",
            "-drive", f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
            "-drive", f"format=raw,file=fat:{esp},if=virtio,readonly=on",
        ]
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None  # noqa: S101
        out = b""
        verdict = "timeout"
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() - start < timeout:
                if not sel.select(timeout=1.0):
                    if proc.poll() is not None:
                        verdict = "exited"
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    verdict = "exited"
                    break
                out += chunk
                if ACCEPTED in out:
                    verdict = "accepted"
                    break
                if any(r in out for r in REFUSED):
                    verdict = "refused"
                    break
        finally:
            proc.kill()
            proc.wait()
            sel.close()
            proc.stdout.close()
        return Boot(verdict, time.monotonic() - start, out.decode("latin-1"))
