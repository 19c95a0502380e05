"""Verifying a FIT the way U-Boot does when it boots it, against a control DTB's keys;
and, before a signed FIT is written, with U-Boot's own ``fit_check_sign`` (``device_check``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...atomic import write_all
from ...errors import ConfigError, VerificationError, printable
from ..fdt import Fdt, FdtError, Node
from .keynode import (
    KeyNode,
    load_keys,
)
from .model import (
    CONFS_PATH,
    CRYPTO,
    EXCLUDED_PROPS,
    HASH_NODE,
    IMAGES_PATH,
    Fit,
    compute_hash_value,
    config_hashed_nodes,
    config_image_refs,
    hash_regions,
    parse_algo,
    sig_nodes,
)


def _verify_value(
    public_key: Any, value: bytes, digest: bytes, hash_alg: str, crypto: str, padding: str | None
) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
    from cryptography.hazmat.primitives.asymmetric import padding as pad

    from ...signing import ecdsa_raw_to_der

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
                raise VerificationError(f"unknown padding '{printable(padding)}'")
        else:
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.key_size != bits:
                raise VerificationError(f"the key is not {crypto}")
            public_key.verify(ecdsa_raw_to_der(value), digest, ec.ECDSA(algo))
    except InvalidSignature as exc:
        raise VerificationError("signature does not match") from exc


def _sig_params(
    fit: Fit, node: Node, where: str, key_algo: str | None = None
) -> tuple[str, str, bytes, str | None]:
    """A signature node's hash, crypto, value and padding; an RSA key's algo must be the node's.
    ``key_algo``: the key node's algo, "" when it has none; None when no key node is involved."""
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
    if key_algo == "" and CRYPTO[crypto][0] == "rsa":
        raise VerificationError(
            f"{where}: the key node has no algo, and U-Boot checks an RSA signature only with a key "
            "whose algo is the signature's",
            "write the key again with 'hsmsign fit add-key'",
        )
    if key_algo is not None and CRYPTO[crypto][0] == "rsa" and key_algo != algo:
        raise VerificationError(
            f"{where}: algo {printable(algo)} differs from the key's {printable(key_algo)}"
        )
    return hash_alg, crypto, value, node.get_str("padding")


# Bounds on the work one FIT can ask of the verifier. A FIT U-Boot boots has a few configurations
# (hundreds for a kernel FIT carrying every board's DTB), one or two signature nodes each, and a few
# images per configuration; these are far above that and keep the worst input to seconds.
MAX_CONFIGS = 4096
MAX_SIGNATURE_NODES = 64  # per configuration or image
MAX_SIGNATURE_CHECKS = 20_000  # (signature node, key) pairs tried over the whole FIT
MAX_IMAGE_REFS = 200_000  # image references summed over the configurations checked
MAX_REGION_TAGS = 4_000_000  # structure tags selected for configuration signatures, summed


class TooMuchWork(VerificationError):
    """A FIT over one of the MAX_* bounds: the whole verification stops (it is no signature failure)."""


class Checker:
    """What verifying one FIT computes once: node lists, regions and digests per configuration,
    each image's hash per algorithm, and the work done so far (against the MAX_* bounds).

    Without it, every (key, signature node) pair rebuilt its configuration's node list, walked
    the whole blob for the regions, and re-hashed every image: quadratic in the FIT's size.
    """

    def __init__(self, fit: Fit) -> None:
        self.fit = fit
        self.blob = fit.raw[: fit.totalsize]  # the regions are over the bytes as read, not as we would write
        self.strings_size = int.from_bytes(self.blob[32:36], "big")
        self._refs: dict[int, list[tuple[str, Node]]] = {}
        self._paths: dict[int, list[str]] = {}
        self._regions: dict[tuple[str, ...], list[tuple[int, int]]] = {}
        self._config_digests: dict[tuple[tuple[str, ...], str, int], bytes] = {}
        self._image_digests: dict[tuple[int, str], bytes] = {}
        self.signature_checks = 0
        self.image_refs = 0
        self.region_tags = 0

    def bound(self, count: int, limit: int, what: str) -> None:
        if count > limit:
            raise TooMuchWork(
                f"{self.fit.what}: more than {limit} {what}; hsmsign refuses to check a FIT this large",
                "a FIT U-Boot boots has far fewer: the file is not a plausible FIT, or is built to stall "
                "the verifier",
            )

    def sig_nodes(self, owner: Node, where: str) -> list[Node]:
        nodes = sig_nodes(owner)
        self.bound(len(nodes), MAX_SIGNATURE_NODES, f"signature nodes in {printable(where)}")
        return nodes

    def count_signature_check(self) -> None:
        self.signature_checks += 1
        self.bound(self.signature_checks, MAX_SIGNATURE_CHECKS, "signature checks")

    def refs(self, conf: Node) -> list[tuple[str, Node]]:
        """``config_image_refs``, once per configuration, counted against MAX_IMAGE_REFS."""
        refs = self._refs.get(id(conf))
        if refs is None:
            refs = self._refs[id(conf)] = config_image_refs(self.fit, conf)
            self.image_refs += len(refs)
            self.bound(self.image_refs, MAX_IMAGE_REFS, "image references in its configurations")
        return refs

    def config_paths(self, conf: Node) -> list[str]:
        paths = self._paths.get(id(conf))
        if paths is None:
            self.refs(conf)  # counted (and bounded) before the node list is built from them
            paths = self._paths[id(conf)] = list(dict.fromkeys(config_hashed_nodes(self.fit, conf)))
        return paths

    def config_digest(self, hashed_nodes: tuple[str, ...], hash_alg: str, strings_size: int) -> bytes:
        """The digest U-Boot computes over the regions of ``hashed_nodes`` (the signature node's
        own list) and the first ``strings_size`` bytes of the strings block."""
        key = (hashed_nodes, hash_alg, strings_size)
        digest = self._config_digests.get(key)
        if digest is None:
            regions = self._regions.get(hashed_nodes)
            if regions is None:
                index = self.fit.region_index()
                regions = index.regions(hashed_nodes, EXCLUDED_PROPS, False)
                self.region_tags += index.last_selected
                self.bound(
                    self.region_tags, MAX_REGION_TAGS, "device tree tags under configuration signatures"
                )
                if len(regions) + 1 >= 20 + len(hashed_nodes) * 7:
                    raise VerificationError(
                        f"{self.fit.what}: its hashed nodes make {len(regions)} regions, more than "
                        "U-Boot allows for them ('Too many hash regions')",
                        "the FIT was changed after signing, or was not built by mkimage; build and "
                        "sign it again",
                    )
                self._regions[hashed_nodes] = regions
            off_strings = int.from_bytes(self.blob[12:16], "big")
            digest = hash_regions(self.blob, [*regions, (off_strings, strings_size)], hash_alg)
            self._config_digests[key] = digest
        return digest

    def image_digest(self, image: Node, algo: str) -> bytes:
        """The image's data hashed with ``algo`` (a FIT hash algo, crc32 included), once per image."""
        key = (id(image), algo)
        digest = self._image_digests.get(key)
        if digest is None:
            digest = self._image_digests[key] = compute_hash_value(
                algo, self.fit.image_data(image), self.fit.what
            )
        return digest


def check_config_signature(
    fit: Fit,
    conf: Node,
    node: Node,
    public_key: Any,
    key_algo: str | None = None,
    checker: Checker | None = None,
) -> None:
    """``fit_config_check_sig``: rebuild the node list, hash the regions and hashed-strings, check."""
    checker = checker or Checker(fit)
    where = f"{CONFS_PATH}/{printable(conf.name)}/{printable(node.name)}"
    hash_alg, crypto, value, padding = _sig_params(fit, node, where, key_algo)
    strings = node.get("hashed-strings")
    if strings is None or len(strings) < 8:
        raise VerificationError(f"{where}: no valid hashed-strings")
    size = int.from_bytes(strings[4:8], "big")
    if size > checker.strings_size:
        raise VerificationError(f"{where}: hashed-strings is out of bounds")
    try:
        # U-Boot hashes the nodes the signature node lists; hsmsign also wants every node that
        # mkimage would list for this configuration among them, so an image cannot be left out
        needed = checker.config_paths(conf)  # first: it bounds the configuration's image references
        hashed = _hashed_nodes(node, where)
        listed = set(hashed)
        missing = [n for n in needed if n not in listed]
        if missing:
            raise VerificationError(
                f"{where}: hashed-nodes leaves out {printable(missing[0])}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""),
                "the signature does not cover all the configuration uses; sign it again",
            )
        digest = checker.config_digest(hashed, hash_alg, size)
    except ConfigError as exc:
        raise VerificationError(f"{where}: {exc.message}", exc.hint) from exc
    try:
        _verify_value(public_key, value, digest, hash_alg, crypto, padding)
    except VerificationError as exc:
        raise VerificationError(f"{where}: {exc.message}") from exc


MAX_HASHED_NODES = 100  # U-Boot's IMAGE_MAX_HASHED_NODES


def _hashed_nodes(node: Node, where: str) -> tuple[str, ...]:
    """The signature node's ``hashed-nodes``, as U-Boot's fit_config_check_sig reads them."""
    raw = node.get("hashed-nodes")
    if not raw:
        raise VerificationError(f"{where}: no hashed-nodes", "sign the FIT again")
    if not raw.endswith(b"\0"):
        raise VerificationError(f"{where}: hashed-nodes is not NUL-terminated", "sign the FIT again")
    names = raw[:-1].split(b"\0")
    if len(names) > MAX_HASHED_NODES:
        raise VerificationError(
            f"{where}: {len(names)} hashed nodes, more than U-Boot's {MAX_HASHED_NODES}",
            "U-Boot refuses such a signature ('Number of hashed nodes exceeds maximum')",
        )
    return tuple(n.decode("utf-8", "surrogateescape") for n in names)


def check_image_signature(
    fit: Fit,
    image: Node,
    node: Node,
    public_key: Any,
    key_algo: str | None = None,
    checker: Checker | None = None,
) -> None:
    checker = checker or Checker(fit)
    where = f"{IMAGES_PATH}/{printable(image.name)}/{printable(node.name)}"
    hash_alg, crypto, value, padding = _sig_params(fit, node, where, key_algo)
    try:
        digest = checker.image_digest(image, hash_alg)
    except ConfigError as exc:
        raise VerificationError(exc.message, exc.hint) from exc
    try:
        _verify_value(public_key, value, digest, hash_alg, crypto, padding)
    except VerificationError as exc:
        raise VerificationError(f"{where}: {exc.message}") from exc


def check_image_hashes(fit: Fit, image: Node, checker: Checker | None = None) -> int:
    """``fit_image_verify``: every hash node must match the data. Returns how many were checked."""
    checker = checker or Checker(fit)
    count = 0
    for sub in image.children:
        if not sub.name.startswith(HASH_NODE):
            continue
        algo = sub.get_str("algo") or ""
        try:
            expected = checker.image_digest(image, algo)
        except ConfigError as exc:
            raise VerificationError(exc.message, exc.hint) from exc
        if sub.get("value") != expected:
            raise VerificationError(
                f"{IMAGES_PATH}/{printable(image.name)}/{printable(sub.name)}: "
                f"{printable(algo)} hash does not match the data"
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

    Linear in the FIT: each configuration's node list, regions and digest are computed once,
    each image is hashed once per algorithm (``Checker``), and the work has upper bounds
    (``MAX_*``). Names from the FIT reach messages through ``printable``.
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
    checker = Checker(fit)
    by_name: dict[str, Node] = {}
    for c in fit.configs.children:
        by_name.setdefault(c.name, c)
    if not configs:
        # what U-Boot boots without '#conf-name' (bootm, SPL, fit_check_sign without -c)
        default = fit.configs.get("default")
        if default is None:
            raise VerificationError(
                f"{what}: /configurations has no 'default': U-Boot boots it only when told a "
                "configuration by name",
                "add 'default = \"conf-1\";' to /configurations in the .its, or check the ones your "
                "boot script names with --config NAME",
            )
        name = default.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if not default.endswith(b"\0") or name not in by_name:
            raise VerificationError(
                f"{what}: the default configuration '{printable(name)}' does not exist: U-Boot "
                "cannot boot it",
                "set /configurations/default to one of the configurations in the .its",
            )
    names = configs or list(by_name)
    checker.bound(len(names), MAX_CONFIGS, "configurations")
    checked: list[str] = []
    images_done: set[tuple[int, str]] = set()
    for name in names:
        conf = by_name.get(name)
        shown = printable(name)
        if conf is None:
            raise VerificationError(f"{what} has no configuration '{shown}'")
        if "@" in conf.name:
            raise VerificationError(f"configuration '{shown}' contains '@'")
        verified = 0
        failures: list[str] = []
        nodes = checker.sig_nodes(conf, f"{CONFS_PATH}/{name}")
        for key in conf_keys:
            ok = False
            for node in nodes:
                checker.count_signature_check()
                try:
                    check_config_signature(fit, conf, node, key.public_key, key.algo or "", checker)
                    ok = True
                    checked.append(
                        f"{CONFS_PATH}/{shown}/{printable(node.name)} with key {printable(key.name)}"
                    )
                    break
                except TooMuchWork:
                    raise
                except VerificationError as exc:
                    failures.append(exc.message)
            if ok:
                verified += 1
                if mode == "any":
                    break
            elif mode == "all":
                raise VerificationError(
                    f"configuration '{shown}' is not signed by required key '{printable(key.name)}'"
                    + (f": {failures[-1]}" if failures else ": no signature node"),
                )
        if conf_keys and not verified:
            raise VerificationError(f"configuration '{shown}': none of the required keys verified")
        seen: set[int] = set()
        for _prop, image in checker.refs(conf):
            if id(image) in seen:
                continue  # named twice by this configuration: the same node, the same answer
            seen.add(id(image))
            check_image_hashes(fit, image, checker)
            image_sigs = checker.sig_nodes(image, f"{IMAGES_PATH}/{image.name}") if image_keys else []
            for key in image_keys:
                done = (id(image), key.name)
                if done not in images_done:
                    if not any(_image_ok(fit, image, node, key, checker) for node in image_sigs):
                        raise VerificationError(
                            f"image '{printable(image.name)}' is not signed by required key "
                            f"'{printable(key.name)}'"
                        )
                    images_done.add(done)
                checked.append(f"{IMAGES_PATH}/{printable(image.name)} with key {printable(key.name)}")
    return VerifyReport(names, [k.name for k in keys if k.required], checked)


def _image_ok(fit: Fit, image: Node, node: Node, key: KeyNode, checker: Checker) -> bool:
    checker.count_signature_check()
    try:
        check_image_signature(fit, image, node, key.public_key, key.algo or "", checker)
    except TooMuchWork:
        raise
    except VerificationError:
        return False
    return True


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

    from .keynode import add_key

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
        dtb, _ = add_key(dtb, public_key_for(name), name, hash_alg, required, what="check DTB")
    tree = Fdt.parse(result.data, what)
    confs = tree.node(CONFS_PATH)
    names = [c.name for c in confs.children] if confs is not None else []
    with tempfile.TemporaryDirectory(prefix="hsmsign-fitcheck-") as tmp:
        fit_path = os.path.join(tmp, "signed.itb")
        dtb_path = os.path.join(tmp, "keys.dtb")
        with open(fit_path, "wb") as fh:
            write_all(fh, result.data)
        with open(dtb_path, "wb") as fh:
            fh.write(dtb)
        for conf in names:
            try:
                done = subprocess.run(  # noqa: S603 - U-Boot's tool, named by the user
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
