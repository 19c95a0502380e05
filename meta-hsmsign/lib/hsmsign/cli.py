"""The ``hsmsign`` command: argument parsing, error handling, output.

``main(argv) -> int`` is what tests and the console script call. Verbs live in
``hsmsign.commands.*``; each module registers its parsers. Errors print one line
(and a hint) on stderr and return the family's exit code; ``-v`` adds the
traceback. Machine-readable output only with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from . import __version__, roles
from .errors import EXIT_CODES, ConfigError, HsmsignError, InternalError, Interrupted, printable
from .settings import Settings

# Verb modules and the verbs each registers, in the order --help lists them. A module missing
# from the tree is skipped. Knowing the verbs up front lets `hsmsign VERB ...` build only its
# own parser (about a quarter of the cold start); tests/unit/test_cli_verbs.py keeps this true.
COMMAND_VERBS: dict[str, tuple[str, ...]] = {
    "hsmsign.commands.core": ("sign", "pubkey", "info", "doctor", "keygen", "dev-init", "uri"),
    "hsmsign.commands.fit": ("fit",),
    "hsmsign.commands.mkimage": ("mkimage",),
    "hsmsign.commands.swupdate": ("swupdate",),
    "hsmsign.commands.cert": ("cert", "csr"),
    "hsmsign.commands.verity": ("verity",),
    "hsmsign.commands.pe": ("pe",),
    "hsmsign.commands.rauc": ("rauc",),
    "hsmsign.commands.modsign": ("modsign",),
    "hsmsign.commands.manifest": ("manifest",),
    "hsmsign.commands.encrypt": ("encrypt",),
    "hsmsign.commands.imx": ("imx",),
    "hsmsign.commands.audit": ("audit",),
    "hsmsign.commands.ledger": ("ledger",),
}
COMMAND_MODULES: tuple[str, ...] = tuple(COMMAND_VERBS)

DESCRIPTION = """\
Sign U-Boot and kernel FITs, root filesystems, swupdate and RAUC bundles, UEFI binaries,
kernel modules and i.MX boot images with keys that never leave a PKCS#11 token. Keys are
named by PKCS#11 URIs (RFC 7512); the PIN comes from a file (?pin-source=file:PATH), a
program (?pin-source=|PROGRAM) or an environment variable named with --pin-env, never
from the command line.
"""


def _exit_codes_epilog() -> str:
    lines = ["exit codes:"] + [f"  {code:<4} {text}" for code, text in EXIT_CODES.items()]
    lines += ["", "Run 'hsmsign VERB --help' for examples. Docs: docs/ in the meta-hsmsign repository."]
    return "\n".join(lines)


POLICY_MODES = ("development", "production")


class ModeAction(argparse.Action):
    """``--mode``: the policy (development|production) on every verb that opens a token.

    A verb whose own option has other values under the same first spelling (``swupdate sign
    --mode rsa-pss``: the signature type) names them with ``set_defaults(mode_aliases=
    {"rsa-pss": "sig_mode", ...})``; such a value goes to that option's destination, and the
    policy keeps its default. Any other value is refused with the choices listed.
    """

    CHOICES = POLICY_MODES  # for the generated reference and shell completion

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: object = None,
    ) -> None:
        value = str(values)
        aliases = parser.get_default("mode_aliases") or {}
        if value in aliases:
            setattr(namespace, aliases[value], value)
        elif value in POLICY_MODES:
            setattr(namespace, self.dest, value)
        else:
            accepted = ", ".join(repr(v) for v in (*POLICY_MODES, *aliases))
            parser.error(f"argument --mode: invalid choice: {value!r} (choose from {accepted})")


def help_width() -> int:
    """The width argparse's help takes when given none: the terminal's columns as
    ``shutil.get_terminal_size`` finds them (``$COLUMNS``, else standard output's terminal, else
    80), less 2."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns - 2


class Parser(argparse.ArgumentParser):
    """argparse's parser, its help as wide as argparse makes it, with the width found without
    importing ``shutil`` (which imports ``zlib``, ``bz2`` and ``lzma``: 0.002 s of every cold
    start): argparse makes a help formatter for every argument it adds. Every parser of the
    command is one (sub-commands take their parent's class)."""

    def __init__(
        self,
        *args: Any,
        formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter,
        **kwargs: Any,
    ) -> None:
        sized = functools.partial(formatter_class, width=help_width())
        super().__init__(*args, formatter_class=sized, **kwargs)  # type: ignore[arg-type,misc]


class CommonParents(NamedTuple):
    """Parent parsers verbs share: token options and output options."""

    token: argparse.ArgumentParser
    output: argparse.ArgumentParser


def make_parents() -> CommonParents:
    env = Settings.from_env(check=False)  # defaults only: each is checked where it is used
    tok = Parser(add_help=False)
    g = tok.add_argument_group("token")
    g.add_argument(
        "--uri",
        default=env.default_uri or None,
        help="PKCS#11 URI of the key (default: $HSM_PKCS11_URI), e.g. "
        "'pkcs11:token=acme-prod;object=fw-signing?pin-source=file:/run/secrets/hsm-pin'",
    )
    g.add_argument(
        "--module",
        default=env.module or None,
        help="PKCS#11 module to load when the URI names none "
        "(default: $HSM_PKCS11_MODULE, then p11-kit-proxy)",
    )
    g.add_argument(
        "--pin-env",
        metavar="NAME",
        default=env.pin_env or None,
        help="read the PIN from environment variable NAME at run time (default: $HSMSIGN_PIN_ENV)",
    )
    g.add_argument(
        "--mode",
        action=ModeAction,
        metavar="{development,production}",
        default=env.mode,
        help="policy: production refuses development/software/published keys (default: $HSMSIGN_MODE or "
        "production)",
    )
    g.add_argument(
        "--role",
        type=str.upper,
        choices=[r.name for r in roles.ROLE_TABLE],
        default=env.role or None,
        metavar="ROLE",
        help="key role whose pinned fingerprint applies: HSMSIGN_PUBKEY_SHA256_<ROLE>, else its fallback "
        "role's, else HSMSIGN_PUBKEY_SHA256 (" + ", ".join(r.name for r in roles.ROLE_TABLE) + "; "
        "default: $HSMSIGN_ROLE, else DEFAULT)",
    )
    g.add_argument(
        "--ledger",
        metavar="FILE",
        default=env.ledger or None,
        help="append a hash-chained record of every signature to FILE (default: $HSMSIGN_LEDGER)",
    )
    out = Parser(add_help=False)
    out.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return CommonParents(token=tok, output=out)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The full parser (docs render it; tests check documented commands against it).

    With ``verb``, only the module that provides that verb registers its parsers.
    """
    parser = Parser(
        prog="hsmsign",
        description=DESCRIPTION,
        epilog=_exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hsmsign {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail; -v shows tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    parents = make_parents()
    wanted = [m for m, verbs in COMMAND_VERBS.items() if verb in verbs] if verb else []
    for name in wanted or COMMAND_MODULES:
        importlib.import_module(name).register(sub, parents)
    _set_verb_defaults(parser)
    return parser


def _set_verb_defaults(parser: argparse.ArgumentParser) -> None:
    """What every verb's and kind's parser sets in its namespace: ``_parser``, itself (``main``
    reports an unknown argument with the verb's usage), and for one named without its action
    (``hsmsign pe``, ``hsmsign imx ahab``) a ``func`` that prints its own help and exits 2 (the
    top level's would not show the actions it lacks)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in action.choices.values():
            if child._subparsers is not None and child.get_default("func") is None:
                child.set_defaults(func=functools.partial(_group_help, child))
            child.set_defaults(_parser=child)
            _set_verb_defaults(child)


def _group_help(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    verb = _first_verb(args_list)
    if verb is None and _asks_version(args_list):
        # what argparse's version action prints, without importing every command to build the
        # full parser first (0.03 s)
        print(f"hsmsign {__version__}")
        return 0
    parser = build_parser(verb)
    args, unknown = parser.parse_known_args(args_list)
    if unknown:
        # said by the verb's parser, with its usage (argparse's own says the top level's), unless
        # it came before the verb
        before = args_list[: args_list.index(verb)] if verb in args_list else args_list
        says = parser if any(word in before for word in unknown) else getattr(args, "_parser", parser)
        says.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if not args.verbose:
        _warnings_on_one_line()
    start = getattr(args, "start", None)
    if start is not None:
        # a verb's work that may begin before the rest is imported (``hsmsign pe sign`` reads and
        # hashes its image in a thread meanwhile); its errors are raised by the verb itself
        start(args)
    from . import atomic

    # SIGINT / SIGTERM: remove the temporary files, one line, exit 130 / 143 (hsmsign.atomic)
    restore_signals = atomic.install_signal_handlers()
    try:
        return _run(args)
    finally:
        restore_signals()


def _asks_version(args: Sequence[str]) -> bool:
    """Whether argparse would print the version first: ``--version`` comes before any help option."""
    for word in args:
        if word in ("-h", "--help"):
            return False
        if word == "--version":
            return True
    return False


def _warnings_on_one_line() -> None:
    """A library's Python warning (cryptography on a certificate with a serial number that is
    not positive, in a damaged signature) as one ``hsmsign: warning:`` line, escaped, without
    the library's file and source line; ``-v`` keeps Python's own form."""
    import warnings

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        print(f"hsmsign: warning: {printable(str(message), 400)}", file=sys.stderr)

    warnings.showwarning = show


def _run(args: argparse.Namespace) -> int:
    try:
        with _pin_variables_withheld(args):
            return int(args.func(args) or 0)
    except HsmsignError as exc:
        _report(exc, args.verbose)
        return exc.exit_code
    except KeyboardInterrupt:
        _report(Interrupted("interrupted; unfinished outputs removed"), args.verbose)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing in _RUNTIME_PACKAGES:
            package = _RUNTIME_PACKAGES[str(missing)]
            _report(
                ConfigError(
                    f"the Python package {package} is missing from {sys.executable}",
                    f"pip install {package} (or pip install hsmsign); in a Yocto build "
                    'hsmsign-native brings it (HSMSIGN_CMD = "hsmsign")',
                ),
                args.verbose,
            )
            return ConfigError.exit_code
        internal = InternalError(
            f"{type(exc).__name__}: {exc}",
            "this is a bug in hsmsign; run again with -v and report the output",
        )
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"hsmsign: internal error: {printable(internal.message, None)}", file=sys.stderr)
        print(f"  hint: {internal.hint}", file=sys.stderr)
        return internal.exit_code


# import name -> PyPI name of what signing needs at run time (pyproject.toml)
_RUNTIME_PACKAGES = {
    "pkcs11": "python-pkcs11",
    "cryptography": "cryptography",
    "asn1crypto": "asn1crypto",
    "cached_property": "cached-property",
}


def _pin_variables_withheld(args: argparse.Namespace) -> contextlib.AbstractContextManager[list[str]]:
    """The verb runs without the PIN variables in its environment: no child process inherits them.

    ``--pin-env``'s variable, ``HSMSIGN_PIN_ENV``'s, mkimage's ``MKIMAGE_SIGN_PIN``, and every
    variable whose name says PIN (``hsmsign.pin.env_withheld``); hsmsign still reads them.
    """
    from . import pin
    from .settings import MKIMAGE_PIN_ENV

    env = Settings.from_env(check=False)
    return pin.env_withheld([getattr(args, "pin_env", None), env.pin_env, MKIMAGE_PIN_ENV])


def _first_verb(argv: Sequence[str]) -> str | None:
    """The verb the command line names (the first word that is not an option), if any."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def _report(exc: HsmsignError, verbose: int) -> None:
    if verbose:
        import traceback

        traceback.print_exc()
    # one line each, whatever a message quotes from an artifact (printable: the last line of defence)
    print(f"hsmsign: error: {printable(exc.message, None)}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {printable(exc.hint, None)}", file=sys.stderr)


def console_main() -> None:
    """The console script (``hsmsign.launch.console_main``, which pip's entry point names)."""
    from .launch import console_main as launch

    launch()


if __name__ == "__main__":
    console_main()
