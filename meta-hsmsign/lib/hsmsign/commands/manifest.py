"""``hsmsign manifest``: a CMS-signed list of files (size, SHA-256); ``hsmsign manifest verify``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..atomic import check_readable, read_input, refuse_overwriting
from .common import Progress, emit, open_key_from_args, signed_outputs

EXAMPLE = """\
examples:
  # sign a deploy directory in one step (writes MANIFEST and MANIFEST.p7s)
  hsmsign manifest --uri "$HSM_PKCS11_URI_ROOTFS" --cert signer.pem --output deploy/MANIFEST deploy/*.img
  # check it (signature first, then every file's size and sha256)
  hsmsign manifest verify --cert signer.pem deploy/MANIFEST
  # the same signature check without hsmsign
  openssl cms -verify -binary -inform DER -in deploy/MANIFEST.p7s -content deploy/MANIFEST \\
      -CAfile signer.pem -purpose any -out /dev/null
"""


def register(sub: Any, parents: Any) -> None:
    p = sub.add_parser(
        "manifest",
        parents=[parents.token, parents.output],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLE,
        usage="hsmsign manifest --uri URI --cert CERT --output MANIFEST FILE...\n"
        "       hsmsign manifest verify --cert CERT [--signature SIG] [--base DIR] MANIFEST",
        help="signed manifest of files (sha256 + size, CMS); 'manifest verify' checks one",
        description="Write MANIFEST (JSON: path, size, sha256 of each FILE, paths relative to --base, "
        "default the manifest's directory) and its detached CMS signature MANIFEST.p7s, with one token "
        "operation. 'hsmsign manifest verify' checks the signature against --cert, then every file.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--cert", metavar="CERT.pem", help="signer certificate (sign) or trusted certificate (verify)"
    )
    p.add_argument("--output", "-o", metavar="MANIFEST", help="manifest to write")
    p.add_argument("--signature", metavar="SIG", help="signature file (default: MANIFEST.p7s)")
    p.add_argument("--base", metavar="DIR", help="directory paths are relative to (default: the manifest's)")
    p.set_defaults(func=run_manifest)
    # 'manifest verify --cert C MANIFEST' puts options between positionals: parse them intermixed
    p.__class__ = _IntermixedParser


class _IntermixedParser(argparse.ArgumentParser):
    """Positionals may come before and after options (argparse's parse_intermixed_args for a subparser)."""

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def run_manifest(args: Any) -> int:
    if args.files and args.files[0] == "verify":
        return run_verify(args)
    return run_sign(args)


def run_sign(args: Any) -> int:
    from .. import signing
    from ..errors import ConfigError
    from ..formats import cms, manifest

    if not args.output:
        raise ConfigError("--output MANIFEST is required", "e.g. --output deploy/MANIFEST")
    if not args.cert:
        raise ConfigError(
            "--cert is required (the CMS signature carries the signer certificate)",
            "make one with 'hsmsign cert --uri URI --subject CN=... --output signer.pem'",
        )
    cert = cms.read_certificate_file(args.cert)
    base = args.base or os.path.dirname(os.path.abspath(args.output))
    sig_path = args.signature or args.output + ".p7s"
    refuse_overwriting(
        [("--output", args.output), ("the manifest's signature", sig_path)],
        [("--cert", args.cert), *[("a file to list", f) for f in args.files]],
        "leave the manifest and its .p7s out of the list (a glob such as deploy/* takes earlier ones too)",
    )
    with signed_outputs(args) as outputs:
        count = len(args.files)
        progress = Progress(f"hashing {count} file{'s' if count > 1 else ''}", _total_size(args.files))
        data, entries = manifest.build(args.files, base, progress)
        progress.done()
        digest = signing.hash_bytes(data)
        with open_key_from_args(args) as key:
            sig = cms.sign_detached(key, cert=cert, content_digest=digest, like_openssl=True)
            outputs.write(args.output, data)
            outputs.write(sig_path, sig)
            outputs.record(
                artifact=args.output, sha256_hex=digest.hex(), key=key, mechanism="cms", kind="manifest"
            )
            label = key.label
    emit(
        args,
        f"wrote {args.output} ({len(entries)} files) and {sig_path} (key {label})",
        {"manifest": args.output, "signature": sig_path, "files": [e.path for e in entries], "key": label},
    )
    return 0


def _total_size(paths: list[str]) -> int:
    """What the files to list weigh together, for the progress meter (errors are build()'s to tell)."""
    total = 0
    for path in paths:
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total


def run_verify(args: Any) -> int:
    from ..errors import ConfigError
    from ..formats import cms, manifest

    rest = args.files[1:]
    if len(rest) != 1:
        raise ConfigError(
            "manifest verify takes one MANIFEST", "hsmsign manifest verify --cert CERT MANIFEST"
        )
    if not args.cert:
        raise ConfigError("manifest verify needs --cert (the certificate you trust)")
    path = rest[0]
    check_readable(path)
    sig_path = args.signature or path + ".p7s"
    check_readable(sig_path)
    check_readable(args.cert, "certificate")
    trusted = cms.load_certificates(read_input(args.cert, "certificate"), args.cert)
    data = read_input(path, "manifest", manifest.MAX_MANIFEST + 1)
    sig = read_input(sig_path, "signature", 1 << 20)
    base = args.base or os.path.dirname(os.path.abspath(path))
    meters: list[Progress] = []

    def meter(entries: Any) -> Progress:
        label = f"checking {len(entries)} file{'s' if len(entries) > 1 else ''}"
        meters.append(Progress(label, sum(e.size for e in entries)))
        return meters[-1]

    try:
        result = manifest.verify(data, sig, trusted, base, meter)
    finally:
        for m in meters:
            m.done()
    emit(
        args,
        f"{path}: signature OK, {len(result.ok)} files match",
        {"manifest": path, "ok": True, "files": result.ok},
    )
    return 0
