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
