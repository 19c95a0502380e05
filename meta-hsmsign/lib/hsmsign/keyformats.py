"""What hsmsign needs of cryptography's keys, without importing more of it than a command uses.

* ``Encoding`` and ``PublicFormat`` are cryptography's own enums (defined in
  ``_serialization`` since cryptography 3.4, re-exported by ``serialization``, whose import
  loads the SSH key format and with it the cipher modules and bcrypt: about 5 ms of every
  cold start). They are looked up on first use, so importing this module imports nothing
  of cryptography.
* ``load_der_public_key``: ``serialization.load_der_public_key``, with an RSA key made from
  its numbers by the RSA module.
* :class:`RsaPublicKey`: an RSA public key as its numbers. Its SubjectPublicKeyInfo (so its
  fingerprint) and the PKCS#1 v1.5 check of a signature need nothing of cryptography:
  ``hsmsign pe sign`` signs, checks and verifies its Authenticode signature without
  importing it (its Rust extension and modules are a tenth of that command's cold start).
  ``to_cryptography()`` gives pyca's key for anything else.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives._serialization import Encoding, PublicFormat

# AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
_RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")

__all__ = ["Encoding", "PublicFormat", "RsaPublicKey", "load_der_public_key", "rsa_public_of"]


def __getattr__(name: str) -> Any:
    """``Encoding`` and ``PublicFormat``, imported when first asked for (PEP 562)."""
    if name not in ("Encoding", "PublicFormat"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        where = importlib.import_module("cryptography.hazmat.primitives._serialization")
    except ImportError:  # pragma: no cover - a cryptography that moved them
        where = importlib.import_module("cryptography.hazmat.primitives.serialization")
    value = getattr(where, name)
    globals()[name] = value
    return value


class RsaPublicKey:
    """An RSA public key held as its modulus ``n`` and public exponent ``e``.

    Made from the numbers cryptography's ``RSAPublicNumbers.public_key()`` accepts, and no
    others (``ValueError``): an odd exponent of at least 3 and below the modulus.
    """

    __slots__ = ("_cryptography", "e", "n")

    def __init__(self, n: int, e: int) -> None:
        if e < 3 or not e & 1 or e >= n:
            raise ValueError("not an RSA public key (its exponent e must be odd, and 3 <= e < n)")
        self.n = n
        self.e = e
        self._cryptography: Any = None

    @property
    def key_size(self) -> int:
        return self.n.bit_length()

    def spki(self) -> bytes:
        """The DER SubjectPublicKeyInfo (rsaEncryption, NULL parameters), byte for byte what
        cryptography's ``public_bytes(DER, SubjectPublicKeyInfo)`` gives."""
        from . import der

        numbers = der.tlv(der.SEQUENCE, der.integer(self.n) + der.integer(self.e))
        return der.tlv(der.SEQUENCE, _RSA_ALGORITHM + der.tlv(der.BIT_STRING, b"\x00" + numbers))

    def verify_pkcs1v15(self, signature: bytes, digest_info: bytes) -> bool:
        """Whether ``signature`` is the RSASSA-PKCS1-v1_5 signature of ``digest_info`` (the DER
        DigestInfo: algorithm and digest), checked as RFC 8017 8.2.2 says: the signature, of
        exactly the modulus' length (as OpenSSL wants it), is raised to ``e`` and compared whole
        with the encoding EMSA-PKCS1-v1_5 gives for ``digest_info``. Nothing in the signature is
        parsed, so nothing in it can be misread."""
        k = (self.n.bit_length() + 7) // 8
        pad = k - 3 - len(digest_info)
        if len(signature) != k or pad < 8:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        expected = b"\x00\x01" + b"\xff" * pad + b"\x00" + digest_info
        return hmac.compare_digest(pow(s, self.e, self.n).to_bytes(k, "big"), expected)

    def to_cryptography(self) -> Any:
        """pyca/cryptography's ``RSAPublicKey`` for the same numbers (made once)."""
        if self._cryptography is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            self._cryptography = rsa.RSAPublicNumbers(self.e, self.n).public_key()
        return self._cryptography

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RsaPublicKey):
            return NotImplemented
        return (self.n, self.e) == (other.n, other.e)

    def __hash__(self) -> int:
        return hash((self.n, self.e))

    def __repr__(self) -> str:
        return f"<RsaPublicKey {self.key_size} bits, e={self.e}>"


def rsa_public_of(holder: Any) -> RsaPublicKey | None:
    """The RSA public key of a signer, a certificate or a public key; None if it is not RSA.

    A token key and a certificate read by hsmsign (``LazyCertificate``) hold it already
    (``rsa_public``); anything else is asked through cryptography.
    """
    if isinstance(holder, RsaPublicKey):
        return holder
    held = getattr(holder, "rsa_public", None)
    if isinstance(held, RsaPublicKey):
        return held
    from cryptography.hazmat.primitives.asymmetric import rsa

    public = holder
    if not isinstance(holder, rsa.RSAPublicKey) and callable(getattr(holder, "public_key", None)):
        public = holder.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return RsaPublicKey(numbers.n, numbers.e)
    return None


def load_der_public_key(spki: bytes) -> Any:
    """The public key of a DER SubjectPublicKeyInfo, as ``serialization.load_der_public_key``."""
    rsa_key = rsa_public_from_spki(spki)
    if rsa_key is not None:
        return rsa_key.to_cryptography()
    from cryptography.hazmat.primitives import serialization

    return serialization.load_der_public_key(spki)


def rsa_public_from_spki(spki: bytes) -> RsaPublicKey | None:
    """The RSA key of a DER SubjectPublicKeyInfo in the one form cryptography writes (NULL
    parameters, minimal integers), without cryptography; None for any other key or form, which
    cryptography's loader then accepts or refuses as it does."""
    from . import der

    try:
        info = der.whole(spki, der.SEQUENCE)
        algorithm, bits = der.fields(spki, info, der.SEQUENCE, der.BIT_STRING)
        if der.raw(spki, algorithm) != _RSA_ALGORITHM or spki[bits.start : bits.start + 1] != b"\x00":
            return None
        numbers = der.element(spki, bits.start + 1, bits.end)
        n, e = der.fields(spki, numbers, der.INTEGER, der.INTEGER)
        key = RsaPublicKey(der.read_integer(spki, n), der.read_integer(spki, e))
    except ValueError:
        return None
    # the numbers written back must give these very bytes (no other form of the same key)
    return key if key.spki() == spki else None
