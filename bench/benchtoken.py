"""The development token the benches sign with, set up once for all of them.

``bench_encrypt``, ``bench_pe``, ``bench_rauc`` and ``bench_sign`` import this (they run as
scripts, so this folder is on their path): ``hsmsign dev-init`` in the bench's scratch folder,
and the environment every timed command gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DevToken:
    env: dict[str, str]  # for every command a bench runs
    hsmsign: list[str]  # the command, from this checkout
    dev: dict  # what `hsmsign dev-init --json` printed: conf, module, token, pin_file, keys

    def uri(self, role: str) -> str:
        return str(self.dev["keys"][role]["uri"])

    def label(self, role: str) -> str:
        return str(self.dev["keys"][role]["label"])

    def pin(self) -> str:
        """The run-time PIN of this throw-away token, for the tools that want it in a URI or env."""
        return Path(self.dev["pin_file"]).read_text().strip()


def dev_token(work: Path) -> DevToken:
    """A development token in ``work/dev``; hsmsign measured as installed: the command is the
    script pip's entry point and hsmsign-native install (``hsmsign.launch.console_main``, not
    ``python -m hsmsign``, whose runpy costs 2 ms of each cold run), run by this interpreter,
    with byte-code caches (an install has them; this checkout's go to ``work/pycache``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "meta-hsmsign" / "lib")
    env["HSMSIGN_DEV_HOME"] = str(work / "dev")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    script = work / "bin" / "hsmsign"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!{sys.executable}\nfrom hsmsign.launch import console_main\nconsole_main()\n")
    script.chmod(0o755)
    hsmsign = [str(script)]
    init = subprocess.run(
        [*hsmsign, "dev-init", "--json"], env=env, capture_output=True, text=True, check=False
    )
    if init.returncode != 0:
        raise SystemExit(f"hsmsign dev-init failed: {init.stderr.strip()[-600:]}")
    dev = json.loads(init.stdout)
    env["SOFTHSM2_CONF"] = dev["conf"]
    env["HSMSIGN_MODE"] = "development"
    return DevToken(env, hsmsign, dev)
