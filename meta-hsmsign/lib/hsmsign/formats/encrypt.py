"""Image encryption with an AES key that stays in the token.

swupdate decrypts ``encrypted = true`` images with AES-CBC and PKCS#7 padding
(``corelib/swupdate_decrypt_openssl.c``: ``EVP_aes_{128,192,256}_cbc``, padding
on), with the key from ``-K`` (or from a PKCS#11 token on the device) and the IV
from the image's ``ivt`` in sw-description (else the one in the key file). That
is ``CKM_AES_CBC_PAD``: the file streams through ``C_EncryptUpdate`` in 1 MiB
chunks, so memory stays bounded whatever the image size, and the ciphertext's
SHA-256 (what sw-description lists for the image) is computed on the way.

The IV must be fresh for every image encrypted under a key (CBC with a repeated
IV shows which leading blocks two images share); by default it is random.
"""

from __future__ import annotations

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
        return os.urandom(16)
    value = text.strip().lower()
    if value.startswith("0x"):
        value = value[2:]
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ConfigError(f"IV '{text[:40]}' is not 32 hex digits", "leave --iv out for a random IV")
    return bytes.fromhex(value)


def weak_iv(iv: bytes) -> bool:
    return iv in _WEAK_IVS or len(set(iv)) == 1


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
