"""``hsmsign encrypt``: AES-256-CBC through a token-resident key, as swupdate's encrypted images expect."""

from __future__ import annotations

import argparse
from typing import Any

from ..atomic import check_readable, refuse_overwriting
from .common import emit, file_progress, open_secret_key_from_args, warn

EXAMPLE = """\
examples:
  # once: the key is made inside the token and never leaves it
  hsmsign keygen --uri "pkcs11:token=acme-prod;object=fw-encrypt?pin-source=file:/run/pin" --type aes:256
  # per image: a fresh random IV; put the printed ivt and sha256 into sw-description
  hsmsign encrypt --uri "$HSM_PKCS11_URI_ENCRYPT" --in rootfs.ext4.gz --out rootfs.ext4.gz.enc
  #   { filename = "rootfs.ext4.gz.enc"; encrypted = true; ivt = "<ivt>"; sha256 = "<sha256>"; ... }
"""


def register(sub: Any, parents: Any) -> None:
    p = sub.add_parser(
        "encrypt",
        parents=[parents.token, parents.output],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLE,
        help="AES-CBC (PKCS#7 padding) encryption with a key that stays in the token",
        description="Stream IMG through the token's AES key (CKM_AES_CBC_PAD, C_EncryptUpdate) in 1 MiB "
        "chunks: bounded memory for any size. Prints the IV (swupdate's ivt) and the SHA-256 of the "
        "ciphertext (the sha256 sw-description needs).",
    )
    p.add_argument("--in", dest="input", required=True, metavar="IMG")
    p.add_argument("--out", "--output", "-o", dest="output", required=True, metavar="IMG.enc")
    p.add_argument("--iv", metavar="HEX", help="32 hex digits (default: random; never reuse one with a key)")
    p.add_argument("--iv-output", metavar="FILE", help="also write the IV (hex) to FILE")
    p.set_defaults(func=run_encrypt)


def run_encrypt(args: Any) -> int:
    import os
    import stat

    from .. import atomic
    from ..errors import ConfigError, PolicyError
    from ..formats import encrypt as enc

    check_readable(args.input)
    if not stat.S_ISREG(os.stat(args.input).st_mode):
        raise ConfigError(
            f"--in {args.input} is not a regular file (a device, pipe or FIFO has no size to check)",
            "write the data to a file first, then encrypt the file",
        )
    refuse_overwriting([("--out", args.output), ("--iv-output", args.iv_output)], [("--in", args.input)])
    iv = enc.parse_iv(args.iv)
    why = enc.weak_iv(iv)
    if why is not None:
        msg = f"IV {iv.hex()} is a published example or a pattern ({why})"
        if args.mode == "production":
            raise PolicyError(msg, "leave --iv out for a random IV")
        warn(msg + "; acceptable for tests only")
    with open_secret_key_from_args(args) as aes:
        if aes.key_size != 256:
            warn(f"key '{aes.label}' is AES-{aes.key_size}; swupdate expects AES-256 unless built otherwise")
        progress = file_progress(f"encrypting {os.path.basename(args.input)}", args.input)
        with atomic.atomic_output(args.output) as out:
            result = enc.encrypt_file(aes, args.input, out, iv, progress)
        progress.done()
        label = aes.label
    if args.iv_output:
        atomic.write_bytes_atomic(args.iv_output, iv.hex().encode())
    emit(
        args,
        f"encrypted {args.input} -> {args.output} ({result.bytes_out} bytes, key {label})\n"
        f'ivt = "{iv.hex()}";\nsha256 = "{result.sha256}";',
        {
            "input": args.input,
            "output": args.output,
            "ivt": iv.hex(),
            "sha256": result.sha256,
            "bytes_in": result.bytes_in,
            "bytes_out": result.bytes_out,
            "key": label,
        },
    )
    return 0
