"""hsmsign.keyformats: cryptography's public-key loading without its serialization package.

The key it returns must be the one ``serialization.load_der_public_key`` returns for the same
DER, for every key type and for DER that is not in canonical form.
"""

from __future__ import annotations

import pytest
from asn1crypto import keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hsmsign import keyformats

SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_keys() -> dict[str, object]:
    return {
        "rsa-2048": rsa.generate_private_key(65537, 2048).public_key(),
        "rsa-3072 e=3": rsa.generate_private_key(3, 3072).public_key(),
        "ec-p256": ec.generate_private_key(ec.SECP256R1()).public_key(),
        "ec-p384": ec.generate_private_key(ec.SECP384R1()).public_key(),
        "ed25519": ed25519.Ed25519PrivateKey.generate().public_key(),
    }


@pytest.mark.parametrize("name", list(_public_keys()))
def test_each_key_type_loads_as_cryptography_loads_it(name: str) -> None:
    public = _public_keys()[name]
    der = public.public_bytes(*SPKI)  # type: ignore[attr-defined]
    ours = keyformats.load_der_public_key(der)
    theirs = serialization.load_der_public_key(der)
    assert type(ours) is type(theirs)
    assert ours.public_bytes(*SPKI) == der


def test_the_enums_are_cryptographys_own() -> None:
    assert keyformats.Encoding is serialization.Encoding
    assert keyformats.PublicFormat is serialization.PublicFormat


def test_rsa_der_in_another_form_is_left_to_cryptography() -> None:
    """An RSA key whose algorithm has no NULL parameters: not what the numbers give back, so the
    package's loader decides (accepts or refuses) exactly as before."""
    public = rsa.generate_private_key(65537, 2048).public_key()
    der = public.public_bytes(*SPKI)
    info = keys.PublicKeyInfo.load(der)
    algorithm = b"\x30\x0b" + info["algorithm"]["algorithm"].dump()  # the OID, no NULL after it
    body = algorithm + info["public_key"].dump()
    odd = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    assert keys.PublicKeyInfo.load(odd).algorithm == "rsa" and odd != der
    try:
        theirs = serialization.load_der_public_key(odd)
    except ValueError:
        with pytest.raises(ValueError):
            keyformats.load_der_public_key(odd)
    else:
        assert keyformats.load_der_public_key(odd).public_bytes(*SPKI) == theirs.public_bytes(*SPKI)


def test_what_is_not_a_public_key_is_refused() -> None:
    with pytest.raises(ValueError):
        keyformats.load_der_public_key(b"\x30\x03\x02\x01\x01")
