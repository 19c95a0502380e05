"""What a module and a token hold: tokens and their flags, keys with labels and ids (doctor, dev-init)."""

from __future__ import annotations

from typing import Any

from ..settings import effective_mode
from ..uri import Pkcs11Uri
from .modules import PKCS11_FAILURES, _pkcs11, load_module
from .session import _LOCK, TokenInfo, open_token, token_error


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
        objs = opened.call(
            "listing keys", lambda c=cls: list(opened.session.get_objects({Attribute.CLASS: c})), uri
        )
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
