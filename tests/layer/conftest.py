"""tests/layer: what the real-BitBake layer tests share.

- ``HSMSIGN_REQUIRE_BITBAKE=1`` (``scripts/run-layer-tests`` under ``.ci/run``
  sets it): a test in tests/layer that skips **fails** instead, whatever the
  reason (BitBake paths missing, SoftHSM, U-Boot tools, oelint-adv, kas). CI
  provides all of them, so a skip there means the test did not prove anything.
  A test that is not meant to run on a release everywhere (say, a scarthgap-only
  hook) is marked ``@pytest.mark.skip_allowed("why")`` and still skips.
- Without it (``./scripts/test`` on a user's clone), real-BitBake tests skip and
  the summary says how to run them.
- ``HSMSIGN_TEST_BUILDROOT``: one directory per release under which every test
  makes its build directories (``layer_builddir`` fixture), so a rerun keeps
  their parse caches; without it, one temporary root per pytest run.
  ``layer_cache_conf`` gives local.conf lines that share BitBake's persistent
  cache (code-parser cache) between the build directories of one root.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator

import pytest

REQUIRE_ENV = "HSMSIGN_REQUIRE_BITBAKE"

HOW_TO_RUN = (
    "run them with scripts/run-layer-tests --release DIR (DIR holds bitbake/, openembedded-core/, "
    "meta-openembedded/ and meta-swupdate/ of one release) or scripts/run-layer-tests BITBAKE OECORE "
    "METAOE [METASWUPDATE] with your own checkouts (docs/layer.md, 'Tests')"
)


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"skip_allowed(reason): this test may skip even when {REQUIRE_ENV}=1 (not meant for this release)",
    )


def _skip_reason(longrepr: object) -> str:
    # a skip's longrepr is (path, line, "Skipped: reason")
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not (required() and report.skipped) or hasattr(report, "wasxfail"):
        return
    if item.get_closest_marker("skip_allowed") is not None:
        return
    report.outcome = "failed"
    report.longrepr = f"{REQUIRE_ENV}=1 but this test skipped: {_skip_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, None, None]:
    # a module-level importorskip (kas, yaml, jsonschema) skips at collection
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if required() and report.outcome == "skipped":
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ENV}=1 but {collector.nodeid} skipped: {_skip_reason(report.longrepr)}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if required():
        return  # every skip left is an allowed one (skip_allowed)
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "tests/layer/" in f"tests/{r.nodeid}"]
    if not skipped:
        return
    terminalreporter.write_line("")
    terminalreporter.write_line(
        f"NOTE: {len(skipped)} layer test(s) in tests/layer were SKIPPED (no real BitBake/OE-Core here, "
        "or BitBake cannot run as root):",
        yellow=True,
        bold=True,
    )
    terminalreporter.write_line(f"      {HOW_TO_RUN}.")


@pytest.fixture(scope="session")
def layer_build_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The root of this run's build directories (``HSMSIGN_TEST_BUILDROOT``, else a temp dir)."""
    root = os.environ.get("HSMSIGN_TEST_BUILDROOT") or str(tmp_path_factory.mktemp("layer-builds"))
    os.makedirs(root, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def layer_builddir(layer_build_root: str) -> Callable[[str], str]:
    """``layer_builddir("name")``: the build directory ``name`` under the root (made if missing)."""

    def make(name: str) -> str:
        path = os.path.join(layer_build_root, name)
        os.makedirs(path, exist_ok=True)
        return path

    return make


@pytest.fixture(scope="session")
def layer_cache_conf(layer_build_root: str) -> str:
    """local.conf lines that share BitBake's persistent cache across this root's build directories.

    The recipe cache is keyed by the whole configuration, so each configuration
    still parses every recipe once; the code-parser cache (PERSISTENT_DIR) is keyed
    by content and makes those later parses cheaper.
    """
    return f'PERSISTENT_DIR = "{os.path.join(layer_build_root, "persistent")}"\n'
