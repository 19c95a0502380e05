"""``fit verify`` is linear in the FIT: FITs signed in the token, up to many signatures, and 8,000 loadables.

Times are CPU time of this process (``time.process_time``), best of two, so a loaded machine does not
decide them; growth is checked as the ratio between a FIT and one four times its size (linear: about
4x; the quadratic verifier this replaces took 16x, and 17 s of CPU for 8,000 loadables).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hsmsign.errors import HsmsignError, VerificationError
from hsmsign.formats import fit
from hsmsign.formats.fdt import Fdt, Node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SoftHsm
from tests.unit.test_fit_limits import build_fit


@pytest.fixture(scope="module")
def key(softhsm: SoftHsm, ec256: str) -> Iterator[Any]:
    from hsmsign import token

    with token.open_key(ec256, mode="development") as k:
        yield k


@pytest.fixture(scope="module")
def key_dtb(key: Any) -> bytes:
    empty = Fdt(Node(""), bytearray()).to_bytes()
    return fit.add_key(empty, key.public_key(), "k", "sha256", required="conf")[0]


def sign(blob: bytes, key: Any) -> bytes:
    return fit.sign_fit(blob, lambda hint: key, fit.SignOptions(timestamp=1700000000)).data


def cpu_seconds(data: bytes, dtb: bytes, runs: int = 1) -> float:
    """The verifier's own CPU time: the cyclic garbage collector is paused while it runs.

    CPython's collector walks every live object a few times as a big FIT's nodes are
    allocated, which grows faster than the FIT (2.4-2.8x per doubling measured, 2.0-2.15x
    without it); the N-versus-4N checks below are about hsmsign's algorithm.
    """
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            report = fit.verify_fit(data, dtb)
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
        assert report.checked
    return best


def loadables(n: int) -> bytes:
    images = [(f"fw-{i}", i.to_bytes(4, "big")) for i in range(n)]
    return build_fit(images, [("conf-1", {"kernel": ["fw-0"], "loadables": [name for name, _ in images]})])


def test_u_boots_limit_of_hashed_nodes(key: Any, key_dtb: bytes) -> None:
    """U-Boot checks a configuration signature over at most 100 nodes (IMAGE_MAX_HASHED_NODES):
    the root, the configuration, and each image named with its hash node (``loadables(n)``
    names fw-0 twice: 2 + 2 * (n + 1) nodes, as mkimage lists them). 48 loadables are signed
    and verify; 49 are refused before the token signs anything: U-Boot would never boot them."""
    report = fit.verify_fit(sign(loadables(48), key), key_dtb)
    assert report.checked
    asked: list[str] = []
    with pytest.raises(HsmsignError, match="would sign 102 nodes") as exc:
        fit.sign_fit(loadables(49), lambda hint: asked.append(hint) or key, fit.SignOptions(timestamp=1))
    assert "at most 100" in exc.value.message and exc.value.hint
    assert not asked


def test_8000_loadables(key_dtb: bytes) -> None:
    """A FIT with 8,000 loadables in one configuration (the one that took 17 s of CPU before the
    verifier was linear): refused, and the refusal costs linear time, not quadratic."""
    big, small = loadables(8000), loadables(2000)
    for blob in (big, small):
        with pytest.raises(VerificationError):
            fit.verify_fit(blob, key_dtb)

    def refusal_cpu(data: bytes) -> float:
        best = float("inf")
        for _ in range(2):
            gc.collect()
            gc.disable()
            try:
                start = time.process_time()
                with pytest.raises(VerificationError):
                    fit.verify_fit(data, key_dtb)
                best = min(best, time.process_time() - start)
            finally:
                gc.enable()
        return best

    t_big, t_small = refusal_cpu(big), refusal_cpu(small)
    assert t_big < 2.0, f"8,000 loadables took {t_big:.2f} s of CPU"
    assert t_big < 6 * t_small + 0.1, (t_small, t_big)


def signatures(configs: int, per_config: int = 8) -> bytes:
    images = [("kernel", b"K" * 4096)] + [(f"fdt-{i}", b"F" * 2048) for i in range(configs)]
    confs = [(f"conf-{i}", {"kernel": ["kernel"], "fdt": [f"fdt-{i}"]}) for i in range(configs)]
    return build_fit(images, confs, sig_nodes=per_config)


def test_many_signatures(key: Any, key_dtb: bytes) -> None:
    """Eight signature nodes per configuration (the 214 KB FIT that took 8.8 s), configurations x4."""
    small = sign(signatures(4), key)
    big = sign(signatures(16), key)
    t_small, t_big = cpu_seconds(small, key_dtb, runs=2), cpu_seconds(big, key_dtb, runs=2)
    assert t_big < 1.0, f"{len(big)} bytes, {16 * 8} signatures: {t_big:.2f} s of CPU"
    assert t_big < 6 * t_small + 0.1, (t_small, t_big)


def test_signature_check_bound(key: Any, key_dtb: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every signature verifies, but checking them all would pass the bound: one clear error."""
    data = sign(signatures(4, per_config=3), key)
    assert fit.verify_fit(data, key_dtb).checked  # 4 checks: the first node of each verifies
    # 'other' (tried first) signed nothing, 'k' verifies: required-mode any accepts each configuration,
    # after 3 failed nodes for 'other' and 1 for 'k': 16 checks for 4 configurations
    other = fit.add_key(key_dtb, fit_public_other(), "other", "sha256", required="conf", required_mode="any")[
        0
    ]
    assert [k.name for k in fit.load_keys(other)[0]] == ["other", "k"]
    assert fit.verify_fit(data, other).checked
    monkeypatch.setattr(fit.verify, "MAX_SIGNATURE_CHECKS", 10)
    with pytest.raises(VerificationError, match="more than 10 signature checks"):
        fit.verify_fit(data, other)


def fit_public_other() -> Any:
    from tests.unit.test_fit import public_ec

    return public_ec()


names = st.text(alphabet="abcdefgh-@\n\x1b", min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_images=st.integers(1, 60),
    n_configs=st.integers(1, 10),
    sig_nodes=st.integers(1, 3),
    refs=st.lists(st.integers(0, 80), min_size=1, max_size=120),
    extra=st.lists(names, max_size=4),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=3),
)
def test_fuzz_verify_is_bounded(
    key: Any,
    key_dtb: bytes,
    n_images: int,
    n_configs: int,
    sig_nodes: int,
    refs: list[int],
    extra: list[str],
    flips: list[tuple[int, int]],
) -> None:
    """Random shapes (duplicate and dangling references, odd names), signed, then maybe damaged:
    each verification ends within a fixed time, and with a result or one one-line error."""
    images = [(f"img-{i}", bytes([i % 256]) * (i % 7 + 1)) for i in range(n_images)]
    present = [f"img-{r % n_images}" for r in refs]  # with duplicates
    dangling = [f"img-{r}" for r in refs if r >= n_images] + extra  # resolve to nothing: skipped
    configs = [
        (
            f"conf-{c}",
            {
                "kernel": [f"img-{c % n_images}"],
                "loadables": present[c::n_configs] or ["img-0"],
                "board-extra": dangling[c::n_configs] or ["none"],
            },
        )
        for c in range(n_configs)
    ]
    data = sign(build_fit(images, configs, sig_nodes=sig_nodes), key)
    damaged = bytearray(data)
    for pos, value in flips:
        damaged[pos % len(damaged)] = value
    for blob in (data, bytes(damaged)):
        start = time.process_time()
        try:
            report = fit.verify_fit(blob, key_dtb)
            assert len(report.configs) == n_configs
        except HsmsignError as exc:
            assert blob is not data, exc.message  # what hsmsign signed, hsmsign verifies
            assert exc.message and "\n" not in exc.message
        assert time.process_time() - start < 1.0
