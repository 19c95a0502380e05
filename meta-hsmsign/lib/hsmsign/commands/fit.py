"""``hsmsign fit sign|add-key|verify``: U-Boot verified boot with token keys."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
from typing import Any

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
        "required conf keys over the configuration regions, image hashes, required image keys. Unlike "
        "U-Boot, a DTB without any required key is an error.",
    )
    v.add_argument("fit", metavar="FIT")
    v.add_argument("--dtb", required=True, metavar="DTB", help="U-Boot control DTB holding the public keys")
    v.add_argument("--config", action="append", metavar="NAME", help="check only this configuration")
    v.set_defaults(func=run_verify)

    p.set_defaults(func=lambda args: _help(p))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def read_input(path: str, what: str) -> bytes:
    from ..errors import ConfigError
    from .common import check_readable

    check_readable(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def write_output(path: str, data: bytes) -> None:
    from ..atomic import write_bytes_atomic

    write_bytes_atomic(path, data)


def sign_file(
    args: Any,
    path: str,
    output: str,
    signer_for: Any,
    options: Any,
) -> Any:
    """Sign the FIT at ``path`` into ``output`` (atomically); returns the SignResult."""
    from ..formats import fit

    data = read_input(path, "FIT")
    result = fit.sign_fit(data, signer_for, options, what=os.path.basename(path))
    result.device_checked = device_check(
        getattr(args, "fit_check_sign", None),
        result,
        lambda name: signer_for(name).public_key(),
        os.path.basename(path),
    )
    write_output(output, result.data)
    return result


def device_check(tool: str | None, result: Any, public_key_for: Any, what: str) -> list[str]:
    """Check a signed FIT with U-Boot's own ``fit_check_sign`` before it is written.

    The control DTB is made here: every key that signed a configuration as
    ``required = "conf"``, a key that signed only images as ``"image"``, so the
    verifier the device runs must accept every configuration. Returns the
    configurations checked (none when ``tool`` is empty).
    """
    import shutil
    import subprocess
    import tempfile

    from ..errors import ConfigError, VerificationError
    from ..formats import fit
    from ..formats.fdt import Fdt, Node

    if not tool:
        return []
    exe = shutil.which(tool)
    if exe is None:
        raise ConfigError(
            f"fit_check_sign '{tool}' is not found",
            "install U-Boot's tools (Debian u-boot-tools, oe-core u-boot-tools-native) or give its path "
            "(--fit-check-sign / HSMSIGN_FIT_CHECK_SIGN; empty: hsmsign's own check only)",
        )
    kinds: dict[str, tuple[set[str], str]] = {}
    for item in result.signed:
        seen, _ = kinds.setdefault(item.key_name, (set(), item.algo.partition(",")[0]))
        seen.add(item.kind)
    dtb = Fdt(root=Node(""), strings=bytearray()).to_bytes()
    for name, (seen, hash_alg) in kinds.items():
        required = "conf" if "conf" in seen else "image"
        dtb, _ = fit.add_key(dtb, public_key_for(name), name, hash_alg, required, what="check DTB")
    tree = Fdt.parse(result.data, what)
    confs = tree.node(fit.CONFS_PATH)
    names = [c.name for c in confs.children] if confs is not None else []
    with tempfile.TemporaryDirectory(prefix="hsmsign-fitcheck-") as tmp:
        fit_path = os.path.join(tmp, "signed.itb")
        dtb_path = os.path.join(tmp, "keys.dtb")
        with open(fit_path, "wb") as fh:
            fh.write(result.data)
        with open(dtb_path, "wb") as fh:
            fh.write(dtb)
        for conf in names:
            try:
                done = subprocess.run(
                    [exe, "-f", fit_path, "-k", dtb_path, "-c", conf],
                    capture_output=True,
                    text=True,
                    errors="replace",
                    check=False,
                    timeout=600,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ConfigError(f"cannot run {exe}: {exc}", "check HSMSIGN_FIT_CHECK_SIGN") from exc
            if done.returncode != 0:
                lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
                raise VerificationError(
                    f"{what}: U-Boot's fit_check_sign refuses configuration '{conf}' "
                    f"(exit {done.returncode}): {' / '.join(lines[-3:]) or 'no output'}",
                    "nothing was written; the device would not boot this FIT. Check FIT_SIGN_ALG and "
                    "FIT_PAD_ALG against the U-Boot build, and report it if they match",
                )
    return names


def run_sign(args: Any) -> int:
    from ..formats import fit
    from .common import emit, open_key_from_args, record, warn

    output = args.output or args.fit
    options = fit.SignOptions(
        key_name=args.key_name,
        algo=args.algo,
        padding=args.padding,
        configs=args.config,
        comment=args.comment,
        image_key_name=args.image_key_name,
    )
    with open_key_from_args(args) as key:
        result = sign_file(args, args.fit, output, lambda hint: key, options)
        for item in result.signed:
            record(
                args,
                artifact=output,
                sha256_hex=hashlib.sha256(result.data).hexdigest(),
                key=key,
                mechanism=f"fit:{item.algo}" + (f":{item.padding}" if item.padding else ""),
                kind="fit",
            )
    for w in result.warnings:
        warn(w)
    lines = [f"signed {output}:"] + [f"  {s.path}  {s.algo}  key {s.key_name}" for s in result.signed]
    if result.device_checked:
        lines.append(f"fit_check_sign accepts: {', '.join(result.device_checked)}")
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
    write_output(output, new)
    emit(
        args,
        f"wrote {path} (required: {args.required}) into {output}; key sha256 {fingerprint}",
        {"output": output, "node": path, "required": args.required, "key_sha256": fingerprint},
    )
    return 0


def run_verify(args: Any) -> int:
    from ..formats import fit
    from .common import emit

    data = read_input(args.fit, "FIT")
    dtb = read_input(args.dtb, "DTB")
    report = fit.verify_fit(data, dtb, args.config, what=os.path.basename(args.fit))
    emit(
        args,
        "\n".join(
            [f"{args.fit}: OK ({', '.join(report.configs)}) with required keys {', '.join(report.keys)}"]
            + [f"  {c}" for c in report.checked]
        ),
        {"ok": True, "configs": report.configs, "required_keys": report.keys, "checked": report.checked},
    )
    return 0


@contextlib.contextmanager
def keys_by_hint(args: Any, uri_for: Any, pins: list[Any] | None = None) -> Any:
    """A ``signer_for(hint)`` that opens (and caches) one token key per URI, policy and pins checked."""
    from .common import open_key_from_args

    with contextlib.ExitStack() as stack:
        cache: dict[str, Any] = {}

        def signer_for(hint: str | None) -> Any:
            uri = uri_for(hint)
            if uri not in cache:
                cache[uri] = stack.enter_context(open_key_from_args(args, uri=uri, pins=pins))
            return cache[uri]

        yield signer_for
