"""Core verbs: sign, pubkey, info, doctor, keygen, dev-init, uri."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

from ..atomic import check_readable, refuse_overwriting
from ..settings import Settings, effective_mode
from .common import (
    emit,
    file_progress,
    open_key_from_args,
    require_uri,
    role_fingerprints,
    signed_outputs,
)

SIGN_EXAMPLE = """\
examples:
  # detached signature that 'openssl dgst -sha256 -verify pub.pem -signature rootfs.sig rootfs.ext4' accepts
  hsmsign sign --uri 'pkcs11:token=acme-prod;object=rootfs?pin-source=file:/run/secrets/hsm-pin' \\
      --output rootfs.sig rootfs.ext4
  # RSA-PSS with SHA-384 (verify with -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:48)
  hsmsign sign --uri "$HSM_PKCS11_URI" --hash sha384 --scheme pss --output fw.sig fw.bin
  # ECDSA as raw r||s (64 bytes for P-256) instead of DER
  hsmsign sign --uri "$HSM_PKCS11_URI_ROOTFS" --format raw --output fw.sig fw.bin
"""


def register(sub: Any, parents: Any) -> None:
    env = Settings.from_env(check=False)
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "sign",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        epilog=SIGN_EXAMPLE,
        help="detached signature of a file (hashed locally, one token operation)",
        description="Write a detached signature of FILE. The file is hashed locally in a stream; the token "
        "signs the digest once; the signature is verified against the key's public half before it is "
        "written atomically.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--output", "-o", required=True, metavar="SIG", help="signature file to write")
    p.add_argument("--hash", default="sha256", choices=("sha256", "sha384", "sha512"))
    p.add_argument("--scheme", choices=("pkcs1v15", "pss"), help="RSA padding (default pkcs1v15)")
    p.add_argument(
        "--format",
        choices=("der", "raw"),
        default="der",
        help="ECDSA encoding: DER (openssl) or raw r||s (default der)",
    )
    p.set_defaults(func=run_sign)

    p = sub.add_parser(
        "pubkey",
        parents=[parents.token],
        formatter_class=raw,
        help="export the public key of a token key (PEM or DER)",
        epilog='examples:\n  hsmsign pubkey --uri "$HSM_PKCS11_URI" --output signing-pub.pem\n'
        '  hsmsign pubkey --uri "$HSM_PKCS11_URI" --format der | sha256sum',
    )
    p.add_argument("--format", choices=("pem", "der"), default="pem")
    p.add_argument("--output", "-o", metavar="FILE", help="write here (default, or '-': stdout)")
    p.set_defaults(func=run_pubkey)

    p = sub.add_parser(
        "info",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        help="token, key, type, size and public-key fingerprint",
        epilog='examples:\n  hsmsign info --uri "$HSM_PKCS11_URI"\n'
        "  hsmsign info --uri 'pkcs11:token=acme-prod' --json   # lists the keys on a token",
    )
    p.set_defaults(func=run_info)

    p = sub.add_parser(
        "doctor",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        help="check module, token, login, key, policy and a test signature step by step, and whether "
        "libp11 (rauc, sbsign) can list the token's keys",
        epilog='examples:\n  hsmsign doctor --uri "$HSM_PKCS11_URI" --mode production\n'
        '  hsmsign doctor --uri "$HSM_PKCS11_URI_RAUC" --cert rauc.pem   # and the certificate of the key',
    )
    p.add_argument(
        "--cert",
        action="append",
        default=[],
        metavar="CERT.pem",
        help="also check that this certificate belongs to the key and is within its validity period "
        "(repeatable)",
    )
    p.set_defaults(func=run_doctor)

    p = sub.add_parser(
        "keygen",
        parents=[parents.token, parents.output],
        formatter_class=raw,
        help="generate a key inside the token (sensitive, non-extractable)",
        epilog="examples:\n  hsmsign keygen "
        "--uri 'pkcs11:token=acme-prod;object=fw-signing?pin-source=file:/run/pin' "
        '--type rsa:3072\n  hsmsign keygen --uri "$URI_BASE;object=fw-encrypt" --type aes:256',
    )
    p.add_argument(
        "--type",
        required=True,
        metavar="TYPE",
        help="rsa:2048|rsa:3072|rsa:4096, ec:secp256r1|ec:secp384r1, ed25519, aes:128|aes:192|aes:256",
    )
    p.add_argument("--id", metavar="HEX", help="CKA_ID in hex (default: random 8 bytes)")
    p.add_argument(
        "--extractable",
        action="store_true",
        help="development only: allow the key to leave the token (test fixtures)",
    )
    p.set_defaults(func=run_keygen)

    p = sub.add_parser(
        "dev-init",
        parents=[parents.output],
        formatter_class=raw,
        help="create a SoftHSM development token with one development key per role",
        description="Create (or complete) a SoftHSM token labelled hsmsign-dev in DIR with development keys "
        "for each role. Production policy refuses these keys. Idempotent.",
        epilog='examples:\n  hsmsign dev-init\n  eval "$(hsmsign dev-init --print-env)"',
    )
    p.add_argument(
        "--dir",
        default=None,
        metavar="DIR",
        help="where the token lives (default: $HSMSIGN_DEV_HOME or ~/.local/share/hsmsign/dev-token)",
    )
    p.add_argument("--module", default=env.softhsm_module or None, help="libsofthsm2.so path")
    p.add_argument("--print-env", action="store_true", help="print only the export lines for a shell")
    p.set_defaults(func=run_dev_init)

    p = sub.add_parser(
        "uri",
        parents=[parents.output],
        formatter_class=raw,
        help="parse and check a PKCS#11 URI (prints it redacted)",
        epilog="examples:\n  hsmsign uri 'pkcs11:token=acme%20prod;object=fw'",
    )
    p.add_argument("value", metavar="URI")
    p.add_argument(
        "--mode",
        choices=("development", "production"),
        default=env.mode,
    )
    p.set_defaults(func=run_uri)


# --------------------------------------------------------------------------- sign


def run_sign(args: Any) -> int:
    from .. import signing

    check_readable(args.file)
    refuse_overwriting([("--output", args.output)], [("the file to sign", args.file)])
    with signed_outputs(args) as outputs, open_key_from_args(args) as key:
        progress = file_progress(f"hashing {os.path.basename(args.file)}", args.file)
        sig, digest = signing.sign_file(key, args.file, args.hash, args.scheme, args.format, progress)
        progress.done()
        outputs.write(args.output, sig)
        if args.hash == "sha256" and digest:
            sha256 = digest.hex()
        else:  # a second pass only when a ledger wants the SHA-256 and we hashed with something else
            sha256 = signing.hash_file(args.file, "sha256").hex() if outputs.batch.path else ""
        mechanism = signing.mechanism_name(key.key_type, args.hash, args.scheme)
        outputs.record(artifact=args.file, sha256_hex=sha256, key=key, mechanism=mechanism, kind="detached")
    emit(
        args,
        f"signed {args.file} -> {args.output} "
        f"({mechanism}, key {key.label}, sha256:{key.fingerprint[:16]}...)",
        {
            "file": args.file,
            "signature": args.output,
            "mechanism": mechanism,
            "key": key.label,
            "fingerprint": key.fingerprint,
            "digest": digest.hex(),
        },
    )
    return 0


# --------------------------------------------------------------------------- pubkey / info


def run_pubkey(args: Any) -> int:
    import sys

    from .. import atomic, keys

    with open_key_from_args(args, check_policy=False) as key:
        data = keys.public_bytes(key.public_key(), args.format)
    if args.output and args.output != "-":
        atomic.write_bytes_atomic(args.output, data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def run_info(args: Any) -> int:
    from .. import token
    from ..uri import Pkcs11Uri

    uri = Pkcs11Uri.parse(require_uri(args))
    if uri.object is None and uri.id is None:
        keys_on = token.list_keys(uri, mode=args.mode, module=args.module, pin_env=args.pin_env)
        opened = token.open_token(uri, args.module, args.pin_env, effective_mode(args.mode))
        info = opened.info.as_dict() if opened.info else {}
        lines = [
            f"token:   {info.get('label')} ({info.get('manufacturer')}, {info.get('model')}, "
            f"serial {info.get('serial')})",
            f"module:  {info.get('module')}",
            "keys:",
        ]
        lines += [f"  {k['label']:<24} id={k['id']:<18} {k['class']:<10} {k['key_type']}" for k in keys_on]
        emit(args, "\n".join(lines), {"token": info, "keys": keys_on})
        return 0
    from .. import keys, roles
    from ..errors import TokenError

    fingerprint_variable = roles.get(args.role).fingerprint_variable
    with contextlib.ExitStack() as stack:
        try:
            key = stack.enter_context(open_key_from_args(args, check_policy=False))
        except TokenError as exc:
            if uri.type not in (None, "secret-key"):
                raise
            try:
                return _info_secret_key(args, uri)
            except TokenError:
                raise exc from None
        info = key.token_info.as_dict()
        data = {
            "token": info,
            "key": {
                "label": key.label,
                "id": key.key_id.hex(),
                "type": key.key_type,
                "size": key.key_size,
                "curve": key.curve,
                "description": keys.describe(key),
                "development": key.is_development,
            },
            "fingerprint": key.fingerprint,
            "uri": key.uri.identity(),
        }
        text = "\n".join(
            [
                f"token:        {info['label']} ({info['manufacturer']}, {info['model']}, "
                f"serial {info['serial']})" + ("  [software token]" if info["software"] else ""),
                f"module:       {info['module']}",
                f"key:          {key.label} (id {key.key_id.hex() or '-'})"
                + ("  [development key]" if key.is_development else ""),
                f"type:         {keys.describe(key)}",
                f"fingerprint:  sha256:{key.fingerprint}",
                f"uri:          {key.uri.identity()}",
                f'pin it with:  {fingerprint_variable} = "{key.fingerprint}"',
            ]
        )
        emit(args, text, data)
    return 0


def _info_secret_key(args: Any, uri: Any) -> int:
    """``info`` for an AES key: its check-value fingerprint pins it (HSMSIGN_PUBKEY_SHA256_ENCRYPT)."""
    from .. import token

    with token.open_secret_key(uri, mode=args.mode, module=args.module, pin_env=args.pin_env) as key:
        info = key.token_info.as_dict()
        data = {
            "token": info,
            "key": {
                "label": key.label,
                "id": key.key_id.hex(),
                "type": "aes",
                "size": key.key_size,
                "development": key.is_development,
            },
            "fingerprint": key.fingerprint,
            "uri": key.uri.identity(),
        }
        text = "\n".join(
            [
                f"token:        {info['label']} ({info['manufacturer']}, {info['model']}, "
                f"serial {info['serial']})" + ("  [software token]" if info["software"] else ""),
                f"key:          {key.label} (id {key.key_id.hex() or '-'}), AES-{key.key_size}"
                + ("  [development key]" if key.is_development else ""),
                f"fingerprint:  sha256:{key.fingerprint}  (SHA-256 of the key's check block)",
                f"uri:          {key.uri.identity()}",
                f'pin it with:  HSMSIGN_PUBKEY_SHA256_ENCRYPT = "{key.fingerprint}"',
            ]
        )
        emit(args, text, data)
    return 0


# --------------------------------------------------------------------------- doctor


def run_doctor(args: Any) -> int:
    from .. import policy, token
    from ..errors import ConfigError, HsmsignError, PolicyError
    from ..uri import Pkcs11Uri

    steps: list[dict[str, Any]] = []

    def step(name: str, ok: bool, detail: str, fix: str = "") -> bool:
        steps.append({"check": name, "ok": ok, "detail": detail, "fix": fix})
        return ok

    def finish() -> int:
        lines = []
        for s in steps:
            mark = "ok  " if s["ok"] else "FAIL"
            lines.append(f"[{mark}] {s['check']:<14} {s['detail']}")
            if not s["ok"] and s["fix"]:
                lines.append(f"       {'':<14} -> {s['fix']}")
        failed = [s for s in steps if not s["ok"]]
        emit(args, "\n".join(lines), {"ok": not failed, "checks": steps})
        if not failed:
            return 0
        # the exit code of the first failing step's error family (a policy refusal of the PIN 4, a
        # bad URI 2); by step when it has none: uri 2, policy 4, cert 2, the rest token 3
        first = failed[0]
        return codes.get(id(first)) or {"uri": 2, "policy": 4, "cert": 2}.get(first["check"], 3)

    codes: dict[int, int] = {}

    def failed_step(name: str, exc: HsmsignError) -> None:
        step(name, False, exc.message, exc.hint or "")
        codes[id(steps[-1])] = exc.exit_code

    try:
        text = require_uri(args)  # the PIN rules of the mode first: production refuses a PIN in the URI
    except PolicyError as exc:
        failed_step("pin", exc)
        return finish()
    except HsmsignError as exc:
        failed_step("uri", exc)
        return finish()
    try:
        uri = Pkcs11Uri.parse(text)
    except HsmsignError as exc:
        failed_step("uri", exc)
        return finish()
    step("uri", True, uri.redacted())
    try:
        module = token.resolve_module(uri, args.module)
        token.load_module(module)
        step("module", True, module)
    except HsmsignError as exc:
        step("module", False, exc.message, exc.hint or "")
        return finish()
    try:
        present = token.list_tokens(module)
        opened = token.open_token(uri, args.module, args.pin_env, effective_mode(args.mode))
        info = opened.info
        assert info is not None  # noqa: S101
        step(
            "token",
            True,
            f"{info.label} ({info.manufacturer}, {info.model})" + (" [software]" if info.is_software else ""),
        )
        step("login", True, "session open" + (" (logged in)" if opened._pin_known_good else ""))
    except HsmsignError as exc:
        labels = ", ".join(t.label for t in present) if "present" in locals() else "?"
        name = "login" if "PIN" in exc.message else "token"
        step(
            name,
            False,
            exc.message,
            (exc.hint or "") + (f" (tokens present: {labels})" if name == "token" else ""),
        )
        if isinstance(exc, (PolicyError, ConfigError)):  # a PIN file others can read: 4, not 3
            codes[id(steps[-1])] = exc.exit_code
        return finish()
    if uri.object is None and uri.id is None:
        step("key", False, "the URI names no key", "add ;object=KEY-LABEL to the URI")
        return finish()
    try:
        with token.open_key(uri, mode=args.mode, module=args.module, pin_env=args.pin_env) as key:
            step("key", True, f"{key.label}: {key.key_type} {key.key_size}, sha256:{key.fingerprint}")
            # the same rules, fingerprint and mode decisions as every signing path (policy.check_signer)
            results = policy.evaluate(key, args.mode, role_fingerprints(args))
            refused = [(v, v.refusal) for v in results if v.refusal is not None]
            refusals = [f"{v.rule}: {r.message}" for v, r in refused if v.action == "refuse"]
            others = [f"{v.rule}: {r.message}" for v, r in refused if v.action != "refuse"]
            names = ", ".join(p.variable for p in role_fingerprints(args))
            pinned = f" (pinned by {names})" if names else ""
            if refusals:
                step(
                    "policy",
                    False,
                    f"{args.mode} policy refuses: " + "; ".join(refusals),
                    "see the messages; 'docs/policy.md' explains each rule",
                )
            elif args.mode == "production":
                step("policy", True, "production policy passes" + pinned)
            else:
                step(
                    "policy",
                    True,
                    "development mode"
                    + pinned
                    + (
                        f" (production would refuse: {'; '.join(others)})"
                        if others
                        else " (production policy would pass)"
                    ),
                )
            import hashlib

            if key.key_type == "ed25519":  # pure EdDSA signs the message; checked here as 'sign' does
                from cryptography.exceptions import InvalidSignature

                sig = key.sign_message(b"hsmsign doctor")
                try:
                    key.public_key().verify(sig, b"hsmsign doctor")
                except InvalidSignature:
                    step(
                        "sign",
                        False,
                        "the token's Ed25519 signature does not verify with the key's public half",
                        "the module's EdDSA is broken or the public key object is not this key's: "
                        "check the module's version, and the key pair with 'hsmsign info'",
                    )
                    return finish()
            else:
                key.sign_digest(hashlib.sha256(b"hsmsign doctor").digest(), "sha256")
            step("sign", True, "test signature made and verified")
            step("libp11", True, _libp11_note(key))
            for path in args.cert:
                _cert_step(step, key, path)
    except HsmsignError as exc:
        step("key", False, exc.message, exc.hint or "")
    return finish()


def _cert_step(step: Any, key: Any, path: str) -> None:
    """A certificate of the key (``--cert``): it must carry the key's public half; its validity
    period is told, with the warning a signing command would give."""
    from ..errors import HsmsignError
    from ..formats import cms
    from ..formats.x509 import validity_period, validity_warnings

    try:
        cert = cms.read_certificate_file(path)
        cms.check_cert_matches(cert, key)
    except HsmsignError as exc:
        step("cert", False, f"{path}: {exc.message}", exc.hint or "")
        return
    problems = validity_warnings(cert, path)
    detail = f"{path} belongs to the key, valid until {validity_period(cert)[1]:%Y-%m-%d}"
    step("cert", True, detail + (f" (note: {problems[0]})" if problems else ""))


def _libp11_note(key: Any) -> str:
    """What the tools that find their key through libp11 (rauc, sbsign, mkimage -N pkcs11, NXP's CST)
    make of this token: libp11 gives up on a token at the first key of a type it does not know."""
    from ..errors import HsmsignError
    from ..token.listing import keys_libp11_cannot_list

    try:
        blockers, unnamed = keys_libp11_cannot_list(key, (0, 4, 12))
    except HsmsignError as exc:
        return f"note: could not list the token's keys ({exc.message})"
    if not blockers and not unnamed:
        return "every key on the token is one libp11 lists (rauc, sbsign, mkimage -N pkcs11 find theirs)"
    held = ", ".join(blockers + (["a key of a type hsmsign cannot name"] if unnamed else []))
    return (
        f"note: the token holds {held}; hsmsign is not affected, but libp11 before 0.4.18 (rauc, sbsign, "
        "mkimage -N pkcs11, NXP's CST) finds no key at all on it: keep such keys on another token"
    )


# --------------------------------------------------------------------------- keygen


def run_keygen(args: Any) -> int:
    from .. import keys
    from ..errors import ConfigError
    from ..uri import Pkcs11Uri

    uri = Pkcs11Uri.parse(require_uri(args))
    spec = keys.parse_key_type(args.type)
    key_id = None
    if args.id:
        try:
            key_id = bytes.fromhex(args.id)
        except ValueError as exc:
            raise ConfigError(f"--id {args.id} is not hex") from exc
    made = keys.generate(
        uri,
        spec,
        mode=effective_mode(args.mode),
        module=args.module,
        pin_env=args.pin_env,
        key_id=key_id,
        extractable=args.extractable,
    )
    text = f"generated {made['type']} key '{made['label']}' (id {made['id']}) in the token"
    if "fingerprint" in made:
        text += f"\nfingerprint: sha256:{made['fingerprint']}"
    text += f"\nuri: {made['uri']}"
    emit(args, text, made)
    return 0


# --------------------------------------------------------------------------- dev-init


def run_dev_init(args: Any) -> int:
    from .. import devtoken

    result = devtoken.init(args.dir, args.module)
    if args.print_env:
        print(devtoken.env_lines(result))
        return 0
    emit(args, devtoken.describe(result), result)
    return 0


# --------------------------------------------------------------------------- uri


def run_uri(args: Any) -> int:
    from .. import pin
    from ..uri import Pkcs11Uri
    from .common import checked_uri

    # the PIN rules on the text first: production refuses a PIN in any spelling (exit 4), even
    # in a URI that does not parse, and never shows it
    uri = Pkcs11Uri.parse(checked_uri(args, args.value))
    source = pin.pin_source_for(uri, None, args.mode)
    data: dict[str, Any] = {
        "uri": uri.redacted(),
        "identity": uri.identity(),
        "pin_source": source.describe(),
        "unknown_attributes": [n for _, n, _ in uri.unknown],
    }
    emit(args, "\n".join(f"{k}: {v}" for k, v in data.items()), data)
    return 0
