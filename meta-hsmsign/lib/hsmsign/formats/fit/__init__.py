"""FIT images: signing, public key nodes for U-Boot's control DTB, verification.

* ``fit.model``: the FIT container and what U-Boot hashes in it (images,
  configurations, regions, algorithms, image hashes);
* ``fit.sign``: ``sign_fit`` (a FIT in memory, like mkimage) and ``sign_file``,
  the one sign-and-write service (fit_check_sign, atomic write, key DTB, ledger)
  that ``hsmsign fit sign`` and the ``mkimage`` drop-in share;
* ``fit.keynode``: public key nodes in the control DTB;
* ``fit.verify``: verification as U-Boot boots, and ``device_check`` with U-Boot's
  own ``fit_check_sign``.

No module here talks to a token: signing takes a function that returns a
``hsmsign.signing.Signer`` for a key-name hint.
"""

from __future__ import annotations

from .keynode import KeyNode, add_key, key_from_node, load_keys, rsa_key_props
from .model import (
    CONFS_PATH,
    EXCLUDED_PROPS,
    IMAGES_PATH,
    KEEP,
    Fit,
    config_hashed_nodes,
    config_image_refs,
    crypto_for_key,
    parse_algo,
    update_image_hashes,
)
from .sign import KeyDestination, SignedNode, SignOptions, SignResult, sign_file, sign_fit
from .verify import VerifyReport, device_check, verify_fit

__all__ = [
    "CONFS_PATH",
    "EXCLUDED_PROPS",
    "IMAGES_PATH",
    "KEEP",
    "Fit",
    "KeyDestination",
    "KeyNode",
    "SignOptions",
    "SignResult",
    "SignedNode",
    "VerifyReport",
    "add_key",
    "config_hashed_nodes",
    "config_image_refs",
    "crypto_for_key",
    "device_check",
    "key_from_node",
    "load_keys",
    "parse_algo",
    "rsa_key_props",
    "sign_file",
    "sign_fit",
    "update_image_hashes",
    "verify_fit",
]
