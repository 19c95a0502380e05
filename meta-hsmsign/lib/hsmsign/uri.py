"""PKCS#11 URIs (RFC 7512): parsing, printing, percent-encoding and redaction.

Standard library only: BitBake imports this module at parse time.

A URI names a token and an object inside it, and may say how to load the module
and where the PIN comes from::

    pkcs11:token=acme-prod;object=fw-signing;type=private?pin-source=file:/run/hsm/pin

Path attributes (RFC 7512 section 2.3) are separated by ``;``, query attributes by
``&`` after ``?``. Values are percent-encoded UTF-8 except for the unreserved
characters and the few RFC 7512 allows in each component. Unknown path attributes
are kept (``unknown``); RFC 7512 says a URI with an attribute the implementation
does not understand matches nothing, so token and key lookup refuse them with an
error instead of matching too much. ``x-`` vendor attributes are kept but ignored.

``pin-value`` is parsed (so we can refuse it with a helpful message) but never
printed: :meth:`Pkcs11Uri.redacted` replaces it, and ``__str__`` is the redacted
form too. Use :meth:`Pkcs11Uri.format` with ``keep_secrets=True`` only to hand a
URI to a child process that needs it.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import quote, unquote_to_bytes

from .errors import ConfigError

SCHEME = "pkcs11:"
REDACTED = "REDACTED"
# what redact() removes: any pin-value, up to the next URI delimiter, quote or space
_PIN_ANYWHERE = re.compile(r"(pin-value" + "=" + r")[^&;?#\s\"']*", re.IGNORECASE)


def redact(text: str) -> str:
    """Text (a URI, even a malformed one, a command line, a log) with every pin-value removed.

    The one redaction of a PIN in text: the layer's task output (``hsmsign.bitbake``),
    the leak scanner's excerpts (``hsmsign.secrets``) and this module's own messages.
    """
    return _PIN_ANYWHERE.sub(lambda m: m.group(1) + REDACTED, text)

# RFC 7512 section 2.3; printing follows this order (token first, then the object).
PATH_ATTRIBUTES: tuple[str, ...] = (
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
    "object",
    "id",
    "type",
)
QUERY_ATTRIBUTES: tuple[str, ...] = ("pin-source", "pin-value", "module-name", "module-path")
OBJECT_TYPES: tuple[str, ...] = ("public", "private", "cert", "secret-key", "data")
SECRET_QUERY_ATTRIBUTES: frozenset[str] = frozenset({"pin-value"})

# Characters left unencoded when printing (RFC 3986 unreserved plus what RFC 7512
# "pk11-path-res-avail" / "pk11-query-res-avail" allow). ';' '?' '&' '=' '/' are
# always encoded in values so the printed URI parses back to the same thing.
_PATH_SAFE = "-._~:[]@!$'()*+,"
_QUERY_SAFE = "-._~:[]@!$'()*+,/?|"

_ATTR_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LIB_VERSION = re.compile(r"^\d+(\.\d+)?$")



def _decode(raw: str, where: str) -> bytes:
    bad = _PCT.search(raw)
    if bad:
        raise ConfigError(
            f"PKCS#11 URI: bad percent-encoding in {where} near '{raw[bad.start() : bad.start() + 3]}'",
            "a '%' must be followed by two hex digits; write a literal '%' as %25",
        )
    return unquote_to_bytes(raw)


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"PKCS#11 URI: attribute '{name}' is not valid UTF-8 after percent-decoding",
            "only 'id' may hold arbitrary bytes; percent-encode text as UTF-8",
        ) from exc


@dataclasses.dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed RFC 7512 URI. Text attributes are ``str``; ``id`` is ``bytes``."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    library_manufacturer: str | None = None
    library_description: str | None = None
    library_version: str | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    slot_id: int | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    pin_source: str | None = None
    pin_value: str | None = dataclasses.field(default=None, repr=False)
    module_name: str | None = None
    module_path: str | None = None
    # (component, name, value) with component "path" or "query"
    unknown: tuple[tuple[str, str, str], ...] = ()
    vendor: tuple[tuple[str, str, str], ...] = ()

    # ------------------------------------------------------------------ parse
    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse ``text``; raise ConfigError naming the bad part."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(
                "PKCS#11 URI is empty", 'set it, e.g. "pkcs11:token=acme-prod;object=fw-signing"'
            )
        text = text.strip()
        if text[: len(SCHEME)].lower() != SCHEME:
            raise ConfigError(
                f"not a PKCS#11 URI (must start with 'pkcs11:'): {_shorten(text)}",
                'write it as "pkcs11:token=TOKEN;object=KEY-LABEL" (RFC 7512)',
            )
        body = text[len(SCHEME) :]
        if "#" in body:
            raise ConfigError("PKCS#11 URI: '#' (a fragment) is not allowed", "percent-encode it as %23")
        path, sep, query = body.partition("?")
        values: dict[str, object] = {}
        unknown: list[tuple[str, str, str]] = []
        vendor: list[tuple[str, str, str]] = []

        for part in path.split(";") if path else []:
            if part == "":
                continue  # tolerate "pkcs11:;token=x" and a trailing ';'
            name, eq, raw = part.partition("=")
            if not eq:
                raise ConfigError(
                    f"PKCS#11 URI: path attribute '{_shorten(part)}' has no '='",
                    "path attributes are name=value pairs separated by ';'",
                )
            name = name.lower()
            if not _ATTR_NAME.match(name):
                raise ConfigError(f"PKCS#11 URI: '{_shorten(name)}' is not an attribute name")
            if name in QUERY_ATTRIBUTES:
                raise ConfigError(
                    f"PKCS#11 URI: '{name}' is a query attribute and belongs after '?'",
                    f"write ...;object=KEY?{name}=... (RFC 7512 section 2.3)",
                )
            decoded = _decode(raw, f"'{name}'")
            if name in values:
                raise ConfigError(f"PKCS#11 URI: path attribute '{name}' appears twice")
            if name == "id":
                values["id"] = decoded
            elif name in PATH_ATTRIBUTES:
                values[name] = _text(decoded, name)
            elif name.startswith("x-"):
                vendor.append(("path", name, _text(decoded, name)))
            else:
                unknown.append(("path", name, _text(decoded, name)))

        if sep:
            for part in query.split("&"):
                if part == "":
                    continue
                name, eq, raw = part.partition("=")
                name = name.lower()
                if not eq:
                    raise ConfigError(f"PKCS#11 URI: query attribute '{_shorten(name)}' has no '='")
                if name in PATH_ATTRIBUTES:
                    raise ConfigError(
                        f"PKCS#11 URI: '{name}' is a path attribute and belongs before '?'",
                        f"write pkcs11:{name}=...;... (RFC 7512 section 2.3)",
                    )
                decoded = _decode(raw, f"'{name}'")
                if name in QUERY_ATTRIBUTES:
                    if name in values:
                        raise ConfigError(f"PKCS#11 URI: query attribute '{name}' appears twice")
                    values[name] = _text(decoded, name)
                elif name.startswith("x-"):
                    vendor.append(("query", name, _text(decoded, name)))
                else:
                    unknown.append(("query", name, _text(decoded, name)))

        if "type" in values and values["type"] not in OBJECT_TYPES:
            raise ConfigError(
                f"PKCS#11 URI: type={values['type']} is not one of {', '.join(OBJECT_TYPES)}",
            )
        if "slot-id" in values:
            raw_slot = str(values["slot-id"])
            if not raw_slot.isdigit():
                raise ConfigError(f"PKCS#11 URI: slot-id={_shorten(raw_slot)} is not a decimal number")
            values["slot-id"] = int(raw_slot)
        if "library-version" in values and not _LIB_VERSION.match(str(values["library-version"])):
            raise ConfigError(
                f"PKCS#11 URI: library-version={_shorten(str(values['library-version']))} is not M or M.N"
            )
        if "module-path" in values and not str(values["module-path"]).startswith("/"):
            raise ConfigError(
                "PKCS#11 URI: module-path must be an absolute path",
                "use module-name=NAME for a module p11-kit knows, or an absolute module-path",
            )
        kwargs = {k.replace("-", "_"): v for k, v in values.items()}
        return cls(unknown=tuple(unknown), vendor=tuple(vendor), **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ print
    def format(self, keep_secrets: bool = False) -> str:
        """Print the URI in canonical order; ``pin-value`` is redacted unless asked."""
        path: list[str] = []
        for name in PATH_ATTRIBUTES:
            value = getattr(self, name.replace("-", "_"))
            if value is None:
                continue
            if name == "id":
                path.append("id=" + "".join(f"%{b:02x}" for b in value))
            elif name == "slot-id":
                path.append(f"slot-id={value}")
            else:
                path.append(f"{name}={quote(str(value), safe=_PATH_SAFE)}")
        extra = (*self.vendor, *self.unknown)
        path.extend(f"{n}={quote(v, safe=_PATH_SAFE)}" for where, n, v in extra if where == "path")
        query: list[str] = []
        for name in QUERY_ATTRIBUTES:
            value = getattr(self, name.replace("-", "_"))
            if value is None:
                continue
            if name in SECRET_QUERY_ATTRIBUTES and not keep_secrets:
                value = REDACTED
            query.append(f"{name}={quote(str(value), safe=_QUERY_SAFE)}")
        query.extend(f"{n}={quote(v, safe=_QUERY_SAFE)}" for where, n, v in extra if where == "query")
        out = SCHEME + ";".join(path)
        if query:
            out += "?" + "&".join(query)
        return out

    def redacted(self) -> str:
        """The URI with any ``pin-value`` replaced; safe for messages and logs."""
        return self.format(keep_secrets=False)

    def __str__(self) -> str:
        return self.redacted()

    def identity(self) -> str:
        """What names the key, without how to reach it: for task hashes and ledgers.

        Drops the query (PIN source, module) so that moving the PIN file or the
        module does not change the identity, but a different token or key does.
        """
        return dataclasses.replace(
            self, pin_source=None, pin_value=None, module_name=None, module_path=None
        ).format()

    def with_(self, **changes: object) -> Pkcs11Uri:
        """A copy with some attributes changed (``with_(object="uboot")``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def has_secret(self) -> bool:
        return self.pin_value is not None

    def describe_key(self) -> str:
        """Short human description of the object the URI names."""
        parts = []
        if self.object is not None:
            parts.append(f"object={self.object}")
        if self.id is not None:
            parts.append("id=" + self.id.hex())
        if self.type is not None:
            parts.append(f"type={self.type}")
        where = f" on token '{self.token}'" if self.token else ""
        return (", ".join(parts) or "any key") + where


def parse(text: str) -> Pkcs11Uri:
    """Parse a PKCS#11 URI (shorthand for ``Pkcs11Uri.parse``)."""
    return Pkcs11Uri.parse(text)


def _shorten(text: str, limit: int = 60) -> str:
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
