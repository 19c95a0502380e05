"""NXP i.MX secure boot (HAB and AHAB) through SPSDK, with the key in the token.

* ``hsmsign.nxp.signer``: SPSDK signer strings (``type=hsmsign;token=...;object=...``)
  to and from PKCS#11 URIs, and the PINs written into SPSDK configurations (what
  production refuses and ``hsmsign audit`` flags). Standard library only.
* ``hsmsign.nxp.provider``: the SPSDK signature provider (entry point ``spsdk.sp``,
  ``type=hsmsign``). Imports SPSDK: loaded only by SPSDK itself or ``hsmsign imx``.
* ``hsmsign.nxp.images``: AHAB signing, HAB export and SRK tables through SPSDK's API.

SPSDK is an optional extra (``pip install hsmsign[nxp]``); nothing here imports it
until an i.MX command runs.
"""

from __future__ import annotations

from ..errors import ConfigError

INSTALL_HINT = "pip install 'hsmsign[nxp]' (SPSDK, for NXP i.MX HAB/AHAB images) into the same environment"


def require_spsdk() -> None:
    """Raise a ConfigError (exit 2) with the install hint when SPSDK cannot be imported."""
    try:
        import spsdk  # noqa: F401
    except ImportError as exc:
        raise ConfigError("SPSDK (the Python package spsdk) is not installed", INSTALL_HINT) from exc
