"""The FIT container and what U-Boot hashes in it: images, configurations, regions, algorithms.

What U-Boot checks, and therefore what this package reproduces (U-Boot
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
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from ...errors import ConfigError, printable
from ...settings import source_date_epoch
from ..fdt import Fdt, Node, RegionIndex, Tag, find_regions, region_bytes, strlist

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


class SubnodeIndex:
    """libfdt's ``fdt_subnode_offset`` on one node's children, by dictionary instead of a scan.

    The first child named exactly ``name``, or (for a name without '@') the first named
    ``name@...``, whichever comes first: ``Node.subnode``'s answer, in constant time. A
    configuration may name thousands of images; a scan per name is quadratic.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.count = len(node.children)
        self.exact: dict[str, tuple[int, Node]] = {}
        self.unit: dict[str, tuple[int, Node]] = {}
        for i, c in enumerate(node.children):
            self.exact.setdefault(c.name, (i, c))
            if "@" in c.name:
                self.unit.setdefault(c.name.split("@", 1)[0], (i, c))

    def get(self, name: str) -> Node | None:
        found = self.exact.get(name)
        if "@" not in name:
            other = self.unit.get(name)
            if other is not None and (found is None or other[0] < found[0]):
                found = other
        return None if found is None else found[1]


@dataclass
class Fit:
    fdt: Fdt
    raw: bytes
    totalsize: int
    what: str = "FIT"
    _images_index: SubnodeIndex | None = field(default=None, repr=False, compare=False)
    _regions: RegionIndex | None = field(default=None, repr=False, compare=False)
    _tags: list[Tag] | None = field(default=None, repr=False, compare=False)
    # (image, algo) -> (where its data is, its digest): hash nodes and image signatures share one pass
    _digests: dict[tuple[str, str], tuple[object, bytes]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def image(self, name: str) -> Node | None:
        """The /images subnode a configuration's string names, as U-Boot resolves it (see SubnodeIndex)."""
        index = self._images_index
        if (
            index is None
            or index.count != len(index.node.children)
            or self.fdt.node(IMAGES_PATH) is not index.node
        ):
            index = self._images_index = SubnodeIndex(self.images)
        return index.get(name)

    def region_index(self) -> RegionIndex:
        """The structure of the FIT as read (not as it would be written), indexed once for its regions."""
        if self._regions is None:
            self._regions = RegionIndex(self.raw[: self.totalsize], self._tags)
            self._tags = None
        return self._regions

    @classmethod
    def parse(cls, data: bytes, what: str = "FIT") -> Fit:
        fdt, tags = Fdt.parse_with_tags(data, what)
        total = int.from_bytes(data[4:8], "big")
        fit = cls(fdt, data, total, what, _tags=tags)
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

    def image_data(self, image: Node) -> bytes | memoryview:
        """The data of an image, embedded (``data``) or external (``data-offset``/``data-position``:
        a view of the file's bytes, not a copy of them)."""
        return self._data_of(image)[1]

    def _data_of(self, image: Node) -> tuple[object, bytes | memoryview]:
        """(where the data is: the embedded value itself or the external (start, size); the data)."""
        data = image.get("data")
        if data is not None:
            return data, data
        size = image.get_u32("data-size")
        offset = image.get_u32("data-offset")
        position = image.get_u32("data-position")
        if size is None or (offset is None and position is None):
            raise ConfigError(
                f"{self.what}: image '{printable(image.name)}' has no data",
                "an image needs 'data', or 'data-size' with 'data-offset' or 'data-position'",
            )
        start = _align4(self.totalsize) + offset if offset is not None else int(position or 0)
        if start + size > len(self.raw):
            raise ConfigError(
                f"{self.what}: external data of image '{printable(image.name)}' lies beyond the end "
                "of the file",
                "the FIT is truncated",
            )
        return (start, size), memoryview(self.raw)[start : start + size]

    def data_digest(self, image: Node, algo: str) -> bytes:
        """``hashlib.new(algo, image data)``, hashed once for the same data (the very same bytes
        object, or the same range of the file): the hash node and the image signature of a
        32 MiB kernel need one pass, not two."""
        source, data = self._data_of(image)
        hit = self._digests.get((image.name, algo))
        if hit is not None and (hit[0] is source or (isinstance(source, tuple) and hit[0] == source)):
            return hit[1]
        value = hashlib.new(algo, data).digest()
        self._digests[(image.name, algo)] = (source, value)
        return value

    def to_bytes(self) -> bytes:
        """The FIT with its (possibly grown) FDT; external data kept where U-Boot will look for it."""
        parts: list[bytes | memoryview] = list(self.fdt.to_parts())
        size = sum(map(len, parts))
        positions = [p for _, n in self.images.walk() for p in [n.get_u32("data-position")] if p is not None]
        tail_start = _align4(self.totalsize)
        # joined once: the external data is copied once, straight from the input
        if positions:
            first = min(positions)
            if size > first:
                raise ConfigError(
                    f"{self.what}: the signed device tree would overlap the external data at {first}",
                    "build the FIT with 'mkimage -E' (relative data-offset) instead of '-p', or a larger -p",
                )
            return b"".join([*parts, bytes(first - size), memoryview(self.raw)[first:]])
        if len(self.raw) > tail_start:
            return b"".join([*parts, bytes(_align4(size) - size), memoryview(self.raw)[tail_start:]])
        return b"".join(parts)


def config_image_refs(fit: Fit, conf: Node, strict: bool = False) -> list[tuple[str, Node]]:
    """(property, image node) for every image the configuration references, as the verifier finds them.

    U-Boot walks the configuration's properties in order, skips description,
    compatible and default, reads each as a string list, and resolves each string
    to a subnode of /images with libfdt's name matching; strings that resolve to
    nothing are skipped. With ``strict`` (signing), a well-known image property
    naming a missing image is an error instead.
    """
    refs: list[tuple[str, Node]] = []
    first: dict[str, bytes] = {}  # get_strlist(name) reads the first property of that name, as libfdt does
    for prop in conf.props:
        first.setdefault(prop.name, prop.value)
    for prop in conf.props:
        if prop.name in NOT_IMAGE_REFS:
            continue
        names = strlist(first[prop.name])
        if names is None:
            continue
        for name in names:
            image = fit.image(name)
            if image is None:
                if strict and prop.name in WELL_KNOWN_IMAGE_PROPS:
                    raise ConfigError(
                        f"{fit.what}: configuration '{printable(conf.name)}' names image '{printable(name)}' "
                        f"({printable(prop.name)}), "
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
            f"{fit.what}: configuration '{printable(conf.name)}' references no image",
            "a configuration needs at least a kernel or firmware image",
        )
    for _prop, image in refs:
        base = f"{IMAGES_PATH}/{image.name}"
        paths.append(base)
        hashes = [c for c in image.children if c.name.startswith(HASH_NODE)]
        if not hashes:
            raise ConfigError(
                f"{fit.what}: image '{printable(image.name)}' has no hash node",
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


def parse_algo(text: str, what: str) -> tuple[str, str]:
    """'sha256,rsa2048' -> ('sha256', 'rsa2048')."""
    hash_alg, _, crypto = text.partition(",")
    if hash_alg not in VERIFY_HASHES or crypto not in CRYPTO:
        raise ConfigError(
            f"{what}: unsupported algo '{printable(text)}'",
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


def source_date(timestamp: int | None = None) -> int:
    """mkimage's ``imagetool_get_source_date``: SOURCE_DATE_EPOCH if set, else now."""
    if timestamp is not None:
        return timestamp
    sde = source_date_epoch()
    if sde is not None:
        return sde
    return int(time.time())


def compute_hash_value(algo: str, data: bytes | memoryview, what: str) -> bytes:
    if algo == "crc32":
        return (zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "big")
    if algo in ("md5", "sha1", "sha256", "sha384", "sha512"):
        return hashlib.new(algo, data).digest()
    raise ConfigError(
        f"{what}: hash algo '{printable(algo)}' is not supported",
        "use sha256 (or crc32/md5/sha1/sha384/sha512)",
    )


def update_image_hashes(fit: Fit) -> None:
    """Recompute every image's hash nodes, as mkimage does before signing."""
    for image in fit.images.children:
        if image.subnode(CIPHER_NODE) is not None:
            continue  # hashes of encrypted images are made by the encryption step
        data: bytes | memoryview | None = None
        for sub in image.children:
            if not sub.name.startswith(HASH_NODE):
                continue
            algo = sub.get_str("algo")
            if not algo:
                raise ConfigError(
                    f"{fit.what}: {IMAGES_PATH}/{printable(image.name)}/{printable(sub.name)} has no algo",
                    'add algo = "sha256"',
                )
            if algo in SIGN_HASHES:  # an image signature may need the same digest
                value = fit.data_digest(image, algo)
            else:
                if data is None:
                    data = fit.image_data(image)
                value = compute_hash_value(algo, data, f"{fit.what}: image '{printable(image.name)}'")
            fit.fdt.setprop(sub, "value", value)


def sig_nodes(node: Node) -> list[Node]:
    return [c for c in node.children if c.name.startswith(SIG_NODE)]
