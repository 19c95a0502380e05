"""hsmsign.keyformats: cryptography's public-key loading without its serialization package, and
RSA public keys without cryptography.

The key it returns must be the one ``serialization.load_der_public_key`` returns for the same
DER, for every key type and for DER that is not in canonical form. ``RsaPublicKey`` must give
cryptography's SubjectPublicKeyInfo byte for byte and accept exactly the PKCS#1 v1.5 signatures
cryptography accepts.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from asn1crypto import keys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from hsmsign import keyformats, signing
from hsmsign.errors import SigningError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# --- RsaPublicKey: RSA without cryptography, checked against cryptography ----------------------

_PRIVATE = {bits: rsa.generate_private_key(65537, bits) for bits in (2048, 3072)}
_HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}


def _numbers(key: rsa.RSAPrivateKey) -> keyformats.RsaPublicKey:
    numbers = key.public_key().public_numbers()
    return keyformats.RsaPublicKey(numbers.n, numbers.e)


def _theirs(key: rsa.RSAPrivateKey, signature: bytes, digest: bytes, hash_alg: str) -> bool:
    try:
        key.public_key().verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(_HASHES[hash_alg]))
    except InvalidSignature:
        return False
    return True


@pytest.mark.parametrize(("bits", "e"), [(1024, 3), (2048, 65537), (3072, 65537), (4096, 65537), (2049, 17)])
def test_rsa_spki_is_cryptographys(bits: int, e: int) -> None:
    """The fingerprint pins and the known-public list are made of: it must not change."""
    public = rsa.generate_private_key(e, bits).public_key() if bits != 2049 else None
    if public is None:  # an odd size cryptography does not generate: the numbers of one
        public = rsa.RSAPublicNumbers(e, (1 << 2048) + 0x1235).public_key()
    numbers = public.public_numbers()
    ours = keyformats.RsaPublicKey(numbers.n, numbers.e)
    assert ours.spki() == public.public_bytes(*SPKI)
    assert ours.key_size == public.key_size
    assert keyformats.rsa_public_from_spki(ours.spki()) == ours
    assert ours.to_cryptography().public_numbers() == numbers


@pytest.mark.parametrize("hash_alg", list(_HASHES))
@pytest.mark.parametrize("bits", list(_PRIVATE))
def test_rsa_pkcs1v15_check_agrees_with_cryptography(bits: int, hash_alg: str) -> None:
    key = _PRIVATE[bits]
    ours = _numbers(key)
    digest = hashlib.new(hash_alg, b"an artifact").digest()
    good = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(_HASHES[hash_alg]))
    prefix = signing.DIGEST_INFO_PREFIX[hash_alg]
    assert ours.verify_pkcs1v15(good, prefix + digest) and _theirs(key, good, digest, hash_alg)
    n = ours.n
    k = len(good)
    other = hashlib.new(hash_alg, b"another artifact").digest()
    pss = key.sign(
        digest,
        padding.PSS(mgf=padding.MGF1(_HASHES[hash_alg]), salt_length=len(digest)),
        utils.Prehashed(_HASHES[hash_alg]),
    )
    bad = {
        "another digest": (good, other),
        "one bit flipped": (bytes([good[0] ^ 0x01]) + good[1:], digest),
        "last bit flipped": (good[:-1] + bytes([good[-1] ^ 0x80]), digest),
        "a byte short": (good[1:], digest),
        "a byte long": (b"\x00" + good, digest),
        "n itself": (n.to_bytes(k, "big"), digest),
        "n + s": (((int.from_bytes(good, "big") + n) % (1 << (8 * k))).to_bytes(k, "big"), digest),
        "zero": (bytes(k), digest),
        "one": ((1).to_bytes(k, "big"), digest),
        "PSS": (pss, digest),
        "empty": (b"", digest),
    }
    for what, (signature, signed) in bad.items():
        assert not ours.verify_pkcs1v15(signature, prefix + signed), what
        assert not _theirs(key, signature, signed, hash_alg), what
    # the same digest under another algorithm's DigestInfo is another message
    wrong_prefix = signing.DIGEST_INFO_PREFIX["sha512" if hash_alg != "sha512" else "sha256"]
    assert not ours.verify_pkcs1v15(good, wrong_prefix + digest)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0, max_value=255), mask=st.integers(min_value=1, max_value=255))
def test_rsa_pkcs1v15_check_refuses_every_damaged_signature(position: int, mask: int) -> None:
    key = _PRIVATE[2048]
    digest = hashlib.sha256(b"firmware").digest()
    good = bytearray(key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())))
    good[position] ^= mask
    damaged = bytes(good)
    ours = _numbers(key).verify_pkcs1v15(damaged, signing.DIGEST_INFO_PREFIX["sha256"] + digest)
    assert ours is False
    assert ours == _theirs(key, damaged, digest, "sha256")


def test_verify_digest_takes_either_key() -> None:
    """``signing.verify_digest`` with an RsaPublicKey: PKCS#1 v1.5 checked by it, PSS by cryptography,
    a bad signature the same SigningError as cryptography's key gives."""
    key = _PRIVATE[2048]
    digest = hashlib.sha256(b"rootfs").digest()
    v15 = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    pss = key.sign(digest, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                   utils.Prehashed(hashes.SHA256()))  # fmt: skip
    for public in (_numbers(key), key.public_key()):
        signing.verify_digest(public, v15, digest, "sha256", "pkcs1v15")
        signing.verify_digest(public, pss, digest, "sha256", "pss")
        for signature, scheme in ((pss, "pkcs1v15"), (v15, "pss")):
            with pytest.raises(SigningError, match="does not verify"):
                signing.verify_digest(public, signature, digest, "sha256", scheme)


@pytest.mark.parametrize(
    ("n", "e"), [(2**64 + 1, 65536), (2**64 + 1, 1), (15, 17), (15, 15), (15, 13), (2**64 + 2, 65537)]
)
def test_rsa_numbers_refused_where_cryptography_refuses_them(n: int, e: int) -> None:
    try:
        rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        with pytest.raises(ValueError):
            keyformats.RsaPublicKey(n, e)
    else:
        assert keyformats.RsaPublicKey(n, e).spki() == rsa.RSAPublicNumbers(e, n).public_key().public_bytes(
            *SPKI
        )


def test_rsa_public_of_each_holder() -> None:
    key = _PRIVATE[2048]
    ours = _numbers(key)
    assert keyformats.rsa_public_of(ours) is ours
    assert keyformats.rsa_public_of(key) == ours  # a private key: its public half
    assert keyformats.rsa_public_of(key.public_key()) == ours

    class Holder:  # a token key or a LazyCertificate: the numbers it holds, cryptography not asked
        rsa_public = ours

        def public_key(self) -> object:
            raise AssertionError("not asked")

    assert keyformats.rsa_public_of(Holder()) is ours
    assert keyformats.rsa_public_of(ec.generate_private_key(ec.SECP256R1())) is None
    assert keyformats.rsa_public_of(ed25519.Ed25519PrivateKey.generate().public_key()) is None


def test_rsa_public_from_spki_takes_only_the_form_cryptography_writes() -> None:
    ours = _numbers(_PRIVATE[2048])
    der = ours.spki()
    assert keyformats.rsa_public_from_spki(der) == ours
    info = keys.PublicKeyInfo.load(der)
    body = b"\x30\x0b" + info["algorithm"]["algorithm"].dump() + info["public_key"].dump()
    no_null = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    assert keyformats.rsa_public_from_spki(no_null) is None
    ec_der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(*SPKI)
    for other in (ec_der, b"", b"\x30\x03\x02\x01\x01", der[:-1], der + b"\x00"):
        assert keyformats.rsa_public_from_spki(other) is None


def test_importing_keyformats_imports_nothing_of_cryptography() -> None:
    code = (
        "import sys\n"
        "from hsmsign import keyformats\n"
        "key = keyformats.RsaPublicKey((1 << 2047) + 1, 65537)\n"
        "key.spki()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography')\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
