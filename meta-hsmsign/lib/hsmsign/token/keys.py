"""Token keys that behave like keys: ``TokenKey`` (sign a digest, one C_Sign, checked) and
``TokenSecretKey`` (AES-CBC streamed through C_EncryptUpdate), and opening them by URI.

The PKCS#11 mechanism for a signature is chosen here (``TokenKey.sign_digest``);
``hsmsign.signing`` keeps hashing, local verification and signature encodings.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import ConfigError, SigningError, TokenError
from ..settings import effective_mode
from ..uri import Pkcs11Uri
from .modules import PKCS11_FAILURES, _pkcs11
from .session import (
    _LOCK,
    TokenInfo,
    _find_one,
    _OpenToken,
    _refuse_unknown,
    objects,
    open_token,
    token_error,
)

DEV_KEY_PREFIX = "dev-"


class TokenKey:
    """A private key in a token, usable as a ``hsmsign.signing.Signer``."""

    def __init__(self, opened: _OpenToken, uri: Pkcs11Uri, key: Any, public: Any) -> None:
        from pkcs11 import Attribute, KeyType

        from .. import keyformats

        self._opened = opened
        self.uri = uri
        self._key = key
        self._public_key = public
        # an RSA key's numbers: its fingerprint and the check of each signature need nothing of
        # cryptography (keyformats.RsaPublicKey); public_key() makes cryptography's on first use
        self.rsa_public: keyformats.RsaPublicKey | None = None
        self.label: str = str(key[Attribute.LABEL])
        self.key_id: bytes = bytes(key[Attribute.ID] or b"")
        key_type = key.key_type
        if key_type == KeyType.RSA:
            self.rsa_public = keyformats.rsa_public_of(public)
            if self.rsa_public is None:
                raise TokenError(
                    f"key {uri.describe_key()} is RSA, but the public key found for it is not",
                    "the token's public key or certificate with this key's id belongs to another key: "
                    "'hsmsign info --uri ...' lists the objects",
                )
            self._public_key = None
            self.key_type = "rsa"
            self.key_size = self.rsa_public.key_size
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
        if self.rsa_public is not None:
            spki = self.rsa_public.spki()
        else:
            spki = public.public_bytes(keyformats.Encoding.DER, keyformats.PublicFormat.SubjectPublicKeyInfo)
        self.spki: bytes = spki  # DER SubjectPublicKeyInfo, as cryptography writes it
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
        """pyca/cryptography's public key."""
        if self._public_key is None and self.rsa_public is not None:
            self._public_key = self.rsa_public.to_cryptography()
        return self._public_key

    @property
    def module(self) -> str:
        """The PKCS#11 library the key was opened through."""
        return self._opened.module

    def login_pin(self) -> str | None:
        """The PIN this process logged in with (None: no PIN, or a PIN pad).

        Only for a tool that must log in itself and takes the PIN from its environment
        (``hsmsign rauc``: RAUC's ``RAUC_PKCS11_PIN``); never printed, never in argv.
        """
        return self._opened._pin

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
        """One C_Sign over a locally computed digest, checked against the public key.

        RSA PKCS#1 v1.5: ``CKM_RSA_PKCS`` over DigestInfo || digest (RFC 8017 9.2);
        RSA-PSS: ``CKM_RSA_PKCS_PSS`` with explicit hash, MGF1 hash and salt length
        equal to the digest length (python-pkcs11's defaults are SHA-1); ECDSA:
        ``CKM_ECDSA`` over the digest, raw r||s back (DER from some modules is
        normalised).
        """
        from pkcs11 import MGF, Mechanism

        from ..signing import (
            DIGEST_INFO_PREFIX,
            DIGEST_SIZE,
            SCHEMES,
            check_hash,
            ecdsa_der_to_raw,
            verify_digest,
        )

        hash_alg = check_hash(hash_alg)
        if len(digest) != DIGEST_SIZE[hash_alg]:
            raise SigningError(f"digest length {len(digest)} does not match {hash_alg}")
        if self.key_type == "rsa":
            scheme = scheme or "pkcs1v15"
            if scheme == "pkcs1v15":
                sig = self._sign_raw(DIGEST_INFO_PREFIX[hash_alg] + digest, Mechanism.RSA_PKCS)
            elif scheme == "pss":
                mech = {"sha256": Mechanism.SHA256, "sha384": Mechanism.SHA384, "sha512": Mechanism.SHA512}
                mgf = {"sha256": MGF.SHA256, "sha384": MGF.SHA384, "sha512": MGF.SHA512}
                param = (mech[hash_alg], mgf[hash_alg], DIGEST_SIZE[hash_alg])
                sig = self._sign_raw(digest, Mechanism.RSA_PKCS_PSS, param)
            else:
                raise ConfigError(f"scheme '{scheme}' is not one of {', '.join(SCHEMES)}")
        elif self.key_type == "ec":
            if scheme not in (None, "ecdsa"):
                raise ConfigError(
                    f"scheme '{scheme}' does not apply to an EC key", "leave --scheme out for ECDSA"
                )
            sig = self._sign_raw(digest, Mechanism.ECDSA)
            size = (self.key_size + 7) // 8
            if len(sig) != 2 * size:
                try:  # some modules return DER for CKM_ECDSA
                    sig = ecdsa_der_to_raw(sig, size)
                except ValueError as exc:
                    raise SigningError(
                        f"the token returned an ECDSA signature of unexpected length {len(sig)}"
                    ) from exc
        else:
            raise ConfigError(
                f"{self.key_type} keys sign whole messages, not digests",
                "Ed25519 is supported by 'hsmsign sign' for small files only",
            )
        verify_digest(self.rsa_public or self.public_key(), sig, digest, hash_alg, scheme, raw_ecdsa=True)
        return sig

    def sign_message(self, data: bytes) -> bytes:
        """Ed25519 (pure EdDSA signs the message itself; the token hashes)."""
        from pkcs11 import Mechanism

        if self.key_type != "ed25519":
            raise SigningError("sign_message is for Ed25519 keys; use sign_digest")
        return self._sign_raw(data, Mechanism.EDDSA)

    def __repr__(self) -> str:
        return f"<TokenKey {self.key_type}{self.key_size} {self.uri.redacted()}>"


def _public_for(opened: _OpenToken, uri: Pkcs11Uri, key: Any) -> Any:
    """The public key for a private key, from its public object, its RSA attributes or its
    certificate: a ``keyformats.RsaPublicKey`` for RSA numbers, cryptography's key otherwise."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    from ..keyformats import RsaPublicKey

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
        candidates = opened.call("finding the public key", objects(opened, template), uri)
        if len(candidates) == 1:
            break
    key_type = key.key_type
    if len(candidates) == 1:
        pub = candidates[0]
        if key_type == KeyType.RSA:
            return _rsa_numbers(pub, uri)
        if key_type == KeyType.EC:
            return _ec_public_key(bytes(pub[Attribute.EC_PARAMS]), bytes(pub[Attribute.EC_POINT]))
        if key_type == KeyType.EC_EDWARDS:
            from cryptography.hazmat.primitives.asymmetric import ed25519

            point = bytes(pub[Attribute.EC_POINT])
            if len(point) == 34 and point[0] == 0x04:
                point = point[2:]
            return ed25519.Ed25519PublicKey.from_public_bytes(point[-32:])
    if key_type == KeyType.RSA:
        with contextlib.suppress(Exception):
            return RsaPublicKey(
                int.from_bytes(key[Attribute.MODULUS], "big"),
                int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big"),
            )
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


def _rsa_numbers(pub: Any, uri: Pkcs11Uri) -> Any:
    """The RSA public key of a token's public-key object."""
    from pkcs11 import Attribute

    from ..keyformats import RsaPublicKey

    n = int.from_bytes(pub[Attribute.MODULUS], "big")
    e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
    try:
        return RsaPublicKey(n, e)
    except ValueError as exc:
        raise TokenError(
            f"the public key object of {uri.describe_key()} holds no valid RSA key ({exc})",
            "the token or its module is faulty; check the key with 'hsmsign info --uri ...'",
        ) from exc


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
