"""``hsmsign pe``: Authenticode signatures on PE/COFF images for UEFI Secure Boot."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..settings import Settings
from .common import emit, open_key_from_args, signed_outputs, warn

EXAMPLE = """\
examples:
  # the db certificate of the token key (DER for enrolment, PEM for the tools)
  hsmsign cert --uri "$HSM_PKCS11_URI_UEFI" --subject "CN=Acme Secure Boot db" --eku codeSigning \\
      --days 3650 --output db.pem
  hsmsign pe esl --cert db.pem --output db.esl          # EFI_SIGNATURE_LIST for enrolment
  # sign systemd-boot, a UKI, GRUB (one token operation each)
  hsmsign pe sign --uri "$HSM_PKCS11_URI_UEFI" --cert db.pem --output systemd-bootx64.signed.efi \\
      systemd-bootx64.efi
  # key rotation: add a second signature, keep the first
  hsmsign pe sign --uri "$NEW_KEY_URI" --cert db-2027.pem --append --output uki.efi uki.efi
  hsmsign pe verify --cert db.pem systemd-bootx64.signed.efi
  # independent checks
  sbverify --cert db.pem systemd-bootx64.signed.efi
  osslsigncode verify -CAfile db.pem -in systemd-bootx64.signed.efi
"""
DIGEST_EXAMPLE = """\
examples:
  hsmsign pe digest systemd-bootx64.efi     # the same as osslsigncode's "Calculated message digest"
  virt-fw-vars -i OVMF_VARS.fd -o vars.fd --add-db-hash "$OWNER" "$(hsmsign pe digest grubx64.efi)"
"""


def register(sub: Any, parents: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    top = sub.add_parser(
        "pe",
        formatter_class=raw,
        epilog=EXAMPLE,
        help="UEFI Secure Boot: Authenticode for PE/COFF (.efi, UKI)",
    )
    verbs = top.add_subparsers(dest="pe_verb", metavar="ACTION")
    p = verbs.add_parser(
        "sign",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="Authenticode-sign a PE/COFF image with one token operation (role UEFI)",
    )
    p.add_argument("input", metavar="IN.efi", help="PE/COFF image (an existing signature is replaced)")
    p.add_argument(
        "--cert", required=True, metavar="CERT.pem", help="certificate of the token key (db entry)"
    )
    p.add_argument(
        "--output", "-o", required=True, metavar="OUT.efi", help="signed image (may be IN.efi itself)"
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the signatures already present and add this one (key rotation); default: replace",
    )
    p.set_defaults(func=run_sign, start=start_sign)

    p = verbs.add_parser(
        "verify",
        parents=[parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="check an image's Authenticode signatures against trusted certificates",
    )
    p.add_argument("image", metavar="FILE.efi")
    p.add_argument(
        "--cert",
        required=True,
        action="append",
        metavar="CERT.pem",
        help="trusted certificate (repeatable; a signature by one of them, or issued by one, passes)",
    )
    p.set_defaults(func=run_verify)

    p = verbs.add_parser(
        "digest",
        parents=[parents.output],
        formatter_class=raw,
        help="print the Authenticode SHA-256 digest of an image (what a db hash entry holds)",
        epilog=DIGEST_EXAMPLE,
    )
    p.add_argument("image", metavar="FILE.efi")
    p.set_defaults(func=run_digest)

    p = verbs.add_parser(
        "esl",
        parents=[parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="EFI_SIGNATURE_LIST of certificates, for db/KEK enrolment (as efitools' cert-to-efi-sig-list)",
    )
    p.add_argument(
        "--cert", required=True, action="append", metavar="CERT.pem", help="certificate (repeatable)"
    )
    p.add_argument(
        "--owner",
        default=Settings.from_env(check=False).uefi_owner or None,
        metavar="GUID",
        help="SignatureOwner GUID (default: $HSMSIGN_UEFI_OWNER_GUID, else one derived from the first "
        "certificate)",
    )
    p.add_argument("--output", "-o", required=True, metavar="db.esl")
    p.set_defaults(func=run_esl)


def _read(path: str) -> bytes:
    """A PE image's bytes (read, not mapped: a file truncated meanwhile cannot kill us with SIGBUS)."""
    from ..atomic import MAX_IMAGE, read_input

    return read_input(path, "PE image", MAX_IMAGE)


def _trusted(paths: list[str]) -> list[Any]:
    from ..formats import cms

    return [cms.read_certificate_file(p) for p in paths]


def verify_image(data: bytes, trusted: list[Any], what: str) -> list[Any]:
    """Every signature in the image parses; at least one verifies against ``trusted``.

    Like EDK2: an entry that is not a PKCS#7 WIN_CERTIFICATE fails the image; a
    signature by an untrusted key is skipped when another one is trusted.
    """
    from ..errors import VerificationError
    from ..formats import authenticode, pe

    layout = pe.parse(data, what)
    entries = pe.certificates(data, layout)
    if not entries:
        raise VerificationError(
            f"{what} is not signed (no certificate table)", "sign it with 'hsmsign pe sign'"
        )
    image_digest = pe.digest(data, "sha256", layout)
    good: list[Any] = []
    reasons: list[str] = []
    for i, entry in enumerate(entries, 1):
        if entry.revision != pe.WIN_CERT_REVISION_2_0 or entry.cert_type != pe.WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            raise VerificationError(
                f"{what}: certificate {i} has revision {entry.revision:#x} type {entry.cert_type:#x}, "
                "not a PKCS#7 WIN_CERTIFICATE"
            )
        try:
            good.append(authenticode.verify(entry.data, image_digest=image_digest, trusted=trusted))
        except VerificationError as exc:
            if "digest differs" in exc.message or "malformed" in exc.message:
                raise VerificationError(f"{what}: signature {i}: {exc.message}", exc.hint) from exc
            reasons.append(f"signature {i}: {exc.message}")
    if not good:
        raise VerificationError(f"{what}: no signature by a trusted certificate ({'; '.join(reasons)})")
    return good


def start_sign(args: Any) -> None:
    """Called by the CLI as soon as the options are parsed: the image is read and hashed meanwhile
    (or has been since the command started: ``pe_input.prefetch``)."""
    from . import pe_input

    args.pe_input = pe_input.adopt(args.input, args.output) or pe_input.ImageInput(args.input)


def run_sign(args: Any) -> int:
    # reading, hashing and writing the body overlap everything up to the signature
    from .pe_input import ImageInput

    job = getattr(args, "pe_input", None) or ImageInput(args.input)
    try:
        return _sign(args, job)
    finally:
        job.stop()


def _sign(args: Any, job: Any) -> int:
    from .. import atomic
    from ..errors import ConfigError
    from ..formats import authenticode, cms, pe
    from . import pe_input

    args.role = args.role or "UEFI"
    # the image itself may be the output (signed in place), the certificate may not
    atomic.refuse_overwriting([("--output", args.output)], [("--cert", args.cert)])
    with signed_outputs(args) as outputs:
        # the output first: its body is copied and hashed while the rest is done (a temporary
        # file, removed if anything below fails)
        out = job.take_output()  # made as the command started (pe_input.open_output), or now
        if out is not None:
            outputs.adopt(out)
        else:
            out = outputs.open(args.output, mode=atomic.file_mode(args.input))
            job.write_body(out.fh.fileno(), args.output)
        fd = out.fh.fileno()  # written with pwrite only (the file object buffers nothing)
        cert = cms.read_certificate_file(args.cert, lazy=True)  # without cryptography's X.509 module
        layout = job.parsed()
        if args.append and layout.signed and layout.cert_table_offset % 8:
            raise ConfigError(
                f"{args.input}: its certificate table is not 8-byte aligned; a signature appended to "
                "it would break the ones there",
                "sign without --append (replaces them)",
            )
        if layout.signed and not args.append:
            count = len(pe.table_entries(job.table, layout.cert_table_offset))
            warn(f"{args.input} was signed: its {count} signature(s) are replaced")
        with open_key_from_args(args) as key:
            authenticode.check_signer(key)
            image_digest = job.image_digest()
            blob = authenticode.sign(key, cert=cert, image_digest=image_digest)
            head, tail = pe.signed_parts(job.head, job.table, layout, [pe.win_certificate(blob)], args.append)
            pe_input.pwrite_all(fd, head, 0)
            pe_input.pwrite_all(fd, tail, layout.content_end)
            job.body_written()
            size = layout.content_end + len(tail)
            entries = check_written(fd, job.head, job.table, layout, size, blob, args.append, args.output)
            authenticode.check_signed(entries[-1].data, image_digest=image_digest, cert=cert)
            count = len(entries)
            outputs.record(
                artifact=args.output,
                sha256_hex=image_digest.hex(),
                key=key,
                mechanism="authenticode-rsa-pkcs1v15-sha256",
                kind="pe",
            )
    emit(
        args,
        f"signed {args.output} ({layout.machine}, authenticode sha256 {image_digest.hex()}, key {key.label}, "
        f"{count} signature{'s' if count > 1 else ''})",
        {
            "output": args.output,
            "authenticode_sha256": image_digest.hex(),
            "key": key.label,
            "key_fingerprint": key.fingerprint,
            "signatures": count,
            "machine": layout.machine,
        },
    )
    return 0


def check_written(
    fd: int,
    head: bytes,
    table: bytes,
    layout: Any,
    size: int,
    blob: bytes,
    keep_existing: bool,
    what: str,
) -> list[Any]:
    """Read a signed image back as firmware will, where it differs from the input; its entries.

    ``head`` and ``table`` are the input's headers and certificate table (``pe.input_parts``).
    The body (sections and what follows them) was hashed as it is in the output (or written
    from the very bytes that were hashed), so it is not read again. What is read back: the
    size on disk; the headers, equal to the input's but for the certificate-table entry; the
    layout parsed from them, with the same hashed ranges (so the same digest) plus the
    padding; the padding (zeros), the entries kept (``--append``) and, last in the table,
    ``blob``.
    """
    from ..errors import SigningError, VerificationError
    from ..formats import pe

    def broken(what_differs: str) -> SigningError:
        return SigningError(
            f"internal: {what_differs}", "nothing was written; check the disk, and report it if it recurs"
        )

    on_disk = os.fstat(fd).st_size
    if on_disk != size:
        raise broken(f"the signed image has {on_disk} bytes on disk, {size} were written")
    head_len = max(layout.size_of_headers, layout.headers_end)
    written = os.pread(fd, head_len, 0)
    cd = layout.cert_dir_offset
    if written[:cd] != head[:cd] or written[cd + 8 :] != head[cd + 8 : head_len]:
        raise broken("the headers read back differ from the input's")
    try:
        new = pe.parse(written, what, size=on_disk)
    except pe.PeFormatError as exc:
        raise broken(f"the headers read back do not parse ({exc.message})") from exc
    want, got = pe.hashed_ranges(layout), pe.hashed_ranges(new)
    end = layout.content_end
    pad = new.content_end - end
    if (
        pad != -end % 8
        or got[: len(want) - 1] != want[:-1]
        or sum(b - a for a, b in got) != sum(b - a for a, b in want) + pad
    ):
        raise broken("the signed image's layout differs from the one hashed")
    tail = os.pread(fd, on_disk - end, end)
    kept = table if keep_existing and layout.signed else b""
    if tail[:pad] != bytes(pad) or tail[pad : pad + len(kept)] != kept:
        raise broken("the padding or the signatures kept differ from those written")
    try:
        entries = pe.table_entries(tail[pad:], new.cert_table_offset)
    except VerificationError as exc:
        raise broken(f"the certificate table read back does not parse ({exc.message})") from exc
    if not entries or entries[-1].data != blob:
        raise broken("the signature read back differs from the one written")
    return entries


def run_verify(args: Any) -> int:
    data = _read(args.image)
    good = verify_image(data, _trusted(args.cert), args.image)
    from ..formats import authenticode

    subjects = [authenticode.describe(g.certificate) for g in good]
    emit(
        args,
        f"OK: {args.image} is signed by {', '.join(subjects)} "
        f"(authenticode sha256 {good[0].image_digest.hex()})",
        {
            "image": args.image,
            "ok": True,
            "signers": subjects,
            "authenticode_sha256": good[0].image_digest.hex(),
        },
    )
    return 0


def run_digest(args: Any) -> int:
    from ..formats import pe

    data = _read(args.image)
    layout = pe.parse(data, args.image)
    d = pe.digest(data, "sha256", layout).hex()
    emit(args, d, {"image": args.image, "authenticode_sha256": d, "signed": layout.signed})
    return 0


def run_esl(args: Any) -> int:
    import hashlib
    import uuid

    from cryptography.hazmat.primitives import serialization

    from .. import atomic
    from ..errors import ConfigError
    from ..formats import authenticode

    atomic.refuse_overwriting([("--output", args.output)], [("--cert", path) for path in args.cert])
    certs = _trusted(args.cert)
    if args.owner:
        try:
            owner = uuid.UUID(args.owner)
        except ValueError as exc:
            raise ConfigError(f"--owner {args.owner!r} is not a GUID", "e.g. $(uuidgen)") from exc
    else:
        # stable across runs: the same certificate always gets the same owner
        der = certs[0].public_bytes(serialization.Encoding.DER)
        owner = uuid.UUID(bytes=hashlib.sha256(der).digest()[:16], version=4)
    atomic.write_bytes_atomic(args.output, authenticode.signature_list(certs, owner))
    emit(
        args,
        f"wrote {args.output}: {len(certs)} X.509 signature list(s), owner {owner}",
        {"output": args.output, "owner": str(owner), "certificates": len(certs)},
    )
    return 0
