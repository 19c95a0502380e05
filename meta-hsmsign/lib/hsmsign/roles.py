"""The key roles: one table for the library, the classes' defaults and the docs.

A role is one kind of artifact signed (or encrypted) with its own key variable.
Each role's URI variable defaults to its ``fallback`` role's variable, exactly as
``hsmsign.bbclass`` chains them with ``??=`` (``tests/unit/test_roles.py`` holds
the class against this table), and the pinned fingerprint follows the same chain:
``HSMSIGN_PUBKEY_SHA256_<ROLE>``, else the fallback role's pin, ..., else
``HSMSIGN_PUBKEY_SHA256``. So a key set for a group of roles (``_UBOOT``) and
pinned once for it covers the roles that default to it.

The kernel FIT key: U-Boot's control DTB holds the public half of the key that
signs the kernel FIT (``HSM_PKCS11_URI_FITIMAGE``), and that variable defaults to
``HSM_PKCS11_URI_UBOOT``. Set ``HSM_PKCS11_URI_UBOOT`` to give the whole U-Boot
side (kernel FIT key and, by default, the SPL key) its own key; set
``HSM_PKCS11_URI_FITIMAGE`` (or ``_SPL``) only to split them further.

Standard library only: BitBake reads this at parse time.
"""

from __future__ import annotations

from typing import NamedTuple

URI_VARIABLE = "HSM_PKCS11_URI"
FINGERPRINT_VARIABLE = "HSMSIGN_PUBKEY_SHA256"  # the pinned public-key fingerprint (not a PIN)
DEFAULT = "DEFAULT"


class Role(NamedTuple):
    """One key role.

    ``fallback``: the role whose URI (and pin) this one defaults to; ``None``:
    no default at all (an AES key is never a signing key). ``dev_label`` and
    ``key_type``: the key ``hsmsign dev-init`` makes for the role.
    """

    name: str
    fallback: str | None
    dev_label: str
    key_type: str
    signs: str

    @property
    def variable(self) -> str:
        """``HSM_PKCS11_URI`` or ``HSM_PKCS11_URI_<ROLE>``."""
        return URI_VARIABLE if self.name == DEFAULT else f"{URI_VARIABLE}_{self.name}"

    @property
    def fingerprint_variable(self) -> str:
        """``HSMSIGN_PUBKEY_SHA256`` or ``HSMSIGN_PUBKEY_SHA256_<ROLE>``."""
        return FINGERPRINT_VARIABLE if self.name == DEFAULT else f"{FINGERPRINT_VARIABLE}_{self.name}"

    @property
    def is_secret_key(self) -> bool:
        return self.key_type.startswith("aes")


ROLE_TABLE: tuple[Role, ...] = (
    Role(DEFAULT, None, "dev-signing", "rsa:2048", "every role below that is not set"),
    Role("UBOOT", DEFAULT, "dev-uboot", "rsa:2048", "the U-Boot side: default of FITIMAGE and SPL"),
    Role("SPL", "UBOOT", "dev-spl", "rsa:2048", "the U-Boot proper FIT checked by SPL (key in SPL's DTB)"),
    Role(
        "FITIMAGE",
        "UBOOT",
        "dev-fitimage",
        "rsa:2048",
        "the kernel FIT; its public half goes into U-Boot's control DTB",
    ),
    Role(
        "MODULES",
        "FITIMAGE",
        "dev-modules",
        "rsa:2048",
        "Linux kernel modules (appended PKCS#7); defaults to the kernel FIT key",
    ),
    Role("ROOTFS", DEFAULT, "dev-rootfs", "rsa:2048", "dm-verity root hash, image signatures, manifest"),
    Role("SWUPDATE", DEFAULT, "dev-swupdate", "rsa:2048", "sw-description of swupdate bundles"),
    Role("RAUC", DEFAULT, "dev-rauc", "rsa:2048", "RAUC bundles (rauc signs them through the token)"),
    Role("UEFI", DEFAULT, "dev-uefi", "rsa:2048", "UEFI Secure Boot: UKIs, systemd-boot, GRUB"),
    Role(
        "IMX",
        None,
        "dev-imx",
        "rsa:2048",
        "NXP i.MX boot images: AHAB containers (i.MX 8/8X/9) and HAB CSFs (SRK keys; no default: "
        "their hash is fused, so they are chosen on purpose)",
    ),
    Role("ENCRYPT", None, "dev-encrypt", "aes:256", "AES key of swupdate image encryption (no default)"),
)
BY_NAME: dict[str, Role] = {r.name: r for r in ROLE_TABLE}
# the roles with their own variable (HSM_PKCS11_URI_<ROLE>)
ROLES: tuple[str, ...] = tuple(r.name for r in ROLE_TABLE if r.name != DEFAULT)
# roles whose keys sign FITs for U-Boot and SPL (the mkimage drop-in and 'fit sign')
FIT_ROLES: tuple[str, ...] = ("UBOOT", "SPL", "FITIMAGE")


def get(name: str | None) -> Role:
    """The role named ``name`` (case-insensitive); empty or None: the default key."""
    key = (name or DEFAULT).upper()
    if key not in BY_NAME:
        from .errors import ConfigError

        raise ConfigError(
            f"unknown key role '{name}'", "use one of " + ", ".join(r.name for r in ROLE_TABLE)
        )
    return BY_NAME[key]


def chain(name: str | None) -> list[Role]:
    """The role and the roles it falls back to, in order (``SPL``: SPL, UBOOT, DEFAULT)."""
    out = [get(name)]
    while out[-1].fallback is not None:
        out.append(BY_NAME[out[-1].fallback])
    return out
