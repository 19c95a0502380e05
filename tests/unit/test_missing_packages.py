"""A Python without python-pkcs11 (or cryptography) gets a configuration error, not "internal error"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "meta-hsmsign" / "lib"

# hide one package from the interpreter, then run the CLI as a user would
HIDE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == {name!r} or name.startswith({name!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from hsmsign.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("module", "package"), [("pkcs11", "python-pkcs11")])
def test_missing_runtime_package_is_a_configuration_error(tmp_path: Path, module: str, package: str) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(b"x")
    done = subprocess.run(
        [sys.executable, "-c", HIDE.format(name=module), "sign", "--mode", "development",
         "--uri", "pkcs11:token=t;object=k?module-path=/nonexistent/module.so",
         "--output", str(tmp_path / "out.sig"), str(payload)],
        env={**os.environ, "PYTHONPATH": str(LIB)}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"the Python package {package} is missing" in done.stderr
    assert "pip install" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.sig").exists()
