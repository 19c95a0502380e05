"""What hsmsign needs of cryptography's key serialization, without importing its package.

``cryptography.hazmat.primitives.serialization`` imports the SSH key format on import, and
with it the cipher modules and bcrypt: about 5 ms of every cold start, for two enums and a
public-key loader. ``Encoding`` and ``PublicFormat`` here are the very same objects (the
package re-exports them from ``_serialization``, where they are defined since cryptography
3.4); an RSA public key is made from its numbers, which the RSA module (loaded anyway)
does; any other key goes through the package's loader.
"""

from __future__ import annotations

from typing import Any

try:
    from cryptography.hazmat.primitives._serialization import Encoding, PublicFormat
except ImportError:  # pragma: no cover - a cryptography that moved them
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["Encoding", "PublicFormat", "load_der_public_key"]


def load_der_public_key(spki: bytes) -> Any:
    """The public key of a DER SubjectPublicKeyInfo, as ``serialization.load_der_public_key``."""
    from asn1crypto import keys

    info = keys.PublicKeyInfo.load(spki, strict=True)
    if info.algorithm == "rsa":
        from cryptography.hazmat.primitives.asymmetric import rsa

        numbers = info["public_key"].parsed
        key = rsa.RSAPublicNumbers(int(numbers["public_exponent"].native), int(numbers["modulus"].native))
        public = key.public_key()
        if public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == spki:
            return public
    from cryptography.hazmat.primitives import serialization

    return serialization.load_der_public_key(spki)
