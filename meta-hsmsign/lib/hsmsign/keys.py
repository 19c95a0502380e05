"""Keys: generation inside the token, public key export, and a cryptography-shaped key.

Generated keys are token objects (``store=True``), sensitive, never extractable,
and allowed to sign (or encrypt, for AES) only. Private keys never leave the token;
this module exports public halves only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, PolicyError, TokenError
from .uri import Pkcs11Uri

KEY_TYPES = (
    "rsa:2048",
    "rsa:3072",
    "rsa:4096",
    "ec:secp256r1",
    "ec:secp384r1",
    "ed25519",
    "aes:128",
    "aes:192",
    "aes:256",
)
_CURVE_ALIASES = {
    "p256": "secp256r1",
    "prime256v1": "secp256r1",
    "p-256": "secp256r1",
    "p384": "secp384r1",
    "p-384": "secp384r1",
}


@dataclass(frozen=True)
class KeySpec:
    kind: str  # "rsa" | "ec" | "ed25519" | "aes"
    size: int
    curve: str | None = None

    def __str__(self) -> str:
        if self.kind == "ec":
            return f"ec:{self.curve}"
        if self.kind == "ed25519":
            return "ed25519"
        return f"{self.kind}:{self.size}"


def parse_key_type(text: str) -> KeySpec:
    """``rsa:2048``, ``ec:secp256r1`` (or p256), ``ed25519``, ``aes:256``."""
    kind, _, arg = text.lower().partition(":")
    if kind == "rsa":
        size = int(arg) if arg.isascii() and arg.isdigit() else 0
        if size not in (2048, 3072, 4096):
            raise ConfigError(f"RSA size '{arg}' is not 2048, 3072 or 4096", "e.g. --type rsa:3072")
        return KeySpec("rsa", size)
    if kind in ("ec", "ecdsa"):
        curve = _CURVE_ALIASES.get(arg, arg)
        if curve not in ("secp256r1", "secp384r1"):
            raise ConfigError(f"EC curve '{arg}' is not supported", "use ec:secp256r1 or ec:secp384r1")
        return KeySpec("ec", 256 if curve == "secp256r1" else 384, curve)
    if kind == "ed25519":
        return KeySpec("ed25519", 256, "ed25519")
    if kind == "aes":
        size = int(arg) if arg.isascii() and arg.isdigit() else 0
        if size not in (128, 192, 256):
            raise ConfigError(f"AES size '{arg}' is not 128, 192 or 256", "e.g. --type aes:256")
        return KeySpec("aes", size)
    raise ConfigError(f"key type '{text}' is not known", f"use one of {', '.join(KEY_TYPES)}")


def generate(
    uri: Pkcs11Uri,
    spec: KeySpec,
    *,
    mode: str,
    module: str | None = None,
    pin_env: str | None = None,
    key_id: bytes | None = None,
    extractable: bool = False,
) -> dict[str, Any]:
    """Generate a key pair (or AES key) inside the token; return what was made."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag
    from pkcs11.util.ec import encode_named_curve_parameters

    from . import token as tokmod

    if uri.object is None:
        raise ConfigError(
            "the URI must name the new key with object=LABEL", "e.g. pkcs11:token=acme;object=fw-signing"
        )
    if extractable and mode != "development":
        raise PolicyError(
            "an extractable key can be copied out of the token; refused outside development mode",
            "leave --extractable out (production keys never leave the token)",
        )
    opened = tokmod.open_token(uri, module, pin_env, mode, rw=True)
    existing = opened.call(
        "looking for existing keys",
        lambda: list(opened.session.get_objects({Attribute.LABEL: uri.object})),
        uri,
    )
    if existing:
        raise TokenError(
            f"token '{opened.info.label if opened.info else '?'}' already has an object "
            f"labelled '{uri.object}'",
            "pick another object= label, or delete the old key first with the token's tools",
        )
    if key_id is None:
        key_id = hashlib.sha256(uri.object.encode() + os.urandom(8)).digest()[:8]
    label = uri.object
    common = {Attribute.TOKEN: True, Attribute.ID: key_id, Attribute.LABEL: label}
    private_template = {
        **common,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: bool(extractable),
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    public_template = {**common, Attribute.VERIFY: True, Attribute.ENCRYPT: False, Attribute.WRAP: False}
    session = opened.session

    # what every key pair gets: a token object with this id and label, sign/verify only
    pair: dict[str, Any] = {
        "id": key_id,
        "label": label,
        "store": True,
        "private_template": private_template,
        "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
    }

    def make() -> Any:
        if spec.kind == "rsa":
            return session.generate_keypair(
                KeyType.RSA,
                spec.size,
                public_template={**public_template, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
                **pair,
            )
        if spec.kind == "ec":
            if spec.curve is None:  # parse_key_type gives every EC spec its curve
                raise ConfigError("an EC key type needs a curve", "use ec:secp256r1 or ec:secp384r1")
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(spec.curve)}, local=True
            )
            return params.generate_keypair(public_template=public_template, **pair)
        if spec.kind == "ed25519":
            params = session.create_domain_parameters(
                KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")},
                local=True,
            )
            return params.generate_keypair(
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, public_template=public_template, **pair
            )
        return session.generate_key(
            KeyType.AES,
            spec.size,
            id=key_id,
            label=label,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: not extractable,
                Attribute.EXTRACTABLE: bool(extractable),
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.SIGN: False,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
            },
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
        )

    try:
        opened.call(f"generating a {spec} key", make, uri)
    except TokenError:
        raise
    except pkcs11.PKCS11Error as exc:  # pragma: no cover - call() converts
        raise tokmod.token_error(exc, f"generating a {spec} key", uri) from exc
    result: dict[str, Any] = {
        "label": label,
        "id": key_id.hex(),
        "type": str(spec),
        "uri": uri.with_(id=None, type=None).identity(),
    }
    if spec.kind != "aes":
        with tokmod.open_key(uri, mode=mode, module=module, pin_env=pin_env) as key:
            result["fingerprint"] = key.fingerprint
    return result


def public_bytes(public_key: Any, fmt: str = "pem") -> bytes:
    from cryptography.hazmat.primitives import serialization

    if fmt == "pem":
        return public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if fmt == "der":
        return public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    raise ConfigError(f"public key format '{fmt}' is not pem or der")


def spki_sha256(public_key: Any) -> str:
    return hashlib.sha256(public_bytes(public_key, "der")).hexdigest()


def describe(key: Any) -> str:
    if key.key_type == "rsa":
        return f"RSA {key.key_size}"
    if key.key_type == "ec":
        return f"ECDSA {key.curve}"
    return key.key_type


def as_cryptography_key(signer: Any) -> Any:
    """Wrap a token key in pyca/cryptography's private-key interface.

    cryptography's X.509 certificate and CSR builders call ``sign()`` on the key
    object, so a token key wrapped here signs certificates with one token
    operation each (docs/hazmat/primitives/asymmetric/cloudhsm.rst in
    pyca/cryptography describes the pattern). Private numbers and serialization
    are refused: the key cannot leave the token.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    from . import signing

    def _prehash(data: bytes | bytearray | memoryview, algorithm: Any) -> tuple[bytes, str]:
        if isinstance(algorithm, utils.Prehashed):
            return bytes(data), algorithm._algorithm.name
        h = hashes.Hash(algorithm)
        h.update(bytes(data))  # cryptography 42 (scarthgap) types it as bytes only
        return h.finalize(), algorithm.name

    class _StaysInToken:
        """What both wrappers share: size and public half; the private key cannot be read or serialised."""

        def private_numbers(self) -> Any:
            raise TokenError("the private key stays in the token")

        def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
            raise TokenError("the private key stays in the token")

        def __copy__(self) -> Any:
            return self

        def __deepcopy__(self, memo: Any) -> Any:
            return self

        @property
        def key_size(self) -> int:
            return int(signer.key_size)

        def public_key(self) -> Any:
            return signer.public_key()

    if signer.key_type == "rsa":

        class _TokenRSA(_StaysInToken, rsa.RSAPrivateKey):
            def sign(self, data: bytes | bytearray | memoryview, pad: Any, algorithm: Any) -> bytes:
                digest, name = _prehash(data, algorithm)
                scheme = "pss" if isinstance(pad, padding.PSS) else "pkcs1v15"
                return signer.sign_digest(digest, name, scheme)

            def decrypt(self, ciphertext: bytes, pad: Any) -> bytes:
                raise TokenError("hsmsign keys are sign-only")

        return _TokenRSA()

    if signer.key_type == "ec":

        class _TokenEC(_StaysInToken, ec.EllipticCurvePrivateKey):
            def sign(self, data: bytes | bytearray | memoryview, signature_algorithm: Any) -> bytes:
                digest, name = _prehash(data, signature_algorithm.algorithm)
                return signing.ecdsa_raw_to_der(signer.sign_digest(digest, name))

            @property
            def curve(self) -> Any:
                return signer.public_key().curve

            def exchange(self, algorithm: Any, peer_public_key: Any) -> bytes:
                raise TokenError("hsmsign keys are sign-only")

        return _TokenEC()
    raise ConfigError(f"{signer.key_type} keys cannot be wrapped for certificate building")
