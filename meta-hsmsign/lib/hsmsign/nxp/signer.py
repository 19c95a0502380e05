"""SPSDK signer strings and the PINs written into them. Standard library only.

SPSDK names a signature provider with a ``key=value;key=value`` string
(``signer: type=file;file_path=key.pem``) and splits it on every ``;`` and ``=``,
so a PKCS#11 URI (``pkcs11:token=t;object=k``) cannot be one value of it. The
hsmsign provider therefore takes the URI's attributes as its parameters::

    type=hsmsign;token=acme-prod;object=imx-srk1;pin-source=file:/run/secrets/hsm-pin

(every RFC 7512 attribute: ``token``, ``object``, ``id``, ``serial``, ...,
``pin-source``, ``module-path``, ``module-name``; values percent-encoded as in a
URI), or reads the whole URI from an environment variable::

    type=hsmsign;uri_env=HSM_PKCS11_URI_IMX

A PIN never belongs in these strings: ``pin-value`` (RFC 7512) and SPSDK's PKCS#11
plugin's ``pin=1234`` (``type=pkcs11``) are what :func:`pin_findings` finds, the
i.MX commands refuse in production, and ``hsmsign audit`` flags.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..uri import PATH_ATTRIBUTES, QUERY_ATTRIBUTES, Pkcs11Uri

SIGNER_TYPE = "hsmsign"
URI_ENV_PARAM = "uri_env"
PIN_ENV_PARAM = "pin_env"
# SPSDK parameters whose value is a PIN: RFC 7512's pin-value in any spelling, the PKCS#11
# plugin's pin (which also takes $ENV or a file: those are references, not PINs).
PIN_PARAMS = frozenset({"pin-value", "pin_value", "pin", "user_pin", "user-pin"})
_ALWAYS_SECRET = frozenset({"pin-value", "pin_value"})
# one SPSDK signer string: 'type=NAME' and the ';key=value' pairs that follow it
_SIGNER = re.compile(r"(?<![\w-])type=[A-Za-z0-9_.-]+(?:;[A-Za-z0-9_.-]+=[^;\s\"',}]*)*")


def signer_string(uri: str | Pkcs11Uri, *, pin_env: str | None = None) -> str:
    """``type=hsmsign;...`` for ``uri`` (the inverse of :func:`uri_from_params`)."""
    parsed = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
    if parsed.has_secret:
        raise ConfigError(
            "the URI carries pin-value, which would end up in the SPSDK configuration",
            "use pin-source=file:PATH or --pin-env NAME",
        )
    text = parsed.with_(type=None).format()[len("pkcs11:") :]
    path, _, query = text.partition("?")
    parts = [f"type={SIGNER_TYPE}"] + [p for p in path.split(";") if p] + [q for q in query.split("&") if q]
    if pin_env:
        parts.append(f"{PIN_ENV_PARAM}={pin_env}")
    return ";".join(parts)


def uri_from_params(params: Mapping[str, object], env: Mapping[str, str] | None = None) -> str:
    """The PKCS#11 URI an hsmsign signer string names (attributes, or ``uri_env=NAME``)."""
    env = os.environ if env is None else env
    # 'type' is SPSDK's provider type here, not RFC 7512's object type (the key is always private)
    known = (set(PATH_ATTRIBUTES) | set(QUERY_ATTRIBUTES)) - {"type"}
    attrs = {str(k): str(v) for k, v in params.items() if str(k) in known}
    if URI_ENV_PARAM in params:
        name = str(params[URI_ENV_PARAM])
        if attrs:
            raise ConfigError(
                f"the SPSDK signer gives both {URI_ENV_PARAM} and URI attributes", "use one of the two"
            )
        value = env.get(name, "")
        if not value:
            raise ConfigError(
                f"the SPSDK signer reads the key URI from ${name}, which is not set",
                f"export {name}='pkcs11:token=...;object=...'",
            )
        return value
    if not attrs:
        raise ConfigError(
            "the SPSDK signer 'type=hsmsign' names no key",
            "write type=hsmsign;token=TOKEN;object=KEY (the URI's attributes) or type=hsmsign;uri_env=NAME",
        )
    path = ";".join(f"{n}={attrs[n]}" for n in PATH_ATTRIBUTES if n in attrs)
    query = "&".join(f"{n}={attrs[n]}" for n in QUERY_ATTRIBUTES if n in attrs)
    return "pkcs11:" + path + ("?" + query if query else "")


@dataclass(frozen=True)
class PinInSigner:
    """A PIN written into an SPSDK signer string: where, and the string with the PIN redacted."""

    line: int
    param: str
    excerpt: str


def _is_reference(value: str) -> bool:
    """SPSDK's load_secret reads ``$NAME`` from the environment and a path from a file."""
    return value.startswith(("$", "~", "/", "./", "../")) or ("/" in value)


def signer_pins(signer: str) -> list[str]:
    """The parameters of one signer string that hold a PIN (not a reference to one)."""
    out = []
    for part in signer.split(";")[1:]:
        name, _, value = part.partition("=")
        key = name.strip().lower()
        if key in PIN_PARAMS and value.strip():
            if key in _ALWAYS_SECRET or not _is_reference(value.strip()):
                out.append(key)
    return out


def pin_findings(text: str) -> list[PinInSigner]:
    """Every SPSDK signer string in ``text`` (a YAML/JSON configuration, a log) that holds a PIN."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in _SIGNER.finditer(line):
            for param in signer_pins(match.group(0)):
                found.append(PinInSigner(number, param, redact_signer(match.group(0))[:160]))
    return found


def redact_signer(signer: str) -> str:
    """The signer string with every PIN parameter's value replaced."""
    parts = signer.split(";")
    for i, part in enumerate(parts[1:], 1):
        name, sep, _value = part.partition("=")
        if sep and name.strip().lower() in PIN_PARAMS:
            parts[i] = f"{name}=<redacted>"
    return ";".join(parts)
