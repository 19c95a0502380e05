"""Where the PIN comes from, and nothing else.

The PIN never travels through argv, BitBake variables or logs. Sources, in order:

1. ``pin-value`` in the URI: development mode only (RFC 7512 allows it, but a PIN
   written in a URI ends up in config files, shell history and ``bitbake -e``).
2. ``pin-source`` in the URI: ``file:/path`` (or a bare absolute path) holds the
   PIN; ``|/path/to/program args`` runs a program (no shell) whose standard output
   is the PIN, as p11-kit and OpenSC read it.
3. ``--pin-env NAME`` (or ``HSMSIGN_PIN_ENV=NAME``): the PIN is read from the
   environment variable NAME when the token is opened, so a CI secret store can
   provide it without it being written anywhere.
4. No PIN: the token has a protected authentication path (PIN pad), or needs no
   login. Otherwise we fail with a message that says how to provide one.

One trailing newline is stripped from files and program output.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass

from .errors import ConfigError, PolicyError
from .uri import Pkcs11Uri

COMMAND_TIMEOUT_S = 60


@dataclass(frozen=True)
class PinSource:
    """How to obtain the PIN; ``describe()`` is safe to print (never the PIN)."""

    kind: str  # "value" | "file" | "command" | "env" | "none"
    where: str = ""

    def describe(self) -> str:
        return {
            "value": "pin-value in the URI (development only)",
            "file": f"file {self.where}",
            "command": f"program {self.where.split()[0] if self.where else ''}",
            "env": f"environment variable {self.where}",
            "none": "no PIN configured",
        }[self.kind]


def pin_source_for(uri: Pkcs11Uri, pin_env: str | None, mode: str) -> PinSource:
    """Decide where the PIN comes from (without reading it)."""
    if uri.pin_value is not None:
        if mode != "development":
            raise PolicyError(
                "the PKCS#11 URI carries a pin-value; a PIN written into a URI leaks into config, "
                "logs and `bitbake -e`",
                "put the PIN in a file readable only by the build user and use "
                "'?pin-source=file:/path/to/pin', or export it in an environment variable and pass "
                "--pin-env NAME (HSMSIGN_PIN_ENV=NAME); pin-value is accepted only with "
                "--mode development",
            )
        return PinSource("value")
    if uri.pin_source is not None:
        src = uri.pin_source
        if src.startswith("|"):
            return PinSource("command", src[1:].strip())
        if src.startswith("file:"):
            path = src[len("file:") :]
            # file:///path and file:/path both name /path
            if path.startswith("//"):
                path = path[2:]
            return PinSource("file", path)
        if src.startswith("/"):
            return PinSource("file", src)
        raise ConfigError(
            f"pin-source '{src}' is neither file:/ABSOLUTE/PATH nor |PROGRAM",
            "write ?pin-source=file:/run/secrets/hsm-pin",
        )
    from .settings import Settings

    env_name = pin_env or Settings.from_env(check=False).pin_env or None
    if env_name:
        return PinSource("env", env_name)
    return PinSource("none")


def read_pin(source: PinSource, uri: Pkcs11Uri) -> str | None:
    """Read the PIN from its source; None when no PIN is configured."""
    if source.kind == "none":
        return None
    if source.kind == "value":
        return uri.pin_value
    if source.kind == "env":
        value = os.environ.get(source.where)
        if value is None:
            raise ConfigError(
                f"the PIN environment variable {source.where} is not set",
                f"export {source.where} from your CI secret store before running hsmsign, "
                "or point --pin-env at the variable that holds the PIN",
            )
        return _strip(value)
    if source.kind == "file":
        return _read_pin_file(source.where)
    return _run_pin_program(source.where)


def _read_pin_file(path: str) -> str:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as fh:
            data = fh.read(4096)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"PIN file {path} does not exist",
            "create it (mode 0600) outside the build tree, or fix pin-source=file:... in the URI",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read PIN file {path}: {exc}", "check its permissions") from exc
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        print(
            f"hsmsign: warning: PIN file {path} is readable by other users; chmod 600 it",
            file=sys.stderr,
        )
    pin = _strip(data)
    if not pin:
        raise ConfigError(f"PIN file {path} is empty", "write the PIN into it (one line)")
    return pin


def _run_pin_program(command: str) -> str:
    argv = shlex.split(command)
    if not argv:
        raise ConfigError("pin-source=| names no program", "write ?pin-source=|/usr/local/bin/get-hsm-pin")
    try:
        done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"PIN program {argv[0]} not found", "give its absolute path in pin-source=|..."
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"PIN program {argv[0]} did not finish in {COMMAND_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise ConfigError(f"cannot run PIN program {argv[0]}: {exc.strerror}") from exc
    if done.returncode != 0:
        raise ConfigError(
            f"PIN program {argv[0]} exited with status {done.returncode}",
            "run it by hand to see why; its standard output must be the PIN",
        )
    try:
        pin = _strip(done.stdout.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"PIN program {argv[0]} printed something that is not UTF-8 text") from exc
    if not pin:
        raise ConfigError(f"PIN program {argv[0]} printed nothing")
    return pin


def _strip(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value
