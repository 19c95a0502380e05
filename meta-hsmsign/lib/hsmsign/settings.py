"""What crosses from a BitBake task into the signing child, defined once.

``hsmsign.bitbake.child_env`` builds a ``Settings`` from the datastore and hands
it to the child with ``to_env()``; the ``hsmsign`` command and the ``mkimage``
drop-in (whose command line belongs to mkimage) read it back with
``Settings.from_env()``. The allowed values live here, once:

* ``HSMSIGN_MODE``: ``development`` or ``production``;
* ``HSMSIGN_ROLE``: the key role of the task (``hsmsign.roles``), which selects
  the pinned fingerprint;
* ``HSMSIGN_PUBKEY_SHA256`` and ``HSMSIGN_PUBKEY_SHA256_<ROLE>``: the pinned
  fingerprints (SHA-256 of the DER SubjectPublicKeyInfo, several separated by
  spaces or commas during a key rotation);
* ``HSM_PKCS11_URI_UBOOT``/``_SPL``/``_FITIMAGE`` (FIT tasks): which role a
  ``-k`` URI of the drop-in belongs to, for its pin;
* ``HSMSIGN_FIT_REQUIRED`` (``conf``, ``image``, ``none``) and
  ``HSMSIGN_FIT_REQUIRED_MODE`` (``all``, ``any``);
* ``HSMSIGN_FIT_CHECK_SIGN``, ``HSMSIGN_LEDGER``, ``HSM_PKCS11_MODULE`` and
  ``HSMSIGN_PIN_ENV`` (the NAME of the variable holding the PIN; the PIN itself
  is never part of the settings).

Standard library only (BitBake imports it at parse time).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import roles
from .errors import ConfigError, PolicyError

MODES: tuple[str, ...] = ("development", "production")
REQUIRED_VALUES: tuple[str, ...] = ("conf", "image", "none")
REQUIRED_MODES: tuple[str, ...] = ("all", "any")
ROLE_ENV = "HSMSIGN_ROLE"
PIN_ENV = "HSMSIGN_PIN_ENV"
# mkimage's own PIN variable (tools/image-host.c); the drop-in honours it like mkimage does
MKIMAGE_PIN_ENV = "MKIMAGE_SIGN_PIN"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def parse_fingerprints(variable: str, value: str | None) -> tuple[str, ...]:
    """The fingerprints one pin variable lists (``sha256:`` prefixes and colons allowed)."""
    if not value:
        return ()
    out = []
    for word in value.replace(",", " ").split():
        fp = word.strip().lower()
        for prefix in ("sha256:", "sha256="):
            if fp.startswith(prefix):
                fp = fp[len(prefix) :]
        fp = fp.replace(":", "")
        if not _FINGERPRINT.match(fp):
            raise ConfigError(
                f"{variable}: '{word[:80]}' is not a SHA-256 fingerprint (64 hex digits)",
                "take it from 'hsmsign info --uri URI' (the fingerprint: line)",
            )
        out.append(fp)
    return tuple(out)


@dataclass(frozen=True)
class Pin:
    """One pinned-fingerprint variable and the fingerprints it allows."""

    variable: str
    fingerprints: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    mode: str = "production"
    role: str = ""
    # pin variable (HSMSIGN_PUBKEY_SHA256[_<ROLE>]) -> its raw value, only the set ones
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    # FIT role -> its URI (the drop-in maps a -k URI to its roles with these)
    role_uris: Mapping[str, str] = field(default_factory=dict)
    uri: str = ""
    module: str = ""
    pin_env: str = ""
    ledger: str = ""
    fit_required: str = ""
    fit_required_mode: str = ""
    fit_check_sign: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"HSMSIGN_MODE={self.mode!r} is neither 'development' nor 'production'",
                "set HSMSIGN_MODE to development or production",
            )
        if self.role:
            roles.get(self.role)
        if self.pin_env and not _ENV_NAME.match(self.pin_env):
            raise ConfigError(
                f"{PIN_ENV} must be the NAME of an environment variable, not {self.pin_env[:3]}...",
                f"e.g. {PIN_ENV}=HSM_PIN with the PIN in HSM_PIN",
            )
        if self.fit_required not in ("", *REQUIRED_VALUES):
            raise ConfigError(
                f"HSMSIGN_FIT_REQUIRED={self.fit_required!r} is not a required policy",
                "use conf (U-Boot refuses configurations the key did not sign), image, or none",
            )
        if self.fit_required_mode not in ("", *REQUIRED_MODES):
            raise ConfigError(
                f"HSMSIGN_FIT_REQUIRED_MODE={self.fit_required_mode!r} is not a required-mode",
                "use all (every required key must verify, U-Boot's default) or any",
            )
        for variable, value in self.fingerprints.items():
            parse_fingerprints(variable, value)

    # -- the boundary

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings in an environment (default: this process's)."""
        env = os.environ if env is None else env

        def get(name: str) -> str:
            return (env.get(name) or "").strip()

        pins = {r.pin_variable: get(r.pin_variable) for r in roles.ROLE_TABLE if get(r.pin_variable)}
        uris = {name: get(roles.BY_NAME[name].variable) for name in roles.FIT_ROLES}
        pin_env = get(PIN_ENV) or (MKIMAGE_PIN_ENV if MKIMAGE_PIN_ENV in env else "")
        return cls(
            mode=get("HSMSIGN_MODE") or "production",
            role=get(ROLE_ENV).upper(),
            fingerprints=pins,
            role_uris={k: v for k, v in uris.items() if v},
            uri=get(roles.URI_VARIABLE),
            module=get("HSM_PKCS11_MODULE"),
            pin_env=pin_env,
            ledger=get("HSMSIGN_LEDGER"),
            fit_required=get("HSMSIGN_FIT_REQUIRED"),
            fit_required_mode=get("HSMSIGN_FIT_REQUIRED_MODE"),
            fit_check_sign=get("HSMSIGN_FIT_CHECK_SIGN"),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry these settings (only the set ones)."""
        env = {
            "HSMSIGN_MODE": self.mode,
            ROLE_ENV: self.role,
            roles.URI_VARIABLE: self.uri,
            "HSM_PKCS11_MODULE": self.module,
            PIN_ENV: self.pin_env,
            "HSMSIGN_LEDGER": self.ledger,
            "HSMSIGN_FIT_REQUIRED": self.fit_required,
            "HSMSIGN_FIT_REQUIRED_MODE": self.fit_required_mode,
            "HSMSIGN_FIT_CHECK_SIGN": self.fit_check_sign,
        }
        env.update(self.fingerprints)
        env.update({roles.BY_NAME[name].variable: uri for name, uri in self.role_uris.items()})
        return {k: v for k, v in env.items() if v}

    @staticmethod
    def names() -> list[str]:
        """Every variable ``to_env`` may set: a child's inherited copies are replaced, not mixed."""
        names = [
            "HSMSIGN_MODE", ROLE_ENV, "HSM_PKCS11_MODULE", "HSMSIGN_LEDGER", "HSMSIGN_FIT_REQUIRED",
            "HSMSIGN_FIT_REQUIRED_MODE", "HSMSIGN_FIT_CHECK_SIGN",
        ]
        names += [r.pin_variable for r in roles.ROLE_TABLE]
        names += [roles.BY_NAME[name].variable for name in roles.FIT_ROLES]
        return names

    # -- what the settings mean

    def pins_for_role(self, role: str | None = None) -> list[Pin]:
        """The pin that applies to a role: its own variable, else its fallback's, else the global one.

        An empty list: nothing pinned for this role. The AES role has no fallback, so the
        global pin (a public-key fingerprint) never applies to it.
        """
        for r in roles.chain(role if role is not None else self.role):
            value = self.fingerprints.get(r.pin_variable)
            if value:
                return [Pin(r.pin_variable, parse_fingerprints(r.pin_variable, value))]
        return []

    def required_policy(self) -> tuple[str | None, str | None]:
        """``required`` and ``required-mode`` of keys written into U-Boot's DTBs (None: as mkimage)."""
        if self.fit_required == "none" and self.mode != "development":
            raise PolicyError(
                "HSMSIGN_FIT_REQUIRED=none writes keys U-Boot never enforces: it would boot unsigned FITs",
                "use conf (or image) in production; none is for development builds",
            )
        return self.fit_required or None, self.fit_required_mode or None
