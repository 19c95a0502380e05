"""``hsmsign ledger``: check the hash-chained signing ledger."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import printable
from ..settings import Settings

EXAMPLE = """\
examples:
  hsmsign ledger verify tmp/deploy/images/qemuarm64/hsmsign-ledger.jsonl
  HSMSIGN_LEDGER=ledger.jsonl hsmsign ledger verify --expect-head 3b1f...   # also catches a cut-off end
  hsmsign ledger show --json

exit status: 0 the chain is intact, 6 it is not, 2 no ledger or unreadable.
"""


def register(sub: Any, parents: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    top = sub.add_parser("ledger", formatter_class=raw, epilog=EXAMPLE, help="check the signing ledger")
    verbs = top.add_subparsers(dest="ledger_verb", metavar="ACTION")
    from ..cli import Parser

    common = Parser(add_help=False)
    common.add_argument(
        "--ledger",
        metavar="FILE",
        help="ledger file (default: $HSMSIGN_LEDGER)",
    )
    common.add_argument("path", nargs="?", metavar="LEDGER", help="ledger file (the same as --ledger)")
    p = verbs.add_parser(
        "verify",
        parents=[common, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="check every line's hash chain and sequence; print the head hash",
    )
    p.add_argument(
        "--expect-head", metavar="SHA256", help="the head hash recorded elsewhere (catches truncation)"
    )
    p.add_argument("--expect-count", type=int, metavar="N", help="the number of entries expected")
    p.set_defaults(func=run_verify)
    s = verbs.add_parser(
        "show",
        parents=[common, parents.output],
        formatter_class=raw,
        epilog="examples:\n  hsmsign ledger show hsmsign-ledger.jsonl\n  hsmsign ledger show --json",
        help="list the entries (seq, time, kind, key fingerprint, artifact)",
    )
    s.set_defaults(func=run_show)


def _path(args: Any) -> str:
    from ..errors import ConfigError

    verb = f"hsmsign ledger {args.ledger_verb}"
    if args.path and args.ledger and args.path != args.ledger:
        raise ConfigError(
            f"two ledgers given: --ledger {args.ledger} and {args.path}", f"name one: {verb} FILE"
        )
    path = args.path or args.ledger or Settings.from_env(check=False).ledger
    if not path:
        raise ConfigError("no ledger given", f"name it ({verb} FILE) or set HSMSIGN_LEDGER")
    return str(path)


SHOWN = 20  # problems printed; --json has them all


def run_verify(args: Any) -> int:
    from .. import ledger
    from .common import emit

    report = ledger.verify(_path(args), expect_head=args.expect_head, expect_count=args.expect_count)
    if report.ok:
        text = f"ledger {report.path}: {report.count} entries, chain intact\nhead {report.head}"
    else:
        shown = [printable(p, None) for p in report.problems[:SHOWN]]
        if len(report.problems) > SHOWN:
            shown.append(f"... and {len(report.problems) - SHOWN} more (--json lists them all)")
        text = f"ledger {report.path}: NOT intact ({len(report.problems)} problem(s))\n" + "\n".join(
            "  " + line for line in shown
        )
    emit(args, text, report.as_dict())
    return 0 if report.ok else 6


def run_show(args: Any) -> int:
    from .. import ledger
    from ..errors import ConfigError
    from .common import emit

    path = _path(args)
    try:
        items = ledger.entries(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read ledger {path}: {exc}", "run 'hsmsign ledger verify'") from exc
    rows = [
        (
            e.get("seq"),
            e.get("time"),
            e.get("kind"),
            str(e.get("key_fingerprint", ""))[:16],
            e.get("artifact"),
        )
        for e in items
    ]
    # a ledger is a text file anyone with write access can edit: no cell may break its row
    text = "\n".join("\t".join(printable(str(c), None) for c in row) for row in rows)
    emit(args, text, items)
    return 0
