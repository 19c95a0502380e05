"""Development versus production: small rules that compose.

Each rule has ``check(subject)`` that raises ``PolicyError`` with what to do, or
returns quietly. ``AllOf`` combines them. In development mode the same rules run
but their refusals become warnings, so a developer sees what production would say.

Production policy = signing enabled AND a hardware token (unless
``HSMSIGN_ALLOW_SOFTWARE_TOKEN=1``) AND not a development key AND not a key whose
private half is published AND strong enough AND (when pinned) the pinned key.

Standard library only at module level (the layer reads the names at parse time).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import PolicyError

MODES = ("development", "production")
ALLOW_SOFTWARE_ENV = "HSMSIGN_ALLOW_SOFTWARE_TOKEN"
PIN_ENV_FINGERPRINT = "HSMSIGN_PUBKEY_SHA256"
DENYLIST_ENV = "HSMSIGN_DENYLIST"
MIN_RSA_BITS = 2048
MIN_RSA_EXPONENT = 65537


class Rule(Protocol):
    name: str

    def check(self, key: Any) -> None: ...


@dataclass
class AllOf:
    rules: list[Any]
    name: str = "all of"

    def check(self, key: Any) -> None:
        for rule in self.rules:
            rule.check(key)


@dataclass
class HardwareToken:
    allow_software: bool = False
    name: str = "hardware token"

    def check(self, key: Any) -> None:
        info = key.token_info
        if info.is_software and not self.allow_software:
            raise PolicyError(
                f"token '{info.label}' is a software token ({info.manufacturer.strip()}): its keys are files "
                "on this machine",
                f"use a hardware token in production, or set {ALLOW_SOFTWARE_ENV}=1 if you accept that risk",
            )


@dataclass
class NotDevelopmentKey:
    name: str = "not a development key"

    def check(self, key: Any) -> None:
        if key.is_development:
            raise PolicyError(
                f"key '{key.label}' on token '{key.token_info.label}' is a development key",
                "production builds must sign with the production key: set HSM_PKCS11_URI to it",
            )


@dataclass
class NotKnownPublic:
    name: str = "not a published key"

    def check(self, key: Any) -> None:
        hit = lookup_known_key(key.fingerprint)
        if hit is not None:
            raise PolicyError(
                f"key '{key.label}' is a published key ({hit}); anyone can sign with it",
                "generate a new key inside the token ('hsmsign keygen') and never import example keys",
            )


@dataclass
class StrongEnough:
    name: str = "strong enough"

    def check(self, key: Any) -> None:
        if key.key_type == "rsa":
            if key.key_size < MIN_RSA_BITS:
                raise PolicyError(
                    f"RSA key '{key.label}' has {key.key_size} bits; at least {MIN_RSA_BITS} needed"
                )
            exponent = key.public_key().public_numbers().e
            if exponent < MIN_RSA_EXPONENT:
                raise PolicyError(f"RSA key '{key.label}' has public exponent {exponent}; use 65537")


@dataclass
class Pinned:
    fingerprints: list[str] = field(default_factory=list)
    name: str = "pinned key"

    def check(self, key: Any) -> None:
        if not self.fingerprints:
            return
        if key.fingerprint.lower() not in self.fingerprints:
            raise PolicyError(
                f"key '{key.label}' has fingerprint {key.fingerprint}, not the pinned "
                f"{', '.join(self.fingerprints)}",
                "the URI points at another key than the one pinned in HSMSIGN_PUBKEY_SHA256; fix the URI, "
                "or update the pin after a planned key rotation",
            )


def lookup_known_key(fingerprint: str) -> str | None:
    """Why a key must not be used, or None.

    Two lists: the published keys that ship with hsmsign (``hsmsign.known_keys``,
    each with where it is published) and an optional site denylist named by
    ``HSMSIGN_DENYLIST`` (a file of SHA-256 fingerprints, one per line, ``#`` comments:
    keys your organisation has revoked or knows to be compromised).
    """
    fp = fingerprint.lower()
    site = os.environ.get(DENYLIST_ENV)
    if site:
        reason = _site_denylist(site).get(fp)
        if reason is not None:
            return f"listed in {site}" + (f": {reason}" if reason else "")
    try:
        from . import known_keys
    except ImportError:  # pragma: no cover - known_keys ships with the package
        return None
    hit = known_keys.lookup_spki_sha256(fp)
    if hit is None:
        return None
    return str(getattr(hit, "source", hit))


def _site_denylist(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise PolicyError(
            f"cannot read the site denylist {path} ({DENYLIST_ENV}): {exc.strerror}",
            f"fix the path or unset {DENYLIST_ENV}; hsmsign will not sign without the list it was given",
        ) from exc
    out: dict[str, str] = {}
    for line in lines:
        text, _, comment = line.partition("#")
        fp = text.strip().lower()
        for prefix in ("sha256:", "sha256="):
            if fp.startswith(prefix):
                fp = fp[len(prefix) :]
        fp = fp.replace(":", "")
        if fp:
            out[fp] = comment.strip()
    return out


def parse_pins(value: str | None) -> list[str]:
    if not value:
        return []
    pins = [p.strip().lower().replace(":", "") for p in value.replace(",", " ").split()]
    for pin in pins:
        if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
            raise PolicyError(
                f"pinned fingerprint '{pin}' is not a SHA-256 hex digest",
                "take it from 'hsmsign info --uri URI' (64 hex digits)",
            )
    return pins


def production_policy(pins: list[str] | None = None, allow_software: bool | None = None) -> AllOf:
    if allow_software is None:
        allow_software = os.environ.get(ALLOW_SOFTWARE_ENV, "") == "1"
    return AllOf(
        [
            NotKnownPublic(),
            NotDevelopmentKey(),
            HardwareToken(allow_software),
            StrongEnough(),
            Pinned(pins or []),
        ]
    )


def check_signer(key: Any, mode: str, pins: list[str] | None = None, quiet: bool = False) -> list[str]:
    """Apply the policy for ``mode``. Production raises; development returns warnings."""
    if pins is None:
        pins = parse_pins(os.environ.get(PIN_ENV_FINGERPRINT))
    policy = production_policy(pins)
    if mode == "production":
        if os.environ.get(ALLOW_SOFTWARE_ENV, "") == "1" and key.token_info.is_software and not quiet:
            print(
                f"hsmsign: WARNING: production signing with a SOFTWARE token ({key.token_info.label}) "
                f"because {ALLOW_SOFTWARE_ENV}=1",
                file=sys.stderr,
            )
        policy.check(key)
        return []
    warnings = []
    for rule in policy.rules:
        if isinstance(rule, (HardwareToken, NotDevelopmentKey)):
            continue  # expected in development
        try:
            rule.check(key)
        except PolicyError as exc:
            warnings.append(exc.message)
    return warnings


def verdicts(key: Any, pins: list[str] | None = None) -> list[tuple[str, str | None]]:
    """Each production rule with None (passes) or its refusal: for ``hsmsign doctor``."""
    out: list[tuple[str, str | None]] = []
    for rule in production_policy(pins).rules:
        try:
            rule.check(key)
            out.append((rule.name, None))
        except PolicyError as exc:
            out.append((rule.name, str(exc)))
    return out
