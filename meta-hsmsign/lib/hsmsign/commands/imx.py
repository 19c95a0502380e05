"""``hsmsign imx``: NXP i.MX boot images (AHAB, HAB) and SRK tables, signed through SPSDK.

SPSDK is an optional extra (``pip install 'hsmsign[nxp]'``): it is imported only when
one of these commands runs, and its absence is one line with that hint (exit 2).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..atomic import check_readable, refuse_overwriting
from .common import emit, open_key_from_args, require_uri, warn

AHAB_EXAMPLE = """\
examples:
  # sign the OEM containers of an i.MX 93 boot image; the config is 'nxpimage ahab get-template -s'
  hsmsign imx ahab sign --uri "$HSM_PKCS11_URI_IMX" --config ahab-sign.yaml \\
      --output flash.signed.bin flash.bin
  nxpimage ahab verify -f mimx9352 -b flash.signed.bin
"""
HAB_EXAMPLE = """\
examples:
  # build a HAB image (IVT + CSF) from an 'nxpimage hab get-template' configuration
  hsmsign imx hab sign --uri "$HSM_PKCS11_URI_IMX" --config hab.yaml --output app.hab.bin
  nxpimage hab verify -f mimxrt1060 -b app.hab.bin
"""
SRK_EXAMPLE = """\
examples:
  # AHAB SRK table of four token keys (SRK 1-3 for revocation) and the SRK hash fuse words
  hsmsign imx srk --kind ahab --table srk-table.bin --fuses srk-fuses.txt \\
      "$URI_BASE;object=imx-srk0" "$URI_BASE;object=imx-srk1" \\
      "$URI_BASE;object=imx-srk2" "$URI_BASE;object=imx-srk3"
"""


def register(sub: Any, parents: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    imx = sub.add_parser(
        "imx",
        formatter_class=raw,
        epilog=AHAB_EXAMPLE + "\n" + HAB_EXAMPLE + "\n" + SRK_EXAMPLE,
        help="NXP i.MX secure boot: AHAB containers, HAB images, SRK tables (needs hsmsign[nxp])",
        description="Sign NXP i.MX boot images with a token key through NXP's SPSDK (pip install "
        "'hsmsign[nxp]'). The SPSDK configuration names no key and no PIN: --uri names the key.",
    )
    kinds = imx.add_subparsers(dest="imx_kind", metavar="KIND")

    ahab = kinds.add_parser(
        "ahab", formatter_class=raw, epilog=AHAB_EXAMPLE, help="AHAB (i.MX 8/8X/8ULP/9): sign containers"
    )
    ahab_sub = ahab.add_subparsers(dest="ahab_cmd", metavar="CMD")
    p = ahab_sub.add_parser(
        "sign",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=AHAB_EXAMPLE,
        help="sign the non-NXP containers of an AHAB image",
        description="Sign every OEM (non-NXP) container of IMAGE as 'nxpimage ahab sign' does, with the "
        "token key --uri in place of the configuration's signer. SPSDK's verification passes before "
        "the output is written.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--config", "-c", required=True, metavar="CFG", help="SPSDK AHAB signing configuration")
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="signed image to write")
    p.add_argument(
        "--mem-type",
        default="serial_downloader",
        metavar="TYPE",
        help="SPSDK memory type of IMAGE (default serial_downloader: a plain AHAB container set)",
    )
    p.set_defaults(func=run_ahab_sign)

    hab = kinds.add_parser(
        "hab",
        formatter_class=raw,
        epilog=HAB_EXAMPLE,
        help="HAB (i.MX RT, through SPSDK): build a signed image",
    )
    hab_sub = hab.add_subparsers(dest="hab_cmd", metavar="CMD")
    p = hab_sub.add_parser(
        "sign",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=HAB_EXAMPLE,
        help="build a HAB image with its CSF, signed by the token key",
        description="Build the HAB image of an 'nxpimage hab' configuration (IVT, boot data, CSF with CMS "
        "signatures) with the token key --uri as every Signer. With SOURCE_DATE_EPOCH and no "
        "options/signatureTimestamp, the signing time is SOURCE_DATE_EPOCH (reproducible).",
    )
    p.add_argument("--config", "-c", required=True, metavar="CFG", help="SPSDK HAB configuration")
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="HAB image to write")
    p.set_defaults(func=run_hab_sign)

    p = kinds.add_parser(
        "srk",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=SRK_EXAMPLE,
        help="SRK table and SRK hash fuse values from the token's public keys",
        description="Write the SRK table of up to four token keys (in SRK order: the others are for "
        "revocation) and the SRK hash fuse words. Production policy applies to every key: a "
        "development or software key is never fused.",
    )
    p.add_argument("keys", nargs="*", metavar="URI", help="key URIs in SRK order (default: --uri)")
    p.add_argument("--kind", choices=("ahab", "hab"), required=True, help="AHAB or HAB SRK table")
    p.add_argument("--table", required=True, metavar="FILE", help="SRK table to write")
    p.add_argument("--fuses", required=True, metavar="FILE", help="fuse words (text) to write")
    p.add_argument("--fuses-bin", metavar="FILE", help="also the fused hash itself (binary, SRK_fuses.bin)")
    p.add_argument(
        "--hab-ca", action="store_true", help="HAB: mark the SRKs as CAs (they sign CSF/IMG certs)"
    )
    p.set_defaults(func=run_srk)


def _imx_args(args: Any) -> Any:
    if not getattr(args, "role", None):
        args.role = "IMX"
    return args


def _mode(args: Any) -> str:
    from ..settings import effective_mode

    return effective_mode(args.mode)


def _check_config(args: Any) -> None:
    from ..nxp import require_spsdk
    from ..nxp.images import check_config_pins

    check_readable(args.config)
    for warning in check_config_pins(args.config, _mode(args)):
        warn(warning)
    require_spsdk()


def run_ahab_sign(args: Any) -> int:
    from ..nxp import images

    args = _imx_args(args)
    uri = require_uri(args)
    check_readable(args.image)
    _check_config(args)
    # the image may be signed in place; its SPSDK configuration is never written over
    refuse_overwriting([("--output", args.output)], [("--config", args.config)])
    args.artifact = os.path.abspath(args.output)
    result = images.ahab_sign(args, args.config, args.image, uri, args.mem_type)
    images.atomic_outputs([(args.output, result.data)])
    words = images.SrkTable("ahab", b"", result.srk_hash).fuse_words if result.srk_hash else []
    emit(
        args,
        f"signed {result.containers} AHAB container(s) of {args.image} -> {args.output} "
        f"(SRK hash {result.srk_hash.hex()})",
        {
            "image": args.image,
            "output": args.output,
            "containers": result.containers,
            "srk_hash": result.srk_hash.hex(),
            "fuse_words": [f"0x{w:08X}" for w in words],
            "sha256": images.sha256_hex(result.data),
        },
    )
    return 0


def run_hab_sign(args: Any) -> int:
    from ..nxp import images

    args = _imx_args(args)
    uri = require_uri(args)
    _check_config(args)
    refuse_overwriting([("--output", args.output)], [("--config", args.config)])
    args.artifact = os.path.abspath(args.output)
    result = images.hab_export(args, args.config, uri)
    images.atomic_outputs([(args.output, result.data)])
    emit(
        args,
        f"built HAB image {args.output} ({len(result.data)} bytes)",
        {"output": args.output, "size": len(result.data), "sha256": images.sha256_hex(result.data)},
    )
    return 0


def run_srk(args: Any) -> int:
    import contextlib

    from .. import keys
    from ..nxp import images, require_spsdk

    args = _imx_args(args)
    uris = list(args.keys) or [require_uri(args)]
    refuse_overwriting([("--table", args.table), ("--fuses", args.fuses), ("--fuses-bin", args.fuses_bin)])
    require_spsdk()
    publics = []
    fingerprints = []
    with contextlib.ExitStack() as stack:
        for uri in uris:
            # every SRK is fused for the device's life: the production policy holds for each; the
            # role's pinned fingerprint names the signing key only, so it is not asked of the spares
            key = stack.enter_context(open_key_from_args(args, uri=uri, pinned=[]))
            publics.append(key.public_key())
            fingerprints.append(key.fingerprint)
    table = images.srk_table(args.kind, publics, hab_ca=args.hab_ca)
    outputs = [(args.table, table.table), (args.fuses, table.fuse_text().encode())]
    if args.fuses_bin:
        outputs.append((args.fuses_bin, table.digest))
    images.atomic_outputs(outputs)
    emit(
        args,
        f"SRK table of {len(uris)} key(s) -> {args.table}; fuse words -> {args.fuses}\n" + table.fuse_text(),
        {
            "kind": args.kind,
            "table": args.table,
            "fuses": args.fuses,
            "srk_hash": table.digest.hex(),
            "fuse_words": [f"0x{w:08X}" for w in table.fuse_words],
            "keys": fingerprints,
            # the SRKs' public halves (PEM), in SRK order: what an SPSDK srk_table lists
            "public_keys": [keys.public_bytes(p, "pem").decode() for p in publics],
        },
    )
    return 0
