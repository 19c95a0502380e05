"""Token access: everything that talks PKCS#11 goes through this package.

Every python-pkcs11 error is turned into a ``TokenError`` (or ``SigningError``)
that names the object (with a redacted URI) and says what to do next.

* ``token.modules``: which PKCS#11 library to load, loading it once, python-pkcs11 itself;
* ``token.session``: the one logged-in session per (module, token), login, retry, error mapping;
* ``token.keys``: ``TokenKey`` and ``TokenSecretKey`` (mechanism choice), ``open_key``;
* ``token.listing``: tokens of a module, keys of a token.

Standard library only at import: python-pkcs11 and cryptography load on first use.
"""

from __future__ import annotations

from .keys import DEV_KEY_PREFIX, TokenKey, TokenSecretKey, open_key, open_secret_key
from .listing import list_keys, list_tokens
from .modules import (
    PKCS11_FAILURES,
    is_loaded,
    load_module,
    p11kit_config_dirs,
    p11kit_proxy_path,
    resolve_module,
    resolve_module_name,
)
from .session import DEV_TOKEN_PREFIX, TokenInfo, close_all, open_token, token_error


def default_softhsm_module() -> str | None:
    """The first SoftHSM module installed (``hsmsign.devtoken.softhsm_module``; imported on use)."""
    from ..devtoken import softhsm_module

    return softhsm_module()


__all__ = [
    "DEV_KEY_PREFIX",
    "DEV_TOKEN_PREFIX",
    "PKCS11_FAILURES",
    "TokenInfo",
    "TokenKey",
    "TokenSecretKey",
    "close_all",
    "default_softhsm_module",
    "is_loaded",
    "list_keys",
    "list_tokens",
    "load_module",
    "open_key",
    "open_secret_key",
    "open_token",
    "p11kit_config_dirs",
    "p11kit_proxy_path",
    "resolve_module",
    "resolve_module_name",
    "token_error",
]
