"""oelint-adv on every .bb, .bbappend and .bbclass of the layer: zero findings.

Suppressions live next to the line they cover as '# nooelint: RULE - why'.
The layer's own variables and functions are declared to oelint-adv here
(--constantmods), since they are new names, not misspellings.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LAYER = os.path.join(ROOT, "meta-hsmsign")


def layer_files() -> list[str]:
    found = []
    for pattern in ("**/*.bb", "**/*.bbappend", "**/*.bbclass"):
        found += glob.glob(os.path.join(LAYER, pattern), recursive=True)
    return sorted(found)


def own_names() -> dict[str, list[str]]:
    variables: set[str] = set()
    functions: set[str] = set()
    for path in layer_files():
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        variables |= set(re.findall(r"^([A-Z][A-Z0-9_]*)(?:\[[a-z]+\])? *(?:\?\?=|\?=|=|\+=)", text, re.M))
        variables |= set(re.findall(r"\b((?:HSM_|HSMSIGN_)[A-Z0-9_]+)", text))
        functions |= set(re.findall(r"^(?:python )?([a-z_][a-z0-9_]*) *\(\) *\{", text, re.M))
        functions |= set(re.findall(r"^def ([a-z_][a-z0-9_]*)\(", text, re.M))
    return {"variables": sorted(variables), "functions": sorted(functions)}


def test_layer_has_files_to_lint() -> None:
    names = [os.path.basename(p) for p in layer_files()]
    assert "hsmsign.bbclass" in names and "hsmsign-native_0.1.0.bb" in names


@pytest.mark.parametrize("release", ["scarthgap", "wrynose"])
def test_oelint_adv_has_no_findings(tmp_path: object, release: str) -> None:
    exe = shutil.which("oelint-adv")
    if exe is None:
        pytest.skip("oelint-adv not installed (pip install -r scripts/deps/layer.pip)")
    names = own_names()
    mods = os.path.join(str(tmp_path), "hsmsign-constants.json")
    with open(mods, "w", encoding="utf-8") as fh:
        known = {"variables": {"known": names["variables"]}, "functions": {"known": names["functions"]}}
        json.dump(known, fh)
    done = subprocess.run(
        [exe, "--quiet", f"--release={release}", f"--constantmods=+{mods}", *layer_files()],
        capture_output=True,
        text=True,
        check=False,
        cwd=str(tmp_path),
    )
    findings = (done.stdout + done.stderr).strip()
    assert findings == "", findings
    assert done.returncode == 0
