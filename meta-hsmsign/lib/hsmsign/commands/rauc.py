"""``hsmsign rauc``: RAUC bundles signed by rauc itself through the token, then checked.

RAUC signs its own bundles (the CMS over the payload or the manifest) and takes a
PKCS#11 URI as ``--key`` through OpenSSL's pkcs11 engine (libp11), with the module in
``RAUC_PKCS11_MODULE`` and the PIN in ``RAUC_PKCS11_PIN``. hsmsign does what rauc does
not: it opens the key first under the mode's policy (development keys, published keys,
pinned fingerprints), checks that the certificate belongs to it, hands rauc the module
and the PIN in rauc's environment only, and checks the bundle after signing (the
signature and, for verity and crypt bundles, every payload block against the signed
root hash, which ``rauc info`` does not), then ``rauc info --keyring``. Only then does
the bundle get its name, with its ledger entry.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from .common import emit, open_key_from_args, warn

EXAMPLE = """\
examples:
  # the certificate of the token key (rauc's default check needs emailProtection or no EKU)
  hsmsign cert --uri "$HSM_PKCS11_URI_RAUC" --subject "CN=Acme RAUC" --days 3650 --output rauc.pem
  # build and sign a bundle: rauc signs through the token, hsmsign checks it
  hsmsign rauc bundle --uri "$HSM_PKCS11_URI_RAUC" --cert rauc.pem bundle-dir/ update.raucb
  # its casync form (rauc convert: OUT.raucb and the chunk store OUT.castr next to it), signed the same way
  hsmsign rauc convert --uri "$HSM_PKCS11_URI_RAUC" --cert rauc.pem update.raucb casync-update.raucb
  # check a bundle as the device does (signature, then every payload block)
  hsmsign rauc verify --cert rauc.pem update.raucb
  # before a build that lets meta-rauc's do_bundle sign: key, policy, certificate
  hsmsign rauc preflight --uri "$HSM_PKCS11_URI_RAUC" --cert rauc.pem
"""
RAUC_MODULE_ENV = "RAUC_PKCS11_MODULE"
RAUC_PIN_ENV = "RAUC_PKCS11_PIN"
TIMEOUT_S = 6 * 3600
SMIME_EKU = "1.3.6.1.5.5.7.3.4"  # emailProtection
_RAUC_LOG_PREFIX = re.compile(r"^rauc-(Message|Warning|Critical|Debug|Info): [\d:.]+: ")  # its log lines


def register(sub: Any, parents: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    top = sub.add_parser(
        "rauc",
        formatter_class=raw,
        epilog=EXAMPLE,
        help="RAUC bundles: rauc signs through the token, hsmsign checks key and bundle",
    )
    verbs = top.add_subparsers(dest="rauc_verb", metavar="ACTION")
    p = verbs.add_parser(
        "bundle",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="build and sign a bundle with 'rauc bundle' and the token key (role RAUC), then check it",
    )
    p.add_argument("input", metavar="INPUTDIR", help="the bundle directory (manifest.raucm and the images)")
    p.add_argument("output", metavar="OUT.raucb", help="the bundle to write (replaced if it exists)")
    _signing_arguments(p, "bundle", "--rauc-arg=--mksquashfs-args=-comp\\ zstd")
    p.set_defaults(func=run_bundle)

    p = verbs.add_parser(
        "convert",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="make a bundle's casync form with 'rauc convert', signed with the token key (role RAUC), "
        "then check it",
    )
    p.add_argument(
        "input", metavar="IN.raucb", help="the signed bundle to convert (rauc checks it against the keyring)"
    )
    p.add_argument(
        "output",
        metavar="OUT.raucb",
        help="the casync bundle to write; its chunk store goes next to it as OUT.castr, where RAUC "
        "looks for it (both replaced if they exist)",
    )
    _signing_arguments(p, "convert", "--rauc-arg=--trust-environment")
    p.set_defaults(func=run_convert)

    p = verbs.add_parser(
        "verify",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="check a bundle's signature and payload against trusted certificates",
    )
    p.add_argument("bundle", metavar="BUNDLE.raucb")
    p.add_argument(
        "--cert",
        required=True,
        action="append",
        metavar="CERT.pem",
        help="trusted certificate or keyring file (repeatable; a signer issued by one of them passes)",
    )
    p.add_argument(
        "--no-payload",
        action="store_true",
        help="check the signature only (verity/crypt: skip reading the payload), as 'rauc info' does",
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="after the check, add a ledger entry for the bundle signed with --uri's key "
        "(what the layer does after meta-rauc's do_bundle)",
    )
    p.set_defaults(func=run_verify)

    p = verbs.add_parser(
        "preflight",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=EXAMPLE,
        help="check the key (policy, pins) and that the certificate belongs to it, before rauc signs",
    )
    _cert_arguments(p, keyring=False)
    p.add_argument(
        "--libp11-version",
        type=_libp11_version,
        metavar="VERSION",
        help="the libp11 rauc signs through (the layer passes libp11-native's): refuse a token with a key "
        "it cannot list (before 0.4.18: Ed25519), where it would find no key at all; without it, warn",
    )
    p.set_defaults(func=run_preflight)


def _signing_arguments(p: Any, verb: str, example: str) -> None:
    """The options of the verbs where rauc signs (``bundle``, ``convert``)."""
    _cert_arguments(p)
    p.add_argument(
        "--intermediate",
        action="append",
        default=[],
        metavar="CA.pem",
        help="intermediate CA certificate to put into the signature (repeatable)",
    )
    p.add_argument(
        "--rauc-arg",
        action="append",
        default=[],
        metavar="ARG",
        help=f"an argument for 'rauc {verb}', e.g. {example} (repeatable)",
    )
    p.add_argument("--rauc", default="rauc", metavar="PATH", help="the rauc program (default: rauc in PATH)")


def _cert_arguments(p: Any, keyring: bool = True) -> None:
    p.add_argument("--cert", required=True, metavar="CERT.pem", help="certificate of the token key (PEM)")
    if keyring:
        p.add_argument(
            "--keyring",
            metavar="KEYRING.pem",
            help="the device's keyring, to check the bundle against (default: --cert itself)",
        )


def _certificate(path: str) -> Any:
    from ..formats import cms

    return cms.read_certificate_file(path)


def _trusted(paths: list[str]) -> list[Any]:
    from .. import atomic
    from ..formats import cms

    found: list[Any] = []
    for path in paths:
        found.extend(cms.load_certificates(atomic.read_input(path, "certificate file", 16 << 20), path))
    return found


def _check_key(args: Any, key: Any, cert: Any) -> None:
    """The certificate carries the key's public half; warn where rauc's default check would refuse it."""
    from cryptography import x509

    from ..formats import cms
    from ..formats.x509 import validity_warnings

    cms.check_cert_matches(cert, key)
    for warning in validity_warnings(cert, args.cert):
        warn(warning)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not any(usage.dotted_string == SMIME_EKU for usage in eku):
        warn(
            f"{args.cert} has an extended key usage without emailProtection: rauc's default keyring "
            "check (OpenSSL's S/MIME purpose) refuses it; the device needs [keyring] check-purpose=codesign "
            "in system.conf, or make the certificate with 'hsmsign cert' (both usages)"
        )


def _libp11_version(text: str) -> tuple[int, ...]:
    from ..token.listing import parse_libp11_version

    try:
        return parse_libp11_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _check_libp11(key: Any, version: tuple[int, ...] | None) -> str:
    """rauc finds its key through libp11, which gives up on a token that holds a key of a type it
    does not know: refuse such a token for a known libp11 ``version``; warn without one. What
    passed, for the report."""
    from ..errors import ConfigError
    from ..token.listing import keys_libp11_cannot_list

    blockers, unnamed = keys_libp11_cannot_list(key, version or (0, 4, 12))
    if unnamed:
        warn(
            f"token '{key.token_info.label}' holds a key of a type hsmsign cannot name; if libp11 does not "
            "know it either, rauc will fail with 'Unable to enumerate private keys': then keep that key "
            "on another token"
        )
    if not blockers:
        return f"; libp11 {'.'.join(map(str, version))} can list every key on the token" if version else ""
    where = f"token '{key.token_info.label}' also holds {', '.join(blockers)}"
    todo = "keep such keys on another token than the one rauc signs with"
    if version is not None:
        text = ".".join(map(str, version))
        raise ConfigError(
            f"{where}, a key type libp11 {text} cannot list: it then finds no key on that token and "
            "rauc fails ('Unable to enumerate private keys')",
            f"{todo}, or sign with a newer libp11 (0.4.18 knows Ed25519 keys)",
        )
    warn(
        f"{where}: libp11 before 0.4.18 (Debian bookworm's, scarthgap's libp11-native) cannot list a "
        f"token with such a key, and rauc would fail with 'Unable to enumerate private keys'; {todo}"
    )
    return ""


def run_preflight(args: Any) -> int:
    args.role = args.role or "RAUC"
    cert = _certificate(args.cert)
    with open_key_from_args(args) as key:
        _check_key(args, key, cert)
        listed = _check_libp11(key, args.libp11_version)
        label, fingerprint, identity = key.label, key.fingerprint, key.uri.identity()
    emit(
        args,
        f"OK: key {label} (sha256:{fingerprint}) passes the {args.mode} policy and {args.cert} belongs "
        f"to it{listed}; rauc signs with --key='{identity}'",
        {"key": label, "key_fingerprint": fingerprint, "uri": identity, "mode": args.mode},
    )
    return 0


def _rauc_command(path: str) -> str:
    from ..errors import ConfigError

    found = shutil.which(path)
    if not found:
        raise ConfigError(
            f"rauc not found ({path})", "apt-get install rauc (1.5 or later), or pass --rauc /path/to/rauc"
        )
    return found


def _start_rauc(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    from ..errors import ConfigError

    try:
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except OSError as exc:
        raise ConfigError(f"cannot run {argv[0]}: {exc.strerror}") from exc


def _finish_rauc(proc: subprocess.Popen[str], what: str) -> None:
    """Wait for rauc; its failure is one error with rauc's last lines (redacted) and what to do."""
    from .. import secrets
    from ..errors import SigningError

    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise SigningError(f"{what} took more than {TIMEOUT_S // 3600} hours; nothing was written") from exc
    if proc.returncode == 0:
        return
    lines = [ln for ln in secrets.redact(stderr + stdout).splitlines() if ln.strip()]
    # one line (the CLI prints errors on one line each): rauc's last lines, without its log prefix
    detail = " | ".join(_RAUC_LOG_PREFIX.sub("", ln).strip() for ln in lines[-4:])
    detail = detail or f"exit {proc.returncode}"
    hint = "nothing was written"
    text = "\n".join(lines)
    if "failed to load PKCS11 engine" in text or "ENGINE_by_id" in text:
        hint = "rauc found no pkcs11 engine: apt-get install libengine-pkcs11-openssl (libp11); " + hint
    elif "enumerate private keys" in text:
        hint = (
            "libp11 could not list the token's keys: a key of a type it does not know stops it (before "
            "0.4.18, an Ed25519 key); keep such keys on another token; " + hint
        )
    elif "certificate has expired" in text or "certificate is not yet valid" in text:
        hint = (
            "the signer certificate is outside its validity period, and rauc checks time as the devices "
            "do: renew it ('hsmsign cert', or 'hsmsign csr' for your CA); " + hint
        )
    elif "unsuitable certificate purpose" in text:
        hint = "make the certificate with 'hsmsign cert' (emailProtection and codeSigning); " + hint
    raise SigningError(f"{what} failed: {detail}", hint)


def _run_rauc(argv: list[str], env: dict[str, str], what: str) -> None:
    _finish_rauc(_start_rauc(argv, env), what)


def _settle(path: str) -> str:
    """The bundle's sha256, then the bundle on disk (fsync), as every hsmsign output before its rename."""
    digest = _sha256(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest


def run_bundle(args: Any) -> int:
    from ..errors import ConfigError

    if not os.path.isfile(os.path.join(args.input, "manifest.raucm")):
        raise ConfigError(
            f"{args.input} has no manifest.raucm", "give the bundle directory: manifest.raucm and the images"
        )
    return _rauc_signs(args, "bundle")


def run_convert(args: Any) -> int:
    from ..errors import ConfigError

    if not args.output.endswith(".raucb"):
        raise ConfigError(
            f"{args.output}: a casync bundle's name ends in .raucb",
            "RAUC looks for the chunk store next to the bundle, NAME.castr for NAME.raucb: name it so",
        )
    if not os.path.isfile(args.input):
        raise ConfigError(f"{args.input} is not a file", "give the signed bundle to convert (.raucb)")
    store = args.output[: -len(".raucb")] + ".castr"
    return _rauc_signs(args, "convert", [f"--keyring={args.keyring or args.cert}"], store)


def _rauc_signs(args: Any, verb: str, extra: Sequence[str] = (), store: str | None = None) -> int:
    """``rauc VERB`` signs ``args.input`` with the token key (``extra``: more of its options),
    then the bundle is checked three ways at once; it gets its name (and ``store``, rauc's
    casync chunk store, its place) with its ledger entry, or nothing is written."""
    from .. import atomic, ledger, token
    from .. import pin as pinmod
    from ..errors import HsmsignError, VerificationError
    from ..formats import rauc

    args.role = args.role or "RAUC"
    atomic.refuse_overwriting(
        [("the bundle to write", args.output), ("its chunk store", store)],
        [("the bundle to convert" if verb == "convert" else "the bundle directory", args.input),
         ("--cert", args.cert), ("--keyring", getattr(args, "keyring", None))],
    )  # fmt: skip
    program = _rauc_command(args.rauc)
    cert = _certificate(args.cert)
    trusted = _trusted([args.keyring or args.cert])
    output = os.path.abspath(args.output)
    batch = ledger.Batch(getattr(args, "ledger", None))
    with open_key_from_args(args) as key:
        _check_key(args, key, cert)
        _check_libp11(key, None)
        module, pin, identity = key.module, key.login_pin(), key.uri.identity()
        label, fingerprint = key.label, key.fingerprint
    token.close_all()  # rauc logs in on its own session
    env = pinmod.child_env()
    env[RAUC_MODULE_ENV] = module
    env.pop(RAUC_PIN_ENV, None)
    if pin is not None:
        env[RAUC_PIN_ENV] = pin
    with atomic.scratch_directory(".hsmsign-rauc-", os.path.dirname(output)) as scratch:
        built = os.path.join(scratch, "bundle.raucb")
        what = f"rauc {verb}"
        argv = [program, verb, f"--cert={args.cert}", f"--key={identity}", *extra]
        argv += [f"--intermediate={path}" for path in args.intermediate]
        _run_rauc([*argv, *args.rauc_arg, args.input, built], env, what)
        built_store = os.path.join(scratch, "bundle.castr")
        if store is not None and not os.path.isdir(built_store):
            raise VerificationError(
                f"{what} wrote no chunk store",
                "nothing was written; is casync installed (apt-get install casync)?",
            )
        # three checks at once (each reads the bundle; two cores make them nearly free): hsmsign's
        # (the signature, every payload block), the device's own (rauc info against the keyring),
        # and the bundle's sha256 for the ledger, then fsync
        keyring = ["--keyring", args.keyring or args.cert]
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            settled = pool.submit(_settle, built)
            info = _start_rauc([program, "info", *keyring, built], pinmod.child_env())
            try:
                check = rauc.verify_bundle(built, trusted)
            except HsmsignError as exc:  # named as the user named it, not by its scratch path
                info.kill()
                info.communicate()
                raise type(exc)(exc.message.replace(built, args.output), exc.hint) from exc
            except BaseException:
                info.kill()
                info.communicate()
                raise
            _finish_rauc(info, f"rauc info {' '.join(keyring)}")
            digest = settled.result()
        signer = _fingerprint(check.signer)
        if signer != fingerprint:
            raise VerificationError(
                f"rauc signed {args.output} with sha256:{signer}, not with the token key "
                f"sha256:{fingerprint}",
                "nothing was written; is the URI ambiguous (two keys of that label)?",
            )
        batch.add(
            artifact=output,
            sha256_hex=digest,
            key_fingerprint=fingerprint,
            uri_redacted=identity,
            mechanism=f"rauc-cms-{check.hash_alg}",
            kind="rauc",
        )
        with atomic.critical(), batch.appended():
            if store is None:
                os.replace(built, output)
            else:
                _place_with_store(built, output, built_store, os.path.abspath(store), scratch)
            _fsync_dir(os.path.dirname(output))
    data = {
        "output": args.output,
        "format": check.format,
        "sha256": digest,
        "key": label,
        "key_fingerprint": fingerprint,
        "verity_root": check.verity_root or None,
    }
    if store is not None:
        data["store"] = store
    extra = f", chunk store {store}" if store is not None else ""
    emit(args, f"signed {args.output} ({check.describe()}; key {label}, sha256 {digest}{extra})", data)
    return 0


def _place_with_store(built: str, output: str, built_store: str, store: str, scratch: str) -> None:
    """The chunk store, then the bundle that needs it, into place. A store there before is moved
    into ``scratch`` (removed with it) and put back if the bundle cannot be placed: the old
    bundle keeps its chunks."""
    old = os.path.join(scratch, "replaced.castr")
    had_old = os.path.lexists(store)
    if had_old:
        os.replace(store, old)
    try:
        os.replace(built_store, store)
        try:
            os.replace(built, output)
        except BaseException:
            os.replace(store, built_store)
            raise
    except BaseException:
        if had_old:
            os.replace(old, store)
        raise


def run_verify(args: Any) -> int:
    from .. import ledger
    from ..errors import ConfigError, printable
    from ..formats import rauc
    from ..policy import Pinned
    from .common import require_uri, role_fingerprints

    args.role = args.role or "RAUC"
    if args.record and args.no_payload:
        raise ConfigError(
            "--record with --no-payload would record a bundle whose payload was not checked",
            "drop --no-payload",
        )
    check = rauc.verify_bundle(args.bundle, _trusted(args.cert), check_payload=not args.no_payload)
    fingerprint = _fingerprint(check.signer)
    subject = printable(check.signer.subject.rfc4514_string())
    data: dict[str, Any] = {
        "bundle": args.bundle,
        "ok": True,
        "format": check.format,
        "signer": subject,
        "key_fingerprint": fingerprint,
        "payload_checked": check.format == "plain" or not args.no_payload,
    }
    if args.record:
        from ..uri import Pkcs11Uri

        identity = Pkcs11Uri.parse(require_uri(args)).identity()
        Pinned(role_fingerprints(args)).check(_SignerKey(fingerprint, subject, identity))
        digest = _sha256(args.bundle)
        entry = ledger.record(
            artifact=os.path.abspath(args.bundle),
            sha256_hex=digest,
            key_fingerprint=fingerprint,
            uri_redacted=identity,
            mechanism=f"rauc-cms-{check.hash_alg}",
            kind="rauc",
            ledger=getattr(args, "ledger", None),
        )
        data["ledger_seq"] = entry.get("seq") if entry else None
    emit(args, f"OK: {args.bundle} is signed by {subject} ({check.describe()})", data)
    return 0


class _SignerKey:
    """The signer of a checked bundle, as the pin check sees a key."""

    def __init__(self, fingerprint: str, label: str, identity: str) -> None:
        from ..uri import Pkcs11Uri

        self.fingerprint = fingerprint
        self.label = label
        self.uri = Pkcs11Uri.parse(identity)


def _fingerprint(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _sha256(path: str) -> str:
    from ..signing import hash_file

    return hash_file(path, "sha256").hex()


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
