"""What BitBake loads at parse time: the standard library and a known set of hsmsign modules.

``addpylib`` imports ``hsmsign.bitbake`` with the host Python, where python-pkcs11,
cryptography and asn1crypto are absent. docs/dev/internals.md lists the same set.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import hsmsign

LIB = Path(hsmsign.__file__).resolve().parents[1]
PARSE_TIME = {
    "hsmsign",
    "hsmsign.bitbake",
    "hsmsign.bitbake.checks",
    "hsmsign.bitbake.runtime",
    "hsmsign.devtoken",
    "hsmsign.errors",
    "hsmsign.known_keys",
    "hsmsign.roles",
    "hsmsign.secrets",
    "hsmsign.settings",
    "hsmsign.uri",
}

# Import the classes' module with the heavy packages blocked, call what the classes call at
# parse time and in their task-time Python, and report what got loaded.
PROBE = """
import json, sys, sysconfig
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('cryptography', 'pkcs11', 'asn1crypto'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
before = set(sys.modules)
import hsmsign.bitbake as hb
d = hb.DictData({
    'HSM_PKCS11_URI': 'pkcs11:token=t;object=k?pin-source=file:/run/pin',
    'HSMSIGN_PUBKEY_SHA256': 'ab' * 32, 'HSMSIGN_MODE': 'development', 'TMPDIR': '/tmp',
    'SWUPDATE_PRIVATE_KEY': '/keys/k.pem', 'HSMSIGN_SWUPDATE_DIR': '/w', 'HSMSIGN_CMD': 'hsmsign',
    'HSMSIGN_SWUPDATE_MODE': 'cms',
})
hb.check_config(d, ['HSM_PKCS11_URI', 'FW_AES_KEY'])
hb.check_value('X', 'pkcs11:token=t?pin-value=1234', True)
for role in hb.ROLES:
    hb.key_identity(d, role); hb.key_name(d, role); hb.lockfile(d, role)
hb.img_key_name(d); hb.dev_default_uri(d, {}); hb.swupdate_sign_tool(d)
hb.child_env(d, {}, 'FITIMAGE'); hb.redact('pin-value=1')
stdlib = [sysconfig.get_paths()[k] for k in ('stdlib', 'platstdlib')]
loaded = {}
for name, mod in list(sys.modules.items()):
    if name in before or mod is None:
        continue
    loaded[name] = getattr(mod, '__file__', None) or ''
print(json.dumps({'loaded': loaded, 'stdlib': stdlib}))
"""


def test_parse_time_loads_only_the_standard_library_and_the_parse_time_modules() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(LIB)},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ours = {name for name in report["loaded"] if name.split(".")[0] == "hsmsign"}
    assert ours == PARSE_TIME
    for name in ours:
        assert str(Path(report["loaded"][name]).resolve()).startswith(str(LIB))
    stdlib = [os.path.realpath(p) for p in report["stdlib"]]
    foreign = {
        name: path
        for name, path in report["loaded"].items()
        if name.split(".")[0] != "hsmsign"
        and path
        and (
            "site-packages" in path
            or "dist-packages" in path
            or not any(os.path.realpath(path).startswith(p) for p in stdlib)
        )
    }
    assert foreign == {}


def _module_file(name: str) -> Path:
    path = LIB.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_stdlib(top: str) -> bool:
    if top in sys.builtin_module_names or top == "__future__":
        return True
    spec = importlib.util.find_spec(top)
    origin = (spec.origin or "") if spec is not None else ""
    if origin in ("built-in", "frozen"):
        return True
    stdlib = [os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")]
    path = os.path.realpath(origin)
    return "-packages" not in path and any(path.startswith(p + os.sep) for p in stdlib)


def test_parse_time_modules_import_only_stdlib_and_each_other_at_module_level() -> None:
    """The static half: a new module-level import in a parse-time module must be one of them."""
    for name in sorted(PARSE_TIME):
        tree = ast.parse(_module_file(name).read_text())
        package = name if _module_file(name).name == "__init__.py" else name.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                    targets = [prefix] if node.module else [f"{prefix}.{a.name}" for a in node.names]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top == "hsmsign":
                    # a name imported from a module is fine; a module must be a parse-time one
                    module = target if _module_file(target).exists() else target.rpartition(".")[0]
                    assert module in PARSE_TIME, f"{name} imports {target} at module level"
                else:
                    assert _is_stdlib(top), f"{name} imports {target} at module level"
