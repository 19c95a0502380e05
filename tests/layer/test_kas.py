"""The kas files: kas's own JSON schema, pinned commits, no secrets, and real kas.

Files: ``kas/<release>/dev.yml`` (SoftHSM development build) and
``kas/<release>/ci.yml`` (production, real HSM) for scarthgap and wrynose, short
because they include ``kas/include/common.yml``, ``kas/include/<release>.yml``
and ``kas/include/production.yml``; ``kas/dev.yml`` and ``kas/ci.yml`` are the
current LTS (wrynose).

With the BitBake snapshots of a release (scripts/run-layer-tests), real kas runs
on that release's files: ``kas dump`` and ``kas shell FILE -c "bitbake -p"``,
offline. A kas override (a second file after ``:``) turns every remote repo into
a local ``path:`` repo without ``url`` (kas then does no git operation) pointing
at the snapshot, and adds ``BB_NO_NETWORK``. It also adds a BBMASK that leaves
out every recipe outside meta-hsmsign: the whole configuration kas writes
(bblayers.conf from the files' repos and layers, LAYERDEPENDS, LAYERSERIES_COMPAT,
their local.conf lines, the class's parse-time checks in development and in
production mode) is parsed, but the recipes of OE-Core, meta-oe and
meta-swupdate are not (a full parse is minutes per file; the main build in
test_bitbake_real.py does that once per release). The pinned commits are checked
against the snapshot's SOURCES, so what parses is what the files pin.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASES = ("scarthgap", "wrynose")
RELEASE_FILES = [f"kas/{rel}/{kind}.yml" for rel in RELEASES for kind in ("dev", "ci")]
ALIASES = {"kas/dev.yml": "kas/wrynose/dev.yml", "kas/ci.yml": "kas/wrynose/ci.yml"}
USER_FILES = [*RELEASE_FILES, *ALIASES]
ALL_FILES = sorted(
    os.path.relpath(os.path.join(base, name), ROOT)
    for base, _dirs, names in os.walk(os.path.join(ROOT, "kas"))
    for name in names
    if name.endswith(".yml")
)
BRANCHES = {
    "scarthgap": {"bitbake": "2.8", "openembedded-core": "scarthgap"},
    "wrynose": {"bitbake": "2.18", "openembedded-core": "wrynose"},
}

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

BITBAKE = os.environ.get("HSMSIGN_TEST_BITBAKE", "")
OECORE = os.environ.get("HSMSIGN_TEST_OECORE", "")
METAOE = os.environ.get("HSMSIGN_TEST_METAOE", "")
METASWUPDATE = os.environ.get("HSMSIGN_TEST_METASWUPDATE", "")


def release_of_oecore() -> str:
    """The release of HSMSIGN_TEST_OECORE: the newest LAYERSERIES_CORENAMES entry ('' without one)."""
    try:
        with open(os.path.join(OECORE, "meta", "conf", "layer.conf"), encoding="utf-8") as fh:
            found = re.search(r'^LAYERSERIES_CORENAMES = "([^"]*)"', fh.read(), re.M)
    except OSError:
        return ""
    return found.group(1).split()[-1] if found else ""


RELEASE = release_of_oecore()


def kas_schema() -> dict:
    kas = pytest.importorskip("kas")
    path = os.path.join(os.path.dirname(kas.__file__), "schema-kas.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load(name: str) -> dict:
    with open(os.path.join(ROOT, name), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def merge(base: dict, over: dict) -> dict:
    """kas's merge: mappings merge key by key, anything else is replaced by the later file."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merged(name: str) -> dict:
    """The configuration kas builds from ``name`` and its (repo-relative) includes."""
    config = load(name)
    result: dict = {}
    for include in config.get("header", {}).get("includes", []):
        assert isinstance(include, str), f"{name}: only local includes here"
        result = merge(result, merged(include))
    return merge(result, config)


@pytest.mark.parametrize("name", ALL_FILES)
def test_valid_against_kas_schema(name: str) -> None:
    jsonschema.validate(load(name), kas_schema())


def test_every_file_is_tested() -> None:
    includes = {f for f in ALL_FILES if f.startswith("kas/include/")}
    assert set(ALL_FILES) == set(USER_FILES) | includes, ALL_FILES


def test_schema_rejects_a_broken_file() -> None:
    broken = load("kas/include/wrynose.yml")
    broken["repos"]["bitbake"]["commit"] = 42
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, kas_schema())


def test_aliases_are_the_current_lts() -> None:
    for alias, target in ALIASES.items():
        assert merged(alias) == merge(merged(target), {"header": load(alias)["header"]})


@pytest.mark.parametrize("name", USER_FILES)
def test_remote_layers_are_pinned_to_commits(name: str) -> None:
    repos = merged(name)["repos"]
    remote = {repo: r for repo, r in repos.items() if r and r.get("url")}
    assert {"bitbake", "openembedded-core", "meta-openembedded", "meta-swupdate"} == set(remote)
    for repo, config in remote.items():
        assert re.fullmatch(r"[0-9a-f]{40}", config.get("commit", "")), f"{name}: {repo}"
    release = ALIASES.get(name, name).split("/")[1]
    for repo, branch in BRANCHES[release].items():
        assert remote[repo]["branch"] == branch, f"{name}: {repo}"
    for repo in ("meta-openembedded", "meta-swupdate"):
        assert remote[repo]["branch"] == release, f"{name}: {repo}"
    layers = repos["meta-openembedded"]["layers"]
    assert {"meta-oe", "meta-python"} <= set(layers), "LAYERDEPENDS needs both"


@pytest.mark.parametrize("name", USER_FILES)
def test_modes_and_no_secrets(name: str) -> None:
    conf = "\n".join(merged(name)["local_conf_header"].values())
    assert 'INHERIT += "hsmsign"' in conf
    if name.endswith("dev.yml"):
        assert 'HSMSIGN_MODE = "development"' in conf
    else:
        assert 'HSMSIGN_MODE = "production"' in conf and "development" not in conf
        assert "pin-source=file:${HSM_PIN_FILE}" in conf
    release = ALIASES.get(name, name).split("/")[1]
    if release == "wrynose":  # kernel.bbclass refuses fitImage in KERNEL_IMAGETYPES from wrynose on
        assert "fitImage" not in conf and "linux-yocto-fitimage" in merged(name)["target"]
    else:
        assert 'KERNEL_CLASSES += "kernel-fitimage"' in conf


@pytest.mark.parametrize("name", ALL_FILES)
def test_no_secret_in_any_file(name: str) -> None:
    with open(os.path.join(ROOT, name), encoding="utf-8") as fh:
        text = fh.read()
    assert "pin-value" not in text and "PRIVATE KEY" not in text
    assert not re.search(r"^\s*HSM_PIN\s*:", text, re.M), "a PIN in kas env: lands in the datastore"


# --- real kas against the snapshots of the release under test -----------------------------------

_HERE = [f for f in RELEASE_FILES if f.split("/")[1] == RELEASE] + [
    alias for alias, target in ALIASES.items() if target.split("/")[1] == RELEASE
]
KAS_CASES = _HERE or [
    pytest.param(
        None,
        marks=[
            pytest.mark.skip(reason=f"no kas file for {RELEASE or 'this release'}"),
            pytest.mark.skip_allowed(f"no kas file for {RELEASE or 'this release'}"),
        ],
        id="no-kas-file",
    )
]
needs_bitbake = pytest.mark.skipif(
    not (BITBAKE and OECORE and METAOE and METASWUPDATE),
    reason="set HSMSIGN_TEST_BITBAKE, _OECORE, _METAOE, _METASWUPDATE (scripts/run-layer-tests)",
)
not_root = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="BitBake refuses root")

# what a CI job provides to kas/<release>/ci.yml; none of it is secret
CI_ENV = {
    "HSM_TOKEN": "acme-prod",
    "HSM_KEY": "fw-signing-2026",
    "HSMSIGN_PUBKEY_SHA256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "HSM_PKCS11_MODULE": "/usr/lib/softhsm/libsofthsm2.so",
    "HSM_PIN_FILE": "/run/secrets/hsm-pin",
}


def snapshot_sources() -> dict[str, str]:
    """repo name -> commit from the snapshot's SOURCES file (``owner/name branch commit date``)."""
    path = os.path.join(os.path.dirname(OECORE), "SOURCES")
    found: dict[str, str] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and "/" in fields[0] and re.fullmatch(r"[0-9a-f]{40}", fields[2]):
                    found[fields[0].split("/")[1]] = fields[2]
    return found


@pytest.fixture(scope="module")
def kas_tree(layer_builddir: Callable[[str], str]) -> str:
    """A git work tree holding the checkout's kas/ files, unchanged, and the override.

    kas resolves includes from the root of the git repository around the kas file;
    the checkout may not be a git tree this user may use (CI copies it without .git,
    and git refuses another user's repository), so the files are copied into one.
    """
    tree = os.path.join(layer_builddir("kas"), "tree")
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "kas"), os.path.join(tree, "kas"))
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", tree], check=True, env=env)
    snapshots: dict[str, Any] = {
        "bitbake": BITBAKE,
        "openembedded-core": OECORE,
        "meta-openembedded": METAOE,
        "meta-swupdate": METASWUPDATE,
    }
    override = {
        "header": {"version": 14},
        "repos": {
            "meta-hsmsign": {"path": ROOT},
            **{name: {"url": None, "path": path} for name, path in snapshots.items()},
        },
        "local_conf_header": {
            "zz-test-offline": (
                'BB_NO_NETWORK = "1"\nCONNECTIVITY_CHECK_URIS = ""\n'
                'BB_NUMBER_THREADS = "2"\nBB_NUMBER_PARSE_THREADS = "2"\n'
                # kas writes layer paths relative to the build directory: match the tail
                'BBMASK += "^(?!.*/meta-hsmsign/recipes-)"\n'
            )
        },
    }
    with open(os.path.join(tree, "offline.yml"), "w", encoding="utf-8") as fh:
        yaml.safe_dump(override, fh)
    return tree


def run_kas(tree: str, builddir: str, *argv: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin",
        "HOME": os.environ.get("HOME", builddir),
        "KAS_WORK_DIR": tree,
        "KAS_BUILD_DIR": builddir,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        **CI_ENV,
    }
    return subprocess.run(
        [sys.executable, "-m", "kas", *argv],
        cwd=tree, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip


@needs_bitbake
@pytest.mark.parametrize("name", KAS_CASES)
def test_kas_files_pin_the_snapshot(name: str) -> None:
    pinned = snapshot_sources()
    assert pinned, f"no SOURCES next to {OECORE}: cannot tell what the snapshot is"
    for repo, config in merged(name)["repos"].items():
        if config and config.get("url"):
            assert config["commit"] == pinned[repo], f"{name}: {repo} pins another commit than the snapshot"


@needs_bitbake
@pytest.mark.parametrize("name", KAS_CASES)
def test_kas_dump(name: str, kas_tree: str, layer_builddir: Callable[[str], str]) -> None:
    done = run_kas(kas_tree, layer_builddir("kas-dump"), "dump", f"{name}:offline.yml")
    assert done.returncode == 0, done.stderr[-3000:]
    dumped = yaml.safe_load(done.stdout)
    assert dumped["machine"] == "qemuarm64"
    assert {"meta-hsmsign", "openembedded-core", "meta-openembedded"} <= set(dumped["repos"])
    assert "HSMSIGN_MODE" in "\n".join(dumped["local_conf_header"].values())


@needs_bitbake
@not_root
@pytest.mark.parametrize("name", [c for c in KAS_CASES if not isinstance(c, str) or c in RELEASE_FILES])
def test_kas_shell_parses(name: str, kas_tree: str, layer_builddir: Callable[[str], str]) -> None:
    builddir = layer_builddir("kas-" + name.replace("/", "-").removesuffix(".yml"))
    done = run_kas(kas_tree, builddir, "shell", f"{name}:offline.yml", "-c", "bitbake -p")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    summary = re.search(r"Parsing of (\d+) \.bb files complete.*?(\d+) errors", out)
    assert summary is not None and int(summary.group(1)) > 0 and summary.group(2) == "0", out[-3000:]
    assert "matched BBFILE_PATTERN_hsmsign" not in out, out[-3000:]  # meta-hsmsign's recipes were parsed
    with open(os.path.join(builddir, "conf", "bblayers.conf"), encoding="utf-8") as fh:
        bblayers = fh.read()
    for layer in ("meta-oe", "meta-python", "meta-hsmsign", "meta-swupdate"):
        assert f"/{layer}" in bblayers, bblayers
