"""Verifying a FIT the way U-Boot does when it boots it, against a control DTB's keys;
and, before a signed FIT is written, with U-Boot's own ``fit_check_sign`` (``device_check``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError, VerificationError
from ..fdt import Fdt, FdtError, Node
from .keynode import (
    KeyNode,
    load_keys,
)
from .model import (
    CONFS_PATH,
    CRYPTO,
    HASH_NODE,
    IMAGES_PATH,
    Fit,
    compute_hash_value,
    config_hashed_nodes,
    config_image_refs,
    config_regions,
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
                raise VerificationError(f"unknown padding '{padding}'")
        else:
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.key_size != bits:
                raise VerificationError(f"the key is not {crypto}")
            public_key.verify(ecdsa_raw_to_der(value), digest, ec.ECDSA(algo))
    except InvalidSignature as exc:
        raise VerificationError("signature does not match") from exc


def _sig_params(
    fit: Fit, node: Node, where: str, key_algo: str | None = None
) -> tuple[str, str, bytes, str | None]:
    """A signature node's hash, crypto, value and padding; an RSA key's algo must be the node's."""
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
    if key_algo is not None and CRYPTO[crypto][0] == "rsa" and key_algo != algo:
        raise VerificationError(f"{where}: algo {algo} differs from the key's {key_algo}")
    return hash_alg, crypto, value, node.get_str("padding")


def check_config_signature(
    fit: Fit, conf: Node, node: Node, public_key: Any, key_algo: str | None = None
) -> None:
    """``fit_config_check_sig``: rebuild the node list, hash the regions and hashed-strings, check."""
    where = f"{CONFS_PATH}/{conf.name}/{node.name}"
    hash_alg, crypto, value, padding = _sig_params(fit, node, where, key_algo)
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
    hash_alg, crypto, value, padding = _sig_params(fit, node, where, key_algo)
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
            for node in sig_nodes(conf):
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
                if not any(_image_ok(fit, image, node, key) for node in sig_nodes(image)):
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
            fh.write(result.data)
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
