"""``hsmsign cert`` and ``hsmsign csr``: X.509 for token keys."""

from __future__ import annotations

import argparse
from typing import Any

from .common import emit, open_key_from_args, signed_outputs

CERT_EXAMPLE = """\
examples:
  # development trust anchor for swupdate (-k) and openssl cms -verify
  hsmsign cert --uri "$HSM_PKCS11_URI_SWUPDATE" --subject "CN=Acme update signing (dev),O=Acme" \\
      --eku emailProtection --days 730 --output swupdate-signer.pem
  # for swupdate --cert-purpose codeSigning, and the kernel's keyring (dm-verity)
  hsmsign cert --uri "$HSM_PKCS11_URI_ROOTFS" --subject "CN=Acme rootfs" --eku codeSigning --output verity.pem
"""
CSR_EXAMPLE = """\
examples:
  hsmsign csr --uri "$HSM_PKCS11_URI_SWUPDATE" --subject "CN=Acme update signing,O=Acme" --output signer.csr
  openssl req -in signer.csr -noout -verify -text     # then send it to your CA
"""


def register(sub: Any, parents: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "cert",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=CERT_EXAMPLE,
        help="self-signed X.509 certificate for a token key (development trust anchors)",
    )
    p.add_argument("--subject", required=True, help="distinguished name, e.g. 'CN=Acme firmware,O=Acme'")
    p.add_argument(
        "--eku",
        action="append",
        choices=("codeSigning", "emailProtection"),
        help="extended key usage (repeatable; default both: swupdate checks emailProtection unless "
        "--cert-purpose codeSigning)",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--output", "-o", required=True, metavar="CERT.pem")
    p.add_argument("--der", action="store_true", help="write DER instead of PEM")
    p.set_defaults(func=run_cert)

    p = sub.add_parser(
        "csr",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=CSR_EXAMPLE,
        help="PKCS#10 certificate request for a token key (for a real CA)",
    )
    p.add_argument("--subject", required=True, help="distinguished name, e.g. 'CN=Acme firmware,O=Acme'")
    p.add_argument("--eku", action="append", choices=("codeSigning", "emailProtection"))
    p.add_argument("--output", "-o", required=True, metavar="CSR.pem")
    p.set_defaults(func=run_csr)


def run_cert(args: Any) -> int:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from ..formats import x509 as fx

    fx.parse_subject(args.subject)  # fail on a bad subject before touching the token
    enc = serialization.Encoding.DER if args.der else serialization.Encoding.PEM
    with signed_outputs(args) as outputs, open_key_from_args(args) as key:
        cert = fx.self_signed(key, args.subject, days=args.days, eku=args.eku)
        outputs.write(args.output, cert.public_bytes(enc))
        der = cert.public_bytes(serialization.Encoding.DER)
        outputs.record(
            artifact=args.output,
            sha256_hex=hashlib.sha256(der).hexdigest(),
            key=key,
            mechanism="x509",
            kind="cert",
        )
    fp = cert.fingerprint(cert.signature_hash_algorithm).hex()
    emit(
        args,
        f"wrote {args.output}: {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d}",
        {
            "certificate": args.output,
            "subject": cert.subject.rfc4514_string(),
            "serial": f"{cert.serial_number:x}",
            "not_after": cert.not_valid_after_utc.isoformat(),
            "fingerprint": fp,
            "key_fingerprint": key.fingerprint,
        },
    )
    return 0


def run_csr(args: Any) -> int:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from ..formats import x509 as fx

    fx.parse_subject(args.subject)
    with signed_outputs(args) as outputs, open_key_from_args(args) as key:
        req = fx.csr(key, args.subject, eku=args.eku)
        outputs.write(args.output, fx.pem(req))
        der = req.public_bytes(serialization.Encoding.DER)
        outputs.record(
            artifact=args.output,
            sha256_hex=hashlib.sha256(der).hexdigest(),
            key=key,
            mechanism="pkcs10",
            kind="csr",
        )
    emit(
        args,
        f"wrote {args.output}: request for {req.subject.rfc4514_string()} "
        f"(key sha256:{key.fingerprint[:16]}...)",
        {"csr": args.output, "subject": req.subject.rfc4514_string(), "key_fingerprint": key.fingerprint},
    )
    return 0
