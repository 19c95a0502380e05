"""Leak audit: find key material and secrets where they must never be.

``hsmsign audit`` and the layer's image check use this package; BitBake's parse
time uses only ``hsmsign.secrets`` (the patterns and the one-variable check).

* ``hsmsign.secrets``: what a secret looks like (patterns, ``Finding``,
  ``check_variable``, ``redact``); standard library only;
* ``audit.keys``: DER private keys at any offset, public keys out of private-key
  material (fingerprints that name published keys);
* ``audit.archives``: compressed streams, tar, cpio, ar and zip members, as streams;
* ``audit.scan``: blobs, files and trees, the allowlist, the report.

Standard library only at module level, like the modules it re-exports.
"""

from __future__ import annotations

from ..secrets import KINDS, Finding, check_variable, location_id
from .keys import spki_from_certificate_der, spki_from_private_der
from .scan import Allowlist, iter_files, scan_bytes, scan_file, scan_paths, scan_text

__all__ = [
    "KINDS",
    "Allowlist",
    "Finding",
    "check_variable",
    "iter_files",
    "location_id",
    "scan_bytes",
    "scan_file",
    "scan_paths",
    "scan_text",
    "spki_from_certificate_der",
    "spki_from_private_der",
]
