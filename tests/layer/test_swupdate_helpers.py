"""meta-swupdate still defines the helpers hsmsign-swupdate.bbclass answers through the token.

meta-swupdate has no hook for another encrypter, so for the run of ``do_swuimage`` the
class replaces ``swupdate_extract_keys``, ``swupdate_get_IV`` and ``swupdate_encrypt_file``
in BitBake's function context (``hsmsign.bitbake.SwupdateTokenAes``). If meta-swupdate
renames one or changes its arguments, encryption would silently fall back to its own
key-file code: this test fails first. It reads ``swupdate-lib.bbclass`` from
``HSMSIGN_TEST_METASWUPDATE``, the unpacked snapshots under ``$HSMSIGN_CACHE/yocto``, or
the snapshot archives in ``../shared/yocto``.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import tarfile
from pathlib import Path

import pytest
from hsmsign.bitbake import SwupdateTokenAes

ROOT = Path(__file__).resolve().parents[2]
LIB_CLASS = "classes-recipe/swupdate-lib.bbclass"


def _sources() -> dict[str, str]:
    found: dict[str, str] = {}
    explicit = os.environ.get("HSMSIGN_TEST_METASWUPDATE")
    if explicit and (Path(explicit) / LIB_CLASS).is_file():
        found["HSMSIGN_TEST_METASWUPDATE"] = (Path(explicit) / LIB_CLASS).read_text()
    cache = Path(os.environ.get("HSMSIGN_CACHE", Path.home() / ".cache" / "hsmsign")) / "yocto"
    for path in sorted(cache.glob(f"*/meta-swupdate/{LIB_CLASS}")):
        found.setdefault(path.parts[-4], path.read_text())
    for archive in sorted((ROOT.parent / "shared" / "yocto").glob("*.tar.xz")):
        release = archive.name.split(".")[0]
        if release in found or release.startswith("u-boot"):
            continue
        with tarfile.open(archive) as tar:
            member = next((m for m in tar if m.name.endswith(f"meta-swupdate/{LIB_CLASS}")), None)
            fh = tar.extractfile(member) if member is not None else None
            if fh is not None:
                found[release] = fh.read().decode()
    return found


SOURCES = _sources()


def _functions(text: str) -> dict[str, list[str]]:
    """The Python ``def`` functions of a bbclass: name -> argument names."""
    out: dict[str, list[str]] = {}
    for match in re.finditer(r"^def (\w+)\(([^)]*)\):", text, re.MULTILINE):
        args = ast.parse(f"def f({match.group(2)}): pass").body[0].args  # type: ignore[attr-defined]
        out[match.group(1)] = [a.arg for a in args.args]
    return out


@pytest.mark.skipif(not SOURCES, reason="no meta-swupdate: set HSMSIGN_TEST_METASWUPDATE (docs/layer.md)")
@pytest.mark.parametrize("release", sorted(SOURCES))
def test_meta_swupdate_defines_what_the_token_helpers_replace(release: str) -> None:
    functions = _functions(SOURCES[release])
    helpers = SwupdateTokenAes("pkcs11:token=t;object=aes", "00" * 16, True, lambda *a: None, print)
    for name, method in helpers.overrides().items():
        if name == "swupdate_get_IV" and name not in functions:
            # scarthgap: no per-file IV; the class then gives every file the bundle IV
            assert "swupdate_get_IV" not in SOURCES[release], release
            continue
        assert name in functions, f"{release}: meta-swupdate no longer defines {name}"
        ours = list(inspect.signature(method).parameters)
        assert len(functions[name]) == len(ours), f"{release}: {name}{tuple(functions[name])} vs ours {ours}"
