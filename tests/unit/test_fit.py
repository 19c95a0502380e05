"""FIT logic without a token: node lists, key node maths, control-DTB edits, external data, errors.

Signatures themselves are proved in tests/integration/test_fit.py with a real
token and U-Boot's own tools; here only public-key material is used.
"""

from __future__ import annotations

import hashlib
import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hsmsign.errors import ConfigError, VerificationError
from hsmsign.formats import fit
from hsmsign.formats.fdt import Fdt, Node


def public_rsa(bits: int = 2048) -> rsa.RSAPublicKey:
    """An RSA public key with a random odd modulus: enough for the key-node maths (no private half exists)."""
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    return rsa.RSAPublicNumbers(65537, n).public_key()


def public_ec() -> ec.EllipticCurvePublicKey:
    # the P-256 generator point is a valid public key whose private half is 1: fine for encoding tests
    x = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
    y = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def make_fit(external: bool = False, tail_kernel: bytes = b"K" * 1000) -> bytes:
    f = Fdt(Node(""), bytearray())
    root = f.root
    confs = f.add_subnode(root, "configurations")
    images = f.add_subnode(root, "images")  # libfdt order: added first, so /images comes first
    f.setprop_str(root, "description", "unit FIT")
    payloads = {"kernel-1": tail_kernel, "fdt-1": b"F" * 100, "fw@1": b"W" * 50, "fw-2": b"V" * 30}
    offset = 0
    tail = b""
    for name in reversed(list(payloads)):
        img = f.add_subnode(images, name)
        h = f.add_subnode(img, "hash-1")
        f.setprop_str(h, "algo", "sha256")
        f.setprop(h, "value", hashlib.sha256(payloads[name]).digest())
        f.setprop_str(img, "type", "firmware")
    for name in payloads:
        img = images.child(name)
        assert img is not None
        if external:
            f.setprop_u32(img, "data-size", len(payloads[name]))
            f.setprop_u32(img, "data-offset", offset)
            tail += payloads[name] + b"\0" * (-len(payloads[name]) % 4)
            offset = len(tail)
        else:
            f.setprop(img, "data", payloads[name])
    conf = f.add_subnode(confs, "conf-1")
    f.setprop_str(conf, "description", "kernel-1")  # not an image reference, even though it names one
    f.setprop_str(conf, "compatible", "fdt-1")
    f.setprop_strlist(conf, "loadables", ["fw", "fw-2"])  # 'fw' resolves to 'fw@1' like libfdt
    f.setprop_str(conf, "fdt", "fdt-1")
    f.setprop_str(conf, "kernel", "kernel-1")
    f.setprop_str(confs, "default", "conf-1")
    blob = f.to_bytes()
    if external:
        blob += b"\0" * (-len(blob) % 4) + tail
    return blob


def test_config_nodes_are_every_referenced_image():
    f = fit.Fit.parse(make_fit())
    conf = f.configs.child("conf-1")
    assert conf is not None
    refs = [(p, n.name) for p, n in fit.config_image_refs(f, conf)]
    assert refs == [("kernel", "kernel-1"), ("fdt", "fdt-1"), ("loadables", "fw@1"), ("loadables", "fw-2")]
    assert fit.config_hashed_nodes(f, conf) == [
        "/",
        "/configurations/conf-1",
        "/images/kernel-1",
        "/images/kernel-1/hash-1",
        "/images/fdt-1",
        "/images/fdt-1/hash-1",
        "/images/fw@1",
        "/images/fw@1/hash-1",
        "/images/fw-2",
        "/images/fw-2/hash-1",
    ]


def test_missing_image_and_missing_hash_are_config_errors():
    tree = Fdt.parse(make_fit())
    conf = tree.node("/configurations/conf-1")
    assert conf is not None
    tree.setprop_str(conf, "ramdisk", "initrd-9")
    f = fit.Fit.parse(tree.to_bytes())
    c = f.configs.child("conf-1")
    assert c is not None
    # the verifier skips what it cannot resolve; the signer refuses
    assert len(fit.config_image_refs(f, c)) == 4
    with pytest.raises(ConfigError, match="initrd-9"):
        fit.config_hashed_nodes(f, c, strict=True)
    tree = Fdt.parse(make_fit())
    kernel = tree.node("/images/kernel-1")
    assert kernel is not None
    kernel.children.clear()
    f = fit.Fit.parse(tree.to_bytes())
    with pytest.raises(ConfigError, match="no hash node"):
        fit.config_hashed_nodes(f, f.configs.children[0])


def test_not_a_fit_and_no_configurations():
    plain = Fdt(Node(""), bytearray())
    plain.setprop_str(plain.root, "model", "board")
    with pytest.raises(ConfigError, match="not a FIT"):
        fit.Fit.parse(plain.to_bytes())
    tree = Fdt.parse(make_fit())
    confs = tree.node("/configurations")
    assert confs is not None
    confs.children.clear()
    with pytest.raises(ConfigError, match="no configurations"):
        fit.Fit.parse(tree.to_bytes())


def test_external_data_survives_a_growing_device_tree():
    blob = make_fit(external=True, tail_kernel=bytes(range(256)) * 8)
    f = fit.Fit.parse(blob)
    kernel = f.images.child("kernel-1")
    assert kernel is not None and kernel.get("data") is None
    assert f.image_data(kernel) == bytes(range(256)) * 8
    node = f.fdt.add_subnode(f.configs.children[0], "signature-1")
    f.fdt.setprop(node, "value", b"\x55" * 513)  # grows the tree by an unaligned amount
    again = fit.Fit.parse(f.to_bytes())
    for name in ("kernel-1", "fdt-1", "fw@1", "fw-2"):
        a, b = f.images.child(name), again.images.child(name)
        assert a is not None and b is not None
        assert again.image_data(b) == f.image_data(a)
    truncated = blob[: len(blob) - 10]
    short = fit.Fit.parse(truncated)
    with pytest.raises(ConfigError, match="beyond the end"):
        short.image_data(short.images.children[-1])


def test_rsa_key_node_maths():
    pub = public_rsa(2048)
    n = pub.public_numbers().n
    props = dict(fit.rsa_key_props(pub))
    assert int.from_bytes(props["rsa,num-bits"], "big") == 2048
    n0 = int.from_bytes(props["rsa,n0-inverse"], "big")
    assert (n0 * n) % 2**32 == 2**32 - 1  # n0-inverse = -1/n mod 2^32
    assert int.from_bytes(props["rsa,r-squared"], "big") == pow(2, 4096, n)
    assert props["rsa,modulus"] == n.to_bytes(256, "big")
    assert props["rsa,exponent"] == (65537).to_bytes(8, "big")


def control() -> bytes:
    f = Fdt(Node(""), bytearray())
    f.setprop_str(f.root, "model", "board")
    return f.to_bytes()


def test_add_key_side_by_side_and_policies():
    old, new, ecc = public_rsa(2048), public_rsa(3072), public_ec()
    dtb, path = fit.add_key(control(), old, "old", required="conf")
    assert path == "/signature/key-old"
    dtb, _ = fit.add_key(dtb, new, "new", required="image", required_mode="any")
    dtb, ec_path = fit.add_key(dtb, ecc, "ecc", required=None)
    assert ec_path == "/signature/ecc"
    keys, mode = fit.load_keys(dtb)
    assert mode == "any"
    assert {k.name: (k.required, k.algo) for k in keys} == {
        "key-old": ("conf", "sha256,rsa2048"),
        "key-new": ("image", "sha256,rsa3072"),
        "ecc": (None, "sha256,ecdsa256"),
    }
    assert keys[0].public_key.public_numbers() == ecc.public_numbers()  # newest first, as libfdt adds
    node = Fdt.parse(dtb).node("/signature/ecc")
    assert node is not None and node.get("ecdsa,x-point") == ecc.public_numbers().x.to_bytes(32, "big")
    # rewriting a key replaces it; 'none' drops the enforcement
    dtb, _ = fit.add_key(dtb, old, "old", required=None)
    assert {k.name: k.required for k in fit.load_keys(dtb)[0]}["key-old"] is None
    dtb, _ = fit.add_key(dtb, old, "old", required=fit.KEEP)
    assert {k.name: k.required for k in fit.load_keys(dtb)[0]}["key-old"] is None


def test_add_key_refuses_a_fit_and_bad_names():
    with pytest.raises(ConfigError, match="is a FIT image"):
        fit.add_key(make_fit(), public_rsa(), "k")
    with pytest.raises(ConfigError, match="node name"):
        fit.add_key(control(), public_rsa(), "a/b")


def test_tampered_key_node_is_refused():
    dtb, _ = fit.add_key(control(), public_rsa(), "k")
    tree = Fdt.parse(dtb)
    node = tree.node("/signature/key-k")
    assert node is not None
    value = bytearray(node.get("rsa,n0-inverse") or b"")
    value[0] ^= 1
    tree.setprop(node, "rsa,n0-inverse", bytes(value))
    with pytest.raises(VerificationError, match="n0-inverse"):
        fit.load_keys(tree.to_bytes())


def test_verify_insists_on_required_key_and_a_signature():
    unsigned = make_fit()
    with pytest.raises(VerificationError, match="no required key"):
        fit.verify_fit(unsigned, control())
    dtb, _ = fit.add_key(control(), public_rsa(), "k", required="conf")
    with pytest.raises(VerificationError, match="not signed by required key 'key-k'"):
        fit.verify_fit(unsigned, dtb)


def test_algo_parsing():
    assert fit.parse_algo("sha256,rsa4096", "x") == ("sha256", "rsa4096")
    assert fit.crypto_for_key("ec", 384) == "ecdsa384"
    for bad in ("sha256", "md5,rsa2048", "sha256,rsa1024", "sha256,ecdsa521"):
        with pytest.raises(ConfigError):
            fit.parse_algo(bad, "x")
    with pytest.raises(ConfigError, match="cannot sign FIT"):
        fit.crypto_for_key("rsa", 1024)


def test_configuration_digest_over_a_hollow_tree_is_the_full_trees() -> None:
    """Signing hashes a configuration over a tree written without its "data" values (no copy of a
    32 MiB kernel per signature): the regions leave every EXCLUDED_PROPS property out, so the
    digest is the same as over the tree as written, and changes with what the regions cover."""
    from hsmsign.formats.fit.model import EXCLUDED_PROPS, config_regions, hash_regions

    f = fit.Fit.parse(make_fit(tail_kernel=secrets.token_bytes(5000)))
    conf = f.configs.children[0]
    paths = fit.config_hashed_nodes(f, conf)

    def digest(blob: bytes) -> bytes:
        return hash_regions(blob, config_regions(blob, paths, None), "sha256")

    full, hollow = f.fdt.to_bytes(), f.fdt.to_bytes(hollow=EXCLUDED_PROPS)
    assert len(hollow) < len(full) - 5000
    assert digest(hollow) == digest(full)
    kernel = f.images.child("kernel-1")
    assert kernel is not None
    hash_node = kernel.child("hash-1")
    assert hash_node is not None
    f.fdt.setprop(hash_node, "value", bytes(32))  # covered: both digests change, alike
    assert digest(f.fdt.to_bytes(hollow=EXCLUDED_PROPS)) == digest(f.fdt.to_bytes()) != digest(full)


def test_image_digest_is_computed_once_per_data() -> None:
    """The hash node's digest and the image signature's are one pass over the same bytes; data
    that is not the very same object is hashed again."""
    kernel_bytes = secrets.token_bytes(3000)
    f = fit.Fit.parse(make_fit(tail_kernel=kernel_bytes))
    kernel = f.images.child("kernel-1")
    assert kernel is not None
    fit.update_image_hashes(f)
    hash_node = kernel.child("hash-1")
    assert hash_node is not None and hash_node.get("value") == hashlib.sha256(kernel_bytes).digest()
    assert f.data_digest(kernel, "sha256") == hashlib.sha256(kernel_bytes).digest()
    assert f.data_digest(kernel, "sha384") == hashlib.sha384(kernel_bytes).digest()
    other = secrets.token_bytes(3000)
    f.fdt.setprop(kernel, "data", other)
    assert f.data_digest(kernel, "sha256") == hashlib.sha256(other).digest()


def test_external_image_digest_is_computed_once_per_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """External data (mkimage -E) is a view of the file, hashed once for its hash node and its
    image signature; it is the bytes at data-offset."""
    import hsmsign.formats.fit.model as model

    kernel_bytes = secrets.token_bytes(2000)
    f = fit.Fit.parse(make_fit(external=True, tail_kernel=kernel_bytes))
    kernel = f.images.child("kernel-1")
    assert kernel is not None
    data = f.image_data(kernel)
    assert isinstance(data, memoryview) and data == kernel_bytes
    calls: list[str] = []
    real_new = hashlib.new

    def counted(name: str, *args: object) -> object:
        calls.append(name)
        return real_new(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(model.hashlib, "new", counted)
    first = f.data_digest(kernel, "sha256")
    again = f.data_digest(kernel, "sha256")
    monkeypatch.undo()
    assert first == again == hashlib.sha256(kernel_bytes).digest()
    assert calls == ["sha256"]
