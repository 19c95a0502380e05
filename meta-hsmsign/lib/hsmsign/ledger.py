"""The signing ledger: an append-only, hash-chained record of every signature.

Every command that makes a signature calls :func:`record` once per artifact. When
no ledger is configured (``--ledger`` / ``HSMSIGN_LEDGER`` unset) it does nothing.
"""

from __future__ import annotations

import os


def ledger_path(explicit: str | None = None) -> str | None:
    """The ledger file to append to, or None when no ledger is configured."""
    return explicit or os.environ.get("HSMSIGN_LEDGER") or None


def record(
    *,
    artifact: str,
    sha256_hex: str,
    key_fingerprint: str,
    uri_redacted: str,
    mechanism: str,
    kind: str,
    ledger: str | None = None,
) -> None:
    """Append one entry for a signature just made (no-op without a ledger)."""
    path = ledger_path(ledger)
    if path is None:
        return
    # Full implementation (hash chain, locking) lives with the ledger issue.
    raise NotImplementedError("ledger not implemented yet")
