"""``hsmsign modsign``: Linux kernel module signatures (PKCS#7 appended to the .ko)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..cli import Parser
from .common import emit, open_key_from_args, warn

USAGE = """\
hsmsign modsign [token options] --cert CERT.pem [--hash H] [--output OUT.ko] [--json] MODULE.ko...
       hsmsign modsign verify --cert CERT.pem [--json] MODULE.ko..."""

EXAMPLE = """\
examples:
  # the certificate the kernel trusts (CONFIG_SYSTEM_TRUSTED_KEYS); only the certificate, no key file
  hsmsign cert --uri "$HSM_PKCS11_URI_MODULES" --subject "CN=Acme kernel modules" --days 3650 \\
      --output modules.pem
  # sign every module of a staged kernel in place: one process, one token login, one
  # token operation per module (an existing signature is replaced, never doubled)
  find "$D/lib/modules" -name '*.ko' -print0 | xargs -0 hsmsign modsign \\
      --uri "$HSM_PKCS11_URI_MODULES" --cert modules.pem
  # one module to another file
  hsmsign modsign --uri "$HSM_PKCS11_URI_MODULES" --cert modules.pem --output hello.signed.ko hello.ko
  hsmsign modsign verify --cert modules.pem hello.signed.ko
  # independent checks: kmod's modinfo parses the signature (docs/modsign.md also shows
  # 'openssl cms -verify' of the extracted PKCS#7)
  modinfo -F signer ./hello.signed.ko; modinfo -F sig_hashalgo ./hello.signed.ko

  # a kernel with CONFIG_MODULE_COMPRESS_XZ: signed inside, compressed again with the kernel's
  # settings (xz --check=crc32 --lzma2=dict=1MiB; gzip -n; zstd -T0)
  hsmsign modsign --uri "$HSM_PKCS11_URI_MODULES" --cert modules.pem hello.ko.xz

A module named 'verify' is given as ./verify. Keys: RSA (PKCS#1 v1.5) or ECDSA P-256/P-384;
the kernel needs the hash built in (CONFIG_MODULE_SIG_SHA256/384/512, default sha256).
"""

EC_CURVES = ("secp256r1", "secp384r1")


class _IntermixedParser(Parser):
    """Modules may come before and after the options (``modsign verify --cert C a.ko b.ko``):
    argparse's intermixed parsing, also when the parser is reached as a sub-command."""

    _intermixed = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._intermixed:  # parse_known_intermixed_args calls back here on Python < 3.13
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def register(sub: Any, parents: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    # the one parser of this verb is an _IntermixedParser (add_parser builds _parser_class)
    default_class, sub._parser_class = sub._parser_class, _IntermixedParser
    try:
        p = _add_parser(sub, parents, raw)
    finally:
        sub._parser_class = default_class
    p.set_defaults(func=run)


def _add_parser(sub: Any, parents: Any, raw: Any) -> Any:
    p = sub.add_parser(
        "modsign",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        usage=USAGE,
        epilog=EXAMPLE,
        help="sign Linux kernel modules (appended PKCS#7, as scripts/sign-file), or verify them",
        description="Sign kernel modules in place (or one to --output) with the kernel's appended PKCS#7 "
        "signature: one token session for all of them, one token operation per module, each module "
        "checked and written atomically. Compressed modules (.ko.gz, .ko.xz, .ko.zst) are decompressed, "
        "signed and compressed again as the kernel's modules_install does. "
        "'hsmsign modsign verify' checks modules against a certificate. "
        "Role MODULES (HSMSIGN_PUBKEY_SHA256_MODULES pins the key).",
    )
    p.add_argument(
        "modules",
        nargs="+",
        metavar="MODULE.ko",
        help="modules to sign in place (.ko, or compressed: .ko.gz, .ko.xz, .ko.zst); 'verify' first "
        "checks them instead",
    )
    p.add_argument(
        "--cert",
        required=True,
        metavar="CERT.pem",
        help="certificate of the token key: the one in the kernel's CONFIG_SYSTEM_TRUSTED_KEYS "
        "(verify: the trusted certificate)",
    )
    p.add_argument("--hash", default="sha256", choices=("sha256", "sha384", "sha512"), help="default sha256")
    p.add_argument(
        "--output",
        "-o",
        metavar="OUT.ko",
        help="write the signed module here (one module only; the same compression suffix as the input)",
    )
    return p


def run(args: Any) -> int:
    if args.modules[0] == "verify":
        return run_verify(args)
    return run_sign(args)


def _read(path: str) -> bytes:
    """A module's ELF bytes (with their signature, if any); a ``.ko.gz``, ``.ko.xz`` or ``.ko.zst``
    decompressed (``formats.modcompress``)."""
    from ..atomic import read_input
    from ..formats import modcompress

    data = read_input(path, "module")
    kind = modcompress.compression(path)
    return modcompress.decompress(data, kind, path) if kind else data


def _read_many(paths: list[str]) -> list[bytes | BaseException]:
    """``_read`` of several modules: each one's bytes, or the error it gets (raised in its turn).
    The zstd ones are decompressed by one ``zstd`` process."""
    from ..atomic import read_input
    from ..errors import HsmsignError
    from ..formats import modcompress

    read: list[bytes | BaseException] = []
    for path in paths:
        try:
            read.append(read_input(path, "module"))
        except HsmsignError as exc:
            read.append(exc)
    todo: list[tuple[int, bytes, str]] = []  # (index, compressed bytes, compression)
    for i, data in enumerate(read):
        kind = modcompress.compression(paths[i])
        if isinstance(data, bytes) and kind:
            todo.append((i, data, kind))
    items = [(data, kind, paths[i]) for i, data, kind in todo]
    for (i, _data, _kind), module in zip(todo, modcompress.decompress_many(items)):
        read[i] = module
    return read


def _read_ahead(paths: list[str], pool: Any) -> Any:
    """Each module's bytes (``_read``), in order. Compressed ones are read and decompressed in
    ``pool``, a few ahead (zlib, lzma and the zstd program's wait release the GIL); ``.ko.zst``
    ones in groups of ``ZSTD_GROUP``, one ``zstd`` process each."""
    import collections

    from ..formats import modcompress

    window = 4 * (os.cpu_count() or 1)
    ahead: collections.deque[Any] = collections.deque()
    queued = 0
    for i in range(len(paths)):
        while queued < len(paths) and queued < i + window:
            path = paths[queued]
            kind = modcompress.compression(path)
            if kind == "zstd":
                group = [path]
                while (
                    len(group) < ZSTD_GROUP
                    and queued + len(group) < len(paths)
                    and modcompress.compression(paths[queued + len(group)]) == "zstd"
                ):
                    group.append(paths[queued + len(group)])
                future = pool.submit(_read_many, group)
                ahead.extend((future, n) for n in range(len(group)))
                queued += len(group)
                continue
            ahead.append(pool.submit(_read, path) if kind else path)
            queued += 1
        item = ahead.popleft()
        if isinstance(item, str):
            yield _read(item)
        elif isinstance(item, tuple):
            data = item[0].result()[item[1]]
            if isinstance(data, BaseException):
                raise data
            yield data
        else:
            yield item.result()


def _inputs(paths: list[str]) -> list[str]:
    """The modules, each once (a path given twice is signed once)."""
    seen: set[str] = set()
    out = []
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out.append(path)
    return out


def _check_key(key: Any) -> None:
    from ..errors import ConfigError

    if key.key_type == "ec" and key.curve not in EC_CURVES:
        raise ConfigError(
            f"the kernel checks ECDSA module signatures on P-256 and P-384 only; {key.label} is {key.curve}",
            "use an RSA key or an ECDSA P-256/P-384 key",
        )
    if key.key_type not in ("rsa", "ec"):
        raise ConfigError(
            f"kernel module signatures need an RSA or ECDSA key; {key.label} is {key.key_type}",
            "use an RSA key (PKCS#1 v1.5) or an ECDSA P-256/P-384 key",
        )


# modules signed between two commits: each commit renames its modules into place and appends
# their ledger entries with one write and fsync, in a writer thread while the next ones are signed
CHUNK = 64
# module bytes kept from the check before signing, so most batches read each module once
KEEP_BYTES = 256 << 20
# .ko.zst modules decompressed by one zstd process (those of a chunk are compressed by one)
ZSTD_GROUP = 32


def _payload(signed: Any) -> bytes:
    """A signed module's bytes: as they are, a compression's future, or (future, index) of a
    chunk's zstd batch."""
    if isinstance(signed, bytes):
        return signed
    if isinstance(signed, tuple):
        return bytes(signed[0].result()[signed[1]])
    return bytes(signed.result())


def run_sign(args: Any) -> int:
    import concurrent.futures

    from ..atomic import refuse_overwriting
    from ..errors import ConfigError
    from ..formats import cms, modcompress, modsig

    paths = _inputs(args.modules)
    if args.output and len(paths) != 1:
        raise ConfigError("--output takes one module", "sign several modules in place (without --output)")
    if args.output and modcompress.compression(args.output) != modcompress.compression(paths[0]):
        raise ConfigError(
            f"--output {args.output} and {paths[0]} differ in their compression suffix",
            "the signed module is compressed as its input is: keep the suffix (.ko, .ko.gz, .ko.xz, .ko.zst)",
        )
    modsig.check_hash(args.hash)
    # a module is signed in place or to --output; the certificate is never written over
    refuse_overwriting([("--output", args.output)], [("--cert", args.cert)])
    cert = cms.read_certificate_file(args.cert)
    # compressed modules are decompressed and compressed again on every CPU
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return _sign_modules(args, paths, cert, pool)


def _sign_modules(args: Any, paths: list[str], cert: Any, compressors: Any) -> int:
    import concurrent.futures
    import hashlib

    from .. import atomic, ledger, signing
    from ..errors import SigningError
    from ..formats import cms, modcompress, modsig

    # every input is checked before the token signs anything: a bad file in a batch signs nothing
    checked: list[Any] = []
    resigned: list[str] = []
    kept = 0
    for path, data in zip(paths, _read_ahead(paths, compressors)):
        mod = modsig.split(data, path)
        if mod.signed:
            resigned.append(path)
        keep = kept + len(mod.body) <= KEEP_BYTES
        kept += len(mod.body) if keep else 0
        checked.append(mod if keep else None)
    if resigned:
        warn(
            f"{len(resigned)} module(s) were signed already ({resigned[0]}"
            + (", ..." if len(resigned) > 1 else "")
            + "): the old signatures are replaced"
        )
    args.role = args.role or "MODULES"
    done: list[dict[str, Any]] = []
    ledger_file = ledger.ledger_path(getattr(args, "ledger", None))
    ledger.Batch(ledger_file)  # the ledger is checked before the token is touched
    with open_key_from_args(args) as key:
        _check_key(key)
        cms.check_cert_matches(cert, key)
        mechanism = "modsig-" + signing.mechanism_name(key.key_type, args.hash, None)
        module_signer = modsig.Signer(key, cert, args.hash)
        identity = key.uri.identity()

        def commit(chunk: list[tuple[str, Any, Any, str]]) -> None:
            # the modules and their ledger entries land together or not at all. No fsync per
            # module (thousands of build intermediates, as sign-file writes them), and no
            # os.sync(): on a build host that would flush every other task's writes too
            batch = ledger.Batch(ledger_file)
            for out, _signed, _mode, sha256 in chunk:
                batch.add(
                    artifact=os.path.abspath(out),
                    sha256_hex=sha256,
                    key_fingerprint=key.fingerprint,
                    uri_redacted=identity,
                    mechanism=mechanism,
                    kind="modsign",
                )
            # compressed modules: their compression (a future) is done before anything lands
            payloads = [_payload(signed) for _o, signed, _m, _s in chunk]
            with atomic.staged(batch.appended) as staged:
                for (out, _signed, mode, _sha256), payload in zip(chunk, payloads):
                    staged.write_bytes(out, payload, mode, fsync=False)

        pending: Any = None  # the previous chunk's commit, overlapped with this chunk's signatures

        def finish(job: Any) -> None:
            job[0].result()  # a failed commit raises here, before the next chunk is handed over
            done.extend(job[1])

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
            try:
                for first in range(0, len(paths), CHUNK):
                    chunk: list[tuple[str, Any, Any, str]] = []
                    records: list[dict[str, Any]] = []
                    zstd: list[tuple[int, bytes, str]] = []
                    for i in range(first, min(first + CHUNK, len(paths))):
                        path = paths[i]
                        mod = checked[i] or modsig.split(_read(path), path)
                        checked[i] = None
                        digest = hashlib.new(args.hash, mod.body).digest()
                        # the PKCS#7 was checked when the batch's first one was made; every
                        # signature by the token is checked against the public key
                        appended = module_signer.sign_digest(digest)
                        signed = mod.body + appended
                        # read the result back as the kernel cuts it before it gets the module's name
                        back = modsig.split(signed, path)
                        if back.body != mod.body or back.signatures != (appended[: -modsig.TRAILER_LEN],):
                            raise SigningError(
                                f"internal: {path}: the signed module does not read back as written"
                            )
                        out = args.output or path
                        sha256 = digest if args.hash == "sha256" else hashlib.sha256(mod.body).digest()
                        kind = modcompress.compression(path)
                        payload: Any = signed
                        if kind == "zstd":  # compressed below, the chunk's together
                            zstd.append((len(chunk), signed, path))
                        elif kind:
                            payload = compressors.submit(modcompress.compress, signed, kind, path)
                        chunk.append((out, payload, atomic.file_mode(path), sha256.hex()))
                        records.append(
                            {"module": path, "output": out, "sha256": sha256.hex(), "resigned": mod.signed}
                        )
                    if zstd:
                        packed = compressors.submit(
                            modcompress.compress_many, [(signed, "zstd", path) for _n, signed, path in zstd]
                        )
                        for k, (n, _signed, _path) in enumerate(zstd):
                            chunk[n] = (chunk[n][0], (packed, k), chunk[n][2], chunk[n][3])
                    job = (writer.submit(commit, chunk), records)
                    previous, pending = pending, job
                    if previous is not None:
                        finish(previous)
            finally:
                # a chunk signed is a chunk written and recorded (commit), also when a later one fails
                previous, pending = pending, None
                if previous is not None:
                    finish(previous)
    what = done[0]["output"] if len(done) == 1 else f"{len(done)} modules"
    emit(
        args,
        f"signed {what} ({mechanism}, key {key.label}"
        + (f", {len(resigned)} re-signed" if resigned else "")
        + ")",
        {"modules": done, "key": key.label, "key_fingerprint": key.fingerprint, "mechanism": mechanism},
    )
    return 0


def run_verify(args: Any) -> int:
    import concurrent.futures

    from ..errors import ConfigError, HsmsignError, VerificationError
    from ..formats import authenticode, cms, modsig

    if args.output:
        raise ConfigError("'modsign verify' writes nothing; drop --output")
    paths = args.modules[1:]
    if not paths:
        raise ConfigError(
            "'modsign verify' needs modules", "hsmsign modsign verify --cert CERT.pem MODULE.ko..."
        )
    trusted = [cms.read_certificate_file(args.cert)]
    results: list[dict[str, Any]] = []
    failures: list[HsmsignError] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for path, data in zip(paths, _read_ahead(paths, pool)):
            try:
                found = modsig.verify(data, trusted, path)
            except VerificationError as exc:
                failures.append(exc)
                continue
            results.append(
                {
                    "module": path,
                    "signer": authenticode.describe(found.certificate),
                    "hash": found.hash_alg,
                    "sha256": found.body_sha256,
                }
            )
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more of {len(paths)} modules fail)" if len(failures) > 1 else ""
        raise VerificationError(first.message + more, first.hint)
    what = paths[0] if len(paths) == 1 else f"{len(paths)} modules"
    signers = sorted({r["signer"] for r in results})
    emit(
        args,
        f"OK: {what} signed by {', '.join(signers)} ({', '.join(sorted({r['hash'] for r in results}))})",
        {"ok": True, "modules": results},
    )
    return 0
