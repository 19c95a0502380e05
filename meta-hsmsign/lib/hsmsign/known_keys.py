"""Known-public keys: keys whose private (or secret) half is published.

The denylist lives in ``hsmsign/data/known_keys.json`` and is generated from
public source trees by ``scripts/update-known-keys`` (no key material: only
SHA-256 fingerprints of the DER SubjectPublicKeyInfo, symmetric example keys
from published specifications and documentation, and where each comes from).

Besides the list, :func:`lookup_symmetric` recognises patterned symmetric keys
that nobody chose at random: all zero, one repeated byte, a short repeated
pattern, ascending or descending bytes, and printable ASCII text.

Standard library only: the layer's classes call this at BitBake parse time.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, NamedTuple

DATA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "known_keys.json")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class KnownKey(NamedTuple):
    """One published key, or a patterned symmetric key.

    ``kind`` is ``"public-key"`` (a public key whose private half is published),
    ``"symmetric"`` (a published example symmetric key) or ``"patterned"``
    (a symmetric key with no randomness, such as all zero bytes).
    """

    kind: str
    fingerprint: str
    algo: str
    bits: int
    description: str
    curve: str | None = None
    sources: tuple[dict[str, str], ...] = ()
    source_count: int = 0

    def where(self) -> str:
        """A one-line provenance: the first source and how many more there are."""
        if not self.sources:
            return self.description
        src = self.sources[0]
        if "document" in src:
            first = src["document"] + (f" ({src['name']})" if src.get("name") else "")
        else:
            first = f"{src.get('repo', '?')}: {src.get('path', '?')}"
        more = max(self.source_count, len(self.sources)) - 1
        return first + (f" (and {more} more)" if more > 0 else "")

    @property
    def source(self) -> str:
        """What the key is and where it is published, for messages (``policy`` prints this)."""
        return f"{self.description}: {self.where()}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "algo": self.algo,
            "bits": self.bits,
            "curve": self.curve,
            "description": self.description,
            "sources": list(self.sources),
            "source_count": self.source_count,
        }


@functools.lru_cache(maxsize=4)
def _load(path: str = DATA_FILE) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    try:
        with open(path, encoding="utf-8") as fh:
            import json

            doc = json.load(fh)
    except FileNotFoundError:
        return {}, {}
    pub = {e["spki_sha256"].lower(): e for e in doc.get("public_keys", [])}
    sym = {e["hex"].lower(): e for e in doc.get("symmetric_keys", [])}
    return pub, sym


def normalise_fingerprint(text: str) -> str | None:
    """Lower-case hex of a SHA-256 fingerprint given as hex, ``AA:BB:..`` or ``sha256:...``."""
    t = text.strip().lower()
    if t.startswith("sha256:") or t.startswith("sha256="):
        t = t[7:]
    t = t.replace(":", "").replace(" ", "")
    return t if _HEX64.match(t) else None


@functools.lru_cache(maxsize=4)
def _text(path: str) -> bytes:
    """The list's bytes in lower case (a fingerprint it does not mention is not in it)."""
    try:
        with open(path, "rb") as fh:
            return fh.read().lower()
    except FileNotFoundError:
        return b""


def lookup_spki_sha256(fingerprint_hex: str, *, data_file: str | None = None) -> KnownKey | None:
    """The published key with this SPKI SHA-256 fingerprint, or None."""
    fp = normalise_fingerprint(fingerprint_hex)
    if fp is None:
        return None
    path = data_file or DATA_FILE
    # every signature looks its key up: a search of the file's text spares parsing its JSON
    # (a thousand entries, several milliseconds) unless the fingerprint appears in it
    if fp.encode() not in _text(path):
        return None
    entry = _load(path)[0].get(fp)
    if entry is None:
        return None
    algo = entry.get("algo", "?")
    bits = int(entry.get("bits", 0))
    label = f"{algo.upper()}-{bits}" if algo in ("rsa", "dsa") else (entry.get("curve") or algo)
    return KnownKey(
        kind="public-key",
        fingerprint=fp,
        algo=algo,
        bits=bits,
        curve=entry.get("curve"),
        description=f"published {label} private key",
        sources=tuple(entry.get("sources", ())),
        source_count=int(entry.get("source_count", len(entry.get("sources", ())))),
    )


def lookup_spki_der(spki_der: bytes, *, data_file: str | None = None) -> KnownKey | None:
    """Like :func:`lookup_spki_sha256` for a DER SubjectPublicKeyInfo."""
    import hashlib

    return lookup_spki_sha256(hashlib.sha256(spki_der).hexdigest(), data_file=data_file)


def _pattern(key: bytes) -> str | None:
    """Why ``key`` is a patterned (non-random) key, or None."""
    if not key:
        return "empty key"
    if key.count(key[0]) == len(key):
        return "all zero bytes" if key[0] == 0 else f"one repeated byte (0x{key[0]:02x})"
    for period in (2, 3, 4, 8):
        if len(key) >= 2 * period and all(key[i] == key[i % period] for i in range(len(key))):
            return f"a {period}-byte pattern repeated"
    if all((key[i + 1] - key[i]) % 256 == 1 for i in range(len(key) - 1)):
        return "ascending bytes"
    if all((key[i] - key[i + 1]) % 256 == 1 for i in range(len(key) - 1)):
        return "descending bytes"
    if len(key) >= 8 and all(0x20 <= b < 0x7F for b in key):
        return "printable ASCII text (a password, not a random key)"
    return None


def lookup_symmetric(key: bytes, *, data_file: str | None = None) -> KnownKey | None:
    """A published or patterned symmetric key (AES key, IV, HMAC key), or None."""
    hexkey = key.hex()
    entry = _load(data_file or DATA_FILE)[1].get(hexkey)
    if entry is not None:
        return KnownKey(
            kind="symmetric",
            fingerprint=hexkey[:8] + "…",
            algo="aes" if len(key) in (16, 24, 32) else "symmetric",
            bits=len(key) * 8,
            description=entry.get("name", "published example key"),
            sources=tuple(entry.get("sources", ())),
            source_count=len(entry.get("sources", ())),
        )
    why = _pattern(key)
    if why is not None:
        return KnownKey(
            kind="patterned",
            fingerprint=hexkey[:4] + "…",
            algo="aes" if len(key) in (16, 24, 32) else "symmetric",
            bits=len(key) * 8,
            description=f"patterned key: {why}",
        )
    return None


def symmetric_values(*, data_file: str | None = None) -> list[bytes]:
    """The published symmetric keys on the list (their values are public: that is why they are listed).

    A key inside a token cannot be read, only used: ``hsmsign.formats.encrypt`` encrypts a zero
    block with each of these and compares the result with the token key's.
    """
    return [bytes.fromhex(h) for h in _load(data_file or DATA_FILE)[1]]


def counts(*, data_file: str | None = None) -> dict[str, int]:
    """How many entries the denylist holds (for ``--version``-style reports and docs)."""
    pub, sym = _load(data_file or DATA_FILE)
    return {"public_keys": len(pub), "symmetric_keys": len(sym)}
