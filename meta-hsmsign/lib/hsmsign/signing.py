"""Digest signing: hash locally, have the key sign the digest once, check it.

The artifact is hashed here in a stream (64 KiB reads into one buffer, hashlib
releases the GIL and uses SHA-NI where the CPU has it); the token signs only the digest, so a 1 GiB
rootfs costs one token operation. The PKCS#11 mechanism for each key type is the
key's business (``hsmsign.token.keys.TokenKey.sign_digest``); this module keeps the
hashes, the DigestInfo prefixes, local verification and the signature encodings
(ECDSA raw r||s <-> DER; Ed25519 signs the whole message).

Every signature is verified against the key's public half before anyone sees it
(pyca/cryptography; RSA PKCS#1 v1.5 by ``hsmsign.keyformats.RsaPublicKey``, encoded
and compared whole as RFC 8017 says): a token that returns garbage (or a key that is
not the one we think) stops here with a SigningError.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Protocol

from .errors import ConfigError, SigningError

HASHES = ("sha256", "sha384", "sha512")
SCHEMES = ("pkcs1v15", "pss")

# DER DigestInfo prefixes (RFC 8017 section 9.2, note 1)
DIGEST_INFO_PREFIX: dict[str, bytes] = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
DIGEST_SIZE = {"sha256": 32, "sha384": 48, "sha512": 64}


class Signer(Protocol):
    """A signing key; ``hsmsign.token.TokenKey`` is the real one."""

    key_type: str
    key_size: int
    curve: str | None
    fingerprint: str
    label: str

    def public_key(self) -> Any: ...

    def sign_digest(self, digest: bytes, hash_alg: str, scheme: str | None = None) -> bytes: ...


def check_hash(name: str) -> str:
    name = name.lower().replace("-", "")
    if name not in HASHES:
        raise ConfigError(f"hash '{name}' is not supported", f"use one of {', '.join(HASHES)}")
    return name


# Hashed 64 KiB at a time: each piece is still in the CPU's cache when the hash reads it.
# Measured on the project's machine, 1 GiB from the page cache, fresh processes: 0.85 s with
# 32 - 64 KiB reads (openssl dgst: 0.88 s), 1.15 - 1.3 s with 128 KiB to 4 MiB reads.
HASH_CHUNK = 64 << 10


def hash_file(path: str, hash_alg: str = "sha256", progress: Any = None) -> bytes:
    """Stream a file through ``hash_alg``; ``progress(done_bytes)`` is called per chunk if given.

    The file is read through one buffer of ``HASH_CHUNK`` (``hsmsign.atomic.stream_input``):
    memory stays bounded whatever the size, and a file truncated or rewritten while it is
    read is a ConfigError, not a SIGBUS (which a mapping would give) nor a digest of a
    moving target. A pipe is bounded; a character device is refused.
    """
    from .atomic import stream_input

    h = hashlib.new(check_hash(hash_alg))
    done = 0
    for chunk in stream_input(path, "file", HASH_CHUNK):
        h.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return h.digest()


def hash_bytes(data: bytes, hash_alg: str = "sha256") -> bytes:
    return hashlib.new(check_hash(hash_alg), data).digest()


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def ecdsa_der_to_raw(der: bytes, size: int) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _hash_obj(hash_alg: str) -> Any:
    from cryptography.hazmat.primitives import hashes

    return {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[hash_alg]


def verify_digest(
    public_key: Any,
    signature: bytes,
    digest: bytes,
    hash_alg: str,
    scheme: str | None = None,
    raw_ecdsa: bool = False,
) -> None:
    """Check a signature over a digest; raise SigningError if it fails.

    ``public_key`` is cryptography's, or a :class:`hsmsign.keyformats.RsaPublicKey`, which
    checks PKCS#1 v1.5 itself (RFC 8017 8.2.2) and hands PSS to cryptography.
    """
    from .keyformats import RsaPublicKey

    if isinstance(public_key, RsaPublicKey):
        if (scheme or "pkcs1v15") != "pkcs1v15":
            public_key = public_key.to_cryptography()
        elif public_key.verify_pkcs1v15(signature, DIGEST_INFO_PREFIX[hash_alg] + digest):
            return
        else:
            raise _does_not_verify()
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    algo = utils.Prehashed(_hash_obj(hash_alg))
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            if (scheme or "pkcs1v15") == "pss":
                pad: Any = padding.PSS(
                    mgf=padding.MGF1(_hash_obj(hash_alg)), salt_length=DIGEST_SIZE[hash_alg]
                )
            else:
                pad = padding.PKCS1v15()
            public_key.verify(signature, digest, pad, algo)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            der = ecdsa_raw_to_der(signature) if raw_ecdsa else signature
            public_key.verify(der, digest, ec.ECDSA(algo))
        else:
            raise SigningError(f"cannot verify digest signatures for {type(public_key).__name__}")
    except InvalidSignature as exc:
        raise _does_not_verify() from exc


def _does_not_verify() -> SigningError:
    return SigningError(
        "the token's signature does not verify against the key's public half",
        "the public key object may not belong to the private key (check ids on the token), or the "
        "module is faulty; nothing was written",
    )


def sign_file(
    key: Any,
    path: str,
    hash_alg: str = "sha256",
    scheme: str | None = None,
    fmt: str = "der",
    progress: Any = None,
) -> tuple[bytes, bytes]:
    """Detached signature of a file: returns (signature, digest)."""
    if key.key_type == "ed25519":
        return _sign_file_ed25519(key, path), b""
    digest = hash_file(path, hash_alg, progress)
    sig = key.sign_digest(digest, hash_alg, scheme)
    if key.key_type == "ec" and fmt == "der":
        sig = ecdsa_raw_to_der(sig)
    return sig, digest


ED25519_MAX = 64 << 20


def _sign_file_ed25519(key: Any, path: str) -> bytes:
    from cryptography.exceptions import InvalidSignature

    from .atomic import read_input

    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if size > ED25519_MAX:
        raise ConfigError(
            f"{path} is {size >> 20} MiB; pure Ed25519 sends the whole file to the token",
            "use an ECDSA or RSA key for large artifacts, or sign a manifest of them",
        )
    data = read_input(path, "file", ED25519_MAX)
    sig = key.sign_message(data)
    try:
        key.public_key().verify(sig, data)
    except InvalidSignature as exc:
        raise SigningError("the token's Ed25519 signature does not verify") from exc
    return sig


def mechanism_name(key_type: str, hash_alg: str, scheme: str | None) -> str:
    if key_type == "rsa":
        return f"{hash_alg}-rsa-{'pss' if scheme == 'pss' else 'pkcs1v15'}"
    if key_type == "ec":
        return f"{hash_alg}-ecdsa"
    return key_type
