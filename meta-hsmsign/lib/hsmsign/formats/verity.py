"""dm-verity: the hash tree, its root hash, and the root hash signature.

``veritysetup format IMAGE HASH_TREE`` builds the Merkle tree and prints the root
hash; it works on plain files, without root or device-mapper. The kernel
(``CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG``, ``drivers/md/dm-verity-verify-sig.c``)
checks a detached PKCS#7 signature whose content is the root hash as *lowercase
hex without a newline*, against its trusted keyrings (``.builtin_trusted_keys``,
``.secondary_trusted_keys``, and ``.platform`` with
``CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG_PLATFORM_KEYRING``). The signature reaches
the kernel through ``veritysetup open --root-hash-signature FILE``, systemd's
``root-hash-signature=`` / ``RootHashSignature=``, or the
``root_hash_sig_key_desc`` table argument (the signature loaded into a user key).

By default the signature has no signed attributes (cryptsetup's documented
``openssl smime -sign -noattr -binary`` recipe); both shapes verify in the kernel
and with ``openssl cms -verify -binary -content ROOTHASH``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, VerificationError

HEX_RE = re.compile(r"^[0-9a-f]{40,128}$")
TIMEOUT_S = 3600


@dataclass
class VerityParams:
    """What ``veritysetup format`` reported."""

    root_hash: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def salt(self) -> str:
        return self.fields.get("Salt", "")


def veritysetup() -> str:
    path = shutil.which("veritysetup") or (
        os.path.exists("/usr/sbin/veritysetup") and "/usr/sbin/veritysetup"
    )
    if not path:
        raise ConfigError("veritysetup is not installed", "apt-get install cryptsetup-bin (or cryptsetup)")
    return str(path)


def normalize_root_hash(text: str) -> str:
    """Lowercase hex, no whitespace; the exact bytes the kernel compares."""
    value = text.strip().lower()
    if not HEX_RE.match(value) or len(value) % 2:
        raise ConfigError(
            f"root hash '{text.strip()[:80]}' is not a hex digest",
            "give the 'Root hash' veritysetup printed (64 hex digits for sha256)",
        )
    return value


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except OSError as exc:
        raise ConfigError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"{what} took more than {TIMEOUT_S} s") from exc


def format_image(image: str, hash_tree: str, extra_args: list[str] | None = None) -> VerityParams:
    """Run ``veritysetup format`` writing the tree to ``hash_tree`` (an existing or new file)."""
    if not os.path.isfile(image):
        raise ConfigError(f"{image}: no such file", "give the root filesystem image (--image)")
    size = os.path.getsize(image)
    if size == 0 or size % 512:
        raise ConfigError(
            f"{image} is {size} bytes, not a whole number of 512-byte sectors",
            "dm-verity needs an image padded to its data block size (4096 by default)",
        )
    argv = [veritysetup(), "format", *(extra_args or []), image, hash_tree]
    proc = _run(argv, "veritysetup format")
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigError(
            f"veritysetup format failed: {msg[-1] if msg else 'exit ' + str(proc.returncode)}",
            "check the image size (a multiple of the data block size) and the options",
        )
    return parse_format_output(proc.stdout)


def parse_format_output(text: str) -> VerityParams:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    root = fields.get("Root hash")
    if not root:
        raise ConfigError("veritysetup format printed no root hash", "run it by hand to see why")
    return VerityParams(normalize_root_hash(root), fields)


def verify_tree(image: str, hash_tree: str, root_hash: str) -> None:
    """``veritysetup verify``: every data block against the tree and the root hash."""
    proc = _run(
        [veritysetup(), "verify", image, hash_tree, normalize_root_hash(root_hash)], "veritysetup verify"
    )
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise VerificationError(
            f"veritysetup verify failed: {' '.join(msg[-2:]) if msg else 'exit ' + str(proc.returncode)}",
            "the image or hash tree changed after the tree was built",
        )


def sign_root_hash(signer: Any, cert: Any, root_hash: str, *, signed_attrs: bool = False) -> bytes:
    """DER PKCS#7/CMS detached signature over the hex root hash (no newline)."""
    from . import cms

    content = normalize_root_hash(root_hash).encode("ascii")
    return cms.sign_detached(
        signer, cert=cert, content=content, hash_alg="sha256", signed_attrs=signed_attrs, like_kernel=True
    )
