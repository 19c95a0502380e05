"""The developer token: SoftHSM with one clearly marked development key per role.

``hsmsign dev-init`` creates a SoftHSMv2 token labelled ``hsmsign-dev`` in a user
directory (outside any build tree, so ``rm -rf tmp`` keeps it) with keys labelled
``dev-<role>``. Production policy refuses both the token label and the key labels
(``hsmsign.policy.NotDevelopmentKey``) and SoftHSM itself (``HardwareToken``).
Running it again only adds what is missing.

The token's PINs are random and stored next to it (mode 0600): this token guards
development keys only, and the URIs point at the PIN file with pin-source.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
from typing import Any, Callable

from . import roles
from .errors import ConfigError, TokenError

TOKEN_LABEL = "hsmsign-dev"  # noqa: S105 - a token label, not a secret
# role -> (key label, key type) and role -> variable, from the one role table (hsmsign.roles);
# "default" is what HSM_PKCS11_URI points at.
ROLES: dict[str, tuple[str, str]] = {r.name.lower(): (r.dev_label, r.key_type) for r in roles.ROLE_TABLE}
ROLE_VARIABLES: dict[str, str] = {r.name.lower(): r.variable for r in roles.ROLE_TABLE}


# Where SoftHSM's module is installed (Debian/Ubuntu, multiarch, /usr/local builds, Fedora), in order.
SOFTHSM_MODULES: tuple[str, ...] = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/*/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
)


def softhsm_module() -> str | None:
    """The first SoftHSM module installed, or None."""
    for pattern in SOFTHSM_MODULES:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def dev_home(explicit: str, getenv: Callable[[str], str | None]) -> str:
    """Where the development token lives: ``explicit`` (``HSMSIGN_DEV_HOME``), else
    ``$XDG_DATA_HOME/hsmsign/dev-token``, else ``~/.local/share/hsmsign/dev-token``.

    ``getenv`` reads the environment that counts: this process's for ``hsmsign dev-init``,
    BitBake's client environment (``BB_ORIGENV``) for the layer's default URI.
    """
    if explicit:
        return explicit
    base = getenv("XDG_DATA_HOME") or ""
    if not base:
        base = os.path.join(getenv("HOME") or os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "hsmsign", "dev-token")


def default_dir() -> str:
    from .settings import Settings

    return dev_home(Settings.from_env(check=False).dev_home, os.environ.get)


def _write_secret(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def init(directory: str | None = None, module: str | None = None) -> dict[str, Any]:
    """Create or complete the development token; return its settings."""
    from . import keys, token
    from .uri import Pkcs11Uri

    directory = os.path.abspath(directory or default_dir())
    module = module or softhsm_module()
    if not module or not os.path.exists(module):
        raise ConfigError(
            "SoftHSMv2 is not installed (libsofthsm2.so not found)",
            "apt-get install softhsm2 (Debian/Ubuntu), or pass --module /path/to/libsofthsm2.so",
        )
    util = shutil.which("softhsm2-util")
    if util is None:
        raise ConfigError("softhsm2-util is not installed", "apt-get install softhsm2")
    tokens_dir = os.path.join(directory, "tokens")
    conf = os.path.join(directory, "softhsm2.conf")
    pin_file = os.path.join(directory, "user-pin")
    so_pin_file = os.path.join(directory, "so-pin")
    os.makedirs(tokens_dir, mode=0o700, exist_ok=True)
    if not os.path.exists(conf):
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(
                "# SoftHSMv2 configuration of the meta-hsmsign DEVELOPMENT token (hsmsign dev-init).\n"
                "# Development keys only: production policy refuses this token.\n"
                f"directories.tokendir = {tokens_dir}\nobjectstore.backend = file\nlog.level = ERROR\n"
            )
    loaded_conf = os.environ.get("SOFTHSM2_CONF")
    if token.is_loaded(module) and loaded_conf != conf:
        raise ConfigError("SoftHSM is already loaded with another configuration in this process")
    os.environ["SOFTHSM2_CONF"] = conf
    env = dict(os.environ)
    created_token = False
    listing = subprocess.run([util, "--show-slots"], capture_output=True, text=True, env=env, check=False)
    if (
        f"Label:            {TOKEN_LABEL}" not in listing.stdout
        and f"Label: {TOKEN_LABEL}" not in listing.stdout
    ):
        for path in (pin_file, so_pin_file):
            if os.path.exists(path):
                os.unlink(path)
        user_pin = secrets.token_hex(8)
        so_pin = secrets.token_hex(8)
        _write_secret(pin_file, user_pin)
        _write_secret(so_pin_file, so_pin)
        # softhsm2-util takes the PINs as arguments; this token holds development keys only.
        done = subprocess.run(
            [util, "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", user_pin, "--so-pin", so_pin],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise TokenError(f"softhsm2-util could not create the development token: {done.stderr.strip()}")
        created_token = True
    base = f"pkcs11:token={TOKEN_LABEL}"
    query = f"?module-path={module}&pin-source=file:{pin_file}"
    result: dict[str, Any] = {
        "dir": directory,
        "conf": conf,
        "module": module,
        "token": TOKEN_LABEL,
        "pin_file": pin_file,
        "created_token": created_token,
        "keys": {},
    }
    existing = {k["label"] for k in token.list_keys(Pkcs11Uri.parse(base + query), mode="development")}
    for role, (label, key_type) in ROLES.items():
        uri = Pkcs11Uri.parse(f"{base};object={label}{query}")
        entry: dict[str, Any] = {
            "label": label,
            "type": key_type,
            "uri": uri.format(),
            "created": False,
            "variable": ROLE_VARIABLES[role],
        }
        if label not in existing:
            made = keys.generate(uri, keys.parse_key_type(key_type), mode="development")
            entry["created"] = True
            entry["fingerprint"] = made.get("fingerprint")
        elif not key_type.startswith("aes"):
            with token.open_key(uri, mode="development") as key:
                entry["fingerprint"] = key.fingerprint
        result["keys"][role] = entry
    return result


def env_lines(result: dict[str, Any]) -> str:
    lines = [
        f"export SOFTHSM2_CONF='{result['conf']}'",
        "export HSMSIGN_MODE=development",
    ]
    for entry in result["keys"].values():
        lines.append(f"export {entry['variable']}='{entry['uri']}'")
    return "\n".join(lines)


def describe(result: dict[str, Any]) -> str:
    made = [e["label"] for e in result["keys"].values() if e["created"]]
    head = f"development token '{result['token']}' in {result['dir']}" + (
        " (created)" if result["created_token"] else " (already there)"
    )
    lines = [head, "DEVELOPMENT KEYS ONLY: production policy refuses this token and these keys.", ""]
    for role, entry in result["keys"].items():
        fp = f"sha256:{entry['fingerprint'][:16]}..." if entry.get("fingerprint") else ""
        lines.append(
            f"  {role:<9} {entry['label']:<13} {entry['type']:<9} {fp}"
            + ("  (new)" if entry["created"] else "")
        )
    lines += [
        "",
        "Use it in this shell:",
        env_lines(result),
        "",
        "or in local.conf (development builds):",
        '  HSMSIGN_MODE = "development"',
        f'  HSM_PKCS11_URI = "{result["keys"]["default"]["uri"]}"',
        f"  and run BitBake with SOFTHSM2_CONF={result['conf']} in its environment",
    ]
    if not made and not result["created_token"]:
        lines.insert(1, "nothing to do: the token and all development keys exist")
    return "\n".join(lines)
