"""Fuzzing the FDT and FIT readers: any input gives a result or an HsmsignError, never a crash."""

from __future__ import annotations

import os

from hsmsign.errors import HsmsignError
from hsmsign.formats import fit
from hsmsign.formats.fdt import Fdt, find_regions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_fit import control, make_fit, public_rsa

BASE_FIT = make_fit()
BASE_EXT = make_fit(external=True)
KEY_DTB = fit.add_key(control(), public_rsa(), "k", required="conf")[0]
FUZZ = settings(
    max_examples=int(os.environ.get("HSMSIGN_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def exercise(data: bytes, dtb: bytes = KEY_DTB) -> None:
    """Everything a signer or verifier does with an untrusted FIT before any key is involved."""
    try:
        tree = Fdt.parse(data)
        tree.to_bytes()
        f = fit.Fit.parse(data)
        for conf in f.configs.children:
            paths = fit.config_hashed_nodes(f, conf)
            find_regions(data[: f.totalsize], paths, fit.EXCLUDED_PROPS, True)
        fit.update_image_hashes(f)
        f.to_bytes()
        fit.verify_fit(data, dtb)
    except HsmsignError as exc:
        assert exc.message and "\n" not in exc.message


def mutate(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(base)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data):
    exercise(data)
    exercise(b"\xd0\x0d\xfe\xed" + data)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)


@FUZZ
@given(edits, st.none() | st.integers(0, 1 << 16))
def test_mutated_fit(changes, cut):
    exercise(mutate(BASE_FIT, changes, cut))
    exercise(mutate(BASE_EXT, changes, cut))


@FUZZ
@given(edits, st.none() | st.integers(0, 1 << 16))
def test_mutated_control_dtb(changes, cut):
    exercise(BASE_FIT, mutate(KEY_DTB, changes, cut))
    # header fields are where the interesting bounds live: aim some edits there
    exercise(mutate(BASE_FIT, [(p % 40, v) for p, v in changes], None))


def test_unmutated_inputs_reach_the_signature_check():
    """The fuzz bases are valid: every stage runs and only the missing signature stops them."""
    import pytest
    from hsmsign.errors import VerificationError

    for base in (BASE_FIT, BASE_EXT):
        f = fit.Fit.parse(base)
        assert fit.config_hashed_nodes(f, f.configs.children[0])
        with pytest.raises(VerificationError, match="not signed"):
            fit.verify_fit(base, KEY_DTB)


def test_names_with_control_characters_stay_escaped_in_messages():
    """Node names are the DTB author's: a newline in one must not start a second line of a
    message (the fuzzer found a key node named '/signature/\\ney-k' printed raw)."""
    import pytest
    from hsmsign.errors import VerificationError

    key_node = b"key-k\x00"
    assert KEY_DTB.count(key_node) == 1
    tree = Fdt.parse(KEY_DTB.replace(key_node, b"k\ny-k\x00"))
    node = tree.root.child("signature").child("k\ny-k")
    tree.setprop_u32(node, "rsa,num-bits", 1024)  # wrong for its modulus
    with pytest.raises(VerificationError) as caught:
        fit.verify_fit(BASE_FIT, tree.to_bytes())
    assert "k\\ny-k: rsa,num-bits 1024 does not match rsa,modulus" in caught.value.message
    # and on the FIT's side: each message that names an image, a hash node or a configuration
    import copy

    def variant(edit):
        tree = Fdt.parse(BASE_FIT)
        edit(tree, tree.node("/images/kernel-1"), tree.node("/configurations/conf-1"))
        return tree.to_bytes()

    def no_hash(tree, kernel, conf):
        kernel.name = "kern\x1bl-1"
        kernel.children = [c for c in kernel.children if not c.name.startswith("hash")]
        tree.setprop_str(conf, "kernel", kernel.name)

    def no_data(tree, kernel, conf):
        kernel.name = "kern\nel"
        tree.delprop(kernel, "data")
        tree.setprop_str(conf, "kernel", kernel.name)

    def no_algo(tree, kernel, conf):
        hash_node = copy.deepcopy(kernel.children[0])
        hash_node.name = "hash-\r2"
        hash_node.props = []
        kernel.children.append(hash_node)

    def no_image(tree, kernel, conf):
        conf.name = "con\x85f-1"
        for prop in ("kernel", "fdt", "loadables"):
            tree.delprop(conf, prop)

    for edit, said in ((no_hash, "image 'kern\\x1bl-1' has no hash node"),
                       (no_data, "image 'kern\\nel' has no data"),
                       (no_algo, "/images/kernel-1/hash-\\r2 has no algo"),
                       (no_image, "configuration 'con\\x85f-1' references no image")):  # fmt: skip
        data = variant(edit)
        with pytest.raises(HsmsignError) as caught:
            f = fit.Fit.parse(data)
            for conf in f.configs.children:
                fit.config_hashed_nodes(f, conf, strict=True)
            fit.update_image_hashes(f)
        assert said in caught.value.message, (said, caught.value.message)
        exercise(data)
