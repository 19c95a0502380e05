"""What a module and a token hold: tokens and their flags, keys with labels and ids (doctor, dev-init)."""

from __future__ import annotations

from typing import Any

from ..settings import effective_mode
from ..uri import Pkcs11Uri
from .modules import PKCS11_FAILURES, _pkcs11, load_module
from .session import _LOCK, TokenInfo, objects, open_token, token_error


def list_tokens(module: str) -> list[TokenInfo]:
    """Every token present in a module (for doctor and dev-init)."""
    _pkcs11()
    lib = load_module(module)
    out = []
    with _LOCK:
        try:
            slots = lib.get_slots(token_present=True)
        except PKCS11_FAILURES as exc:
            raise token_error(exc, "listing slots", None) from exc
        for slot in slots:
            try:
                tok = slot.get_token()
            except PKCS11_FAILURES:
                continue
            out.append(TokenInfo.read(module, lib, slot, tok))
    return out


def list_keys(
    uri_text: str | Pkcs11Uri,
    *,
    mode: str | None = None,
    module: str | None = None,
    pin_env: str | None = None,
) -> list[dict[str, Any]]:
    """Private and secret keys on the token a URI names (labels, ids, types)."""
    from pkcs11 import Attribute, ObjectClass

    uri = uri_text if isinstance(uri_text, Pkcs11Uri) else Pkcs11Uri.parse(uri_text)
    opened = open_token(uri, module, pin_env, effective_mode(mode))
    out = []
    for cls, kind in ((ObjectClass.PRIVATE_KEY, "private"), (ObjectClass.SECRET_KEY, "secret-key")):
        objs = opened.call("listing keys", objects(opened, {Attribute.CLASS: cls}), uri)
        for obj in objs:
            out.append(
                {
                    "label": str(obj[Attribute.LABEL]),
                    "id": bytes(obj[Attribute.ID] or b"").hex(),
                    "class": kind,
                    "key_type": obj.key_type.name.lower(),
                }
            )
    return sorted(out, key=lambda k: (k["label"], k["id"]))


# The key types libp11 (OpenSSL's pkcs11 engine, which rauc, sbsign, mkimage -N pkcs11 and
# openssl load) knows, by release. libp11 lists a token's keys to find the one a URI names, and
# up to 0.4.20 at least it stops at the first key object of a type it does not know: then it
# finds no key at all ("Unable to enumerate private keys"), whichever key the URI names.
_LIBP11_TYPES: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...] = (
    ((0, 4, 19), ("RSA", "EC", "EC_EDWARDS", "EC_MONTGOMERY")),
    ((0, 4, 18), ("RSA", "EC", "EC_EDWARDS")),
    ((0,), ("RSA", "EC")),
)


def parse_libp11_version(text: str) -> tuple[int, ...]:
    """``0.4.12`` (a pkg-config ``Version:``, a recipe's PV) to (0, 4, 12); ValueError if it is none."""
    parts = text.strip().split("+")[0].split("-")[0].split(".")
    if not text.strip() or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"not a libp11 version: {text!r} (expected e.g. 0.4.12)")
    return tuple(int(p) for p in parts)


def libp11_known_types(version: tuple[int, ...]) -> tuple[str, ...]:
    """The PKCS#11 key types (``KeyType`` names) that libp11 ``version`` can list."""
    return next(types for since, types in _LIBP11_TYPES if version >= since)


def keys_libp11_cannot_list(key: Any, version: tuple[int, ...]) -> tuple[list[str], bool]:
    """The private keys on ``key``'s token (a logged-in :class:`TokenKey`) that stop libp11
    ``version`` finding a private key there (``"'label' (Ed25519/Ed448)"`` each: it lists the
    private keys only, for a signing key), and whether the token also holds a private key of a
    type python-pkcs11 cannot name (which libp11 may or may not know). One search, and one
    attribute read per key: a signing token holds a few keys, not thousands."""
    from pkcs11 import Attribute, ObjectClass

    known = libp11_known_types(version)
    opened = key._opened

    def named() -> list[tuple[str, str]]:
        return [
            (str(obj[Attribute.LABEL]), obj.key_type.name)
            for obj in opened.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        ]

    try:
        objs = opened.call("listing keys", named, key.uri)
    except ValueError:  # python-pkcs11 refuses a key type it has no name for
        return [], True
    return sorted({f"'{label}' ({_TYPE_NAMES.get(t, t)})" for label, t in objs if t not in known}), False


_TYPE_NAMES = {"EC_EDWARDS": "Ed25519/Ed448", "EC_MONTGOMERY": "X25519/X448"}
