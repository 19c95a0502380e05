"""Image encryption with an AES key that stays in the token.

swupdate decrypts ``encrypted = true`` images with AES-CBC and PKCS#7 padding
(``corelib/swupdate_decrypt_openssl.c``: ``EVP_aes_{128,192,256}_cbc``, padding
on), with the key from ``-K`` (or from a PKCS#11 token on the device) and the IV
from the image's ``ivt`` in sw-description (else the one in the key file). That
is ``CKM_AES_CBC_PAD``: the file streams through ``C_EncryptUpdate`` in 1 MiB
chunks, so memory stays bounded whatever the image size, and the ciphertext's
SHA-256 (what sw-description lists for the image) is computed on the way.

The IV must be fresh for every image encrypted under a key (CBC with a repeated
IV shows which leading blocks two images share); by default it is random. A
published IV (hsmsign's list, ``hsmsign.known_keys``) or a patterned one (all
zero, one repeated byte, ascending bytes, ...) is refused in production.

A token key's value cannot be read, but what it does to a zero block can: the
check block AES_K(0^16) (PKCS#11's CKA_CHECK_VALUE is its first 3 bytes; the key's
fingerprint is its SHA-256). :func:`published_key` compares it with the check
blocks of every published AES key on the list and of the patterned keys that can
be enumerated (one repeated byte, ascending or descending bytes, at each size), so
a published key imported into the token is recognised without reading it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

CHUNK = 1 << 20
# IVs from published examples (NIST SP 800-38A F.2) and obvious patterns
_WEAK_IVS = {bytes(16), bytes(range(16)), bytes.fromhex("000102030405060708090a0b0c0d0e0f")}


@dataclass
class EncryptResult:
    iv: bytes
    bytes_in: int
    bytes_out: int
    sha256: str  # of the ciphertext


def parse_iv(text: str | None) -> bytes:
    """32 hex digits, or a fresh random IV when not given."""
    if text is None:
        while True:
            iv = os.urandom(16)
            if weak_iv(iv) is None:  # a random IV that looks patterned (odds ~1e-7) is drawn again
                return iv
    value = text.strip().lower()
    if value.startswith("0x"):
        value = value[2:]
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ConfigError(f"IV '{text[:40]}' is not 32 hex digits", "leave --iv out for a random IV")
    return bytes.fromhex(value)


def weak_iv(iv: bytes) -> str | None:
    """Why ``iv`` must not be used (a published example or a pattern), or None."""
    from .. import known_keys

    hit = known_keys.lookup_symmetric(iv)
    if hit is not None:
        return hit.source if hit.kind == "symmetric" else hit.description
    if iv in _WEAK_IVS or len(set(iv)) == 1:
        return "a pattern"
    return None


def check_block_fingerprint(key: bytes) -> str:
    """SHA-256 of AES_key(16 zero bytes): what ``TokenSecretKey.fingerprint`` computes in the token."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block, a key check value
    return hashlib.sha256(enc.update(bytes(16)) + enc.finalize()).hexdigest()


def _patterned_keys(size: int) -> list[bytes]:
    """The patterned AES keys that can be listed: one repeated byte, ascending or descending bytes."""
    out = []
    for start in range(256):
        out.append(bytes([start]) * size)
        out.append(bytes((start + i) % 256 for i in range(size)))
        out.append(bytes((start - i) % 256 for i in range(size)))
    return out


@functools.lru_cache(maxsize=3)
def _published_fingerprints(size: int) -> dict[str, bytes]:
    """Check-block fingerprint -> key, for the published and patterned keys of ``size`` bytes."""
    from .. import known_keys

    table: dict[str, bytes] = {}
    for key in known_keys.symmetric_values() + _patterned_keys(size):
        if len(key) == size:
            table.setdefault(check_block_fingerprint(key), key)
    return table


def published_key(fingerprint: str, key_bits: int | None = None) -> str | None:
    """Why the token AES key with this check-block fingerprint must not be used, or None.

    Published keys (hsmsign's list), patterned keys, and the site denylist (``HSMSIGN_DENYLIST``,
    which lists AES keys by this same fingerprint, as 'hsmsign info' prints it). ``key_bits``
    limits the comparison to keys of that size (None: all three AES sizes).
    """
    from .. import known_keys, policy

    fp = fingerprint.lower()
    sizes = (key_bits // 8,) if key_bits in (128, 192, 256) else (16, 24, 32)
    value = next((t[fp] for t in map(_published_fingerprints, sizes) if fp in t), None)
    if value is not None:
        hit = known_keys.lookup_symmetric(value)
        if hit is not None:
            return hit.source if hit.kind == "symmetric" else hit.description
    return policy.lookup_known_key(fp)


def _read_chunks(path: str, counter: list[int]) -> Iterator[bytes]:
    from ..atomic import stream_input  # bounded, and a file changed while read is an error

    for chunk in stream_input(path, "input", CHUNK):
        counter[0] += len(chunk)
        yield bytes(chunk)


def encrypt_file(aes: Any, in_path: str, out: Any, iv: bytes, progress: Any = None) -> EncryptResult:
    """Stream ``in_path`` through the token key into ``out`` (a writable binary file)."""
    if len(iv) != 16:
        raise ConfigError("the AES IV must be 16 bytes (32 hex digits)")
    try:
        size = os.path.getsize(in_path)
    except OSError as exc:
        raise ConfigError(f"cannot read {in_path}: {exc.strerror}", "check the --in path") from exc
    counter = [0]
    h = hashlib.sha256()
    written = 0
    try:
        for block in aes.encrypt_stream(_read_chunks(in_path, counter), iv, CHUNK):
            out.write(block)
            h.update(block)
            written += len(block)
            if progress is not None:
                progress(counter[0])
    except OSError as exc:
        raise ConfigError(f"cannot read {in_path}: {exc.strerror}") from exc
    expected = (size // 16 + 1) * 16
    if counter[0] != size or written != expected:
        from ..errors import SigningError

        raise SigningError(
            f"encryption produced {written} bytes for {counter[0]} bytes read (expected {expected})",
            "the input changed while it was read, or the token's AES-CBC-PAD is faulty; nothing was written",
        )
    return EncryptResult(iv, counter[0], written, h.hexdigest())
