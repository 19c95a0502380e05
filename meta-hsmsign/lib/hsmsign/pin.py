"""Where the PIN comes from, and nothing else.

The PIN never travels through argv, BitBake variables or logs. Sources, in order:

1. ``pin-value`` in the URI: development mode only (RFC 7512 allows it, but a PIN
   written in a URI ends up in config files, shell history and ``bitbake -e``).
2. ``pin-source`` in the URI: ``file:/path`` (or a bare absolute path) holds the
   PIN; ``|/path/to/program`` runs a program (no shell) whose standard output is
   the PIN, as p11-kit and OpenSC read it. Production runs a program only without
   arguments (``|/bin/echo 1234`` is a pin-value in disguise), except the few on
   ``hsmsign.uri.PIN_PROGRAM_ALLOWLIST``; production refuses a PIN file that other
   users can read or change (``hsmsign.policy.check_uri`` and ``_read_pin_file``).
3. ``--pin-env NAME`` (or ``HSMSIGN_PIN_ENV=NAME``): the PIN is read from the
   environment variable NAME when the token is opened, so a CI secret store can
   provide it without it being written anywhere.
4. No PIN: the token has a protected authentication path (PIN pad), or needs no
   login. Otherwise we fail with a message that says how to provide one.

One trailing newline is stripped from files and program output.

No child process inherits a PIN: the CLI runs every verb inside :func:`env_withheld`,
which moves the PIN variables (``--pin-env``'s, ``HSMSIGN_PIN_ENV``'s,
``MKIMAGE_SIGN_PIN`` and every name that says PIN, like ``HSM_PIN``) out of the process
environment before the verb starts and keeps them here, so every program hsmsign runs
(``fit_check_sign``, ``mkimage``, ``veritysetup``, the PIN program) starts without them.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from .errors import ConfigError, PolicyError, printable
from .uri import Pkcs11Uri, pin_program_argv

COMMAND_TIMEOUT_S = 60
PIN_FILE_MAX_BYTES = 4096
# Environment variables whose name says they hold a PIN: a "_"-separated word that is or ends in
# PIN (HSM_PIN, PKCS11_PIN, MKIMAGE_SIGN_PIN, SO_PIN, USERPIN). Not PASSWORD: pass(1) needs
# PASSWORD_STORE_DIR in a PIN program.
PIN_ENV_NAME = re.compile(r"(?:^|_)[A-Z0-9]*PIN(?:_|$)", re.IGNORECASE)

# The PIN variables the command took out of its environment (name -> value): read_pin reads
# them here, and no child process inherits them.
_WITHHELD: dict[str, str] = {}


def _pin_names(names: Iterable[str | None], environ: Mapping[str, str]) -> set[str]:
    # HSMSIGN_PIN_ENV holds the NAME of the PIN variable, not a PIN: hsmsign reads it later
    return ({n for n in names if n} | {n for n in environ if PIN_ENV_NAME.search(n)}) - {"HSMSIGN_PIN_ENV"}


def is_withheld(name: str) -> bool:
    """Whether the command took ``name`` out of its environment (it was set)."""
    return name in _WITHHELD


@contextlib.contextmanager
def env_withheld(names: Iterable[str | None] = ()) -> Iterator[list[str]]:
    """For the duration of a command, the PIN variables are out of ``os.environ``.

    ``names``: the variables the configuration names (``--pin-env``, ``HSMSIGN_PIN_ENV``,
    ``MKIMAGE_SIGN_PIN``); with them every variable whose name says PIN (``PIN_ENV_NAME``).
    :func:`read_pin` reads them from here. The CLI runs every verb inside this, so every
    child process (verifiers, mkimage, veritysetup, the PIN program), however it is
    started, starts without them. Yields their names (never their values); puts them back
    on exit (a command run in-process, as tests do, leaves the environment as it found it).
    """
    moved: dict[str, str] = {}
    for name in sorted(_pin_names(names, os.environ)):
        value = os.environ.pop(name, None)
        if value is not None:
            moved[name] = value
    _WITHHELD.update(moved)
    try:
        yield sorted(moved)
    finally:
        for name, value in moved.items():
            _WITHHELD.pop(name, None)
            os.environ.setdefault(name, value)


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) without any PIN variable, for a child process."""
    environ = os.environ if environ is None else environ
    drop = _pin_names(_WITHHELD, environ)
    return {k: v for k, v in environ.items() if k not in drop}


class PinSource(NamedTuple):
    """How to obtain the PIN; ``describe()`` is safe to print (never the PIN)."""

    kind: str  # "value" | "file" | "command" | "env" | "none"
    where: str = ""
    # production: a PIN file other users can read or change is refused (development: a warning)
    strict: bool = True

    def describe(self) -> str:
        if self.kind == "command":
            argv = pin_program_argv(self.where) or ["?"]
            more = " with arguments (not shown)" if len(argv) > 1 else ""
            return f"program {printable(argv[0], 120)}{more}"
        return {
            "value": "pin-value in the URI (development only)",
            "file": f"file {self.where}",
            "env": f"environment variable {self.where}",
            "none": "no PIN configured",
        }[self.kind]


def pin_source_for(uri: Pkcs11Uri, pin_env: str | None, mode: str) -> PinSource:
    """Decide where the PIN comes from (without reading it); refuse what ``mode`` refuses.

    Production refuses a pin-value, an attribute that looks like a PIN and a pin-source
    program with arguments (``hsmsign.policy.check_uri``).
    """
    from .policy import check_uri

    check_uri(uri, mode)
    strict = mode != "development"
    if uri.pin_value is not None:
        return PinSource("value", strict=strict)
    if uri.pin_source is not None:
        src = uri.pin_source
        if src.startswith("|"):
            return PinSource("command", src[1:].strip(), strict)
        if src.startswith("file:"):
            path = src[len("file:") :]
            # file:///path and file:/path both name /path
            if path.startswith("//"):
                path = path[2:]
            return PinSource("file", path, strict)
        if src.startswith("/"):
            return PinSource("file", src, strict)
        raise ConfigError(
            f"pin-source '{printable(src, 80)}' is neither file:/ABSOLUTE/PATH nor |PROGRAM",
            "write ?pin-source=file:/run/secrets/hsm-pin",
        )
    from .settings import Settings

    env_name = pin_env or Settings.from_env(check=False).pin_env or None
    if env_name:
        return PinSource("env", env_name, strict)
    return PinSource("none", strict=strict)


def read_pin(source: PinSource, uri: Pkcs11Uri) -> str | None:
    """Read the PIN from its source; None when no PIN is configured."""
    if source.kind == "none":
        return None
    if source.kind == "value":
        return uri.pin_value
    if source.kind == "env":
        value = _WITHHELD.get(source.where, os.environ.get(source.where))
        if value is None:
            raise ConfigError(
                f"the PIN environment variable {source.where} is not set",
                f"export {source.where} from your CI secret store before running hsmsign, "
                "or point --pin-env at the variable that holds the PIN",
            )
        return _strip(value)
    if source.kind == "file":
        return _read_pin_file(source.where, source.strict)
    return _run_pin_program(source.where)


def pin_file_exposure(st: os.stat_result, uid: int | None = None) -> str:
    """Who else can read or change a PIN file ("" when nobody): the rule production enforces.

    Like OpenSSH's rule for private keys: no access for other users, no write access for
    the group, and no group read on a file the build user owns (``chmod 600``). A file
    another account owns (``root:hsm 0640``) may let its group read it: that is how a
    build host shares one PIN with a group of build users on purpose.
    """
    mode = st.st_mode
    uid = os.geteuid() if uid is None else uid
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        return "readable or writable by every user of the host"
    if mode & stat.S_IWGRP:
        return "writable by its group"
    if mode & stat.S_IRGRP and st.st_uid == uid:
        return "readable by its group"
    return ""


def _read_pin_file(path: str, strict: bool = True) -> str:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read(PIN_FILE_MAX_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"PIN file {printable(path)} does not exist",
            "create it (mode 0600) outside the build tree, or fix pin-source=file:... in the URI",
        ) from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"cannot read PIN file {printable(path)}: {why}", "check its permissions") from exc
    exposure = pin_file_exposure(st)
    if exposure:
        if strict:
            raise PolicyError(
                f"PIN file {printable(path)} is {exposure} (mode {stat.S_IMODE(st.st_mode):04o}); "
                "production will not log in with a PIN others can read or change",
                f"chmod 600 {printable(path)} (or 400; a container secret mount: defaultMode 0400); "
                "docs/policy.md explains the rule",
            )
        print(
            f"hsmsign: warning: PIN file {printable(path)} is {exposure} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); production refuses it: chmod 600 {printable(path)}",
            file=sys.stderr,
        )
    if len(data) > PIN_FILE_MAX_BYTES:
        raise ConfigError(
            f"PIN file {printable(path)} is longer than {PIN_FILE_MAX_BYTES} bytes: not a PIN file",
            "write the PIN into it (one line)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"PIN file {printable(path)} is not UTF-8 text", "write the PIN as text") from exc
    pin = _strip(text)
    if not pin:
        raise ConfigError(f"PIN file {path} is empty", "write the PIN into it (one line)")
    return pin


def _run_pin_program(command: str) -> str:
    argv = pin_program_argv(command)
    if argv is None:
        raise ConfigError(
            "the pin-source program line cannot be split into words (an unbalanced quote or a trailing "
            "backslash); its text is not shown",
            "write ?pin-source=|/path/to/program (percent-encode a space as %20, and close every quote)",
        )
    if not argv:
        raise ConfigError("pin-source=| names no program", "write ?pin-source=|/usr/local/bin/get-hsm-pin")
    import subprocess  # here: a PIN from a file, a variable or the prompt needs no child process

    program = printable(argv[0], 120)
    try:  # the PIN program needs no other PIN variable either, also when hsmsign is used as a library
        done = subprocess.run(
            argv, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False, env=child_env()
        )
    except FileNotFoundError as exc:
        raise ConfigError(
            f"PIN program {program} not found", "give its absolute path in pin-source=|..."
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"PIN program {program} did not finish in {COMMAND_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise ConfigError(f"cannot run PIN program {program}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL byte in the program line
        raise ConfigError(f"cannot run PIN program {program}: it holds a NUL byte") from exc
    if done.returncode != 0:
        raise ConfigError(
            f"PIN program {program} exited with status {done.returncode}",
            "run it by hand to see why; its standard output must be the PIN",
        )
    try:
        pin = _strip(done.stdout.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"PIN program {program} printed something that is not UTF-8 text") from exc
    if not pin:
        raise ConfigError(f"PIN program {program} printed nothing")
    return pin


def _strip(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value
