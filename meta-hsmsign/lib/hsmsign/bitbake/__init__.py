"""The BitBake side of meta-hsmsign: the only package that knows BitBake datastores.

The classes call these names as ``hsmsign.bitbake.NAME(d, ...)``; they stay
importable from here whichever half defines them:

* ``bitbake.checks`` (parse time): role URIs, key identity for task hashes, FIT
  key names, lock files, the parse-time checks, the swupdate sign-tool command;
* ``bitbake.runtime`` (task time): the signing child's environment (the PIN from
  ``BB_ORIGENV``, the settings through ``hsmsign.settings``), running ``HSMSIGN_CMD``,
  reading other layers' outputs (dm-verity), meta-swupdate's encryption helpers.

Standard library only (``addpylib`` loads it at parse time with the host Python,
where python-pkcs11 and cryptography are absent); nothing here imports ``bb``.
"""

from __future__ import annotations

from .checks import (
    FIT_ROLES,
    FIT_VARDEPS,
    KEYDIR_VARIABLES,
    KEYFILE_VARIABLES,
    KEYGEN_VARIABLES,
    ROLES,
    Datastore,
    DictData,
    Problem,
    check_config,
    check_fit_policy,
    check_key_files,
    check_value,
    dev_default_uri,
    dev_home,
    enabled,
    img_key_name,
    key_identity,
    key_name,
    lockfile,
    mode,
    pin_program_with_arguments,
    pin_variable,
    pubkey_pin,
    published_symmetric_key,
    quote,
    role_uri,
    scan_datastore,
    swupdate_sign_tool,
    token_label,
    uri_identity,
)
from .runtime import (
    SwupdateTokenAes,
    TaskError,
    child_env,
    command,
    dmverity_inputs,
    random_iv,
    redact,
    run,
    verity_root_hash,
)

__all__ = [
    "FIT_ROLES",
    "FIT_VARDEPS",
    "KEYDIR_VARIABLES",
    "KEYFILE_VARIABLES",
    "KEYGEN_VARIABLES",
    "ROLES",
    "Datastore",
    "DictData",
    "Problem",
    "SwupdateTokenAes",
    "TaskError",
    "check_config",
    "check_fit_policy",
    "check_key_files",
    "check_value",
    "child_env",
    "command",
    "dev_default_uri",
    "dev_home",
    "dmverity_inputs",
    "enabled",
    "img_key_name",
    "key_identity",
    "key_name",
    "lockfile",
    "mode",
    "pin_program_with_arguments",
    "pin_variable",
    "pubkey_pin",
    "published_symmetric_key",
    "quote",
    "random_iv",
    "redact",
    "role_uri",
    "run",
    "scan_datastore",
    "swupdate_sign_tool",
    "token_label",
    "uri_identity",
    "verity_root_hash",
]
