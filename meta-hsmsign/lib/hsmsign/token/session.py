"""Sessions: open the token a URI names, log in once, retry a dropped session, map errors.

Rules this module keeps:

* One process-wide lock around every call into a module: python-pkcs11 calls
  ``C_Initialize(NULL)`` (no OS locking) and releases the GIL, so SoftHSM and
  other modules are not safe to enter from two threads at once.
* One logged-in session per (module, token) per process, kept open for the life
  of the process: ``C_CloseSession`` on a logged-in session logs out every
  session of the process, and each login costs a token round trip.
* A wrong PIN is reported once and never retried: tokens lock after a few tries.
* Sessions that drop (token removed, p11-kit server restarted, network HSM
  reconnect) are reopened and the operation retried a bounded number of times,
  with the PIN that already worked; a login that fails is never retried.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple, TypeVar

from .. import pin as pinmod
from ..errors import ConfigError, HsmsignError, TokenError
from ..uri import Pkcs11Uri
from .modules import PKCS11_FAILURES, _error_name, _pkcs11, _text, load_module, resolve_module

T = TypeVar("T")
DEV_TOKEN_PREFIX = "hsmsign-dev"  # noqa: S105 - a token label prefix, not a secret
CKF_HW_SLOT = 0x4  # CK_SLOT_INFO.flags: "the slot is a hardware slot, as opposed to a software slot"
RECONNECT_ATTEMPTS = 3
RECONNECT_BACKOFF_S = 0.2
_LOCK = threading.RLock()


_RECONNECTABLE = (
    "DeviceRemoved",
    "SessionHandleInvalid",
    "SessionClosed",
    "TokenNotPresent",
    "DeviceError",
    "ObjectHandleInvalid",
    "KeyHandleInvalid",
    "CryptokiNotInitialized",
)


def _is_reconnectable(exc: BaseException) -> bool:
    name = _error_name(exc)
    if name in _RECONNECTABLE:
        return True
    # p11-kit-client reports a dead server socket as CKR_GENERAL_ERROR / DEVICE_ERROR
    return name == "GeneralError"


def token_error(exc: BaseException, what: str, uri: Pkcs11Uri | None) -> HsmsignError:
    """Turn a python-pkcs11 exception into a TokenError with a hint."""
    name = _error_name(exc)
    where = f" ({uri.redacted()})" if uri is not None else ""
    hints = {
        "PinIncorrect": "the PIN was rejected and was NOT retried (tokens lock after a few wrong tries); "
        "fix the PIN source before running again",
        "PinLocked": "the user PIN is locked; the token's security officer must unlock or reset it",
        "PinExpired": "the PIN has expired; change it with the token's tools",
        "PinLenRange": "the PIN has the wrong length for this token; check the PIN source",
        "PinInvalid": "the PIN has characters this token does not accept; check the PIN source",
        "DeviceRemoved": "the token was removed or the connection to it was lost; reconnect it and retry",
        "TokenNotPresent": "the token is not present; plug it in / check the HSM connection",
        "DeviceError": "the token reported a device error; check its connection "
        "(p11-kit server, network HSM)",
        "GeneralError": "the module reported a general error; for a remote token check the p11-kit server "
        "or network connection",
        "MechanismInvalid": "the token does not support this mechanism for this key",
        "KeyTypeInconsistent": "the key type does not match the requested algorithm",
        "KeyFunctionNotPermitted": "the key is not allowed to sign (CKA_SIGN is false)",
        "UserNotLoggedIn": "the token needs a login; give a PIN source",
        "UserPinNotInitialized": "the token has no user PIN yet: its security officer sets one "
        "(pkcs11-tool --module MODULE --token-label LABEL --login --login-type so --init-pin); "
        "a development token comes from 'hsmsign dev-init'",
        "FunctionNotSupported": "the module does not implement this function",
        "TokenWriteProtected": "the token is write-protected",
        "CryptokiNotInitialized": "the PKCS#11 module lost its state (token removed, p11-kit server or "
        "network HSM restarted); reconnect the token and run again",
    }
    hint = hints.get(name, "run 'hsmsign doctor --uri URI' for a step-by-step check")
    text = _text(exc.args[0]) if len(exc.args) == 1 else str(exc).strip()
    if name == "CryptokiNotInitialized":
        text = "the module is not initialized"
    detail = f": {text}" if text and name not in ("PinIncorrect",) else ""
    return TokenError(f"{what}{where} failed: {name}{detail}", hint)


class TokenInfo(NamedTuple):
    label: str
    manufacturer: str
    model: str
    serial: str
    slot_id: int
    slot_description: str
    module: str
    library_description: str
    flags: int
    slot_flags: int = 0

    @classmethod
    def read(cls, module: str, lib: Any, slot: Any, token: Any) -> TokenInfo:
        """What python-pkcs11's lib, slot and token objects say (CK_SLOT_INFO, CK_TOKEN_INFO)."""
        return cls(
            label=token.label,
            manufacturer=token.manufacturer_id,
            model=token.model,
            serial=_text(token.serial),
            slot_id=slot.slot_id,
            slot_description=slot.slot_description,
            module=module,
            library_description=lib.library_description,
            flags=int(token.flags),
            slot_flags=int(slot.flags),
        )

    @property
    def is_software(self) -> bool:
        """SoftHSM and other software tokens (key material in files on the build host).

        Software when PKCS#11 itself says the slot is not a hardware slot (no
        CKF_HW_SLOT in CK_SLOT_INFO.flags: SoftHSM, and any module that emulates its
        slots), or when the token's manufacturer, model or library description says
        "softhsm" or "software". The token flags (CK_TOKEN_INFO.flags) carry no
        hardware bit in PKCS#11 2.40 or 3.x, so they cannot tell.
        """
        return bool(self.software_reason)

    @property
    def software_reason(self) -> str:
        """Why the token counts as software ("" for a hardware token)."""
        if not self.slot_flags & CKF_HW_SLOT:
            return "its slot does not report CKF_HW_SLOT"
        text = f"{self.manufacturer} {self.model} {self.library_description}".lower()
        for word in ("softhsm", "software"):
            if word in text:
                return f"its manufacturer, model or library says '{word}'"
        return ""

    @property
    def is_development(self) -> bool:
        return self.label.startswith(DEV_TOKEN_PREFIX)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "manufacturer": self.manufacturer,
            "model": self.model,
            "serial": self.serial,
            "slot_id": self.slot_id,
            "module": self.module,
            "software": self.is_software,
            "software_reason": self.software_reason,
            "hw_slot": bool(self.slot_flags & CKF_HW_SLOT),
            "development": self.is_development,
        }


class _OpenToken:
    """One logged-in session on one token, shared by everything in this process."""

    def __init__(self, module: str, uri: Pkcs11Uri, pin_env: str | None, mode: str, rw: bool = False) -> None:
        self.rw = rw
        self.module = module
        self.uri = uri
        self.pin_env = pin_env
        self.mode = mode
        self.lib: Any = None
        self.token: Any = None
        self.session: Any = None
        self.info: TokenInfo | None = None
        self._pin: str | None = None
        self._pin_known_good = False

    # -- connection
    def connect(self) -> None:
        pkcs11 = _pkcs11()
        with _LOCK:
            self.lib = load_module(self.module)
            slot, token = self._select_token(pkcs11)
            self.token = token
            self.info = TokenInfo.read(self.module, self.lib, slot, token)
            self._login(pkcs11, token)

    def _select_token(self, pkcs11: Any) -> tuple[Any, Any]:
        uri = self.uri
        _refuse_unknown(uri)
        if uri.library_manufacturer is not None and self.lib.manufacturer_id != uri.library_manufacturer:
            raise _no_token(uri, self.module, [])
        if uri.library_description is not None and self.lib.library_description != uri.library_description:
            raise _no_token(uri, self.module, [])
        if uri.library_version is not None:
            major, _, minor = uri.library_version.partition(".")
            if self.lib.library_version != (int(major), int(minor or 0)):
                raise _no_token(uri, self.module, [])
        try:
            slots = self.lib.get_slots(token_present=True)
        except PKCS11_FAILURES as exc:
            raise token_error(exc, "listing slots", uri) from exc
        matches = []
        seen = []
        for slot in slots:
            try:
                token = slot.get_token()
            except (pkcs11.TokenNotPresent, pkcs11.TokenNotRecognised):
                continue
            except PKCS11_FAILURES as exc:
                raise token_error(exc, f"reading slot {slot.slot_id}", uri) from exc
            seen.append(token.label)
            checks = (
                (uri.token, token.label),
                (uri.manufacturer, token.manufacturer_id),
                (uri.model, token.model),
                (uri.serial, _text(token.serial)),
                (uri.slot_description, slot.slot_description),
                (uri.slot_manufacturer, slot.manufacturer_id),
            )
            if any(want is not None and want != have for want, have in checks):
                continue
            if uri.slot_id is not None and uri.slot_id != slot.slot_id:
                continue
            matches.append((slot, token))
        if not matches:
            raise _no_token(uri, self.module, seen)
        if len(matches) > 1:
            labels = ", ".join(sorted({t.label for _, t in matches}))
            raise TokenError(
                f"{len(matches)} tokens match {uri.redacted()} ({labels})",
                "add token=LABEL or serial=SERIAL to the URI to pick one",
            )
        return matches[0]

    def _login(self, pkcs11: Any, token: Any) -> None:
        flags = token.flags
        source = pinmod.pin_source_for(self.uri, self.pin_env, self.mode)
        user_pin: Any = None
        if source.kind != "none":
            user_pin = self._pin if self._pin_known_good else pinmod.read_pin(source, self.uri)
        elif flags & pkcs11.TokenFlag.PROTECTED_AUTHENTICATION_PATH:
            user_pin = pkcs11.PROTECTED_AUTH
        elif flags & pkcs11.TokenFlag.LOGIN_REQUIRED:
            raise ConfigError(
                f"token '{token.label}' needs a PIN and none is configured",
                "add ?pin-source=file:/path/to/pin to the URI, or export the PIN in a variable and pass "
                "--pin-env NAME (HSMSIGN_PIN_ENV=NAME)",
            )
        if flags & pkcs11.TokenFlag.USER_PIN_LOCKED:
            raise TokenError(
                f"the user PIN of token '{token.label}' is locked",
                "the token's security officer must unlock or reset it; hsmsign will not try to log in",
            )
        try:
            self.session = token.open(user_pin=user_pin, rw=self.rw)
        except pkcs11.PinIncorrect as exc:
            raise TokenError(
                f"PIN rejected by token '{token.label}' (from {source.describe()})" + _tries_left(token),
                "not retried: tokens lock after a few wrong tries; fix the PIN source before running again",
            ) from exc
        except pkcs11.UserAlreadyLoggedIn:
            self.session = token.open(rw=self.rw)
        except PKCS11_FAILURES as exc:
            raise token_error(exc, f"opening a session on token '{token.label}'", None) from exc
        if user_pin is not None and user_pin is not pkcs11.PROTECTED_AUTH:
            self._pin = user_pin
            self._pin_known_good = True

    def reconnect(self) -> None:
        """Reopen after a dropped session; re-login only with the PIN that worked before."""
        pkcs11 = _pkcs11()
        with _LOCK:
            with contextlib.suppress(Exception):
                self.lib.reinitialize()
            self.session = None
            slot, token = self._select_token(pkcs11)
            self.token = token
            self._login(pkcs11, token)

    def call(
        self,
        what: str,
        fn: Callable[[], T],
        uri: Pkcs11Uri | None = None,
        after_reconnect: Callable[[], None] | None = None,
    ) -> T:
        """Run ``fn`` under the module lock, reconnecting a bounded number of times."""
        pkcs11 = _pkcs11()
        last: BaseException | None = None
        for attempt in range(RECONNECT_ATTEMPTS + 1):
            try:
                with _LOCK:
                    return fn()
            except HsmsignError:
                raise
            except PKCS11_FAILURES as exc:
                if isinstance(exc, (pkcs11.PinIncorrect, pkcs11.PinLocked)):
                    raise token_error(exc, what, uri or self.uri) from exc
                if not _is_reconnectable(exc) or attempt == RECONNECT_ATTEMPTS:
                    last = exc
                    break
                last = exc
                time.sleep(RECONNECT_BACKOFF_S * (attempt + 1))
                try:
                    self.reconnect()
                    if after_reconnect is not None:
                        after_reconnect()
                except HsmsignError as again:
                    if attempt == RECONNECT_ATTEMPTS - 1:
                        raise TokenError(
                            f"{what} ({(uri or self.uri).redacted()}) failed and the token could not "
                            f"be reached again after {attempt + 1} attempts: {again.message}",
                            again.hint or "check the token, the p11-kit server or the network HSM",
                        ) from exc
                except PKCS11_FAILURES:
                    continue
        assert last is not None  # noqa: S101 - loop always sets it before breaking
        raise token_error(last, what, uri or self.uri) from last


_TOKENS: dict[tuple[str, str, str, bool], _OpenToken] = {}


def open_token(
    uri: Pkcs11Uri, module: str | None, pin_env: str | None, mode: str, rw: bool = False
) -> _OpenToken:
    """The shared open token for this URI (connect on first use).

    The URI's PIN rules for ``mode`` are checked first (``hsmsign.pin.pin_source_for``): a
    URI that production refuses never loads a module or reaches a token.
    """
    pinmod.pin_source_for(uri, pin_env, mode)
    path = resolve_module(uri, module)
    token_uri = uri.with_(object=None, id=None, type=None)
    key = (path, token_uri.format(keep_secrets=True), pin_env or "", rw)
    with _LOCK:
        opened = _TOKENS.get(key)
        if opened is None:
            opened = _OpenToken(path, token_uri, pin_env, mode, rw)
            _connect_with_retry(opened)
            _TOKENS[key] = opened
        return opened


# Transient while a token is being opened: SoftHSM's file store is rewritten by every C_Login
# (token flags), and another process reading it then gets CKR_TOKEN_NOT_RECOGNIZED or
# CKR_GENERAL_ERROR, or p11-kit server's filter hides the slot ("tokens present: none"); a
# p11-kit server that is restarting refuses C_Initialize (CKR_DEVICE_ERROR). A store read
# half-written has no user PIN yet: C_Login answers CKR_USER_PIN_NOT_INITIALIZED before it
# looks at the PIN, so trying again costs no PIN try. Never a wrong or locked PIN.
_CONNECT_TRANSIENT = ("TokenNotRecognised", "GeneralError", "DeviceError", "TokenNotPresent",
                      "SessionHandleInvalid", "DeviceRemoved", "CryptokiNotInitialized",
                      "UserPinNotInitialized")


def _connect_with_retry(opened: _OpenToken) -> None:
    for attempt in range(RECONNECT_ATTEMPTS + 1):
        try:
            opened.connect()
            return
        except TokenError as exc:
            cause = exc.__cause__
            transient = cause is not None and _error_name(cause) in _CONNECT_TRANSIENT
            transient = transient or getattr(exc, "no_token_present", False)
            if not transient or attempt == RECONNECT_ATTEMPTS:
                raise
        import random  # only here: nearly every first connection works, and needs none

        time.sleep(RECONNECT_BACKOFF_S * (attempt + 1) * random.uniform(0.5, 1.5))  # noqa: S311
        with contextlib.suppress(Exception):
            if opened.lib is not None:
                opened.lib.reinitialize()


def close_all() -> None:
    """Close every session (end of process, tests). Logs out the process."""
    with _LOCK:
        for opened in _TOKENS.values():
            with contextlib.suppress(Exception):
                opened.session.close()
        _TOKENS.clear()


def _refuse_unknown(uri: Pkcs11Uri) -> None:
    if uri.unknown:
        names = ", ".join(name for _, name, _ in uri.unknown)
        raise ConfigError(
            f"the PKCS#11 URI has attributes hsmsign does not know: {names}",
            "RFC 7512 says such a URI matches nothing; check the spelling (e.g. 'object=' not 'label=')",
        )


def _no_token(uri: Pkcs11Uri, module: str, seen: list[str]) -> TokenError:
    have = ", ".join(f"'{label}'" for label in seen) if seen else "none"
    err = TokenError(
        f"no token matches {uri.redacted()} in module {module} (tokens present: {have})",
        "check token= in the URI, that the HSM is plugged in / reachable, and for SoftHSM that "
        "SOFTHSM2_CONF points at the right token directory ('hsmsign doctor' checks each step)",
    )
    # retried while opening: a SoftHSM token being rewritten by another process's login reads
    # as absent or with a garbled label for a moment (costs ~1 s before a real mismatch is reported)
    err.no_token_present = True  # type: ignore[attr-defined]
    return err


def _tries_left(token: Any) -> str:
    pkcs11 = _pkcs11()
    try:
        flags = token.slot.get_token().flags
    except Exception:  # noqa: BLE001 - best effort only
        return ""
    if flags & pkcs11.TokenFlag.USER_PIN_LOCKED:
        return "; the PIN is now LOCKED"
    if flags & pkcs11.TokenFlag.USER_PIN_FINAL_TRY:
        return "; ONE try left before the PIN locks"
    if flags & pkcs11.TokenFlag.USER_PIN_COUNT_LOW:
        return "; few tries left before the PIN locks"
    return ""


def objects(opened: _OpenToken, template: dict[Any, Any]) -> Callable[[], list[Any]]:
    """The objects on the token that match ``template``, as a call for ``_OpenToken.call``."""
    return lambda: list(opened.session.get_objects(template))


def _find_one(opened: _OpenToken, uri: Pkcs11Uri, classes: Iterable[Any], what: str) -> Any:
    pkcs11 = _pkcs11()
    from pkcs11 import Attribute

    _refuse_unknown(uri)
    found: list[Any] = []
    for cls in classes:
        template: dict[Any, Any] = {Attribute.CLASS: cls}
        if uri.object is not None:
            template[Attribute.LABEL] = uri.object
        if uri.id is not None:
            template[Attribute.ID] = uri.id
        found += opened.call(f"searching the token for {what}", objects(opened, template), uri)
    if not found:
        labels = _labels(opened, classes)
        raise TokenError(
            f"no {what} matches {uri.describe_key()} ({uri.redacted()})",
            ("keys on this token: " + ", ".join(labels) if labels else "the token holds no such key")
            + "; fix object= / id= in the URI, or create one with 'hsmsign keygen'",
        )
    if len(found) > 1:
        raise TokenError(
            f"{len(found)} keys match {uri.describe_key()} ({uri.redacted()}); refusing to guess",
            "add id=%xx to the URI (see 'hsmsign info --uri ...' or 'pkcs11-tool -O') to pick one",
        )
    del pkcs11
    return found[0]


def _labels(opened: _OpenToken, classes: Iterable[Any]) -> list[str]:
    from pkcs11 import Attribute

    labels: set[str] = set()
    for cls in classes:
        with contextlib.suppress(Exception), _LOCK:
            for obj in opened.session.get_objects({Attribute.CLASS: cls}):
                labels.add(str(obj[Attribute.LABEL]))
    return sorted(labels)
