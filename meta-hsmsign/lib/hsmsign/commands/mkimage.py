"""``hsmsign mkimage ARGS...``: a drop-in for U-Boot's mkimage whose ``-k`` may be a PKCS#11 URI.

oe-core signs U-Boot, SPL payloads and the kernel fitImage by running
``${UBOOT_MKIMAGE_SIGN} ... -F -k KEYDIR [-K DTB] -r FIT`` (uboot-sign.bbclass,
kernel-fitimage.bbclass). Set ``UBOOT_MKIMAGE_SIGN = "hsmsign mkimage"`` and a
URI as the key directory, and the same calls sign with a token key:

* ``-k`` not a URI (and no ``-N pkcs11``): everything goes to the real mkimage
  unchanged.
* Otherwise the real mkimage does all the non-signing work (building the FIT
  from the .its or ``-f auto``, image hashes, external data) on a temporary
  copy, without ``-k``/``-K``/``-r``/``-N``/``-c``; then the library fills the
  signature nodes, writes the public keys into the ``-K`` DTB (``required`` with
  ``-r``, as mkimage does) and renames the results into place. A failure leaves
  the original files untouched.
* Like mkimage's pkcs11 engine, a URI without ``object=``/``id=`` names each
  node's key by its ``key-name-hint``; both ``token=...`` (mkimage <= 2024.01)
  and ``pkcs11:token=...`` (2024.04+) are accepted. The PIN comes from the URI's
  ``pin-source``, ``HSMSIGN_PIN_ENV``, or ``MKIMAGE_SIGN_PIN`` (what mkimage
  reads).

Settings come from the environment only (mkimage owns the command line):
``HSMSIGN_MODE``, ``HSM_PKCS11_MODULE``, ``HSMSIGN_PIN_ENV``, ``HSMSIGN_LEDGER``,
``HSMSIGN_MKIMAGE`` (the real mkimage: a path or a command in PATH, the layer sets it to
``UBOOT_MKIMAGE`` from u-boot-tools-native; default: the first ``mkimage`` in PATH), and

* ``HSMSIGN_FIT_REQUIRED``: the ``required`` property of the keys written into the
  ``-K`` DTB: ``conf``, ``image`` or ``none`` (development only); unset: as mkimage
  (with ``-r``: ``conf`` for configuration signatures, ``image`` for image ones);
* ``HSMSIGN_FIT_REQUIRED_MODE``: ``/signature`` ``required-mode`` (``all``, ``any``);
* ``HSMSIGN_FIT_CHECK_SIGN``: U-Boot's ``fit_check_sign``; when set, every
  configuration of the signed FIT is checked with it before anything is written.
"""

from __future__ import annotations

import argparse
import getopt
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..errors import printable

# mkimage 2023.01-2026.x (tools/mkimage.c): short options and their long names
OPTSTRING = "a:A:b:B:c:C:d:D:e:Ef:Fg:G:i:k:K:ln:N:o:O:p:qrR:stT:vVx"
LONGOPTS = {
    "load-address": "a",
    "architecture": "A",
    "device-tree": "b",
    "alignment": "B",
    "comment": "c",
    "compression": "C",
    "image": "d",
    "dtcopts": "D",
    "entry-point": "e",
    "external": "E",
    "fit": "f",
    "update": "F",
    "key-name-hint": "g",
    "key-file": "G",
    "help": "h",
    "initramfs": "i",
    "key-dir": "k",
    "key-dest": "K",
    "list": "l",
    "config": "n",
    "engine": "N",
    "algo": "o",
    "os": "O",
    "position": "p",
    "quiet": "q",
    "key-required": "r",
    "secondary-config": "R",
    "no-copy": "s",
    "touch": "t",
    "type": "T",
    "verbose": "v",
    "version": "V",
    "xip": "x",
}
SIGNING_ONLY = ("k", "K", "r", "N", "c")

EPILOG = """\
examples (oe-core, local.conf):
  UBOOT_MKIMAGE_SIGN = "hsmsign mkimage"
  UBOOT_SIGN_KEYDIR = "pkcs11:token=acme-prod"      # object= comes from each node's key-name-hint
by hand:
  HSMSIGN_MODE=development hsmsign mkimage -F -k 'pkcs11:token=dev;object=fit' -K u-boot.dtb -r fitImage
"""


def register(sub: Any, parents: Any) -> None:
    # '+' as prefix: every '-x' belongs to mkimage, not to us
    p = sub.add_parser(
        "mkimage",
        prefix_chars="+",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        help="drop-in for U-Boot's mkimage whose -k may be a PKCS#11 URI (for UBOOT_MKIMAGE_SIGN)",
        description=__doc__,
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="MKIMAGE-ARGS")
    p.set_defaults(func=run)


@dataclass
class Parsed:
    opts: list[tuple[str, str]]  # (short letter, value) in order
    args: list[str]
    values: dict[str, str] = field(default_factory=dict)

    def has(self, letter: str) -> bool:
        return any(o == letter for o, _ in self.opts)


def parse_mkimage_args(argv: list[str]) -> Parsed:
    from ..errors import ConfigError

    longs = [name + ("=" if LONGOPTS[name] + ":" in OPTSTRING else "") for name in LONGOPTS]
    try:
        raw_opts, args = getopt.gnu_getopt(argv, OPTSTRING + "h", longs)
    except getopt.GetoptError as exc:
        raise ConfigError(f"mkimage: {exc.msg}", "see 'mkimage -h'") from exc
    opts = []
    for opt, value in raw_opts:
        letter = opt[1:] if not opt.startswith("--") else LONGOPTS[opt[2:]]
        opts.append((letter, value))
    parsed = Parsed(opts, args)
    for letter, value in opts:
        parsed.values[letter] = value
    return parsed


def is_uri_key(parsed: Parsed) -> bool:
    keydir = parsed.values.get("k")
    if keydir is None:
        return False
    if parsed.values.get("N") == "pkcs11" or keydir.startswith("pkcs11:"):
        return True
    return not os.path.isdir(keydir) and "=" in keydir


def normalise_uri(keydir: str) -> str:
    return keydir if keydir.startswith("pkcs11:") else "pkcs11:" + keydir


def uri_for_hint(base: str, hint: str | None) -> str:
    """mkimage's engine rule: a URI without object= (or id=) takes the node's key-name-hint as object."""
    from urllib.parse import quote

    from ..errors import ConfigError
    from ..uri import Pkcs11Uri

    uri = Pkcs11Uri.parse(base)
    if uri.object is not None or uri.id is not None:
        return base
    if not hint:
        raise ConfigError(
            f"the key URI {uri.redacted()} names no object and the signature node has no key-name-hint",
            "add ;object=LABEL to the URI or key-name-hint to the signature node",
        )
    path, sep, query = base.partition("?")
    return f"{path};object={quote(hint, safe='')}{sep}{query}"


_NO_MKIMAGE_HINT = (
    "in a BitBake task the layer sets HSMSIGN_MKIMAGE from UBOOT_MKIMAGE (uboot-mkimage from "
    "u-boot-tools-native: make sure the recipe depends on u-boot-tools-native); by hand, install "
    "u-boot-tools or set HSMSIGN_MKIMAGE to the real mkimage"
)


def real_mkimage() -> str:
    """U-Boot's own mkimage: ``HSMSIGN_MKIMAGE`` (a path or a command in PATH), else ``mkimage``."""
    from ..errors import ConfigError
    from ..settings import Settings

    wanted = Settings.from_env(check=False).mkimage
    if wanted:
        path = wanted if os.sep in wanted else shutil.which(wanted)
        if not path or not os.path.isfile(path):
            raise ConfigError(f"HSMSIGN_MKIMAGE={wanted}: no such mkimage", _NO_MKIMAGE_HINT)
        if not os.access(path, os.X_OK):
            raise ConfigError(f"HSMSIGN_MKIMAGE={wanted} is not executable", _NO_MKIMAGE_HINT)
        return path
    path = shutil.which("mkimage")
    if not path:
        raise ConfigError(
            "U-Boot's mkimage not found (HSMSIGN_MKIMAGE is not set and no mkimage is in PATH)",
            _NO_MKIMAGE_HINT,
        )
    return path


def _run_mkimage(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    from ..errors import ConfigError

    exe = real_mkimage()
    try:
        return subprocess.run([exe, *argv], check=False, **kwargs)
    except OSError as exc:  # an interpreter or loader it needs is missing, or no permission
        raise ConfigError(f"cannot run mkimage {exe}: {exc.strerror or exc}", _NO_MKIMAGE_HINT) from exc


def run_real(argv: list[str]) -> int:
    return _run_mkimage(argv).returncode


# With -g/-o but without -k, mkimage still tries to sign the nodes it generates (-f auto), fails to
# find a key file and carries on; hsmsign signs those nodes right after, so these lines only confuse.
_EXPECTED_NOISE = ("Couldn't open RSA private key", "Couldn't open ECDSA private key", "Failed to sign '")


def run_real_unsigned(argv: list[str]) -> int:
    """The real mkimage for the non-signing work, its stderr passed on without the noise above."""
    r = _run_mkimage(argv, stderr=subprocess.PIPE, text=True)
    for line in r.stderr.splitlines(keepends=True):
        if not line.startswith(_EXPECTED_NOISE):
            sys.stderr.write(line)
    return r.returncode


def _rebuild(parsed: Parsed, image: str) -> list[str]:
    out: list[str] = []
    for letter, value in parsed.opts:
        if letter in SIGNING_ONLY:
            continue
        out.append("-" + letter)
        if letter + ":" in OPTSTRING:
            out.append(value)
    return [*out, *parsed.args[:-1], image]


def run(args: Any) -> int:
    from ..errors import ConfigError

    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    parsed = parse_mkimage_args(argv)
    if not is_uri_key(parsed):
        return run_real(argv)
    if parsed.has("G"):
        raise ConfigError("mkimage: -G KEYFILE and a PKCS#11 URI in -k cannot be combined", "drop -G")
    engine = parsed.values.get("N")
    if engine not in (None, "pkcs11"):
        raise ConfigError(f"mkimage: engine '{engine}' with a URI key", "use -N pkcs11 or leave -N out")
    if not parsed.args:
        raise ConfigError("mkimage: no image file given", "mkimage [options] IMAGE")
    image = parsed.args[-1]
    if parsed.has("F"):
        from ..atomic import check_readable

        check_readable(image)
    from ..atomic import create_temporary

    # the unsigned image is built in a temporary file next to the image (registered: a signal
    # removes it), then signed into place
    work = create_temporary(image, suffix=".itb")
    tmp = work.tmp_path
    try:
        if parsed.has("F"):
            with open(image, "rb") as src:
                shutil.copyfileobj(src, work.fh)
        work.fh.close()
        rc = run_real_unsigned(_rebuild(parsed, tmp))
        if rc != 0:
            return rc
        _sign_and_keys(parsed, image, tmp)
    finally:
        work._discard()
    return 0


def _env_args(settings: Any) -> SimpleNamespace:
    """The options the verbs take, from the drop-in's environment (``hsmsign.settings``)."""
    from .. import pin
    from ..settings import MKIMAGE_PIN_ENV

    pin_env = settings.drop_in_pin_env
    if not pin_env and pin.is_withheld(MKIMAGE_PIN_ENV):  # the CLI took it out of the environment
        pin_env = MKIMAGE_PIN_ENV
    return SimpleNamespace(
        mode=settings.mode,
        module=settings.module or None,
        pin_env=pin_env or None,
        ledger=settings.ledger or None,
        role=settings.role or None,
        json=False,
    )


def key_fingerprints(settings: Any, base: str) -> list[Any]:
    """The pinned fingerprints for the ``-k`` URI: those of every FIT role whose URI names the same key.

    One oe-core task signs with several roles' keys (U-Boot's task: the kernel FIT key
    into u-boot.dtb, the SPL key over the U-Boot FIT), so the role is told by the URI
    (identity: without PIN source and module); a URI of no known role takes the task's
    role (``HSMSIGN_ROLE``), else the global pin.
    """
    from ..uri import Pkcs11Uri

    want = Pkcs11Uri.parse(base).identity()
    hits = []
    for role, text in settings.role_uris.items():
        try:
            same = Pkcs11Uri.parse(normalise_uri(text)).identity() == want
        except Exception:  # noqa: BLE001, S112 - a broken role URI names no key; parse time reported it
            continue
        if same:
            hits.append(role)
    if not hits:
        return list(settings.fingerprints_for_role())
    pinned: list[Any] = []
    for role in hits:
        pinned += [p for p in settings.fingerprints_for_role(role) if p not in pinned]
    return pinned


def _sign_and_keys(parsed: Parsed, image: str, tmp: str) -> None:
    from ..formats import fit
    from ..settings import Settings
    from .common import keys_by_hint, warn

    settings = Settings.from_env()
    env_args = _env_args(settings)
    _, required_mode = settings.required_policy()
    base = normalise_uri(parsed.values["k"])
    options = fit.SignOptions(
        algo=parsed.values.get("o"),
        comment=parsed.values.get("c"),
        add_missing=False,  # like mkimage: only the signature nodes the source declares
    )
    keydest = parsed.values.get("K")
    key_dtb = None
    if keydest:
        with_r = parsed.has("r")
        key_dtb = fit.KeyDestination(keydest, lambda kind: settings.required_for(kind, with_r), required_mode)
    pinned = key_fingerprints(settings, base)
    with keys_by_hint(env_args, lambda hint: uri_for_hint(base, hint), pinned) as signer_for:
        result = fit.sign_file(
            tmp,
            image,
            signer_for,
            options,
            fit_check_sign=settings.fit_check_sign or None,
            ledger=env_args.ledger,
            key_dtb=key_dtb,
            what=os.path.basename(image),
        )
    for w in result.warnings:
        warn(w)
    for item in result.signed:
        shown = f"{printable(item.path)} ({printable(item.algo)}, key {printable(item.key_name)})"
        print(f"hsmsign mkimage: signed {shown}", file=sys.stderr)
    if result.device_checked:
        accepted = ", ".join(printable(c) for c in result.device_checked)
        print(f"hsmsign mkimage: fit_check_sign accepts {accepted}", file=sys.stderr)
