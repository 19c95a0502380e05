"""The SPSDK signature provider ``type=hsmsign``: SPSDK signs, the token holds the key.

Registered under SPSDK's entry-point group ``spsdk.sp`` (pyproject.toml), so every
SPSDK tool (``nxpimage``, ...) finds it once hsmsign is installed next to SPSDK::

    signer: type=hsmsign;token=acme-prod;object=imx-srk1;pin-source=file:/run/secrets/hsm-pin

The key is opened as for every other artifact (``hsmsign.commands.common.open_key_from_args``):
policy mode, pinned fingerprints of the ``IMX`` role, the per-process token session and
its lock, one ledger entry per signature. Outside ``hsmsign imx`` the settings come from
the environment (``HSMSIGN_MODE``, ``HSMSIGN_PIN_ENV``, ``HSM_PKCS11_MODULE``,
``HSMSIGN_LEDGER``, ``HSMSIGN_PUBKEY_SHA256_IMX``); the SPSDK configuration can name
the key and a PIN variable (``pin_env=NAME``), never the PIN, the mode or the role.

This module imports SPSDK: only SPSDK's plugin loader and ``hsmsign imx`` load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from argparse import Namespace
from collections.abc import Iterator
from typing import Any

from spsdk.crypto.keys import PublicKey
from spsdk.crypto.signature_provider import SignatureProvider
from spsdk.exceptions import SPSDKError

from ..errors import HsmsignError, PolicyError
from . import signer as signer_mod

ROLE = "IMX"
# set by 'hsmsign imx' while SPSDK runs: the command's options instead of the environment
_COMMAND_ARGS: Namespace | None = None


@contextlib.contextmanager
def command_args(args: Any) -> Iterator[None]:
    """While SPSDK runs inside ``hsmsign imx``, providers take mode, PIN variable, module,
    role and ledger from the command's options."""
    global _COMMAND_ARGS
    previous, _COMMAND_ARGS = _COMMAND_ARGS, args
    try:
        yield
    finally:
        _COMMAND_ARGS = previous


def _args_from_env(pin_env: str | None) -> Namespace:
    from ..settings import Settings

    env = Settings.from_env()
    return Namespace(
        mode=env.mode,
        module=env.module or None,
        pin_env=pin_env or env.pin_env or None,
        role=env.role or ROLE,
        ledger=env.ledger or None,
    )


def check_pins(params: dict[str, Any], mode: str) -> None:
    """A PIN in the signer string: refused in production, ignored (with a warning) in development."""
    pins = signer_mod.signer_pins(";".join(["type=x", *(f"{k}={v}" for k, v in params.items())]))
    if not pins:
        return
    message = f"the SPSDK signer string holds a PIN ({', '.join(sorted(pins))})"
    hint = "remove it: the PIN comes from the URI's pin-source=file:PATH or pin_env=NAME, read at run time"
    if mode == "production":
        raise PolicyError(message, hint)
    print(f"hsmsign: warning: {message}; it is not used. {hint}", file=sys.stderr)


class HsmsignSP(SignatureProvider):
    """SPSDK signature provider backed by a key in a PKCS#11 token (through hsmsign)."""

    identifier = signer_mod.SIGNER_TYPE

    def __init__(self, **kwargs: Any) -> None:
        # SPSDK passes the constructor only the parameters its __code__ names (plus **kwargs):
        # keep every local in _setup so no URI attribute is mistaken for an argument here.
        self._setup(kwargs)

    def _setup(self, params: dict[str, Any]) -> None:
        from ..commands.common import open_key_from_args
        from ..settings import effective_mode

        self.hash_alg = params.pop("hash_alg", None)
        self.pss_padding = bool(params.pop("pss_padding", False))
        pin_env = params.pop(signer_mod.PIN_ENV_PARAM, None)
        args = _COMMAND_ARGS if _COMMAND_ARGS is not None else _args_from_env(pin_env)
        if _COMMAND_ARGS is not None and pin_env and not getattr(args, "pin_env", None):
            args = Namespace(**{**vars(args), "pin_env": pin_env})
        if not getattr(args, "role", None):
            args = Namespace(**{**vars(args), "role": ROLE})
        self._args = args
        self._stack = contextlib.ExitStack()
        try:
            check_pins(params, effective_mode(args.mode))
            for name in list(params):
                if name in signer_mod.PIN_PARAMS:
                    del params[name]
            uri = signer_mod.uri_from_params(params)
            self.key = self._stack.enter_context(open_key_from_args(args, uri=uri))
        except HsmsignError as exc:
            self._stack.close()
            raise _spsdk_error(exc) from exc

    # -- SPSDK's interface

    @property
    def signature_length(self) -> int:
        if self.key.key_type == "rsa":
            return int(self.key.key_size) // 8
        return 2 * ((int(self.key.key_size) + 7) // 8)

    def _hash_name(self) -> str:
        if self.hash_alg is not None:
            return str(getattr(self.hash_alg, "label", self.hash_alg)).lower()
        if self.key.key_type == "ec":
            bits = int(self.key.key_size)
            return "sha256" if bits <= 256 else "sha384" if bits <= 384 else "sha512"
        return "sha256"

    def sign(self, data: bytes) -> bytes:
        """RSA PKCS#1 v1.5 (or PSS when SPSDK asks for it) or ECDSA as raw r||s, as SPSDK's file provider."""
        from .. import ledger, signing

        hash_name = self._hash_name()
        scheme = "pss" if self.pss_padding and self.key.key_type == "rsa" else None
        try:
            digest = hashlib.new(signing.check_hash(hash_name), data).digest()
            signature = bytes(self.key.sign_digest(digest, hash_name, scheme))
            ledger.record(
                artifact=str(getattr(self._args, "artifact", None) or "spsdk"),
                sha256_hex=hashlib.sha256(data).hexdigest(),
                key_fingerprint=self.key.fingerprint,
                uri_redacted=self.key.uri.identity(),
                mechanism=signing.mechanism_name(self.key.key_type, hash_name, scheme),
                kind="imx-spsdk",
                ledger=getattr(self._args, "ledger", None),
            )
        except HsmsignError as exc:
            raise _spsdk_error(exc) from exc
        return signature

    def verify_public_key(self, public_key: PublicKey) -> bool:
        from cryptography.hazmat.primitives import serialization

        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        theirs = public_key.key.public_bytes(*spki)
        return bool(self.key.public_key().public_bytes(*spki) == theirs)

    def info(self) -> str:
        return f"{super().info()}\nKey: {self.key.uri.identity()} (sha256:{self.key.fingerprint[:16]}...)\n"


class HsmsignSPError(SPSDKError):
    """An hsmsign error crossing SPSDK: SPSDK prints it as one line; ``hsmsign imx`` unwraps it."""

    def __init__(self, error: HsmsignError) -> None:
        super().__init__(str(error))
        self.error = error


def _spsdk_error(exc: HsmsignError) -> SPSDKError:
    return HsmsignSPError(exc)


def unwrap(exc: BaseException) -> HsmsignError | None:
    """The hsmsign error behind an SPSDK error, however SPSDK wrapped it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, HsmsignSPError):
            return current.error
        if isinstance(current, HsmsignError):
            return current
        current = current.__cause__ or current.__context__
    return None
