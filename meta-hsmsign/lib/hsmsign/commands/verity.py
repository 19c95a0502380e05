"""``hsmsign verity sign``: dm-verity hash tree, root hash and its PKCS#7 signature."""

from __future__ import annotations

import argparse
from typing import Any

from ..atomic import check_readable, refuse_overwriting
from .common import emit, open_key_from_args, signed_outputs

EXAMPLE = """\
examples:
  # build the tree, write the root hash, sign it (what veritysetup open --root-hash-signature and
  # the kernel's dm-verity check)
  hsmsign verity sign --uri "$HSM_PKCS11_URI_ROOTFS" --cert verity.pem --image rootfs.ext4 \\
      --hash-tree rootfs.ext4.verity --root-hash-output rootfs.roothash --output rootfs.roothash.p7s
  # sign a root hash computed elsewhere (meta-oe's <image>.verity-params)
  hsmsign verity sign --uri "$HSM_PKCS11_URI_ROOTFS" --cert verity.pem --root-hash "$ROOT_HASH" \\
      --output rootfs.roothash.p7s
  # independent checks
  veritysetup verify rootfs.ext4 rootfs.ext4.verity "$(cat rootfs.roothash)"
  openssl cms -verify -binary -inform DER -in rootfs.roothash.p7s -content rootfs.roothash \\
      -CAfile verity.pem -purpose any -out /dev/null
"""


def register(sub: Any, parents: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    top = sub.add_parser("verity", formatter_class=raw, epilog=EXAMPLE, help="dm-verity root hash signature")
    verbs = top.add_subparsers(dest="verity_verb", metavar="ACTION")
    p = verbs.add_parser(
        "sign",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="veritysetup format + PKCS#7 signature over the hex root hash",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", metavar="ROOTFS", help="filesystem image to build the hash tree for")
    src.add_argument("--root-hash", metavar="HEX", help="sign this root hash (no tree is built)")
    p.add_argument("--hash-tree", metavar="OUT", help="hash tree file to write (with --image)")
    p.add_argument("--root-hash-output", metavar="FILE", help="write the root hash (hex, no newline) here")
    p.add_argument("--cert", required=True, metavar="CERT.pem", help="signer certificate (in the signature)")
    p.add_argument("--output", "-o", required=True, metavar="ROOTHASH.p7s", help="DER PKCS#7 signature")
    p.add_argument(
        "--signed-attrs",
        action="store_true",
        help="add CMS signed attributes (default: none, like 'openssl smime -sign -noattr')",
    )
    p.add_argument(
        "--veritysetup-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for veritysetup format (repeatable), e.g. --veritysetup-arg=--hash=sha512",
    )
    p.set_defaults(func=run_sign)


def run_sign(args: Any) -> int:
    import hashlib

    from ..errors import ConfigError
    from ..formats import cms, verity

    refuse_overwriting(
        [("--output", args.output), ("--hash-tree", args.hash_tree)]
        + [("--root-hash-output", args.root_hash_output)],
        [("--image", args.image), ("--cert", args.cert)],
    )
    cert = cms.read_certificate_file(args.cert)
    params = None
    if args.image:
        check_readable(args.image)
        if not args.hash_tree:
            raise ConfigError("--image needs --hash-tree OUT", "name the file veritysetup writes the tree to")
    elif args.hash_tree:
        raise ConfigError("--hash-tree goes with --image", "with --root-hash no tree is built")

    # the hash tree, root hash and signature are renamed into place together, with the ledger
    # entry, only once the signature is made: a failure (wrong --cert, token gone) leaves none
    with signed_outputs(args) as outputs, open_key_from_args(args) as key:
        if args.image:
            tree = outputs.open(args.hash_tree)
            params = verity.format_image(args.image, tree.tmp_path, args.veritysetup_arg)
            verity.verify_tree(args.image, tree.tmp_path, params.root_hash)
            root_hash = params.root_hash
        else:
            root_hash = verity.normalize_root_hash(args.root_hash)
        sig = verity.sign_root_hash(key, cert, root_hash, signed_attrs=args.signed_attrs)
        if args.root_hash_output:
            outputs.write(args.root_hash_output, root_hash.encode())
        outputs.write(args.output, sig)
        outputs.record(
            artifact=args.image or args.output,
            sha256_hex=hashlib.sha256(root_hash.encode()).hexdigest(),
            key=key,
            mechanism="cms",
            kind="verity",
        )
    data = {"root_hash": root_hash, "signature": args.output, "hash_tree": args.hash_tree, "key": key.label}
    if params is not None:
        data["salt"] = params.salt
    emit(args, f"root hash {root_hash}\nsigned -> {args.output} (key {key.label})", data)
    return 0
