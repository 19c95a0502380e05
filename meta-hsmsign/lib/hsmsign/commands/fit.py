"""``hsmsign fit sign|add-key|verify``: U-Boot verified boot with token keys."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import printable

FIT_EPILOG = """\
examples:
  # sign every configuration (and declared image signature) of a FIT in place
  hsmsign fit sign --uri 'pkcs11:token=acme-prod;object=fit-2026?pin-source=file:/run/secrets/pin' \\
      --key-name fit-2026 fitImage
  # put the public key into U-Boot's control DTB; 'required' makes U-Boot enforce it
  hsmsign fit add-key --uri "$HSM_PKCS11_URI_FITIMAGE" --key-name fit-2026 --dtb u-boot.dtb
  # check a FIT against a control DTB (fails when the DTB holds no required key)
  hsmsign fit verify --dtb u-boot.dtb fitImage
"""


def register(sub: Any, parents: Any) -> None:
    from ..settings import Settings

    env = Settings.from_env(check=False)
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "fit",
        formatter_class=raw,
        epilog=FIT_EPILOG,
        help="sign FIT images for U-Boot verified boot; add public keys to the control DTB",
        description="FIT images (U-Boot, SPL payloads, kernel fitImage) signed with a token key, the way "
        "mkimage signs them, and public keys for U-Boot's control device tree. Docs: docs/fit.md.",
    )
    verbs = p.add_subparsers(dest="fit_verb", metavar="VERB")

    s = verbs.add_parser(
        "sign",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=FIT_EPILOG,
        help="sign a FIT (atomically, in place or to --output)",
        description="Fill the signature nodes the image source declared, as mkimage does; a "
        "configuration with no signature node gets one covering all its images. Every image a configuration "
        "references is covered, whatever sign-images says (U-Boot's verifier covers them all since "
        "CVE-2026-46728). The timestamp honours SOURCE_DATE_EPOCH.",
    )
    s.add_argument("fit", metavar="FIT")
    s.add_argument("--output", "-o", metavar="FILE", help="write the signed FIT here (default: in place)")
    s.add_argument(
        "--key-name",
        metavar="NAME",
        default=env.fit_key_name or None,
        help="key-name-hint: sign only the signature nodes naming this key, and name added nodes so "
        "(default: every node; added nodes get the key's label)",
    )
    s.add_argument(
        "--algo",
        metavar="ALGO",
        help="hash ('sha256') or full algo ('sha256,rsa2048'); overrides the nodes' algo like mkimage -o",
    )
    s.add_argument(
        "--padding", choices=("pkcs-1.5", "pss"), help="RSA padding (default: the node's, else pkcs-1.5)"
    )
    s.add_argument(
        "--config", action="append", metavar="NAME", help="sign only this configuration (repeatable)"
    )
    s.add_argument("--comment", help="comment property of the signature nodes")
    s.add_argument(
        "--image-key-name",
        metavar="NAME",
        help="also sign image signature nodes naming this key (oe-core FIT_SIGN_INDIVIDUAL: "
        "UBOOT_SIGN_IMG_KEYNAME), with the same token key",
    )
    s.add_argument(
        "--fit-check-sign",
        metavar="TOOL",
        default=env.fit_check_sign or None,
        help="before writing, check every configuration with U-Boot's fit_check_sign (TOOL: its name "
        "or path) against a control DTB holding the key as required; a refusal writes nothing "
        "(default: $HSMSIGN_FIT_CHECK_SIGN, else hsmsign's own check only)",
    )
    s.set_defaults(func=run_sign)

    a = verbs.add_parser(
        "add-key",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=FIT_EPILOG,
        help="write the key's public half into a U-Boot control DTB under /signature",
        description="Write (or overwrite) the public key node U-Boot verifies FIT signatures with: "
        "/signature/key-NAME for RSA (rsa,num-bits, rsa,n0-inverse, rsa,exponent, rsa,modulus, "
        "rsa,r-squared), /signature/NAME for ECDSA (ecdsa,curve, ecdsa,x-point, ecdsa,y-point). Keys "
        "side by side are how keys are rotated; each has its own 'required' policy.",
    )
    a.add_argument("--dtb", required=True, metavar="DTB", help="U-Boot control DTB to update")
    a.add_argument("--output", "-o", metavar="FILE", help="write the new DTB here (default: in place)")
    a.add_argument("--key-name", required=True, metavar="NAME", help="key-name-hint the FIT signatures carry")
    a.add_argument(
        "--required",
        choices=("conf", "image", "none"),
        default="conf",
        help="conf: U-Boot refuses configurations this key did not sign (default); image: images; "
        "none: the key is only a candidate, never enforced",
    )
    a.add_argument(
        "--required-mode",
        choices=("all", "any"),
        help="/signature required-mode: every required key must verify (all, U-Boot's default) or one",
    )
    a.add_argument(
        "--algo", default="sha256", metavar="HASH", help="hash the signatures use (default sha256)"
    )
    a.set_defaults(func=run_add_key)

    v = verbs.add_parser(
        "verify",
        parents=[parents.output],
        formatter_class=raw,
        epilog=FIT_EPILOG,
        help="verify a FIT against the required keys of a control DTB",
        description="Check every configuration (or --config) the way U-Boot does when it boots it: "
        "required conf keys over the regions of the signature's hashed-nodes, image hashes, required "
        "image keys; without --config, the default configuration must exist. Unlike U-Boot, a DTB "
        "without any required key is an error, and so is a hashed-nodes that leaves out a node the "
        "configuration uses.",
    )
    v.add_argument("fit", metavar="FIT")
    v.add_argument("--dtb", required=True, metavar="DTB", help="U-Boot control DTB holding the public keys")
    v.add_argument("--config", action="append", metavar="NAME", help="check only this configuration")
    v.set_defaults(func=run_verify)


def run_sign(args: Any) -> int:
    from .. import ledger
    from ..formats import fit
    from .common import emit, open_key_from_args, warn

    output = args.output or args.fit
    options = fit.SignOptions(
        key_name=args.key_name,
        algo=args.algo,
        padding=args.padding,
        configs=args.config,
        comment=args.comment,
        image_key_name=args.image_key_name,
    )
    batch = ledger.Batch(args.ledger)  # checked before the token is opened
    with open_key_from_args(args) as key:
        result = fit.sign_file(
            args.fit,
            output,
            lambda hint: key,
            options,
            fit_check_sign=args.fit_check_sign,
            ledger=batch,
        )
    for w in result.warnings:
        warn(w)
    lines = [f"signed {output}:"] + [
        f"  {printable(s.path)}  {printable(s.algo)}  key {printable(s.key_name)}" for s in result.signed
    ]
    if result.device_checked:
        lines.append(f"fit_check_sign accepts: {', '.join(printable(c) for c in result.device_checked)}")
    emit(
        args,
        "\n".join(lines),
        {
            "output": output,
            "signed": [
                {
                    "path": s.path,
                    "kind": s.kind,
                    "algo": s.algo,
                    "padding": s.padding,
                    "key_name": s.key_name,
                    "key_sha256": s.fingerprint,
                    "hashed_nodes": s.hashed_nodes,
                }
                for s in result.signed
            ],
            "warnings": result.warnings,
            "fit_check_sign": result.device_checked,
        },
    )
    return 0


def run_add_key(args: Any) -> int:
    from ..atomic import read_input, write_bytes_atomic
    from ..formats import fit
    from .common import emit, open_key_from_args

    dtb = read_input(args.dtb, "DTB")
    output = args.output or args.dtb
    with open_key_from_args(args) as key:
        public = key.public_key()
        fingerprint = key.fingerprint
    new, path = fit.add_key(
        dtb,
        public,
        args.key_name,
        hash_alg=args.algo,
        required=None if args.required == "none" else args.required,
        required_mode=args.required_mode,
        what=os.path.basename(args.dtb),
    )
    write_bytes_atomic(output, new)
    emit(
        args,
        f"wrote {path} (required: {args.required}) into {output}; key sha256 {fingerprint}",
        {"output": output, "node": path, "required": args.required, "key_sha256": fingerprint},
    )
    return 0


def run_verify(args: Any) -> int:
    from ..atomic import MAX_IMAGE, read_input
    from ..formats import fit
    from .common import emit

    data = read_input(args.fit, "FIT", MAX_IMAGE)
    dtb = read_input(args.dtb, "DTB")
    report = fit.verify_fit(data, dtb, args.config, what=os.path.basename(args.fit))
    emit(
        args,
        "\n".join(
            [
                f"{args.fit}: OK ({', '.join(printable(c) for c in report.configs)}) "
                f"with required keys {', '.join(printable(k) for k in report.keys)}"
            ]
            + [f"  {printable(c, None)}" for c in report.checked]
        ),
        {"ok": True, "configs": report.configs, "required_keys": report.keys, "checked": report.checked},
    )
    return 0
