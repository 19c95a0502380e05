"""Token access: modules, slots, sessions, login and key lookup.

Everything that talks PKCS#11 goes through here, and every python-pkcs11 error is
turned into a ``TokenError`` (or ``SigningError``) that names the object (with a
redacted URI) and says what to do next.

Rules this module keeps (see docs/dev/internals.md and FACTS.md):

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
import glob
import hashlib
import os
import platform
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from . import pin as pinmod
from .errors import ConfigError, HsmsignError, SigningError, TokenError
from .settings import MODULE_ENV, Settings, effective_mode
from .uri import Pkcs11Uri

T = TypeVar("T")

DEV_TOKEN_PREFIX = "hsmsign-dev"  # noqa: S105 - a token label prefix, not a secret
DEV_KEY_PREFIX = "dev-"
CKF_HW_SLOT = 0x4  # CK_SLOT_INFO.flags: "the slot is a hardware slot, as opposed to a software slot"
RECONNECT_ATTEMPTS = 3
RECONNECT_BACKOFF_S = 0.2

_LOCK = threading.RLock()


def _multiarch_dirs() -> list[str]:
    machine = platform.machine()
    triplets = {
        "x86_64": "x86_64-linux-gnu",
        "aarch64": "aarch64-linux-gnu",
        "armv7l": "arm-linux-gnueabihf",
        "riscv64": "riscv64-linux-gnu",
        "ppc64le": "powerpc64le-linux-gnu",
    }
    dirs = []
    if machine in triplets:
        dirs.append(f"/usr/lib/{triplets[machine]}")
    dirs += ["/usr/lib64", "/usr/lib", "/usr/local/lib"]
    return dirs


def p11kit_config_dirs() -> list[str]:
    """Where p11-kit reads ``*.module`` files (user config first, as p11-kit does)."""
    home = os.path.expanduser("~")
    return [
        os.path.join(os.environ.get("XDG_CONFIG_HOME", os.path.join(home, ".config")), "pkcs11", "modules"),
        "/etc/pkcs11/modules",
        "/usr/share/p11-kit/modules",
    ]


def resolve_module_name(name: str) -> str:
    """Resolve ``module-name`` the way p11-kit does: ``<name>.module`` config files.

    A relative ``module:`` path lives in the architecture's ``pkcs11/`` directory.
    As a convenience we also accept a module library file name in that directory.
    """
    for directory in p11kit_config_dirs():
        conf = os.path.join(directory, f"{name}.module")
        if not os.path.isfile(conf):
            continue
        module = None
        with open(conf, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "module":
                    module = value.strip()
        if not module:
            raise ConfigError(f"p11-kit config {conf} has no 'module:' line")
        if os.path.isabs(module):
            return module
        for libdir in _multiarch_dirs():
            candidate = os.path.join(libdir, "pkcs11", module)
            if os.path.exists(candidate):
                return candidate
        raise ConfigError(f"module-name={name}: {conf} names {module}, which is not installed")
    for libdir in _multiarch_dirs():
        for candidate in (f"{name}", f"{name}.so", f"lib{name}.so"):
            path = os.path.join(libdir, "pkcs11", candidate)
            if os.path.exists(path):
                return path
    raise ConfigError(
        f"module-name={name}: no p11-kit module config '{name}.module' found",
        f"looked in {', '.join(p11kit_config_dirs())}; use module-path=/absolute/path/to/module.so instead",
    )


def p11kit_proxy_path() -> str | None:
    for libdir in _multiarch_dirs():
        path = os.path.join(libdir, "p11-kit-proxy.so")
        if os.path.exists(path):
            return path
    return None


def resolve_module(uri: Pkcs11Uri, module: str | None = None) -> str:
    """The module library to load: URI module-path, module-name, --module/HSM_PKCS11_MODULE, p11-kit-proxy."""
    if uri.module_path:
        return uri.module_path
    if uri.module_name:
        return resolve_module_name(uri.module_name)
    module = module or Settings.from_env(check=False).module or None
    if module:
        if not os.path.isabs(module):
            return resolve_module_name(module)
        return module
    proxy = p11kit_proxy_path()
    if proxy:
        return proxy
    raise ConfigError(
        "no PKCS#11 module given and p11-kit-proxy is not installed",
        f"set {MODULE_ENV}=/path/to/module.so, add ?module-path=... to the URI, or install p11-kit-modules",
    )


# --------------------------------------------------------------------------- errors


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as exc:  # pragma: no cover - packaging problem
        raise ConfigError(
            "python-pkcs11 is not installed", "pip install python-pkcs11 (or use the hsmsign-native recipe)"
        ) from exc
    _quiet_dealloc()
    return pkcs11


# python-pkcs11 releases differ in how they report a few failures (0.7.0 is what meta-python
# ships on scarthgap and wrynose): 0.7.0 raises a plain RuntimeError, not a PKCS11Error, for a
# file that is not a PKCS#11 library (dlopen/dlsym failures) and for CKR_CRYPTOKI_NOT_INITIALIZED
# (a token or p11-kit server gone between C_Finalize and C_Initialize). PKCS11Error is itself a
# RuntimeError, so token calls catch RuntimeError and name the plain ones here.
PKCS11_FAILURES = (RuntimeError,)


def _error_name(exc: BaseException) -> str:
    """python-pkcs11's exception class name, or the name its 0.7.0 plain RuntimeError stands for."""
    name = type(exc).__name__
    if name != "RuntimeError":
        return name
    text = str(exc).lower()
    if "not initialized" in text:
        return "CryptokiNotInitialized"
    if "already initialized" in text:
        return "CryptokiAlreadyInitialized"
    return "RuntimeError"


def _quiet_dealloc() -> None:
    """Silence python-pkcs11's ``lib.__dealloc__`` after a failed ``C_Initialize``.

    When ``C_Initialize`` fails (token gone, remote HSM stopped, broken SoftHSM config) or a
    reconnect's ``C_Initialize`` fails, the ``lib`` object later calls ``C_Finalize`` on a
    module that is not initialized. Cython then prints that RuntimeError's traceback
    (through ``sys.excepthook``) and "Exception ignored in: 'pkcs11._pkcs11.lib.__dealloc__'"
    (through ``sys.unraisablehook``), after hsmsign's own one-line error. That cleanup error
    carries no information, so only it is dropped; everything else reaches the previous hooks.
    """
    import sys

    if getattr(sys.unraisablehook, "_hsmsign", False):
        return
    previous_unraisable = sys.unraisablehook
    previous_except = sys.excepthook

    def from_finalize(exc: BaseException | None, tb: Any) -> bool:
        if not isinstance(exc, RuntimeError) or "not initialized" not in str(exc):
            return False
        while tb is not None:
            if "pkcs11" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        return False

    def unraisable(info: Any) -> None:
        where = str(getattr(info, "object", "") or "")
        if "lib.__dealloc__" in where and isinstance(info.exc_value, RuntimeError):
            return
        previous_unraisable(info)

    def excepthook(kind: Any, exc: BaseException, tb: Any) -> None:
        if from_finalize(exc, tb or exc.__traceback__):
            return
        previous_except(kind, exc, tb)

    unraisable._hsmsign = True  # type: ignore[attr-defined]
    sys.unraisablehook = unraisable
    sys.excepthook = excepthook


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


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class TokenInfo:
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
            self.lib = _load_module(self.module)
            slot, token = self._select_token(pkcs11)
            self.token = token
            self.info = TokenInfo(
                label=token.label,
                manufacturer=token.manufacturer_id,
                model=token.model,
                serial=_text(token.serial),
                slot_id=slot.slot_id,
                slot_description=slot.slot_description,
                module=self.module,
                library_description=self.lib.library_description,
                flags=int(token.flags),
                slot_flags=int(slot.flags),
            )
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


_MODULES: dict[str, Any] = {}
_TOKENS: dict[tuple[str, str, str, bool], _OpenToken] = {}


def _load_module(path: str) -> Any:
    pkcs11 = _pkcs11()
    if path in _MODULES:
        return _MODULES[path]
    if not os.path.exists(path):
        raise ConfigError(
            f"PKCS#11 module {path} does not exist",
            "install the HSM vendor's PKCS#11 library, or fix HSM_PKCS11_MODULE / module-path",
        )
    try:
        lib = pkcs11.lib(path)
    except PKCS11_FAILURES as exc:
        if os.path.basename(path) == "p11-kit-client.so" and isinstance(exc, pkcs11.PKCS11Error):
            raise TokenError(
                "cannot reach the p11-kit server at "
                f"{os.environ.get('P11_KIT_SERVER_ADDRESS', '(P11_KIT_SERVER_ADDRESS not set)')}: "
                f"{type(exc).__name__}",
                "start it on the HSM host (scripts/hsmsign-remote serve), forward its socket "
                "(hsmsign-remote connect HOST) and export P11_KIT_SERVER_ADDRESS",
            ) from exc
        detail = _text(exc.args[0]) if exc.args else ""
        raise TokenError(
            f"cannot load PKCS#11 module {path}: {detail or _error_name(exc)}",
            "check that it is a PKCS#11 library for this architecture (file, ldd) and that its "
            "configuration (e.g. SOFTHSM2_CONF) is readable",
        ) from exc
    except OSError as exc:
        raise TokenError(f"cannot load PKCS#11 module {path}: {exc}") from exc
    _MODULES[path] = lib
    return lib


def open_token(
    uri: Pkcs11Uri, module: str | None, pin_env: str | None, mode: str, rw: bool = False
) -> _OpenToken:
    """The shared open token for this URI (connect on first use)."""
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
# p11-kit server that is restarting refuses C_Initialize (CKR_DEVICE_ERROR). Never a PIN error.
_CONNECT_TRANSIENT = ("TokenNotRecognised", "GeneralError", "DeviceError", "TokenNotPresent",
                      "SessionHandleInvalid", "DeviceRemoved", "CryptokiNotInitialized")


def _connect_with_retry(opened: _OpenToken) -> None:
    import random

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


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


# --------------------------------------------------------------------------- keys


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
        found += opened.call(
            f"searching the token for {what}", lambda t=template: list(opened.session.get_objects(t)), uri
        )
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


class TokenKey:
    """A private key in a token, usable as a ``hsmsign.signing.Signer``."""

    def __init__(self, opened: _OpenToken, uri: Pkcs11Uri, key: Any, public: Any) -> None:
        from pkcs11 import Attribute, KeyType

        self._opened = opened
        self.uri = uri
        self._key = key
        self._public_key = public
        self.label: str = str(key[Attribute.LABEL])
        self.key_id: bytes = bytes(key[Attribute.ID] or b"")
        key_type = key.key_type
        if key_type == KeyType.RSA:
            self.key_type = "rsa"
            self.key_size = public.key_size
            self.curve: str | None = None
        elif key_type == KeyType.EC:
            self.key_type = "ec"
            self.key_size = public.curve.key_size
            self.curve = public.curve.name
        elif key_type == KeyType.EC_EDWARDS:
            self.key_type = "ed25519"
            self.key_size = 256
            self.curve = "ed25519"
        else:
            raise TokenError(
                f"key {uri.describe_key()} has type {key_type.name}, which hsmsign cannot sign with"
            )
        from cryptography.hazmat.primitives import serialization

        spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.fingerprint = hashlib.sha256(spki).hexdigest()

    @property
    def token_info(self) -> TokenInfo:
        assert self._opened.info is not None  # noqa: S101 - set by connect()
        return self._opened.info

    @property
    def is_development(self) -> bool:
        label = self.label.lower()
        return self.token_info.is_development or label.startswith(DEV_KEY_PREFIX) or "development" in label

    def public_key(self) -> Any:
        return self._public_key

    def _refresh(self) -> None:
        """After a reconnect, object handles are stale: look the key up again."""
        self._key = _find_one(
            self._opened, self.uri.with_(type=None), [_pkcs11().ObjectClass.PRIVATE_KEY], "private key"
        )

    def _sign_raw(self, data: bytes, mechanism: Any, param: Any = None) -> bytes:
        """One C_Sign call; a dropped session is reopened and the key looked up again."""
        return self._opened.call(
            f"signing with {self.uri.describe_key()}",
            lambda: bytes(self._key.sign(data, mechanism=mechanism, mechanism_param=param)),
            self.uri,
            after_reconnect=self._refresh,
        )

    def sign_digest(self, digest: bytes, hash_alg: str, scheme: str | None = None) -> bytes:
        """One token operation over a locally computed digest (see hsmsign.signing)."""
        from . import signing

        return signing.token_sign_digest(self, digest, hash_alg, scheme)

    def sign_message(self, data: bytes) -> bytes:
        """Ed25519 (pure EdDSA signs the message itself; the token hashes)."""
        from pkcs11 import Mechanism

        if self.key_type != "ed25519":
            raise SigningError("sign_message is for Ed25519 keys; use sign_digest")
        return self._sign_raw(data, Mechanism.EDDSA)

    def __repr__(self) -> str:
        return f"<TokenKey {self.key_type}{self.key_size} {self.uri.redacted()}>"


def _public_for(opened: _OpenToken, uri: Pkcs11Uri, key: Any) -> Any:
    """The cryptography public key for a private key: public object, certificate, or RSA attributes."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from pkcs11 import Attribute, KeyType, ObjectClass

    key_id = key[Attribute.ID]
    label = key[Attribute.LABEL]
    candidates: list[Any] = []
    for template in (
        {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id, Attribute.LABEL: label},
        {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id},
        {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label},
    ):
        if key_id in (None, b"") and Attribute.ID in template:
            continue
        candidates = opened.call(
            "finding the public key", lambda t=template: list(opened.session.get_objects(t)), uri
        )
        if len(candidates) == 1:
            break
    key_type = key.key_type
    if len(candidates) == 1:
        pub = candidates[0]
        if key_type == KeyType.RSA:
            n = int.from_bytes(pub[Attribute.MODULUS], "big")
            e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if key_type == KeyType.EC:
            return _ec_public_key(bytes(pub[Attribute.EC_PARAMS]), bytes(pub[Attribute.EC_POINT]))
        if key_type == KeyType.EC_EDWARDS:
            point = bytes(pub[Attribute.EC_POINT])
            if len(point) == 34 and point[0] == 0x04:
                point = point[2:]
            return ed25519.Ed25519PublicKey.from_public_bytes(point[-32:])
    if key_type == KeyType.RSA:
        with contextlib.suppress(Exception):
            n = int.from_bytes(key[Attribute.MODULUS], "big")
            e = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
    certs = opened.call(
        "finding the certificate",
        lambda: list(
            opened.session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: key_id})
        ),
        uri,
    )
    if len(certs) == 1:
        from cryptography import x509  # only for keys known by their certificate

        return x509.load_der_x509_certificate(bytes(certs[0][Attribute.VALUE])).public_key()
    raise TokenError(
        f"found the private key {uri.describe_key()} but no public key or certificate with the same id",
        "import the public key into the token with the same id and label (pkcs11-tool --write-object ...)",
    )


_EC_CURVES = {
    bytes.fromhex("06082a8648ce3d030107"): "secp256r1",
    bytes.fromhex("06052b81040022"): "secp384r1",
    bytes.fromhex("06052b81040023"): "secp521r1",
}


def _ec_public_key(params: bytes, point: bytes) -> Any:
    """CKA_EC_PARAMS (named-curve OID) and CKA_EC_POINT to a cryptography key.

    Some modules return CKA_EC_POINT raw (65/97 bytes) instead of wrapped in a DER
    OCTET STRING (67/99 bytes): accept both.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    name = _EC_CURVES.get(params)
    if name is None:
        raise TokenError("the EC key uses a curve hsmsign does not support", "use secp256r1 or secp384r1")
    curve = (
        ec.SECP256R1() if name == "secp256r1" else ec.SECP384R1() if name == "secp384r1" else ec.SECP521R1()
    )
    size = (curve.key_size + 7) // 8
    if len(point) != 1 + 2 * size and point[:1] == b"\x04":
        # DER OCTET STRING: tag 0x04, length (short or 0x81 form), then the point
        point = point[3:] if point[1] == 0x81 else point[2:]
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError as exc:
        raise TokenError(f"the token returned an EC point that is not on {name}") from exc


@contextlib.contextmanager
def open_key(
    uri_text: str | Pkcs11Uri,
    *,
    mode: str | None = None,
    module: str | None = None,
    pin_env: str | None = None,
) -> Iterator[TokenKey]:
    """Open the private key a URI names; the session stays cached for the process."""
    from pkcs11 import ObjectClass

    uri = uri_text if isinstance(uri_text, Pkcs11Uri) else Pkcs11Uri.parse(uri_text)
    mode = effective_mode(mode)
    _refuse_unknown(uri)
    if uri.type not in (None, "private"):
        raise ConfigError(
            f"the URI names a {uri.type} object; signing needs the private key",
            "use type=private or leave type out",
        )
    if uri.object is None and uri.id is None:
        raise ConfigError(
            f"the URI {uri.redacted()} names no key",
            "add object=KEY-LABEL (or id=%xx) to the URI; 'hsmsign info --uri pkcs11:token=NAME' lists keys",
        )
    opened = open_token(uri, module, pin_env, mode)
    key = _find_one(opened, uri.with_(type=None), [ObjectClass.PRIVATE_KEY], "private key")
    public = _public_for(opened, uri, key)
    yield TokenKey(opened, uri, key, public)


class TokenSecretKey:
    """An AES key in a token; encryption streams through C_EncryptUpdate."""

    def __init__(self, opened: _OpenToken, uri: Pkcs11Uri, key: Any) -> None:
        from pkcs11 import Attribute

        self._opened = opened
        self.uri = uri
        self._key = key
        self.label = str(key[Attribute.LABEL])
        self.key_id = bytes(key[Attribute.ID] or b"")
        self.key_size = int(key[Attribute.VALUE_LEN]) * 8
        self._fingerprint: str | None = None

    @property
    def is_development(self) -> bool:
        info = self._opened.info
        return bool(info and info.is_development) or self.label.lower().startswith(DEV_KEY_PREFIX)

    @property
    def token_info(self) -> TokenInfo:
        assert self._opened.info is not None  # noqa: S101
        return self._opened.info

    @property
    def fingerprint(self) -> str:
        """What pins an AES key (``HSMSIGN_PUBKEY_SHA256_ENCRYPT``): SHA-256 of its check block.

        The check block is AES_K(16 zero bytes), the full block of which PKCS#11's
        CKA_CHECK_VALUE is the first 3 bytes, computed by the token with the key's own
        mechanism (CBC with a zero IV: the first output block). It names the key without
        revealing it; 'hsmsign info' prints it.
        """
        if self._fingerprint is None:
            from pkcs11 import Mechanism

            zero = bytes(16)
            block = self._opened.call(
                f"computing the check value of {self.uri.describe_key()}",
                lambda: bytes(self._key.encrypt(zero, mechanism=Mechanism.AES_CBC_PAD, mechanism_param=zero)),
                self.uri,
            )[:16]
            self._fingerprint = hashlib.sha256(block).hexdigest()
        return self._fingerprint

    def encrypt_stream(
        self, chunks: Iterable[bytes], iv: bytes, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """AES-CBC with PKCS#7 padding (CKM_AES_CBC_PAD), in bounded memory.

        The whole operation holds the module lock: one multi-part operation per
        session at a time, and python-pkcs11 needs the generator fully consumed.
        """
        from pkcs11 import Mechanism

        if len(iv) != 16:
            raise ConfigError("the AES IV must be 16 bytes (32 hex digits)")
        with _LOCK:
            try:
                yield from self._key.encrypt(
                    _rechunk(chunks, chunk_size),
                    mechanism=Mechanism.AES_CBC_PAD,
                    mechanism_param=iv,
                    buffer_size=chunk_size + 32,
                )
            except PKCS11_FAILURES as exc:
                raise token_error(exc, f"encrypting with {self.uri.describe_key()}", self.uri) from exc


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


@contextlib.contextmanager
def open_secret_key(
    uri_text: str | Pkcs11Uri,
    *,
    mode: str | None = None,
    module: str | None = None,
    pin_env: str | None = None,
) -> Iterator[TokenSecretKey]:
    """Open the secret (AES) key a URI names."""
    from pkcs11 import ObjectClass

    uri = uri_text if isinstance(uri_text, Pkcs11Uri) else Pkcs11Uri.parse(uri_text)
    mode = effective_mode(mode)
    _refuse_unknown(uri)
    if uri.type not in (None, "secret-key"):
        raise ConfigError(f"the URI names a {uri.type} object; encryption needs type=secret-key")
    if uri.object is None and uri.id is None:
        raise ConfigError(f"the URI {uri.redacted()} names no key", "add object=KEY-LABEL to the URI")
    opened = open_token(uri, module, pin_env, mode)
    key = _find_one(opened, uri.with_(type=None), [ObjectClass.SECRET_KEY], "secret key")
    yield TokenSecretKey(opened, uri, key)


def list_tokens(module: str) -> list[TokenInfo]:
    """Every token present in a module (for doctor and dev-init)."""
    _pkcs11()
    lib = _load_module(module)
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
            out.append(
                TokenInfo(
                    label=tok.label,
                    manufacturer=tok.manufacturer_id,
                    model=tok.model,
                    serial=_text(tok.serial),
                    slot_id=slot.slot_id,
                    slot_description=slot.slot_description,
                    module=module,
                    library_description=lib.library_description,
                    flags=int(tok.flags),
                    slot_flags=int(slot.flags),
                )
            )
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


def default_softhsm_module() -> str | None:
    for pattern in (
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/*/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
        "/usr/lib64/pkcs11/libsofthsm2.so",
    ):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None
