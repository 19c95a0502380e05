"""FIT images: signing, public key nodes for U-Boot's control DTB, verification.

What U-Boot checks, and therefore what this module reproduces (U-Boot
``tools/image-host.c`` for signing, ``boot/image-fit-sig.c`` and
``boot/fdt_region.c`` for verification, ``doc/usage/fit/signature.rst``):

* Image signature (``/images/<img>/signature*``): the signature is over the
  image data itself.
* Configuration signature (``/configurations/<conf>/signature*``): over the
  regions of the FIT that ``fdt_find_regions`` selects for the node list
  ``/``, ``/configurations/<conf>``, and for every image the configuration
  references, the image node and its ``hash*``, ``cipher`` and ``dm-verity``
  subnodes; properties ``data``, ``data-size``, ``data-position`` and
  ``data-offset`` are left out; then the strings block, of which the verifier
  hashes the first ``hashed-strings[1]`` bytes.
* Which images: since the fix for CVE-2026-46728 the verifier ignores
  ``hashed-nodes`` and rebuilds the list from *every* property of the
  configuration except ``description``, ``compatible`` and ``default``,
  resolving each string to an image. So the signer covers all of them too,
  whatever ``sign-images`` says (mkimage still covers only ``sign-images``).
* Order of work like mkimage's ``fit_add_verification_data``: image hashes and
  image signatures first, then configurations in order; each signature is
  computed over the blob as it is at that moment and its properties (which may
  append names to the strings block) are written afterwards. That order keeps
  RSA PKCS#1 v1.5 signatures byte-identical to mkimage's for the same input.
* Public keys go into the control DTB under ``/signature``: RSA as
  ``key-<name>`` with ``rsa,num-bits``, ``rsa,n0-inverse``, ``rsa,exponent``,
  ``rsa,modulus``, ``rsa,r-squared`` (``lib/rsa/rsa-sign.c``); ECDSA as
  ``<name>`` with ``ecdsa,curve``, ``ecdsa,x-point``, ``ecdsa,y-point``
  (``lib/ecdsa/ecdsa-libcrypto.c``); both with ``key-name-hint``, ``algo`` and,
  for enforced keys, ``required``.

The module itself never talks to a token: ``sign_fit`` takes a function that
returns a ``hsmsign.signing.Signer`` for a key-name hint.
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import __version__
from ..errors import ConfigError, SigningError, VerificationError
from .fdt import Fdt, FdtError, Node, find_regions, region_bytes

IMAGES_PATH = "/images"
CONFS_PATH = "/configurations"
SIG_NODE = "signature"
HASH_NODE = "hash"
CIPHER_NODE = "cipher"
VERITY_NODE = "dm-verity"
EXCLUDED_PROPS = ("data", "data-size", "data-position", "data-offset")
NOT_IMAGE_REFS = ("description", "compatible", "default")
WELL_KNOWN_IMAGE_PROPS = (
    "kernel",
    "fdt",
    "ramdisk",
    "firmware",
    "loadables",
    "fpga",
    "setup",
    "standalone",
    "script",
    "tee",
)
# crypto part of 'algo' -> (key type, size in bits, signature length in bytes)
CRYPTO: dict[str, tuple[str, int, int]] = {
    "rsa2048": ("rsa", 2048, 256),
    "rsa3072": ("rsa", 3072, 384),
    "rsa4096": ("rsa", 4096, 512),
    "ecdsa256": ("ec", 256, 64),
    "ecdsa384": ("ec", 384, 96),
}
SIGN_HASHES = ("sha256", "sha384", "sha512")
VERIFY_HASHES = ("sha1", *SIGN_HASHES)
PADDINGS = {"pkcs-1.5": "pkcs1v15", "pss": "pss"}
EC_CURVES = {"secp256r1": "prime256v1", "secp384r1": "secp384r1"}  # cryptography name -> U-Boot name
DEFAULT_SIG_NAME = "signature-1"
KEEP = "keep"  # add_key(required=KEEP): leave an existing required property as it is (mkimage without -r)


def _align4(n: int) -> int:
    return (n + 3) & ~3


# --------------------------------------------------------------------------------------------
# The FIT container: the FDT plus external image data (mkimage -E / -p)
# --------------------------------------------------------------------------------------------


@dataclass
class Fit:
    fdt: Fdt
    raw: bytes
    totalsize: int
    what: str = "FIT"

    @classmethod
    def parse(cls, data: bytes, what: str = "FIT") -> Fit:
        fdt = Fdt.parse(data, what)
        total = int.from_bytes(data[4:8], "big")
        fit = cls(fdt, data, total, what)
        if fdt.node(IMAGES_PATH) is None:
            raise ConfigError(
                f"{what} is a device tree but not a FIT image (no /images node)",
                "give a FIT built by mkimage -f, or use --dtb for a control DTB",
            )
        confs = fdt.node(CONFS_PATH)
        if confs is None or not confs.children:
            raise ConfigError(
                f"{what} has no configurations",
                "U-Boot verified boot signs configurations: add a /configurations node to the .its",
            )
        return fit

    @property
    def images(self) -> Node:
        node = self.fdt.node(IMAGES_PATH)
        if node is None:
            raise ConfigError(f"{self.what} has no /images node")
        return node

    @property
    def configs(self) -> Node:
        node = self.fdt.node(CONFS_PATH)
        if node is None:
            raise ConfigError(f"{self.what} has no /configurations node")
        return node

    def image_data(self, image: Node) -> bytes:
        """The data of an image, embedded (``data``) or external (``data-offset``/``data-position``)."""
        data = image.get("data")
        if data is not None:
            return data
        size = image.get_u32("data-size")
        offset = image.get_u32("data-offset")
        position = image.get_u32("data-position")
        if size is None or (offset is None and position is None):
            raise ConfigError(
                f"{self.what}: image '{image.name}' has no data",
                "an image needs 'data', or 'data-size' with 'data-offset' or 'data-position'",
            )
        start = _align4(self.totalsize) + offset if offset is not None else int(position or 0)
        if start + size > len(self.raw):
            raise ConfigError(
                f"{self.what}: external data of image '{image.name}' lies beyond the end of the file",
                "the FIT is truncated",
            )
        return self.raw[start : start + size]

    def to_bytes(self) -> bytes:
        """The FIT with its (possibly grown) FDT; external data kept where U-Boot will look for it."""
        blob = self.fdt.to_bytes()
        positions = [p for _, n in self.images.walk() for p in [n.get_u32("data-position")] if p is not None]
        tail_start = _align4(self.totalsize)
        if positions:
            first = min(positions)
            if len(blob) > first:
                raise ConfigError(
                    f"{self.what}: the signed device tree would overlap the external data at {first}",
                    "build the FIT with 'mkimage -E' (relative data-offset) instead of '-p', or a larger -p",
                )
            return blob + b"\0" * (first - len(blob)) + self.raw[first:]
        if len(self.raw) > tail_start:
            return blob + b"\0" * (_align4(len(blob)) - len(blob)) + self.raw[tail_start:]
        return blob


# --------------------------------------------------------------------------------------------
# Which nodes a configuration signature covers
# --------------------------------------------------------------------------------------------


def config_image_refs(fit: Fit, conf: Node, strict: bool = False) -> list[tuple[str, Node]]:
    """(property, image node) for every image the configuration references, as the verifier finds them.

    U-Boot walks the configuration's properties in order, skips description,
    compatible and default, reads each as a string list, and resolves each string
    to a subnode of /images with libfdt's name matching; strings that resolve to
    nothing are skipped. With ``strict`` (signing), a well-known image property
    naming a missing image is an error instead.
    """
    refs: list[tuple[str, Node]] = []
    images = fit.images
    for prop in conf.props:
        if prop.name in NOT_IMAGE_REFS:
            continue
        names = conf.get_strlist(prop.name)
        if names is None:
            continue
        for name in names:
            image = images.subnode(name)
            if image is None:
                if strict and prop.name in WELL_KNOWN_IMAGE_PROPS:
                    raise ConfigError(
                        f"{fit.what}: configuration '{conf.name}' names image '{name}' ({prop.name}), "
                        "which is not in /images",
                        "fix the .its: every image a configuration names must exist",
                    )
                continue
            refs.append((prop.name, image))
    return refs


def config_hashed_nodes(fit: Fit, conf: Node, strict: bool = False) -> list[str]:
    """The node list of ``fit_config_get_signed_nodes`` (root, config, images with hash/cipher/verity)."""
    paths = ["/", f"{CONFS_PATH}/{conf.name}"]
    refs = config_image_refs(fit, conf, strict)
    if not refs:
        raise ConfigError(
            f"{fit.what}: configuration '{conf.name}' references no image",
            "a configuration needs at least a kernel or firmware image",
        )
    for _prop, image in refs:
        base = f"{IMAGES_PATH}/{image.name}"
        paths.append(base)
        hashes = [c for c in image.children if c.name.startswith(HASH_NODE)]
        if not hashes:
            raise ConfigError(
                f"{fit.what}: image '{image.name}' has no hash node",
                "add 'hash-1 { algo = \"sha256\"; };' to the image in the .its: a configuration "
                "signature protects images through their hashes",
            )
        paths += [f"{base}/{h.name}" for h in hashes]
        for special in (CIPHER_NODE, VERITY_NODE):
            if image.subnode(special) is not None:
                sub = image.subnode(special)
                assert sub is not None  # noqa: S101 - checked just above
                paths.append(f"{base}/{sub.name}")
    return paths


def config_regions(blob: bytes, paths: Iterable[str], strings_size: int | None) -> list[tuple[int, int]]:
    """Regions to hash for a configuration signature.

    Signing (``strings_size`` None) hashes the whole strings block, like
    mkimage's ``fdt_find_regions(..., add_string_tab=1)``; verifying hashes the
    first ``strings_size`` bytes of it, like ``fit_config_check_sig``.
    """
    if strings_size is None:
        return find_regions(blob, paths, EXCLUDED_PROPS, True)
    regions = find_regions(blob, paths, EXCLUDED_PROPS, False)
    off_strings = int.from_bytes(blob[12:16], "big")
    return [*regions, (off_strings, strings_size)]


def hash_regions(blob: bytes, regions: Iterable[tuple[int, int]], hash_alg: str) -> bytes:
    h = hashlib.new(hash_alg)
    for chunk in region_bytes(blob, regions):
        h.update(chunk)
    return h.digest()


# --------------------------------------------------------------------------------------------
# Algorithms
# --------------------------------------------------------------------------------------------


def parse_algo(text: str, what: str) -> tuple[str, str]:
    """'sha256,rsa2048' -> ('sha256', 'rsa2048')."""
    hash_alg, _, crypto = text.partition(",")
    if hash_alg not in VERIFY_HASHES or crypto not in CRYPTO:
        raise ConfigError(
            f"{what}: unsupported algo '{text}'",
            "use sha256|sha384|sha512 with rsa2048|rsa3072|rsa4096|ecdsa256|ecdsa384, e.g. 'sha256,rsa2048'",
        )
    return hash_alg, crypto


def crypto_for_key(key_type: str, key_size: int) -> str:
    name = f"rsa{key_size}" if key_type == "rsa" else f"ecdsa{key_size}" if key_type == "ec" else ""
    if name not in CRYPTO:
        raise ConfigError(
            f"a {key_type.upper()}-{key_size} key cannot sign FIT images",
            "U-Boot verifies RSA 2048/3072/4096 and ECDSA P-256/P-384",
        )
    return name


# --------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------


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


SignerFor = Callable[[Optional[str]], Any]


def source_date(timestamp: int | None = None) -> int:
    """mkimage's ``imagetool_get_source_date``: SOURCE_DATE_EPOCH if set, else now."""
    if timestamp is not None:
        return timestamp
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError as exc:
            raise ConfigError(
                f"SOURCE_DATE_EPOCH={env!r} is not a number", "set it to seconds since 1970"
            ) from exc
    return int(time.time())


def compute_hash_value(algo: str, data: bytes, what: str) -> bytes:
    if algo == "crc32":
        return (zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "big")
    if algo in ("md5", "sha1", "sha256", "sha384", "sha512"):
        return hashlib.new(algo, data).digest()
    raise ConfigError(
        f"{what}: hash algo '{algo}' is not supported", "use sha256 (or crc32/md5/sha1/sha384/sha512)"
    )


def update_image_hashes(fit: Fit) -> None:
    """Recompute every image's hash nodes, as mkimage does before signing."""
    for image in fit.images.children:
        if image.subnode(CIPHER_NODE) is not None:
            continue  # hashes of encrypted images are made by the encryption step
        data: bytes | None = None
        for sub in image.children:
            if not sub.name.startswith(HASH_NODE):
                continue
            algo = sub.get_str("algo")
            if not algo:
                raise ConfigError(
                    f"{fit.what}: {IMAGES_PATH}/{image.name}/{sub.name} has no algo", 'add algo = "sha256"'
                )
            if data is None:
                data = fit.image_data(image)
            fit.fdt.setprop(sub, "value", compute_hash_value(algo, data, f"{fit.what}: image '{image.name}'"))


def _sig_nodes(node: Node) -> list[Node]:
    return [c for c in node.children if c.name.startswith(SIG_NODE)]


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
        bare = [conf for conf in configs if not _sig_nodes(conf)]
        if bare:
            _add_config_signature_nodes(fit, bare, signer_for, opts)

    update_image_hashes(fit)
    wanted = _wanted(opts)

    # Check every node before the first token operation: a bad node later in the FIT must not cost
    # signatures (or PIN prompts) for the ones before it.
    jobs: list[tuple[str, Node, Node, tuple[str, Any, str, str, str | None, str | None]]] = []
    for image in fit.images.children:
        for node in _sig_nodes(image):
            if wanted(node) or (opts.image_key_name and node.get_str("key-name-hint") == opts.image_key_name):
                jobs.append(("image", image, node, _setup(fit, node, signer_for, opts, image.name)))
    for conf in configs:
        for node in _sig_nodes(conf):
            if wanted(node):
                setup = _setup(fit, node, signer_for, opts, conf.name)
                config_hashed_nodes(fit, conf, strict=True)
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
            digest = hashlib.new(hash_alg, fit.image_data(owner)).digest()
            value = _sign(signer, digest, hash_alg, crypto, scheme)
            _write_sig(fit, node, value, stamp, opts, None, None)
            base = IMAGES_PATH
        else:
            paths = config_hashed_nodes(fit, owner, strict=True)
            blob = fit.fdt.to_bytes()
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
    _self_check(out, signed, signer_for, what)
    return SignResult(out, signed, warnings)


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
    for item in signed:
        node = fit.fdt.node(item.path)
        if node is None:  # pragma: no cover - we just wrote it
            raise SigningError(f"{what}: {item.path} vanished while writing")
        pub = signer_for(item.key_name).public_key()
        try:
            if item.kind == "conf":
                conf = fit.configs.child(item.path.split("/")[2])
                assert conf is not None  # noqa: S101
                check_config_signature(fit, conf, node, pub)
            else:
                image = fit.images.child(item.path.split("/")[2])
                assert image is not None  # noqa: S101
                check_image_signature(fit, image, node, pub)
        except VerificationError as exc:
            raise SigningError(
                f"{what}: the signature in {item.path} does not verify after writing: {exc.message}",
                "this is a bug in hsmsign; nothing was written",
            ) from exc


# --------------------------------------------------------------------------------------------
# Public key nodes for the control DTB
# --------------------------------------------------------------------------------------------


def _bignum(value: int, bits: int) -> bytes:
    """``fdt_add_bignum``: bits/32 big-endian 32-bit cells, most significant first."""
    return value.to_bytes(bits // 32 * 4, "big")


def rsa_key_props(public_key: Any) -> list[tuple[str, bytes]]:
    """``rsa,*`` properties (``rsa_get_params``): n0-inverse = -1/n mod 2^32, r-squared = 2^(2 bits) mod n."""
    numbers = public_key.public_numbers()
    n, e = numbers.n, numbers.e
    bits = n.bit_length()
    n0_inv = (2**32 - pow(n, -1, 2**32)) % 2**32
    r_squared = pow(2, 2 * bits, n)
    return [
        ("rsa,num-bits", bits.to_bytes(4, "big")),
        ("rsa,n0-inverse", n0_inv.to_bytes(4, "big")),
        ("rsa,exponent", e.to_bytes(8, "big")),
        ("rsa,modulus", _bignum(n, bits)),
        ("rsa,r-squared", _bignum(r_squared, bits)),
    ]


def add_key(
    dtb: bytes,
    public_key: Any,
    key_name: str,
    hash_alg: str = "sha256",
    required: str | None = "conf",
    required_mode: str | None = None,
    what: str = "DTB",
) -> tuple[bytes, str]:
    """Write (or overwrite) the key node for ``public_key``; returns the new DTB and the node path."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    fdt = Fdt.parse(dtb, what)
    if fdt.node(IMAGES_PATH) is not None and fdt.node(CONFS_PATH) is not None:
        raise ConfigError(
            f"{what} is a FIT image, not a U-Boot control DTB",
            "give the U-Boot device tree (u-boot.dtb / spl/u-boot-spl.dtb) to --dtb",
        )
    if not key_name or "/" in key_name or "\0" in key_name:
        raise ConfigError(
            f"key name {key_name!r} is not usable as a node name", "use letters, digits, - and _"
        )
    if hash_alg not in SIGN_HASHES:
        raise ConfigError(f"hash '{hash_alg}' is not supported", f"use one of {', '.join(SIGN_HASHES)}")
    if required not in (None, "conf", "image", KEEP):
        raise ConfigError(f"required must be conf, image or none, not {required!r}")
    if required_mode not in (None, "any", "all"):
        raise ConfigError(f"required-mode must be any or all, not {required_mode!r}")
    sig = fdt.ensure_subnode(fdt.root, SIG_NODE)
    if isinstance(public_key, rsa.RSAPublicKey):
        crypto = crypto_for_key("rsa", public_key.key_size)
        node_name = f"key-{key_name}"
        node = sig.child(node_name) or fdt.add_subnode(sig, node_name)
        fdt.setprop_str(node, "key-name-hint", key_name)
        for name, value in rsa_key_props(public_key):
            fdt.setprop(node, name, value)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        crypto = crypto_for_key("ec", public_key.curve.key_size)
        curve = EC_CURVES.get(public_key.curve.name)
        if curve is None:
            raise ConfigError(
                f"curve {public_key.curve.name} is not supported by U-Boot", "use P-256 or P-384"
            )
        node_name = key_name  # lib/ecdsa/ecdsa-libcrypto.c names the node after the hint itself
        node = sig.child(node_name) or fdt.add_subnode(sig, node_name)
        nums = public_key.public_numbers()
        bits = public_key.curve.key_size
        fdt.setprop_str(node, "key-name-hint", key_name)
        fdt.setprop_str(node, "ecdsa,curve", curve)
        fdt.setprop(node, "ecdsa,x-point", _bignum(nums.x, bits))
        fdt.setprop(node, "ecdsa,y-point", _bignum(nums.y, bits))
    else:
        raise ConfigError(
            f"a {type(public_key).__name__} cannot verify FIT images", "use an RSA or ECDSA P-256/P-384 key"
        )
    fdt.setprop_str(node, "algo", f"{hash_alg},{crypto}")
    if required == KEEP:
        pass
    elif required:
        fdt.setprop_str(node, "required", required)
    else:
        fdt.delprop(node, "required")
    if required_mode:
        fdt.setprop_str(sig, "required-mode", required_mode)
    return fdt.to_bytes(), f"/{SIG_NODE}/{node_name}"


# --------------------------------------------------------------------------------------------
# Verification (what U-Boot's fit_config_verify / fit_image_verify do)
# --------------------------------------------------------------------------------------------


@dataclass
class KeyNode:
    name: str
    required: str | None
    algo: str | None
    public_key: Any


def key_from_node(node: Node, what: str = "DTB") -> Any:
    """The public key a control-DTB key node describes, checked like U-Boot reads it."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    where = f"{what}: /{SIG_NODE}/{node.name}"
    if node.get("ecdsa,curve") is not None:
        curve_name = node.get_str("ecdsa,curve")
        curve: Any = {"prime256v1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}.get(curve_name or "")
        if curve is None:
            raise VerificationError(f"{where}: unknown ecdsa,curve '{curve_name}'")
        x, y = node.get("ecdsa,x-point"), node.get("ecdsa,y-point")
        size = curve.key_size // 8
        if x is None or y is None or len(x) != size or len(y) != size:
            raise VerificationError(f"{where}: ecdsa,x-point/y-point missing or not {size} bytes")
        try:
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError as exc:
            raise VerificationError(f"{where}: the ECDSA point is not on the curve") from exc
    modulus = node.get("rsa,modulus")
    bits = node.get_u32("rsa,num-bits")
    if modulus is None or bits is None:
        raise VerificationError(f"{where}: neither an RSA nor an ECDSA key node")
    exp_raw = node.get("rsa,exponent")
    e = int.from_bytes(exp_raw, "big") if exp_raw and len(exp_raw) == 8 else 65537
    n = int.from_bytes(modulus, "big")
    if len(modulus) * 8 != bits or n.bit_length() != bits:
        raise VerificationError(f"{where}: rsa,num-bits {bits} does not match rsa,modulus")
    try:
        pub = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise VerificationError(f"{where}: not a usable RSA key") from exc
    expected = dict(rsa_key_props(pub))
    for name in ("rsa,n0-inverse", "rsa,r-squared"):
        if node.get(name) != expected[name]:
            raise VerificationError(
                f"{where}: {name} does not match rsa,modulus (U-Boot's Montgomery code would reject every "
                "signature)",
                "write the key again with 'hsmsign fit add-key'",
            )
    return pub


def load_keys(dtb: bytes, what: str = "DTB") -> tuple[list[KeyNode], str]:
    fdt = Fdt.parse(dtb, what)
    sig = fdt.root.child(SIG_NODE)
    keys: list[KeyNode] = []
    mode = "all"
    if sig is not None:
        mode = "any" if sig.get_str("required-mode") == "any" else "all"
        for node in sig.children:
            keys.append(
                KeyNode(node.name, node.get_str("required"), node.get_str("algo"), key_from_node(node, what))
            )
    return keys, mode


def _verify_value(
    public_key: Any, value: bytes, digest: bytes, hash_alg: str, crypto: str, padding: str | None
) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
    from cryptography.hazmat.primitives.asymmetric import padding as pad

    from ..signing import ecdsa_raw_to_der

    key_type, bits, length = CRYPTO[crypto]
    hash_obj: Any = {
        "sha1": hashes.SHA1(),  # noqa: S303 - U-Boot still accepts sha1 signatures; we only read them
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }[hash_alg]
    algo = utils.Prehashed(hash_obj)
    if len(value) != length:
        raise VerificationError(f"signature value is {len(value)} bytes; {crypto} needs {length}")
    try:
        if key_type == "rsa":
            if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size != bits:
                raise VerificationError(f"the key is not {crypto}")
            if (padding or "pkcs-1.5") == "pss":
                # U-Boot's padding_pss_verify accepts any salt length
                public_key.verify(value, digest, pad.PSS(pad.MGF1(hash_obj), pad.PSS.AUTO), algo)
            elif padding in (None, "pkcs-1.5"):
                public_key.verify(value, digest, pad.PKCS1v15(), algo)
            else:
                raise VerificationError(f"unknown padding '{padding}'")
        else:
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.key_size != bits:
                raise VerificationError(f"the key is not {crypto}")
            public_key.verify(ecdsa_raw_to_der(value), digest, ec.ECDSA(algo))
    except InvalidSignature as exc:
        raise VerificationError("signature does not match") from exc


def _sig_params(fit: Fit, node: Node, where: str) -> tuple[str, str, bytes, str | None]:
    algo = node.get_str("algo")
    value = node.get("value")
    if not algo:
        raise VerificationError(f"{where}: no algo")
    if value is None:
        raise VerificationError(f"{where}: not signed (no value)", "sign it with 'hsmsign fit sign'")
    try:
        hash_alg, crypto = parse_algo(algo, where)
    except ConfigError as exc:
        raise VerificationError(exc.message, exc.hint) from exc
    return hash_alg, crypto, value, node.get_str("padding")


def check_config_signature(
    fit: Fit, conf: Node, node: Node, public_key: Any, key_algo: str | None = None
) -> None:
    """``fit_config_check_sig``: rebuild the node list, hash the regions and hashed-strings, check."""
    where = f"{CONFS_PATH}/{conf.name}/{node.name}"
    hash_alg, crypto, value, padding = _sig_params(fit, node, where)
    if key_algo is not None and CRYPTO[crypto][0] == "rsa" and key_algo != node.get_str("algo"):
        raise VerificationError(f"{where}: algo {node.get_str('algo')} differs from the key's {key_algo}")
    strings = node.get("hashed-strings")
    blob = fit.raw[: fit.totalsize]  # the regions are over the bytes as they are, not as we would write them
    size_strings = int.from_bytes(blob[32:36], "big")
    if strings is None or len(strings) < 8:
        raise VerificationError(f"{where}: no valid hashed-strings")
    size = int.from_bytes(strings[4:8], "big")
    if size > size_strings:
        raise VerificationError(f"{where}: hashed-strings is out of bounds")
    try:
        paths = config_hashed_nodes(fit, conf)
    except ConfigError as exc:
        raise VerificationError(f"{where}: {exc.message}", exc.hint) from exc
    digest = hash_regions(blob, config_regions(blob, paths, size), hash_alg)
    try:
        _verify_value(public_key, value, digest, hash_alg, crypto, padding)
    except VerificationError as exc:
        raise VerificationError(f"{where}: {exc.message}") from exc


def check_image_signature(
    fit: Fit, image: Node, node: Node, public_key: Any, key_algo: str | None = None
) -> None:
    where = f"{IMAGES_PATH}/{image.name}/{node.name}"
    hash_alg, crypto, value, padding = _sig_params(fit, node, where)
    if key_algo is not None and CRYPTO[crypto][0] == "rsa" and key_algo != node.get_str("algo"):
        raise VerificationError(f"{where}: algo {node.get_str('algo')} differs from the key's {key_algo}")
    digest = hashlib.new(hash_alg, fit.image_data(image)).digest()
    try:
        _verify_value(public_key, value, digest, hash_alg, crypto, padding)
    except VerificationError as exc:
        raise VerificationError(f"{where}: {exc.message}") from exc


def check_image_hashes(fit: Fit, image: Node) -> int:
    """``fit_image_verify``: every hash node must match the data. Returns how many were checked."""
    data = fit.image_data(image)
    count = 0
    for sub in image.children:
        if not sub.name.startswith(HASH_NODE):
            continue
        algo = sub.get_str("algo") or ""
        try:
            expected = compute_hash_value(algo, data, fit.what)
        except ConfigError as exc:
            raise VerificationError(exc.message, exc.hint) from exc
        if sub.get("value") != expected:
            raise VerificationError(
                f"{IMAGES_PATH}/{image.name}/{sub.name}: {algo} hash does not match the data"
            )
        count += 1
    return count


@dataclass
class VerifyReport:
    configs: list[str]
    keys: list[str]
    checked: list[str]


def verify_fit(data: bytes, dtb: bytes, configs: list[str] | None = None, what: str = "FIT") -> VerifyReport:
    """Verify like U-Boot booting each configuration, but insist on at least one required key.

    U-Boot (and fit_check_sign) accept anything when the control DTB holds no
    required key; a build script asking "is this FIT signed for this DTB" wants
    a no there.
    """
    try:
        fit = Fit.parse(data, what)
    except FdtError as exc:
        raise VerificationError(exc.message, exc.hint) from exc
    keys, mode = load_keys(dtb)
    conf_keys = [k for k in keys if k.required == "conf"]
    image_keys = [k for k in keys if k.required == "image"]
    if not conf_keys and not image_keys:
        raise VerificationError(
            "the DTB holds no required key: U-Boot would boot any FIT, signed or not",
            "add the key with 'hsmsign fit add-key --required conf ...'",
        )
    names = configs or [c.name for c in fit.configs.children]
    checked: list[str] = []
    for name in names:
        conf = fit.configs.child(name)
        if conf is None:
            raise VerificationError(f"{what} has no configuration '{name}'")
        if "@" in conf.name:
            raise VerificationError(f"configuration '{conf.name}' contains '@'")
        verified = 0
        failures: list[str] = []
        for key in conf_keys:
            ok = False
            for node in _sig_nodes(conf):
                try:
                    check_config_signature(fit, conf, node, key.public_key, key.algo)
                    ok = True
                    checked.append(f"{CONFS_PATH}/{conf.name}/{node.name} with key {key.name}")
                    break
                except VerificationError as exc:
                    failures.append(exc.message)
            if ok:
                verified += 1
                if mode == "any":
                    break
            elif mode == "all":
                raise VerificationError(
                    f"configuration '{conf.name}' is not signed by required key '{key.name}'"
                    + (f": {failures[-1]}" if failures else ": no signature node"),
                )
        if conf_keys and not verified:
            raise VerificationError(f"configuration '{conf.name}': none of the required keys verified")
        for _prop, image in config_image_refs(fit, conf):
            check_image_hashes(fit, image)
            for key in image_keys:
                if not any(_image_ok(fit, image, node, key) for node in _sig_nodes(image)):
                    raise VerificationError(
                        f"image '{image.name}' is not signed by required key '{key.name}'"
                    )
                checked.append(f"{IMAGES_PATH}/{image.name} with key {key.name}")
    return VerifyReport(names, [k.name for k in keys if k.required], checked)


def _image_ok(fit: Fit, image: Node, node: Node, key: KeyNode) -> bool:
    try:
        check_image_signature(fit, image, node, key.public_key, key.algo)
    except VerificationError:
        return False
    return True
