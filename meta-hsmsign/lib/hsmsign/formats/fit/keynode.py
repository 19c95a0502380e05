"""Public key nodes in U-Boot's control DTB.

Public keys go under ``/signature``: RSA as ``key-<name>`` with ``rsa,num-bits``,
``rsa,n0-inverse``, ``rsa,exponent``, ``rsa,modulus``, ``rsa,r-squared``
(``lib/rsa/rsa-sign.c``); ECDSA as ``<name>`` with ``ecdsa,curve``,
``ecdsa,x-point``, ``ecdsa,y-point`` (``lib/ecdsa/ecdsa-libcrypto.c``); both with
``key-name-hint``, ``algo`` and, for enforced keys, ``required``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError, VerificationError, printable
from ..fdt import Fdt, Node
from .model import (
    CONFS_PATH,
    EC_CURVES,
    IMAGES_PATH,
    KEEP,
    SIG_NODE,
    SIGN_HASHES,
    crypto_for_key,
)


def _bignum(value: int, bits: int) -> bytes:
    """``fdt_add_bignum``: bits/32 big-endian 32-bit cells, most significant first."""
    return value.to_bytes(bits // 32 * 4, "big")


def rsa_key_props(public_key: Any) -> list[tuple[str, bytes]]:
    """``rsa,*`` properties (``rsa_get_params``): n0-inverse = -1/n mod 2^32, r-squared = 2^(2 bits) mod n."""
    numbers = public_key.public_numbers()
    n, e = numbers.n, numbers.e
    bits = n.bit_length()
    n0_inv = (2**32 - pow(n, -1, 2**32)) % 2**32
    r_squared = pow(2, 2 * bits, n)
    return [
        ("rsa,num-bits", bits.to_bytes(4, "big")),
        ("rsa,n0-inverse", n0_inv.to_bytes(4, "big")),
        ("rsa,exponent", e.to_bytes(8, "big")),
        ("rsa,modulus", _bignum(n, bits)),
        ("rsa,r-squared", _bignum(r_squared, bits)),
    ]


def add_key(
    dtb: bytes,
    public_key: Any,
    key_name: str,
    hash_alg: str = "sha256",
    required: str | None = "conf",
    required_mode: str | None = None,
    what: str = "DTB",
) -> tuple[bytes, str]:
    """Write (or overwrite) the key node for ``public_key``; returns the new DTB and the node path."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    fdt = Fdt.parse(dtb, what)
    if fdt.node(IMAGES_PATH) is not None and fdt.node(CONFS_PATH) is not None:
        raise ConfigError(
            f"{what} is a FIT image, not a U-Boot control DTB",
            "give the U-Boot device tree (u-boot.dtb / spl/u-boot-spl.dtb) to --dtb",
        )
    if not key_name or "/" in key_name or "\0" in key_name:
        raise ConfigError(
            f"key name {key_name!r} is not usable as a node name", "use letters, digits, - and _"
        )
    if hash_alg not in SIGN_HASHES:
        raise ConfigError(f"hash '{hash_alg}' is not supported", f"use one of {', '.join(SIGN_HASHES)}")
    if required not in (None, "conf", "image", KEEP):
        raise ConfigError(f"required must be conf, image or none, not {required!r}")
    if required_mode not in (None, "any", "all"):
        raise ConfigError(f"required-mode must be any or all, not {required_mode!r}")
    sig = fdt.ensure_subnode(fdt.root, SIG_NODE)
    if isinstance(public_key, rsa.RSAPublicKey):
        crypto = crypto_for_key("rsa", public_key.key_size)
        node_name = f"key-{key_name}"
        node = sig.child(node_name) or fdt.add_subnode(sig, node_name)
        fdt.setprop_str(node, "key-name-hint", key_name)
        for name, value in rsa_key_props(public_key):
            fdt.setprop(node, name, value)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        crypto = crypto_for_key("ec", public_key.curve.key_size)
        curve = EC_CURVES.get(public_key.curve.name)
        if curve is None:
            raise ConfigError(
                f"curve {public_key.curve.name} is not supported by U-Boot", "use P-256 or P-384"
            )
        node_name = key_name  # lib/ecdsa/ecdsa-libcrypto.c names the node after the hint itself
        node = sig.child(node_name) or fdt.add_subnode(sig, node_name)
        nums = public_key.public_numbers()
        bits = public_key.curve.key_size
        fdt.setprop_str(node, "key-name-hint", key_name)
        fdt.setprop_str(node, "ecdsa,curve", curve)
        fdt.setprop(node, "ecdsa,x-point", _bignum(nums.x, bits))
        fdt.setprop(node, "ecdsa,y-point", _bignum(nums.y, bits))
    else:
        raise ConfigError(
            f"a {type(public_key).__name__} cannot verify FIT images", "use an RSA or ECDSA P-256/P-384 key"
        )
    fdt.setprop_str(node, "algo", f"{hash_alg},{crypto}")
    if required == KEEP:
        pass
    elif required:
        fdt.setprop_str(node, "required", required)
    else:
        fdt.delprop(node, "required")
    if required_mode:
        fdt.setprop_str(sig, "required-mode", required_mode)
    return fdt.to_bytes(), f"/{SIG_NODE}/{node_name}"


@dataclass
class KeyNode:
    name: str
    required: str | None
    algo: str | None
    public_key: Any


def key_from_node(node: Node, what: str = "DTB") -> Any:
    """The public key a control-DTB key node describes, checked like U-Boot reads it."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    where = f"{what}: /{SIG_NODE}/{printable(node.name)}"  # a name in the DTB may hold anything
    if node.get("ecdsa,curve") is not None:
        curve_name = node.get_str("ecdsa,curve")
        curve: Any = {"prime256v1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}.get(curve_name or "")
        if curve is None:
            raise VerificationError(f"{where}: unknown ecdsa,curve '{printable(curve_name or '')}'")
        x, y = node.get("ecdsa,x-point"), node.get("ecdsa,y-point")
        size = curve.key_size // 8
        if x is None or y is None or len(x) != size or len(y) != size:
            raise VerificationError(f"{where}: ecdsa,x-point/y-point missing or not {size} bytes")
        try:
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError as exc:
            raise VerificationError(f"{where}: the ECDSA point is not on the curve") from exc
    modulus = node.get("rsa,modulus")
    bits = node.get_u32("rsa,num-bits")
    if modulus is None or bits is None:
        raise VerificationError(f"{where}: neither an RSA nor an ECDSA key node")
    exp_raw = node.get("rsa,exponent")
    e = int.from_bytes(exp_raw, "big") if exp_raw and len(exp_raw) == 8 else 65537
    n = int.from_bytes(modulus, "big")
    if len(modulus) * 8 != bits or n.bit_length() != bits:
        raise VerificationError(f"{where}: rsa,num-bits {bits} does not match rsa,modulus")
    if n % 2 == 0:  # U-Boot's Montgomery code needs an odd modulus (rsa,n0-inverse is -n^-1 mod 2^32)
        raise VerificationError(f"{where}: rsa,modulus is even: not an RSA key")
    try:
        pub = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise VerificationError(f"{where}: not a usable RSA key") from exc
    expected = dict(rsa_key_props(pub))
    for name in ("rsa,n0-inverse", "rsa,r-squared"):
        if node.get(name) != expected[name]:
            raise VerificationError(
                f"{where}: {name} does not match rsa,modulus (U-Boot's Montgomery code would reject every "
                "signature)",
                "write the key again with 'hsmsign fit add-key'",
            )
    return pub


def load_keys(dtb: bytes, what: str = "DTB") -> tuple[list[KeyNode], str]:
    fdt = Fdt.parse(dtb, what)
    sig = fdt.root.child(SIG_NODE)
    keys: list[KeyNode] = []
    mode = "all"
    if sig is not None:
        mode = "any" if sig.get_str("required-mode") == "any" else "all"
        for node in sig.children:
            keys.append(
                KeyNode(node.name, node.get_str("required"), node.get_str("algo"), key_from_node(node, what))
            )
    return keys, mode
