"""AHAB signing, HAB images and SRK tables through SPSDK's API, the signer in the token.

Thin on purpose: SPSDK parses and writes the images; hsmsign brings the key (the
``type=hsmsign`` provider), refuses PINs in the configuration and checks the result
with SPSDK's own verifier before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, HsmsignError, PolicyError, SigningError, VerificationError
from . import require_spsdk
from . import signer as signer_mod

SIGNER_KEYS = ("signer", "Signer")


def _spsdk_call(what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one SPSDK call; its errors become one hsmsign line (the provider's own errors unwrapped)."""
    from spsdk.exceptions import SPSDKError

    from .provider import unwrap

    try:
        return func(*args, **kwargs)
    except HsmsignError:
        raise
    except (SPSDKError, ValueError, KeyError, TypeError, OSError) as exc:
        inner = unwrap(exc)
        if inner is not None:
            raise inner from exc
        text = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"{what}: {text}", "check the SPSDK configuration against 'nxpimage ... get-template'"
        ) from exc


def _signer_slots(node: Any, path: str = "") -> Iterator[tuple[Any, str, str]]:
    """(container, key, path) of every SPSDK signer string in a configuration tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}/{key}" if path else str(key)
            if key in SIGNER_KEYS and isinstance(value, str):
                yield node, key, where
            else:
                yield from _signer_slots(value, where)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _signer_slots(item, f"{path}/{i}")


def check_config_pins(path: str, mode: str) -> list[str]:
    """PINs written into an SPSDK configuration: PolicyError in production, warnings otherwise."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    found = signer_mod.pin_findings(text)
    if not found:
        return []
    where = ", ".join(f"line {f.line} ({f.param})" for f in found[:4])
    message = f"{path} holds a PIN in an SPSDK signer string: {where}"
    hint = (
        "remove it; with 'hsmsign imx' the key is --uri and the PIN comes from the URI's "
        "pin-source=file:PATH or --pin-env NAME at run time"
    )
    if mode == "production":
        raise PolicyError(message, hint)
    return [f"{message}; {hint}"]


def load_config(path: str, args: Any, uri: str) -> tuple[Any, int]:
    """The SPSDK configuration at ``path`` with every signer pointed at the token key ``uri``."""
    from spsdk.utils.config import Config

    cfg = _spsdk_call(f"cannot load {path}", Config.create_from_file, path)
    signer = signer_mod.signer_string(uri, pin_env=getattr(args, "pin_env", None))
    slots = list(_signer_slots(cfg))
    for container, key, _where in slots:
        container[key] = signer
    return cfg, len(slots)


@dataclass
class SignedImage:
    data: bytes
    containers: int  # AHAB: containers signed; HAB: 1
    srk_hash: bytes


def ahab_sign(args: Any, config_path: str, image_path: str, uri: str, mem_type: str) -> SignedImage:
    """Sign every OEM (non-NXP) container of the AHAB image; verified by SPSDK before it is returned."""
    require_spsdk()
    from spsdk.image.ahab.ahab_data import FlagsSrkSet
    from spsdk.image.ahab.utils import ahab_sign_image

    from .provider import command_args

    cfg, slots = load_config(config_path, args, uri)
    if not slots:
        raise ConfigError(
            f"{config_path} has no 'signer' entry", "start from 'nxpimage ahab get-template -s'"
        )
    with command_args(args):
        data, bimg = _spsdk_call("AHAB signing failed", ahab_sign_image, image_path, cfg, mem_type)
    family = cfg.get_family()
    signed = 0
    srk_hash = b""
    for ahab in _ahab_images(bimg):
        for container in ahab.ahab_containers:
            if container.flag_srk_set == FlagsSrkSet.OEM:
                signed += 1
                srk_hash = srk_hash or container.get_srk_hash(0)
    if not signed:
        raise SigningError(f"{image_path} has no OEM container to sign", "only non-NXP containers are signed")
    verify_ahab(bytes(data), family)
    return SignedImage(bytes(data), signed, srk_hash)


def _ahab_images(bimg: Any) -> Iterator[Any]:
    for segment in bimg.segments:
        ahab = getattr(segment, "ahab", None)
        if ahab is not None and hasattr(ahab, "ahab_containers"):
            yield ahab


def verify_ahab(data: bytes, family: Any) -> None:
    """SPSDK's own check (what 'nxpimage ahab verify' runs), any memory target."""
    from spsdk.image.ahab.ahab_data import AhabTargetMemory
    from spsdk.image.ahab.ahab_image import AHABImage

    for target in AhabTargetMemory.labels():
        try:
            image = AHABImage.parse(data, family=family, target_memory=target)
        except Exception:  # noqa: BLE001, S112 - SPSDK raises many kinds; the next target may parse
            continue
        if not image.verify().has_errors:
            return
    raise VerificationError("the signed AHAB image does not pass SPSDK's verification; nothing was written")


def hab_export(args: Any, config_path: str, uri: str) -> SignedImage:
    """Build the HAB image (IVT, boot data, CSF) of a 'nxpimage hab' configuration, signed in the token."""
    require_spsdk()
    from spsdk.image.hab.hab_image import HabImage

    from ..settings import source_date_epoch
    from .provider import command_args

    cfg, slots = load_config(config_path, args, uri)
    if not slots:
        raise ConfigError(f"{config_path} has no 'Signer' entry", "start from 'nxpimage hab get-template'")
    options = cfg.get("options")
    epoch = source_date_epoch()
    if isinstance(options, dict) and "signatureTimestamp" not in options and epoch is not None:
        import datetime

        when = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
        options["signatureTimestamp"] = when.strftime("%d/%m/%Y %H:%M:%S")

    def check() -> None:  # what 'nxpimage hab export' checks before it builds
        hook = getattr(HabImage, "PRE_VALIDATION_CFG_HOOK", None)
        to_check = hook(cfg) if hook else cfg
        to_check.check(HabImage.get_validation_schemas_from_cfg(cfg), check_unknown_props=True)

    _spsdk_call(f"{config_path} is not a valid HAB configuration", check)
    _check_hab_certificates(args, cfg, uri)
    with command_args(args):
        hab = _spsdk_call("HAB image failed", HabImage.load_from_config, cfg)
        data = bytes(_spsdk_call("HAB image failed", hab.export))
    family = hab.family
    verify_hab(data, family)
    return SignedImage(data, 1, b"")


# the certificate whose key checks each signature: the CSF's (CSFK, or the SRK itself with fast
# authentication: NOCAK) and the image key's (InstallKey); one --uri signs both
_HAB_CERTS = (
    ("InstallCSFK", "InstallCSFK_File"),
    ("InstallNOCAK", "InstallNOCAK_File"),
    ("InstallKey", "InstallKey_File"),
)


def _check_hab_certificates(args: Any, cfg: Any, uri: str) -> None:
    """The token key is the key of every certificate the CSF installs for its signatures.

    SPSDK builds a CSF whose signer does not match the certificate without a word; the
    boot ROM would then refuse the image on the device.
    """
    from cryptography.hazmat.primitives import serialization
    from spsdk.crypto.certificate import Certificate
    from spsdk.utils.misc import find_file

    from ..commands.common import open_key_from_args

    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    with open_key_from_args(args, uri=uri, check_policy=False) as key:
        ours = key.public_key().public_bytes(*spki)
    for section in cfg.get("sections") or []:
        for command, field in _HAB_CERTS:
            entry = section.get(command) if isinstance(section, dict) else None
            if not isinstance(entry, dict) or field not in entry:
                continue

            def load(name: str = str(entry[field])) -> Any:
                return Certificate.load(find_file(name, search_paths=cfg.search_paths)).get_public_key()

            public = _spsdk_call(f"cannot read the {command} certificate", load)
            if public.key.public_bytes(*spki) != ours:
                raise SigningError(
                    f"the token key {key.uri.identity()} is not the key of the {command} certificate "
                    f"{entry[field]}: the boot ROM would refuse the image",
                    "sign with the key the certificate was made for, or make its certificate "
                    "(hsmsign cert --uri ...); nothing was written",
                )


def verify_hab(data: bytes, family: Any) -> None:
    """SPSDK's own check (what 'nxpimage hab verify' runs)."""
    from spsdk.image.hab.hab_image import HabImage

    image = _spsdk_call("the HAB image does not parse", HabImage.parse, data, family)
    if image.verify().has_errors:
        raise VerificationError("the HAB image does not pass SPSDK's verification; nothing was written")


# --------------------------------------------------------------------------- SRK tables


@dataclass
class SrkTable:
    kind: str  # "ahab" or "hab"
    table: bytes
    digest: bytes  # what is fused

    @property
    def fuse_words(self) -> list[int]:
        """The fuse words, as SPSDK prints them (32-bit little-endian words of the hash)."""
        return list(struct.unpack(f"<{len(self.digest) // 4}I", self.digest))

    def fuse_text(self) -> str:
        out = io.StringIO()
        out.write(f"# SRK hash fuse words ({self.kind.upper()}), first word first; SHA-256 of the table:\n")
        out.write(f"# {self.digest.hex()}\n")
        for i, word in enumerate(self.fuse_words):
            out.write(f"SRKH[{i}] 0x{word:08X}\n")
        return out.getvalue()


def _spsdk_public_key(public: Any) -> Any:
    from cryptography.hazmat.primitives import serialization
    from spsdk.crypto.keys import PublicKey

    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PublicKey.parse(der)


def srk_table(kind: str, public_keys: list[Any], hab_ca: bool = False) -> SrkTable:
    """The SRK table of ``public_keys`` (cryptography objects, in SRK order) and its fuse hash.

    HAB: ``hab_ca`` sets the CA flag of every entry (SRKs that sign CSF/IMG certificates);
    without it the SRK signs the CSF itself (fast authentication).
    """
    require_spsdk()
    if not 1 <= len(public_keys) <= 4:
        raise ConfigError(
            f"an SRK table holds 1 to 4 keys, not {len(public_keys)}", "give --uri up to 4 times"
        )
    keys = [_spsdk_public_key(k) for k in public_keys]
    if kind == "ahab":
        from spsdk.image.ahab.ahab_srk import SRKRecord, SRKTable

        def build_ahab() -> SrkTable:
            records = [SRKRecord.create_from_key(k, srk_id=i) for i, k in enumerate(keys)]
            table = SRKTable(srk_records=records)
            table.update_fields()
            return SrkTable("ahab", table.export(), table.compute_srk_hash())

        return _spsdk_call("cannot build the AHAB SRK table", build_ahab)  # type: ignore[no-any-return]
    if kind == "hab":
        from spsdk.image.hab.hab_srk import SrkTable as HabSrk

        def build_hab() -> SrkTable:
            table = HabSrk()
            for k in keys:
                table.append(_hab_item(k, 0x80 if hab_ca else 0))
            return SrkTable("hab", table.export(), table.export_fuses())

        return _spsdk_call("cannot build the HAB SRK table", build_hab)  # type: ignore[no-any-return]
    raise ConfigError(f"unknown SRK table kind '{kind}'", "use ahab or hab")


def _hab_item(key: Any, flag: int) -> Any:
    from spsdk.crypto.keys import PublicKeyEcc, PublicKeyRsa
    from spsdk.image.hab.hab_srk import SrkItemEcc, SrkItemRSA

    if isinstance(key, PublicKeyRsa):
        n = key.n.to_bytes((key.key_size + 7) // 8, "big")
        e = key.e.to_bytes(max(1, (key.e.bit_length() + 7) // 8), "big")
        return SrkItemRSA(n, e, flag)
    if isinstance(key, PublicKeyEcc):
        return SrkItemEcc(key.key_size, key.x, key.y, flag)
    raise ConfigError("HAB SRK keys are RSA or ECDSA keys")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_outputs(pairs: list[tuple[str, bytes]]) -> None:
    """Write each (path, data) atomically; directories are made as needed."""
    from ..atomic import write_bytes_atomic

    for path, data in pairs:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        write_bytes_atomic(path, data)
