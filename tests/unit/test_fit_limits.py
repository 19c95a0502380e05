"""``fit verify`` bounds the work one FIT can ask for, with one clear error per bound.

Only public keys here (no signature can verify); tests/integration/test_fit_scaling.py signs FITs
of every shape in the token and times the verifier on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hsmsign.errors import VerificationError
from hsmsign.formats import fit
from hsmsign.formats.fdt import Fdt, Node
from hsmsign.formats.fit import verify as fit_verify

from tests.unit.test_fit import control, public_ec


def build_fit(
    images: Sequence[tuple[str, bytes]],
    configs: Sequence[tuple[str, dict[str, Sequence[str]]]],
    *,
    sig_nodes: int = 1,
    algo: str = "sha256,ecdsa256",
    fake_value: bool = False,
) -> bytes:
    """A FIT with these images (name, data) and configurations (name, {property: image names}).

    Built by appending children (linear in its size, unlike libfdt's insert-first editing), each
    image with a sha256 hash node, each configuration with ``sig_nodes`` signature nodes. With
    ``fake_value`` the signature nodes carry a value and hashed-strings of the right shape (so a
    verifier goes as far as the signature check), else they are unsigned, for ``sign_fit``.
    """
    f = Fdt(Node(""), bytearray())
    images_node = Node("images")
    confs_node = Node("configurations")
    f.root.children += [images_node, confs_node]
    f.setprop_str(f.root, "description", "hsmsign scaling test")
    for name, data in images:
        image = Node(name)
        f.setprop_str(image, "type", "firmware")
        f.setprop(image, "data", data)
        h = Node("hash-1")
        f.setprop(h, "value", hashlib.sha256(data).digest())
        f.setprop_str(h, "algo", "sha256")
        image.children.append(h)
        images_node.children.append(image)
    for name, props in configs:
        conf = Node(name)
        for prop, names in reversed(list(props.items())):
            f.setprop_strlist(conf, prop, names)
        for i in range(sig_nodes):
            sig = Node(f"signature-{i + 1}")
            f.setprop_str(sig, "key-name-hint", "k")
            f.setprop_str(sig, "algo", algo)
            if fake_value:
                f.setprop(sig, "value", bytes(64))
                f.setprop(sig, "hashed-strings", bytes(8))
            conf.children.append(sig)
        confs_node.children.append(conf)
    if configs:
        f.setprop_str(confs_node, "default", configs[0][0])
    return f.to_bytes()


KEY_DTB = fit.add_key(control(), public_ec(), "k", "sha256", required="conf")[0]
ONE = [("img-0", b"data")]


def test_too_many_configurations() -> None:
    configs = [(f"conf-{i}", {"kernel": ["img-0"]}) for i in range(fit_verify.MAX_CONFIGS + 1)]
    with pytest.raises(VerificationError, match="more than 4096 configurations"):
        fit.verify_fit(build_fit(ONE, configs), KEY_DTB)


def test_too_many_signature_nodes() -> None:
    blob = build_fit(ONE, [("conf-1", {"kernel": ["img-0"]})], sig_nodes=fit_verify.MAX_SIGNATURE_NODES + 1)
    with pytest.raises(VerificationError, match="more than 64 signature nodes in /configurations/conf-1"):
        fit.verify_fit(blob, KEY_DTB)


def test_too_many_image_references() -> None:
    """One image named 200,001 times: bounded before the regions are built from the list."""
    refs = ["img-0"] * (fit_verify.MAX_IMAGE_REFS + 1)
    blob = build_fit(ONE, [("conf-1", {"kernel": ["img-0"], "loadables": refs})], fake_value=True)
    with pytest.raises(VerificationError, match="more than 200000 image references") as exc:
        fit.verify_fit(blob, KEY_DTB)
    assert "\n" not in exc.value.message and exc.value.hint


def test_bounds_leave_plausible_fits_alone() -> None:
    """A kernel FIT for 300 boards (one DTB each): far inside every bound; only the signature fails."""
    images = [("kernel", b"K" * 64)] + [(f"fdt-{i}", b"F" * 16) for i in range(300)]
    configs = [(f"conf-{i}", {"kernel": ["kernel"], "fdt": [f"fdt-{i}"]}) for i in range(300)]
    with pytest.raises(VerificationError, match="signature does not match|not signed by required key"):
        fit.verify_fit(build_fit(images, configs, sig_nodes=2, fake_value=True), KEY_DTB)
