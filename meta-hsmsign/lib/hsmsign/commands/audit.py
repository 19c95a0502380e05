"""``hsmsign audit``: find leaked keys, PINs and published keys in files, trees and archives."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..settings import Settings

EXAMPLE = """\
examples:
  hsmsign audit meta-mylayer/ kas/ setup-env.sh
  bitbake -e core-image-minimal > env.txt && hsmsign audit env.txt
  hsmsign audit --json tmp/deploy/images/ > audit.json
  hsmsign audit --allowlist .hsmsign-audit-allow layers/

allowlist file (one entry a line, '#' comments):
  id loc-3f2a9c0d1e2b4a5c          a reviewed finding, by the id audit prints
  path tests/fixtures/*            everything under a path (fnmatch glob)
  path docs/*.md pin-assignment    only these kinds under a path

exit status: 0 nothing found, 4 something found (policy), 2 bad arguments.
"""

EXIT_FOUND = 4


def register(sub: Any, parents: Any) -> None:
    p = sub.add_parser(
        "audit",
        parents=[parents.output],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLE,
        help="scan files, trees, tar/cpio archives and 'bitbake -e' dumps for leaked keys and PINs",
        description="Scan for private keys (PEM, DER, PKCS#12, OpenSSH), pin-value in URIs, PINs and "
        "passwords in configuration, symmetric keys, key-file variables and keys whose private half "
        "is published. Exits 4 when anything is found.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories (archives are opened)")
    p.add_argument(
        "--allowlist",
        metavar="FILE",
        default=Settings.from_env(check=False).audit_allowlist or None,
        help="reviewed findings not to report (default: $HSMSIGN_AUDIT_ALLOWLIST)",
    )
    p.add_argument(
        "--fail-on",
        choices=("warning", "error"),
        default="warning",
        help="lowest severity that makes the exit status non-zero (default: warning, i.e. any finding)",
    )
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from .. import audit
    from ..errors import ConfigError
    from .common import emit, warn

    for path in args.paths:
        if not os.path.exists(path):
            raise ConfigError(f"{path}: no such file or directory", "check the path to audit")
    allow = audit.Allowlist.load(args.allowlist) if args.allowlist else None
    for message in allow.warnings if allow else ():
        warn(message)
    start = time.monotonic()
    findings, nfiles, nbytes = audit.scan_paths(args.paths, allow)
    elapsed = time.monotonic() - start
    failing = [f for f in findings if args.fail_on == "warning" or f.severity == "error"]
    summary = (
        f"{len(findings)} finding(s) in {nfiles} file(s), {nbytes / 1e6:.1f} MB scanned in {elapsed:.2f} s"
    )
    text = "\n".join(f.format() for f in findings)
    emit(
        args,
        (text + "\n" if text else "") + summary,
        {
            "findings": [f.as_dict() for f in findings],
            "files": nfiles,
            "bytes": nbytes,
            "seconds": round(elapsed, 3),
            "ok": not failing,
        },
    )
    if failing and not args.json:
        print(
            "hsmsign: audit found secrets or published keys; fix them, or allowlist reviewed findings "
            "with --allowlist",
            file=sys.stderr,
        )
    return EXIT_FOUND if failing else 0
