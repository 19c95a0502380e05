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
  is never part of the settings);
* ``HSMSIGN_MKIMAGE``: U-Boot's own mkimage behind the drop-in (the task's
  ``UBOOT_MKIMAGE``, oe-core's uboot-mkimage).

The defaults of the CLI's options come from here too (``HSM_PKCS11_URI``,
``HSMSIGN_DENYLIST``, ``HSMSIGN_ALLOW_SOFTWARE_TOKEN``, ``HSMSIGN_FIT_KEY_NAME``,
``HSMSIGN_AUDIT_ALLOWLIST``, ``HSMSIGN_SOFTHSM_MODULE``,
``HSMSIGN_DEV_HOME``): no other module reads an ``HSMSIGN_*`` variable from the
environment. Those are the user's, not the task's, so ``names()`` leaves them out.

Standard library only (BitBake imports it at parse time).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from . import roles
from .errors import ConfigError, PolicyError
from .frozen import Frozen

MODES: tuple[str, ...] = ("development", "production")
MODE_ENV = "HSMSIGN_MODE"
MODULE_ENV = "HSM_PKCS11_MODULE"
LEDGER_ENV = "HSMSIGN_LEDGER"
DENYLIST_ENV = "HSMSIGN_DENYLIST"
ALLOW_SOFTWARE_ENV = "HSMSIGN_ALLOW_SOFTWARE_TOKEN"
FIT_REQUIRED_ENV = "HSMSIGN_FIT_REQUIRED"
FIT_REQUIRED_MODE_ENV = "HSMSIGN_FIT_REQUIRED_MODE"
FIT_CHECK_SIGN_ENV = "HSMSIGN_FIT_CHECK_SIGN"
MKIMAGE_ENV = "HSMSIGN_MKIMAGE"  # U-Boot's mkimage behind the drop-in (the task's UBOOT_MKIMAGE)
REQUIRED_VALUES: tuple[str, ...] = ("conf", "image", "none")
REQUIRED_MODES: tuple[str, ...] = ("all", "any")
ROLE_ENV = "HSMSIGN_ROLE"
PIN_ENV = "HSMSIGN_PIN_ENV"
# The layer's variable for each setting a task hands over, where its name differs from the
# child's (the layer's HSMSIGN_UBOOT_REQUIRED* keeps oe-core's UBOOT_ vocabulary; the child's
# HSMSIGN_FIT_REQUIRED* says what it applies to: every FIT the drop-in or 'fit sign' writes).
LAYER_VARIABLES: dict[str, str] = {
    "fit_required": "HSMSIGN_UBOOT_REQUIRED",
    "fit_required_mode": "HSMSIGN_UBOOT_REQUIRED_MODE",
}
# mkimage's own PIN variable (tools/image-host.c); the drop-in honours it like mkimage does
MKIMAGE_PIN_ENV = "MKIMAGE_SIGN_PIN"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def parse_fingerprints(variable: str, value: str | None) -> tuple[str, ...]:
    """The fingerprints one pin variable lists (``sha256:`` prefixes and colons allowed)."""
    if not value:
        return ()
    out = []
    for word in value.replace(",", " ").split():
        fp = strip_fingerprint(word)
        if not _FINGERPRINT.match(fp):
            raise ConfigError(
                f"{variable}: '{word[:80]}' is not a SHA-256 fingerprint (64 hex digits)",
                "take it from 'hsmsign info --uri URI' (the fingerprint: line)",
            )
        out.append(fp)
    return tuple(out)


def strip_fingerprint(text: str) -> str:
    """One fingerprint as written (``sha256:``/``sha256=`` prefix, colons) as lower-case hex."""
    fp = text.strip().lower()
    for prefix in ("sha256:", "sha256="):
        if fp.startswith(prefix):
            fp = fp[len(prefix) :]
    return fp.replace(":", "")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``MODES``; a ConfigError otherwise."""
    if mode not in MODES:
        raise ConfigError(f"mode '{mode}' is neither 'development' nor 'production'")
    return mode


def effective_mode(mode: str | None) -> str:
    """The mode asked for, else ``HSMSIGN_MODE``, else production; checked."""
    return check_mode(mode or Settings.from_env(check=False).mode)


class RequiredProblem(NamedTuple):
    """A bad ``required``/``required-mode`` value: which setting, what is wrong, what to do."""

    setting: str  # "required" or "required-mode"
    value: str
    message: str
    fix: str
    production_only: bool = False  # a refusal in production, allowed (with a warning) in development


def required_problems(required: str, required_mode: str) -> list[RequiredProblem]:
    """What is wrong with a FIT ``required`` policy: the one definition of its allowed values.

    ``Settings`` (the child) raises on the first; the parse-time check
    (``hsmsign.bitbake``) reports each against the user's variable.
    """
    out: list[RequiredProblem] = []
    if required and required not in REQUIRED_VALUES:
        out.append(RequiredProblem(
            "required", required, f"'{required}' is not a required policy",
            'use "conf" (U-Boot refuses configurations the key did not sign; recommended), "image", '
            '"none" (development only), or leave it empty',
        ))
    elif required == "none":
        out.append(RequiredProblem(
            "required", required,
            'is "none": U-Boot and SPL get keys they never enforce and boot unsigned FITs',
            'use "conf" (or leave it empty) for production builds; none is for development builds',
            production_only=True,
        ))
    if required_mode and required_mode not in REQUIRED_MODES:
        out.append(RequiredProblem(
            "required-mode", required_mode, f"'{required_mode}' is not a required-mode",
            'use "all" (every required key must verify; U-Boot\'s default) or "any"',
        ))
    return out


class PinnedFingerprints(NamedTuple):
    """One pinned-fingerprint variable and the fingerprints it allows."""

    variable: str
    fingerprints: tuple[str, ...]


class Settings(Frozen):
    """hsmsign's settings: what the environment (:meth:`from_env`) or a task hands over.

    Immutable, compared by value (``hsmsign.frozen.Frozen``, not a dataclass: importing
    ``dataclasses`` cost every cold start 0.011 s).
    ``check=False``: the CLI's defaults, checked where each is used (as the options given on
    the command line).
    """

    __slots__ = (
        "mode",
        "role",
        "fingerprints",
        "role_uris",
        "uri",
        "module",
        "pin_env",
        "ledger",
        "fit_required",
        "fit_required_mode",
        "fit_check_sign",
        "default_uri",
        "denylist",
        "allow_software_token",
        "fit_key_name",
        "mkimage",
        "audit_allowlist",
        "uefi_owner",
        "softhsm_module",
        "dev_home",
        "ledger_time",
        "mkimage_pin",
    )

    mode: str
    role: str
    # pin variable (HSMSIGN_PUBKEY_SHA256[_<ROLE>]) -> its raw value, only the set ones
    fingerprints: Mapping[str, str]
    # FIT role -> its URI (the drop-in maps a -k URI to its roles with these)
    role_uris: Mapping[str, str]
    uri: str
    module: str
    pin_env: str
    ledger: str
    fit_required: str
    fit_required_mode: str
    fit_check_sign: str
    # the user's defaults for options (not handed over by a task: see names())
    default_uri: str
    denylist: str
    allow_software_token: bool
    fit_key_name: str
    mkimage: str
    audit_allowlist: str
    # hsmsign pe esl: the EFI signature list's SignatureOwner GUID
    uefi_owner: str
    softhsm_module: str
    dev_home: str
    # HSMSIGN_LEDGER_TIME: the ledger's clock (tests, reproducible replays)
    ledger_time: str
    # MKIMAGE_SIGN_PIN is set (the drop-in takes it like mkimage does)
    mkimage_pin: bool

    def __init__(
        self,
        *,
        mode: str = "production",
        role: str = "",
        fingerprints: Mapping[str, str] | None = None,
        role_uris: Mapping[str, str] | None = None,
        uri: str = "",
        module: str = "",
        pin_env: str = "",
        ledger: str = "",
        fit_required: str = "",
        fit_required_mode: str = "",
        fit_check_sign: str = "",
        default_uri: str = "",
        denylist: str = "",
        allow_software_token: bool = False,
        fit_key_name: str = "",
        mkimage: str = "",
        audit_allowlist: str = "",
        uefi_owner: str = "",
        softhsm_module: str = "",
        dev_home: str = "",
        ledger_time: str = "",
        mkimage_pin: bool = False,
        check: bool = True,
    ) -> None:
        fingerprints = {} if fingerprints is None else fingerprints
        role_uris = {} if role_uris is None else role_uris
        self._fill(locals())
        if check:
            self._check()

    __hash__ = None  # type: ignore[assignment]  # holds dicts, as the dataclass did
    _REBUILD: ClassVar[dict[str, Any]] = {"check": False}  # copies and pickles are not checked again

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Settings({shown})"

    def _check(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"HSMSIGN_MODE={self.mode!r} is neither 'development' nor 'production'",
                "set HSMSIGN_MODE to development or production",
            )
        if self.role:
            roles.get(self.role)
        if self.pin_env and not ENV_NAME.match(self.pin_env):
            raise ConfigError(
                f"{PIN_ENV} must be the NAME of an environment variable, not {self.pin_env[:3]}...",
                f"e.g. {PIN_ENV}=HSM_PIN with the PIN in HSM_PIN",
            )
        for problem in required_problems(self.fit_required, self.fit_required_mode):
            if not problem.production_only:
                name = FIT_REQUIRED_ENV if problem.setting == "required" else FIT_REQUIRED_MODE_ENV
                raise ConfigError(f"{name}={problem.value!r}: {problem.message}", problem.fix)
        for variable, value in self.fingerprints.items():
            parse_fingerprints(variable, value)

    # -- the boundary

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, check: bool = True) -> Settings:
        """The settings in an environment (default: this process's); ``check=False``: unchecked."""
        env = os.environ if env is None else env

        def get(name: str) -> str:
            return (env.get(name) or "").strip()

        pinned = {
            r.fingerprint_variable: get(r.fingerprint_variable)
            for r in roles.ROLE_TABLE
            if get(r.fingerprint_variable)
        }
        uris = {name: get(roles.BY_NAME[name].variable) for name in roles.FIT_ROLES}
        return cls(
            mode=get(MODE_ENV) or "production",
            role=get(ROLE_ENV).upper(),
            fingerprints=pinned,
            role_uris={k: v for k, v in uris.items() if v},
            uri=get(roles.URI_VARIABLE),
            module=get(MODULE_ENV),
            pin_env=get(PIN_ENV),
            ledger=get(LEDGER_ENV),
            fit_required=get(FIT_REQUIRED_ENV),
            fit_required_mode=get(FIT_REQUIRED_MODE_ENV),
            fit_check_sign=get(FIT_CHECK_SIGN_ENV),
            default_uri=get(roles.URI_VARIABLE),
            denylist=get(DENYLIST_ENV),
            allow_software_token=get(ALLOW_SOFTWARE_ENV) == "1",
            fit_key_name=get("HSMSIGN_FIT_KEY_NAME"),
            mkimage=get(MKIMAGE_ENV),
            audit_allowlist=get("HSMSIGN_AUDIT_ALLOWLIST"),
            uefi_owner=get("HSMSIGN_UEFI_OWNER_GUID"),
            softhsm_module=get("HSMSIGN_SOFTHSM_MODULE"),
            dev_home=get("HSMSIGN_DEV_HOME"),
            ledger_time=get("HSMSIGN_LEDGER_TIME"),
            mkimage_pin=MKIMAGE_PIN_ENV in env,
            check=check,
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry these settings (only the set ones)."""
        env = {
            MODE_ENV: self.mode,
            ROLE_ENV: self.role,
            roles.URI_VARIABLE: self.uri,
            MODULE_ENV: self.module,
            PIN_ENV: self.pin_env,
            LEDGER_ENV: self.ledger,
            FIT_REQUIRED_ENV: self.fit_required,
            FIT_REQUIRED_MODE_ENV: self.fit_required_mode,
            FIT_CHECK_SIGN_ENV: self.fit_check_sign,
            MKIMAGE_ENV: self.mkimage,
        }
        env.update(self.fingerprints)
        env.update({roles.BY_NAME[name].variable: uri for name, uri in self.role_uris.items()})
        return {k: v for k, v in env.items() if v}

    @staticmethod
    def names() -> list[str]:
        """Every variable ``to_env`` may set: a child's inherited copies are replaced, not mixed."""
        names = [
            MODE_ENV, ROLE_ENV, MODULE_ENV, LEDGER_ENV,
            FIT_REQUIRED_ENV, FIT_REQUIRED_MODE_ENV, FIT_CHECK_SIGN_ENV,
        ]
        names += [r.fingerprint_variable for r in roles.ROLE_TABLE]
        names += [roles.BY_NAME[name].variable for name in roles.FIT_ROLES]
        return names

    # -- what the settings mean

    def fingerprints_for_role(self, role: str | None = None) -> list[PinnedFingerprints]:
        """The pin that applies to a role: its own variable, else its fallback's, else the global one.

        An empty list: nothing pinned for this role. The AES role has no fallback, so the
        global pin (a public-key fingerprint) never applies to it.
        """
        for r in roles.chain(role if role is not None else self.role):
            value = self.fingerprints.get(r.fingerprint_variable)
            if value:
                name = r.fingerprint_variable
                return [PinnedFingerprints(name, parse_fingerprints(name, value))]
        return []

    @property
    def drop_in_pin_env(self) -> str:
        """The drop-in's PIN variable: ``HSMSIGN_PIN_ENV``, else mkimage's ``MKIMAGE_SIGN_PIN``."""
        return self.pin_env or (MKIMAGE_PIN_ENV if self.mkimage_pin else "")

    def required_policy(self) -> tuple[str | None, str | None]:
        """``required`` and ``required-mode`` of keys written into U-Boot's DTBs (None: as mkimage)."""
        if self.fit_required == "none" and self.mode != "development":
            raise PolicyError(
                "HSMSIGN_FIT_REQUIRED=none writes keys U-Boot never enforces: it would boot unsigned FITs",
                "use conf (or image) in production; none is for development builds",
            )
        return self.fit_required or None, self.fit_required_mode or None

    def required_for(self, kind: str, mkimage_r: bool) -> str | None:
        """The ``required`` of the key node for a signature of ``kind`` ("conf"/"image").

        ``HSMSIGN_FIT_REQUIRED`` decides ("none": not required); unset, it is what
        mkimage does: ``-r`` marks the key required for what it signed, else the node
        keeps what it had (``formats.fit.KEEP``, returned as "keep").
        """
        policy, _ = self.required_policy()
        if policy == "none":
            return None
        if policy:
            return policy
        if mkimage_r:
            return "image" if kind == "image" else "conf"
        return "keep"


def source_date_epoch() -> int | None:
    """``SOURCE_DATE_EPOCH`` (reproducible builds) as seconds, or None when unset or empty.

    The one parser for it: FIT timestamps, CMS and Authenticode signing times and cpio
    mtimes all read it here, so a bad value is the same clear error everywhere.
    """
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise ConfigError(
            f"SOURCE_DATE_EPOCH={raw[:40]!r} is not a number of seconds since 1970",
            "unset it or give a non-negative integer (Yocto sets it from the source's date)",
        )
    return int(raw)
