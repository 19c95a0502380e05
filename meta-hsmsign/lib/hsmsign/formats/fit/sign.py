"""Signing a FIT with token keys, the way mkimage signs it.

Order of work like mkimage's ``fit_add_verification_data``: image hashes and
image signatures first, then configurations in order; each signature is
computed over the blob as it is at that moment and its properties (which may
append names to the strings block) are written afterwards. That order keeps
RSA PKCS#1 v1.5 signatures byte-identical to mkimage's for the same input.

``sign_fit`` never talks to a token: it takes a function that returns a
``hsmsign.signing.Signer`` for a key-name hint. ``sign_file`` is the one
sign-and-write service ``hsmsign fit sign`` and the ``mkimage`` drop-in share.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ... import __version__
from ...errors import ConfigError, SigningError, VerificationError, printable
from ..fdt import Node
from .keynode import add_key
from .model import (
    CONFS_PATH,
    CRYPTO,
    DEFAULT_SIG_NAME,
    EXCLUDED_PROPS,
    IMAGES_PATH,
    PADDINGS,
    SIGN_HASHES,
    Fit,
    config_hashed_nodes,
    config_image_refs,
    config_regions,
    crypto_for_key,
    hash_regions,
    parse_algo,
    sig_nodes,
    source_date,
    update_image_hashes,
)
from .verify import (
    MAX_HASHED_NODES,
    Checker,
    TooMuchWork,
    check_config_signature,
    check_image_signature,
)


@dataclass
class SignOptions:
    key_name: str | None = None  # only sign nodes with this key-name-hint (and name added nodes so)
    algo: str | None = None  # 'sha256' or 'sha256,rsa2048' (like mkimage -o: overrides the nodes' algo)
    padding: str | None = None  # 'pkcs-1.5' | 'pss'
    configs: list[str] | None = None  # only these configurations
    comment: str | None = None
    timestamp: int | None = None
    signer_name: str = "hsmsign"
    signer_version: str = __version__
    add_missing: bool = True  # a configuration without a signature node gets one (covering all its images)
    # also sign image signature nodes naming this key (oe-core's FIT_SIGN_INDIVIDUAL, UBOOT_SIGN_IMG_KEYNAME)
    image_key_name: str | None = None


@dataclass
class SignedNode:
    path: str
    kind: str  # 'conf' | 'image'
    algo: str
    padding: str | None
    key_name: str
    fingerprint: str
    digest: bytes
    hashed_nodes: list[str] = field(default_factory=list)


@dataclass
class SignResult:
    data: bytes
    signed: list[SignedNode]
    warnings: list[str]
    device_checked: list[str] = field(default_factory=list)  # configurations fit_check_sign accepted
    sha256: str = ""  # of data, hashed while the self-check read it back (the ledger records it)


SignerFor = Callable[[Optional[str]], Any]


def _check_node_names(fit: Fit) -> None:
    for path, node in fit.fdt.root.walk():
        if (path.startswith(IMAGES_PATH + "/") or path.startswith(CONFS_PATH + "/")) and "@" in node.name:
            raise ConfigError(
                f"{fit.what}: node {path} has '@' in its name",
                "U-Boot refuses unit addresses in FIT image and configuration names: rename it",
            )


def sign_fit(
    data: bytes, signer_for: SignerFor, options: SignOptions | None = None, what: str = "FIT"
) -> SignResult:
    """Sign a FIT; returns the new bytes. Nothing is written here.

    ``signer_for(key_name_hint)`` returns the Signer for a signature node (the
    same key for every node, or one per hint as mkimage -k KEYDIR does).
    """
    opts = options or SignOptions()
    fit = Fit.parse(data, what)
    _check_node_names(fit)
    warnings: list[str] = []
    stamp = source_date(opts.timestamp)
    signed: list[SignedNode] = []
    configs = list(fit.configs.children)
    if opts.configs:
        missing = [c for c in opts.configs if fit.configs.child(c) is None]
        if missing:
            raise ConfigError(
                f"{what} has no configuration {', '.join(missing)}",
                f"configurations: {', '.join(c.name for c in configs)}",
            )
        configs = [c for c in configs if c.name in opts.configs]

    if opts.add_missing:
        bare = [conf for conf in configs if not sig_nodes(conf)]
        if bare:
            _add_config_signature_nodes(fit, bare, signer_for, opts)

    update_image_hashes(fit)
    wanted = _wanted(opts)

    # Check every node before the first token operation: a bad node later in the FIT must not cost
    # signatures (or PIN prompts) for the ones before it.
    jobs: list[tuple[str, Node, Node, tuple[str, Any, str, str, str | None, str | None]]] = []
    for image in fit.images.children:
        for node in sig_nodes(image):
            if wanted(node) or (opts.image_key_name and node.get_str("key-name-hint") == opts.image_key_name):
                jobs.append(("image", image, node, _setup(fit, node, signer_for, opts, image.name)))
    for conf in configs:
        for node in sig_nodes(conf):
            if wanted(node):
                count = len(config_hashed_nodes(fit, conf, strict=True))
                if count > MAX_HASHED_NODES:
                    raise ConfigError(
                        f"{what}: configuration '{printable(conf.name)}' would sign {count} nodes, and "
                        f"U-Boot checks a signature over at most {MAX_HASHED_NODES} "
                        "('Number of hashed nodes exceeds maximum'): it would never boot",
                        "give the configuration fewer images (each image counts with its hash nodes), "
                        "for example one configuration per board",
                    )
                setup = _setup(fit, node, signer_for, opts, conf.name)
                _warn_sign_images(fit, conf, node, warnings)
                jobs.append(("conf", conf, node, setup))
    if not jobs:
        hint = f" with key-name-hint '{opts.key_name}'" if opts.key_name else ""
        raise ConfigError(
            f"{what} has no signature node{hint} to sign",
            'declare \'signature-1 { algo = "sha256,rsa2048"; key-name-hint = "NAME"; };\' in the '
            "configuration, or leave --key-name out",
        )

    # In mkimage's order: image signatures over the image data, then each configuration signature over
    # the blob as it is at that moment (earlier signatures may have appended names to the strings block).
    for kind, owner, node, (hint, signer, hash_alg, crypto, scheme, padding) in jobs:
        paths: list[str] = []
        if kind == "image":
            digest = fit.data_digest(owner, hash_alg)  # computed once with the hash node's
            value = _sign(signer, digest, hash_alg, crypto, scheme)
            _write_sig(fit, node, value, stamp, opts, None, None)
            base = IMAGES_PATH
        else:
            paths = config_hashed_nodes(fit, owner, strict=True)
            # the hash leaves out every "data" (EXCLUDED_PROPS): a blob without their values hashes
            # the same, and costs no copy of the kernel (the self-check hashes the real output)
            blob = fit.fdt.to_bytes(hollow=EXCLUDED_PROPS)
            strings_size = int.from_bytes(blob[32:36], "big")
            digest = hash_regions(blob, config_regions(blob, paths, None), hash_alg)
            value = _sign(signer, digest, hash_alg, crypto, scheme)
            _write_sig(fit, node, value, stamp, opts, paths, strings_size)
            base = CONFS_PATH
        signed.append(
            SignedNode(
                f"{base}/{owner.name}/{node.name}",
                kind,
                f"{hash_alg},{crypto}",
                padding,
                hint,
                signer.fingerprint,
                digest,
                paths,
            )
        )
    out = fit.to_bytes()
    sha256 = _sha256_meanwhile(out)
    _self_check(out, signed, signer_for, what)
    return SignResult(out, signed, warnings, sha256=sha256())


def _sha256_meanwhile(data: bytes) -> Callable[[], str]:
    """SHA-256 of ``data`` in a thread (hashlib lets go of the GIL): the ledger's digest of a
    signed FIT is made while the self-check parses it and hashes its images."""
    import threading

    box: list[str] = []
    worker = threading.Thread(target=lambda: box.append(hashlib.sha256(data).hexdigest()), daemon=True)
    worker.start()

    def result() -> str:
        worker.join()
        return box[0] if box else hashlib.sha256(data).hexdigest()

    return result


def _wanted(opts: SignOptions) -> Callable[[Node], bool]:
    def wanted(node: Node) -> bool:
        if opts.key_name is None:
            return True
        hint = node.get_str("key-name-hint")
        return hint in (None, "", opts.key_name)

    return wanted


def _add_config_signature_nodes(
    fit: Fit, configs: list[Node], signer_for: SignerFor, opts: SignOptions
) -> None:
    """One signature node for each of ``configs`` (those without one), covering all its images."""
    signer = signer_for(opts.key_name)
    crypto = crypto_for_key(signer.key_type, signer.key_size)
    hash_alg = (opts.algo or "sha256").partition(",")[0]
    if hash_alg not in SIGN_HASHES:
        raise ConfigError(f"hash '{hash_alg}' cannot sign FIT images", f"use one of {', '.join(SIGN_HASHES)}")
    for conf in configs:
        refs = config_image_refs(fit, conf, strict=True)
        node = fit.fdt.add_subnode(conf, DEFAULT_SIG_NAME)
        fit.fdt.setprop_str(node, "algo", f"{hash_alg},{crypto}")
        fit.fdt.setprop_str(node, "key-name-hint", opts.key_name or signer.label)
        if opts.padding and signer.key_type == "rsa":
            fit.fdt.setprop_str(node, "padding", opts.padding)
        props: list[str] = []
        for prop, _img in refs:
            if prop not in props:
                props.append(prop)
        fit.fdt.setprop_strlist(node, "sign-images", props)


def _setup(
    fit: Fit, node: Node, signer_for: SignerFor, opts: SignOptions, owner: str
) -> tuple[str, Any, str, str, str | None, str | None]:
    where = f"{fit.what}: signature node '{owner}/{node.name}'"
    hint = node.get_str("key-name-hint") or opts.key_name
    signer = signer_for(hint)
    if not hint:
        hint = signer.label
        fit.fdt.setprop_str(node, "key-name-hint", hint)
    key_crypto = crypto_for_key(signer.key_type, signer.key_size)
    algo_text = node.get_str("algo")
    if opts.algo:
        algo_text = opts.algo if "," in opts.algo else f"{opts.algo},{key_crypto}"
    if not algo_text:
        raise ConfigError(f"{where} has no algo", 'add algo = "sha256,rsa2048" (or pass --algo)')
    hash_alg, crypto = parse_algo(algo_text, where)
    if hash_alg not in SIGN_HASHES:
        raise ConfigError(f"{where}: hash '{hash_alg}' is too weak to sign with", "use sha256")
    if crypto != key_crypto:
        raise ConfigError(
            f"{where} declares {algo_text}, but the key is {signer.key_type.upper()}-{signer.key_size} "
            f"({key_crypto})",
            f"use a {crypto} key, or change the node's algo to '{hash_alg},{key_crypto}' (or pass --algo)",
        )
    if opts.algo:
        fit.fdt.setprop_str(node, "algo", algo_text)
    padding = node.get_str("padding")
    if opts.padding and signer.key_type == "rsa":
        padding = opts.padding
        fit.fdt.setprop_str(node, "padding", padding)
    scheme: str | None = None
    if signer.key_type == "rsa":
        if padding not in (None, *PADDINGS):
            raise ConfigError(f"{where}: unknown padding '{padding}'", "use 'pkcs-1.5' or 'pss'")
        scheme = PADDINGS[padding or "pkcs-1.5"]
    else:
        padding = None
    return hint, signer, hash_alg, crypto, scheme, padding


def _sign(signer: Any, digest: bytes, hash_alg: str, crypto: str, scheme: str | None) -> bytes:
    value = bytes(signer.sign_digest(digest, hash_alg, scheme))
    expected = CRYPTO[crypto][2]
    if len(value) != expected:
        raise SigningError(
            f"the token returned a {len(value)}-byte signature for {crypto}; expected {expected}"
        )
    return value


def _write_sig(
    fit: Fit,
    node: Node,
    value: bytes,
    stamp: int,
    opts: SignOptions,
    paths: list[str] | None,
    strings_size: int | None,
) -> None:
    """The properties mkimage's ``fit_image_write_sig`` writes, in its order."""
    fdt = fit.fdt
    fdt.setprop(node, "value", value)
    fdt.setprop_str(node, "signer-name", opts.signer_name)
    fdt.setprop_str(node, "signer-version", opts.signer_version)
    if opts.comment:
        fdt.setprop_str(node, "comment", opts.comment)
    fdt.setprop_u32(node, "timestamp", stamp)
    if paths is not None and strings_size is not None:
        fdt.setprop_strlist(node, "hashed-nodes", paths)
        fdt.setprop(node, "hashed-strings", (0).to_bytes(4, "big") + strings_size.to_bytes(4, "big"))


def _warn_sign_images(fit: Fit, conf: Node, node: Node, warnings: list[str]) -> None:
    """sign-images must name images that exist; what it leaves out is covered anyway (with a warning)."""
    listed = node.get_strlist("sign-images")
    if listed is None:
        return
    where = f"{fit.what}: signature node '{conf.name}/{node.name}'"
    for prop in listed:
        names = conf.get_strlist(prop)
        if not names:
            raise ConfigError(
                f"{where} signs '{prop}', but configuration '{conf.name}' has no {prop} image",
                f'fix sign-images, or add {prop} = "IMAGE"; to the configuration',
            )
        for name in names:
            if fit.images.subnode(name) is None:
                raise ConfigError(
                    f"{where} signs {prop} image '{name}', which is not in /images",
                    "fix the .its: every image a signature names must exist",
                )
    refs = {p for p, _ in config_image_refs(fit, conf)}
    left_out = sorted(refs - set(listed))
    if left_out:
        warnings.append(
            f"{conf.name}/{node.name}: sign-images leaves out {', '.join(left_out)}; signed anyway, because "
            "U-Boot's verifier covers every image a configuration references (CVE-2026-46728)"
        )


def _self_check(out: bytes, signed: list[SignedNode], signer_for: SignerFor, what: str) -> None:
    """Re-read the output and check every signature just made against its key's public half."""
    fit = Fit.parse(out, what)
    checker = Checker(fit)  # one index of the output for every signature made
    for item in signed:
        node = fit.fdt.node(item.path)
        if node is None:  # pragma: no cover - we just wrote it
            raise SigningError(f"{what}: {item.path} vanished while writing")
        pub = signer_for(item.key_name).public_key()
        try:
            if item.kind == "conf":
                conf = fit.configs.child(item.path.split("/")[2])
                assert conf is not None  # noqa: S101
                check_config_signature(fit, conf, node, pub, checker=checker)
            else:
                image = fit.images.child(item.path.split("/")[2])
                assert image is not None  # noqa: S101
                check_image_signature(fit, image, node, pub, checker=checker)
        except TooMuchWork:
            raise
        except VerificationError as exc:
            raise SigningError(
                f"{what}: the signature in {item.path} does not verify after writing: {exc.message}",
                "this is a bug in hsmsign; nothing was written",
            ) from exc


@dataclass(frozen=True)
class KeyDestination:
    """A control DTB that gets the public key of every signature made (mkimage ``-K``)."""

    path: str
    required_for: Callable[[str], str | None]  # signature kind ("conf"/"image") -> required, or KEEP
    required_mode: str | None = None


def sign_file(
    source: str,
    output: str,
    signer_for: SignerFor,
    options: SignOptions,
    *,
    fit_check_sign: str | None = None,
    ledger: str | Any = None,
    key_dtb: KeyDestination | None = None,
    what: str | None = None,
) -> SignResult:
    """Sign the FIT at ``source`` into ``output``: the one sign-and-write service.

    Signs every wanted node (``sign_fit``), checks the result with U-Boot's own
    ``fit_check_sign`` when given (``verify.device_check``), adds the public keys to
    ``key_dtb`` when given, and appends one ledger entry per signature while it renames
    the FIT (and the DTB) into place: all of them land, or none (a refusal anywhere,
    or a ledger that cannot be appended, writes nothing). ``ledger`` is a path (checked
    here, before the first signature) or a ``hsmsign.ledger.Batch`` made by the caller
    before it opened the token.
    """
    from ... import ledger as ledger_mod
    from ...atomic import MAX_IMAGE, read_input, staged
    from .verify import device_check

    batch = ledger if isinstance(ledger, ledger_mod.Batch) else ledger_mod.Batch(ledger)
    name = what or os.path.basename(source)
    dtb = read_input(key_dtb.path, "key destination DTB") if key_dtb is not None else None
    result = sign_fit(read_input(source, "FIT", MAX_IMAGE), signer_for, options, what=name)
    result.device_checked = device_check(
        fit_check_sign, result, lambda hint: signer_for(hint).public_key(), name
    )
    if key_dtb is not None and dtb is not None:
        for item in result.signed:
            dtb, _ = add_key(
                dtb,
                signer_for(item.key_name).public_key(),
                item.key_name,
                item.algo.partition(",")[0],
                key_dtb.required_for(item.kind),
                required_mode=key_dtb.required_mode,
                what=key_dtb.path,
            )
    digest = result.sha256 or hashlib.sha256(result.data).hexdigest()
    with staged(batch.appended) as outputs:
        outputs.write_bytes(output, result.data)
        if key_dtb is not None and dtb is not None:
            outputs.write_bytes(key_dtb.path, dtb)
        for item in result.signed:
            key = signer_for(item.key_name)
            batch.add(
                artifact=os.path.abspath(output),
                sha256_hex=digest,
                key_fingerprint=key.fingerprint,
                uri_redacted=key.uri.identity(),
                mechanism=f"fit:{item.algo}" + (f":{item.padding}" if item.padding else ""),
                kind="fit",
            )
    return result
