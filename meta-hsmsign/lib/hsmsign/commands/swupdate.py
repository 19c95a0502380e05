"""``hsmsign swupdate sign|bundle|verify``: sw-description signatures and .swu bundles."""

from __future__ import annotations

import argparse
from typing import Any

from ..atomic import check_readable, refuse_overwriting
from ..errors import printable
from .common import Progress, emit, open_key_from_args, signed_outputs, warn

SIG_MODES = ("cms", "rsa", "rsa-pss")
# '--mode cms|rsa|rsa-pss' (the first spelling of --signing-mode) still names the signature type:
# hsmsign.cli.ModeAction sends these values to sig_mode, the policy values to the policy
SIG_MODE_ALIASES = {m: "sig_mode" for m in SIG_MODES}

EXAMPLE = """\
examples:
  # CMS (what Debian's swupdate and meta-swupdate's SWUPDATE_SIGNING = "CMS" verify)
  hsmsign swupdate sign --uri "$HSM_PKCS11_URI_SWUPDATE" --signing-mode cms --cert swupdate-signer.pem \\
      --output sw-description.sig sw-description
  # raw RSA (CONFIG_SIGALG_RAWRSA) or RSA-PSS (CONFIG_SIGALG_RSAPSS)
  hsmsign swupdate sign --uri "$HSM_PKCS11_URI_SWUPDATE" --signing-mode rsa-pss \\
      --output sw-description.sig sw-description
  # the whole bundle: checks each image against its sha256, signs, writes the cpio
  hsmsign swupdate bundle --uri "$HSM_PKCS11_URI_SWUPDATE" --cert swupdate-signer.pem \\
      --sw-description sw-description --output update.swu rootfs.ext4.gz u-boot.img
  # the device's check, without a device: swupdate -H board:1.0 -c -i update.swu -k swupdate-signer.pem
  hsmsign swupdate verify --cert swupdate-signer.pem update.swu
  # before a build that signs: key, policy, signature type, certificate (and its validity period)
  hsmsign swupdate preflight --uri "$HSM_PKCS11_URI_SWUPDATE" --cert swupdate-signer.pem
"""


def register(sub: Any, parents: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    top = sub.add_parser(
        "swupdate",
        formatter_class=raw,
        epilog=EXAMPLE,
        help="sign sw-description (cms, rsa, rsa-pss) and build/check .swu bundles",
    )
    verbs = top.add_subparsers(dest="swupdate_verb", metavar="ACTION")

    p = verbs.add_parser(
        "sign",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="write sw-description.sig",
        description="Sign sw-description with one token operation. Before signing, sw-description is parsed "
        "and every image entry must carry a sha256 (a signature over a description without image hashes "
        "protects nothing else).",
    )
    p.add_argument("description", metavar="SW-DESCRIPTION")
    _signature_options(p)
    p.add_argument("--output", "-o", required=True, metavar="SIG", help="signature file (sw-description.sig)")
    p.add_argument(
        "--images",
        nargs="*",
        default=None,
        metavar="IMAGE",
        help="also check these files against the sha256 values in sw-description",
    )
    p.add_argument("--no-check", action="store_true", help="sign without parsing sw-description")
    p.set_defaults(func=run_sign, mode_aliases=SIG_MODE_ALIASES)

    p = verbs.add_parser(
        "bundle",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="check images, sign sw-description, write the .swu (cpio crc)",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="files sw-description names (by base name)")
    p.add_argument("--sw-description", required=True, metavar="FILE")
    _signature_options(p)
    p.add_argument(
        "--signature", metavar="SIG", help="use this existing sw-description.sig (no token needed)"
    )
    p.add_argument(
        "--unsigned", action="store_true", help="no signature (for swupdate built without signing)"
    )
    p.add_argument("--newc", action="store_true", help="cpio newc (070701) instead of crc (070702)")
    p.add_argument("--output", "-o", required=True, metavar="FILE.swu")
    p.set_defaults(func=run_bundle, mode_aliases=SIG_MODE_ALIASES)

    p = verbs.add_parser(
        "verify",
        parents=[parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="check a .swu: layout, signature, every image's sha256",
    )
    p.add_argument("bundle", metavar="FILE.swu")
    p.add_argument(
        "--cert",
        required=True,
        metavar="CERT.pem",
        help="trusted certificate (cms) or public key PEM (rsa, rsa-pss)",
    )
    p.add_argument(
        "--signing-mode", "--sig-mode", dest="sig_mode", choices=("cms", "rsa", "rsa-pss"), default="cms"
    )
    p.set_defaults(func=run_verify)

    p = verbs.add_parser(
        "preflight",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="check the key (policy, pins), its signature type and certificate, before a build signs",
        description="Open the key under the mode's policy, check that the signature type suits it and, "
        "for cms, that the certificate belongs to it, and warn when the certificate is outside or near "
        "the end of its validity period; nothing is signed. The layer runs it before meta-swupdate's "
        "do_swuimage.",
    )
    _signature_options(p)
    p.set_defaults(func=run_preflight, mode_aliases=SIG_MODE_ALIASES)


def _signature_options(p: argparse.ArgumentParser) -> None:
    """The signature type and the CMS signer certificate (sign and bundle)."""
    p.add_argument(
        "--signing-mode",
        "--sig-mode",
        dest="sig_mode",
        choices=SIG_MODES,
        default=None,
        help="signature type (default cms); '--mode cms|rsa|rsa-pss' is accepted too",
    )
    p.add_argument("--cert", metavar="CERT.pem", help="signer certificate (cms mode)")


def _sig_mode(args: Any) -> str:
    # '--mode' is the policy option every verb shares (development|production), so the signature type
    # is --signing-mode here; '--mode cms|rsa|rsa-pss' still works (SIG_MODE_ALIASES).
    return str(getattr(args, "sig_mode", None) or "cms")


def _load_cert(path: str | None) -> Any:
    """The signer certificate (sign and bundle), with a warning when devices would refuse it for its
    validity period."""
    if path is None:
        return None
    from ..formats import cms
    from ..formats.x509 import validity_warnings

    cert = cms.read_certificate_file(path)
    for warning in validity_warnings(cert, path):
        warn(warning)
    return cert


def _check_description(data: bytes, images: list[str] | None) -> list[str]:
    import os

    from ..formats import swupdate as swu

    desc = swu.parse_description(data)
    if images is None:
        return swu.check_artifacts(swu.artifacts(desc))
    files = {}
    for path in images:
        check_readable(path)
        files[os.path.basename(path)] = path
    total = sum(os.path.getsize(path) for path in files.values())
    progress = Progress(f"checking the sha256 of {len(files)} image{'s' if len(files) > 1 else ''}", total)
    names = swu.check_artifacts(swu.artifacts(desc), files, progress)
    progress.done()
    return names


def run_sign(args: Any) -> int:
    from .. import signing
    from ..formats import swupdate as swu

    check_readable(args.description, "sw-description")
    refuse_overwriting(
        [("--output", args.output)],
        [("sw-description", args.description), ("--cert", args.cert)]
        + [("the image", path) for path in args.images or ()],
    )
    data = swu.read_limited(args.description)
    names = [] if args.no_check else _check_description(data, args.images)
    mode = _sig_mode(args)
    cert = _load_cert(args.cert)
    with signed_outputs(args) as outputs, open_key_from_args(args) as key:
        sig = swu.sign_description(key, data, mode, cert)
        outputs.write(args.output, sig)
        digest = signing.hash_bytes(data).hex()
        mech = (
            "cms"
            if mode == "cms"
            else signing.mechanism_name("rsa", "sha256", "pss" if mode == "rsa-pss" else None)
        )
        outputs.record(artifact=args.description, sha256_hex=digest, key=key, mechanism=mech, kind="swupdate")
    emit(
        args,
        f"signed {args.description} -> {args.output} ({mode}, key {key.label}, "
        f"{len(names)} image(s) covered by sha256)",
        {
            "description": args.description,
            "signature": args.output,
            "mode": mode,
            "key": key.label,
            "fingerprint": key.fingerprint,
            "images": names,
            "sha256": digest,
        },
    )
    return 0


def run_preflight(args: Any) -> int:
    from ..errors import ConfigError
    from ..formats import cms

    args.role = args.role or "SWUPDATE"
    mode = _sig_mode(args)
    cert = _load_cert(args.cert)
    if mode == "cms" and cert is None:
        raise ConfigError(
            "CMS mode needs the signer certificate",
            "pass --cert CERT.pem (make one with 'hsmsign cert --uri URI --subject CN=...')",
        )
    with open_key_from_args(args) as key:
        if mode == "cms":
            cms.check_cert_matches(cert, key)
        elif key.key_type != "rsa":
            raise ConfigError(
                f"swupdate's {mode} mode needs an RSA key, not {key.key_type}", "use --signing-mode cms"
            )
        label, fingerprint = key.label, key.fingerprint
    emit(
        args,
        f"OK: key {label} (sha256:{fingerprint}) passes the {args.mode} policy and signs swupdate's {mode} "
        "signature" + (f" with {args.cert}, which belongs to it" if mode == "cms" else ""),
        {"key": label, "key_fingerprint": fingerprint, "signing_mode": mode, "mode": args.mode},
    )
    return 0


def run_bundle(args: Any) -> int:
    import os

    from .. import signing
    from ..atomic import read_input
    from ..errors import ConfigError
    from ..formats import swupdate as swu

    check_readable(args.sw_description, "sw-description")
    refuse_overwriting(
        [("--output", args.output)],
        [("sw-description", args.sw_description), ("--cert", args.cert), ("--signature", args.signature)]
        + [("the image", path) for path in args.images],
    )
    data = swu.read_limited(args.sw_description)
    names = _check_description(data, args.images)
    given = {os.path.basename(p): p for p in args.images}
    if len(given) != len(args.images):
        raise ConfigError("two images share a base name", "a .swu holds files by name only")
    extra = sorted(set(given) - set(names))
    if extra:
        raise ConfigError(
            f"sw-description does not name {', '.join(extra)}",
            "every file in a signed bundle must be covered by a sha256 in sw-description",
        )
    # the order of sw-description's entries: swupdate streams images in that order
    images = [(n, given[n]) for n in names if n in given]
    mode = _sig_mode(args)
    key_label = None
    sig: bytes | None
    # the bundle and the ledger entry of its signature land together, or neither
    with signed_outputs(args) as outputs:
        if args.unsigned:
            sig = None
        elif args.signature:
            sig = read_input(args.signature, "signature", 1 << 20)
            if mode == "cms":
                from ..formats import cms

                cms.parse(sig)  # must be a SignedData at least; trust is the device's business
        else:
            cert = _load_cert(args.cert)
            with open_key_from_args(args) as key:
                sig = swu.sign_description(key, data, mode, cert)
                key_label = key.label
                outputs.record(
                    artifact=args.sw_description,
                    sha256_hex=signing.hash_bytes(data).hex(),
                    key=key,
                    mechanism=mode,
                    kind="swupdate",
                )
        out = outputs.open(args.output)
        size = swu.write_bundle(out.fh, data, sig, images, crc=not args.newc)
        out.flush()
        swu.read_bundle(out.tmp_path)  # re-read what we wrote: layout and cpio checksums
    emit(
        args,
        f"wrote {args.output} ({size} bytes: sw-description{', sw-description.sig' if sig else ''}, "
        f"{len(images)} image(s))",
        {
            "bundle": args.output,
            "size": size,
            "signed": sig is not None,
            "mode": mode if sig else None,
            "images": [n for n, _ in images],
            "key": key_label,
        },
    )
    return 0


def run_verify(args: Any) -> int:
    from ..atomic import read_input
    from ..formats import cms
    from ..formats import swupdate as swu

    check_readable(args.bundle)
    pem = read_input(args.cert, "certificate")
    if args.sig_mode == "cms":
        found = swu.verify_bundle(args.bundle, mode="cms", trusted=cms.load_certificates(pem, args.cert))
    else:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        from ..errors import ConfigError

        try:
            pub = load_pem_public_key(pem)
        except ValueError:
            pub = cms.load_certificate(pem, args.cert).public_key()
        if pub is None:
            raise ConfigError(f"{args.cert} holds no public key")
        found = swu.verify_bundle(args.bundle, mode=args.sig_mode, public_key=pub)
    for name in found.unsigned:
        warn(
            f"{args.bundle}: member '{printable(name)}' is not named by sw-description: "
            "unsigned, swupdate skips it"
        )
    if found.trailing:
        warn(
            f"{args.bundle}: {found.trailing} bytes after the cpio trailer: "
            "unsigned, swupdate does not read them"
        )
    emit(
        args,
        f"{args.bundle}: signature OK, {len(found.images)} image(s) match sw-description"
        + (f", {len(found.unsigned)} unsigned member(s) swupdate skips" if found.unsigned else ""),
        {
            "bundle": args.bundle,
            "ok": True,
            "images": found.images,
            "unsigned": found.unsigned,
            "trailing_bytes": found.trailing,
        },
    )
    return 0
