"""Development versus production: small rules that compose.

Each rule has ``check(subject)`` that raises ``PolicyError`` with what to do, or
returns quietly. ``AllOf`` combines them. In development mode the same rules run
but their refusals become warnings, so a developer sees what production would say.

Production policy = signing enabled AND a hardware token (unless
``HSMSIGN_ALLOW_SOFTWARE_TOKEN=1``) AND not a development key AND not a key whose
private half is published AND strong enough AND (when pinned) the pinned key.
Before any of it, the key's URI itself (``check_uri``): no PIN written into it, and a
pin-source program without arguments that could carry one.

A pin is the user's own statement of which key signs: it is enforced in every
mode. Development relaxes only the development-key and software-token rules
(and reports the published-key and key-strength ones as warnings).

Standard library only at module level (the layer reads the names at parse time).
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

from .errors import ConfigError, PolicyError
from .settings import ALLOW_SOFTWARE_ENV, DENYLIST_ENV, Settings, strip_fingerprint
from .uri import Pkcs11Uri, pin_problems

MIN_RSA_BITS = 2048
MIN_RSA_EXPONENT = 65537


# plain classes and a NamedTuple, not dataclasses: every signing command loads this module,
# and a dataclass costs a cold start 0.2 - 0.3 ms to make (docs/dev/internals.md, "Cold start")
class AllOf:
    name = "all of"

    def __init__(self, rules: list[Any]) -> None:
        self.rules = rules

    def check(self, key: Any) -> None:
        for rule in self.rules:
            rule.check(key)


class HardwareToken:
    name = "hardware token"

    def __init__(self, allow_software: bool = False) -> None:
        self.allow_software = allow_software

    def check(self, key: Any) -> None:
        info = key.token_info
        if info.is_software and not self.allow_software:
            raise PolicyError(
                f"token '{info.label}' is a software token ({info.manufacturer.strip()}; "
                f"{info.software_reason}): its keys are files on this machine",
                f"use a hardware token in production, or set {ALLOW_SOFTWARE_ENV}=1 if you accept that risk",
            )


class NotDevelopmentKey:
    name = "not a development key"

    def check(self, key: Any) -> None:
        if key.is_development:
            raise PolicyError(
                f"key '{key.label}' on token '{key.token_info.label}' is a development key",
                "production builds must sign with the production key: set HSM_PKCS11_URI to it",
            )


class NotKnownPublic:
    name = "not a published key"

    def check(self, key: Any) -> None:
        hit = lookup_known_key(key.fingerprint)
        if hit is not None:
            raise PolicyError(
                f"key '{key.label}' is a published key ({hit}); anyone can sign with it",
                "generate a new key inside the token ('hsmsign keygen') and never import example keys",
            )


class StrongEnough:
    name = "strong enough"

    def check(self, key: Any) -> None:
        if key.key_type == "rsa":
            if key.key_size < MIN_RSA_BITS:
                raise PolicyError(
                    f"RSA key '{key.label}' has {key.key_size} bits; at least {MIN_RSA_BITS} needed"
                )
            from .keyformats import rsa_public_of

            rsa = rsa_public_of(key)
            exponent = rsa.e if rsa is not None else key.public_key().public_numbers().e
            if exponent < MIN_RSA_EXPONENT:
                raise PolicyError(f"RSA key '{key.label}' has public exponent {exponent}; use 65537")


class Pinned:
    """The key is the one each applicable pin variable names (``hsmsign.settings.PinnedFingerprints``)."""

    name = "pinned key"

    def __init__(self, pinned: list[Any] | None = None) -> None:
        self.pinned: list[Any] = pinned if pinned is not None else []

    def check(self, key: Any) -> None:
        have = key.fingerprint.lower()
        for pin in self.pinned:
            if have not in pin.fingerprints:
                raise PolicyError(
                    f"{pin.variable} pins sha256:{' or sha256:'.join(pin.fingerprints)}, but key "
                    f"'{key.label}' ({key.uri.identity()}) is sha256:{have}; nothing was signed",
                    "the URI names another key than the pinned one: fix the key URI, or, after a planned "
                    f'key rotation to this key, set {pin.variable} = "{have}"',
                )


def check_uri(uri: str | Pkcs11Uri, mode: str) -> list[str]:
    """The PIN rules for a key URI (text, even malformed, or parsed): raise on a refusal, return warnings.

    Production refuses (PolicyError, exit 4) a pin-value, anything that looks like a PIN
    attribute (``pin_value=``, ``?pin-valueSECRET``, ``pin=`` ...) and a pin-source program
    with arguments (unless on ``hsmsign.uri.PIN_PROGRAM_ALLOWLIST``). Development accepts a
    pin-value, warns about program arguments, and refuses a PIN-like attribute as a bad URI
    (ConfigError, exit 2). A program line that cannot be split is a ConfigError in both.
    Messages never hold the secret (``hsmsign.uri.pin_problems``).
    """
    problems = pin_problems(uri)
    # a PIN in the URI is the graver problem: in production it is reported before a bad program line
    problems.sort(key=lambda p: p.kind == "program-unsplittable")
    warnings: list[str] = []
    for problem in problems:
        if mode == "production" and problem.kind != "program-unsplittable":
            raise PolicyError(problem.message, problem.hint)
        if problem.refused_in_development:
            raise ConfigError(problem.message, problem.hint)
        if problem.warned_in_development:
            warnings.append(problem.message)
    return warnings


def lookup_known_key(fingerprint: str) -> str | None:
    """Why a key must not be used, or None.

    Two lists: the published keys that ship with hsmsign (``hsmsign.known_keys``,
    each with where it is published) and an optional site denylist named by
    ``HSMSIGN_DENYLIST`` (a file of SHA-256 fingerprints, one per line, ``#`` comments:
    keys your organisation has revoked or knows to be compromised).
    """
    fp = fingerprint.lower()
    site = Settings.from_env(check=False).denylist
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
        fp = strip_fingerprint(text)
        if fp:
            out[fp] = comment.strip()
    return out


def role_fingerprints(role: str | None = None) -> list[Any]:
    """The pinned fingerprints of ``role`` (default: ``HSMSIGN_ROLE``) in this process's environment."""
    settings = Settings.from_env()
    return settings.fingerprints_for_role(role if role is not None else settings.role)


def production_policy(pinned: list[Any] | None = None, allow_software: bool | None = None) -> AllOf:
    if allow_software is None:
        allow_software = Settings.from_env(check=False).allow_software_token
    return AllOf(
        [
            NotKnownPublic(),
            NotDevelopmentKey(),
            HardwareToken(allow_software),
            StrongEnough(),
            Pinned(pinned or []),
        ]
    )


# In development the published-key and key-strength rules warn, the development-key and
# software-token rules are skipped; every other rule (the pin) refuses in every mode.
_DEV_WARN = (NotKnownPublic, StrongEnough)
_DEV_SKIP = (HardwareToken, NotDevelopmentKey)


class Verdict(NamedTuple):
    """One rule's result: ``refusal`` None (passes), else what ``mode`` does: refuse, warn or skip."""

    rule: str
    refusal: PolicyError | None
    action: str = "pass"


def evaluate(key: Any, mode: str, pinned: list[Any]) -> list[Verdict]:
    """Every production rule for ``key`` and what ``mode`` does with its refusal.

    The one place that decides what refuses in which mode: ``check_signer`` (every signing
    path) and ``hsmsign doctor`` both use it, so they agree.
    """
    out: list[Verdict] = []
    for rule in production_policy(pinned).rules:
        try:
            rule.check(key)
            out.append(Verdict(rule.name, None))
        except PolicyError as exc:
            if mode == "production":
                action = "refuse"
            elif isinstance(rule, _DEV_SKIP):
                action = "skip"
            elif isinstance(rule, _DEV_WARN):
                action = "warn"
            else:
                action = "refuse"
            out.append(Verdict(rule.name, exc, action))
    return out


def check_signer(key: Any, mode: str, pinned: list[Any] | None = None, quiet: bool = False) -> list[str]:
    """Apply the policy for ``mode`` before the token signs: raise on a refusal, return warnings.

    ``pinned``: the ``hsmsign.settings.PinnedFingerprints`` list that applies (default: the role's, from the
    environment). Production refuses on any rule; development only on the pin, and warns
    about published or weak keys.
    """
    if pinned is None:
        pinned = role_fingerprints()
    results = evaluate(key, mode, pinned)
    for verdict in results:
        if verdict.refusal is not None and verdict.action == "refuse":
            raise verdict.refusal
    if mode == "production" and Settings.from_env(check=False).allow_software_token and not quiet:
        if key.token_info.is_software:
            print(
                f"hsmsign: WARNING: production signing with a SOFTWARE token ({key.token_info.label}) "
                f"because {ALLOW_SOFTWARE_ENV}=1",
                file=sys.stderr,
            )
    return [v.refusal.message for v in results if v.refusal is not None and v.action == "warn"]


def verdicts(key: Any, pinned: list[Any] | None = None) -> list[tuple[str, str | None]]:
    """Each production rule with None (passes) or its refusal."""
    return [
        (v.rule, None if v.refusal is None else str(v.refusal))
        for v in evaluate(key, "production", role_fingerprints() if pinned is None else pinned)
    ]
