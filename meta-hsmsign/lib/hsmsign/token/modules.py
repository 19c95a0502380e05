"""PKCS#11 modules: which library to load (module-path, module-name like p11-kit,
``HSM_PKCS11_MODULE``, p11-kit-proxy), loading it once per process, and python-pkcs11
itself (its import, its error names across releases, its cleanup noise).

``hsmsign doctor`` and ``hsmsign dev-init`` use ``resolve_module``, ``load_module`` and
``is_loaded``; everything else opens keys through ``hsmsign.token``.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError, TokenError
from ..settings import MODULE_ENV, Settings
from ..uri import Pkcs11Uri


def _multiarch_dirs() -> list[str]:
    machine = os.uname().machine  # platform.machine(), without importing platform
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


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


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


_MODULES: dict[str, Any] = {}  # path -> loaded python-pkcs11 lib, once per process


def load_module(path: str) -> Any:
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


def finalize_all() -> bool:
    """``C_Finalize`` every module this process loaded, before it ends without Python's teardown
    (``hsmsign.launch``); False when one cannot be finalized that way (python-pkcs11 before
    0.9 has no ``lib.finalize``: its modules are finalized by Python's own exit)."""
    if not all(hasattr(lib, "finalize") for lib in _MODULES.values()):
        return False
    import contextlib

    for lib in _MODULES.values():
        # a module that is gone, or was never initialized (its C_Initialize failed): nothing to end
        with contextlib.suppress(Exception):
            lib.finalize()
    _MODULES.clear()
    return True


def is_loaded(path: str) -> bool:
    """Whether this process has loaded the module at ``path`` (its configuration is then fixed)."""
    return path in _MODULES
