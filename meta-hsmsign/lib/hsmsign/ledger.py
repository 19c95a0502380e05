"""The signing ledger: an append-only, hash-chained record of every signature.

Every command that makes a signature calls :func:`record` once per artifact. When
no ledger is configured (``--ledger`` / ``HSMSIGN_LEDGER`` unset) it does nothing.

Format: JSON lines, one object per signature, keys sorted, no spaces::

    {"artifact":"/abs/u-boot.itb","build_host":"ci-7","key_fingerprint":"9f86…",
     "kind":"fit","mechanism":"sha256-rsa-pkcs1v15","pid":4242,"prev":"<64 hex>",
     "seq":17,"sha256":"<64 hex>","time":"2026-11-23T21:40:00Z","uri":"pkcs11:token=…","v":1}

``prev`` is the SHA-256 of the previous line's bytes (without its newline); the
first line has 64 zeros. ``seq`` counts from 1. Editing, reordering or deleting
any line breaks the chain at the next line; dropping lines from the end is
caught by comparing the head (``verify`` prints it) with a copy kept elsewhere
(``hsmsign ledger verify --expect-head``, or ``--expect-count``).

Concurrency: a writer takes an exclusive ``flock`` on the ledger, reads the last
line, and appends its line with a single ``write`` followed by ``fsync``, so
parallel BitBake tasks and processes never interleave or lose lines. A write that
fails half-way (disk full) is cut back to the previous end under the same lock.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, VerificationError

GENESIS = "0" * 64
VERSION = 1
FIELDS = ("artifact", "sha256", "key_fingerprint", "uri", "mechanism", "kind")
_THREAD_LOCK = threading.Lock()  # flock is per open file; this keeps threads of one process in line too


def ledger_path(explicit: str | None = None) -> str | None:
    """The ledger file to append to, or None when no ledger is configured."""
    from .settings import Settings

    return explicit or Settings.from_env(check=False).ledger or None


def line_hash(line: bytes) -> str:
    """The chain hash of one ledger line (without its newline)."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _last_line(fd: int, size: int) -> bytes | None:
    """The last complete line of the file (without newline), or None for an empty file."""
    if size == 0:
        return None
    chunk = 4096
    end = size
    buf = b""
    while end > 0:
        start = max(0, end - chunk)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        # the file ends with "\n"; look for the one before it
        idx = buf.rfind(b"\n", 0, len(buf) - 1)
        if idx >= 0:
            return buf[idx + 1 :].rstrip(b"\n")
        chunk *= 2
    return buf.rstrip(b"\n")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot open ledger {path}: {exc.strerror}", "check HSMSIGN_LEDGER / --ledger and permissions"
        ) from exc
    with _THREAD_LOCK:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _now() -> str:
    from .settings import Settings

    epoch = Settings.from_env(check=False).ledger_time  # tests and reproducible replays
    if epoch:
        t = datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
    else:
        t = datetime.datetime.now(tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(
    *,
    artifact: str,
    sha256_hex: str,
    key_fingerprint: str,
    uri_redacted: str,
    mechanism: str,
    kind: str,
    ledger: str | None = None,
) -> dict[str, Any] | None:
    """Append one entry for a signature just made (no-op without a ledger); return the entry."""
    path = ledger_path(ledger)
    if path is None:
        return None
    if "pin-value" in uri_redacted or "pin-source" in uri_redacted:
        raise ConfigError(
            "refusing to write a URI with PIN attributes into the ledger", "pass uri.identity()"
        )
    entry: dict[str, Any] = {
        "v": VERSION,
        "time": _now(),
        "artifact": artifact,
        "sha256": sha256_hex.lower(),
        "key_fingerprint": key_fingerprint.lower(),
        "uri": uri_redacted,
        "mechanism": mechanism,
        "kind": kind,
        "build_host": socket.gethostname(),
        "pid": os.getpid(),
    }
    with _locked(path) as fd:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            raise VerificationError(
                f"ledger {path} ends with an incomplete line",
                "run 'hsmsign ledger verify' and restore the ledger from its last good copy",
            )
        last = _last_line(fd, size)
        if last is None:
            entry["seq"], entry["prev"] = 1, GENESIS
        else:
            try:
                prev_seq = int(json.loads(last)["seq"])
            except (ValueError, KeyError, TypeError) as exc:
                raise VerificationError(
                    f"ledger {path}: the last line is not a ledger entry",
                    "run 'hsmsign ledger verify'; restore the ledger from its last good copy",
                ) from exc
            entry["seq"], entry["prev"] = prev_seq + 1, line_hash(last)
        data = (json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "short write (no space left on device?)")
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # never leave a torn line behind
            raise ConfigError(
                f"cannot append to ledger {path}: {exc.strerror or exc}",
                "free space on the ledger's file system; the signed artifact is in place but unrecorded",
            ) from exc
    return entry


@dataclass
class LedgerReport:
    """What :func:`verify` found."""

    path: str
    count: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "count": self.count,
            "head": self.head,
            "problems": self.problems,
        }


def verify(path: str, *, expect_head: str | None = None, expect_count: int | None = None) -> LedgerReport:
    """Check the whole chain. Returns a report; every problem names its line.

    Raises :class:`ConfigError` when the file cannot be read.
    """
    report = LedgerReport(path=path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read ledger {path}: {exc.strerror}", "check --ledger / HSMSIGN_LEDGER"
        ) from exc
    if data and not data.endswith(b"\n"):
        torn_line = data.count(b"\n") + 1
        report.problems.append(f"line {torn_line}: incomplete last line (torn write)")
        data = data[: data.rfind(b"\n") + 1]
    prev = GENESIS
    expected_seq = 1
    for n, line in enumerate(data.splitlines(), 1):
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError:
            report.problems.append(f"line {n}: not a JSON object")
            prev = line_hash(line)
            expected_seq += 1
            continue
        missing = [k for k in (*FIELDS, "seq", "prev", "time") if k not in entry]
        if missing:
            report.problems.append(f"line {n}: missing {', '.join(missing)}")
        if entry.get("prev") != prev:
            report.problems.append(
                f"line {n}: chain broken (prev does not match line {n - 1}): a line was edited, removed or "
                "moved at or before this point"
            )
        seq = entry.get("seq")
        if seq != expected_seq:
            report.problems.append(
                f"line {n}: seq {seq}, expected {expected_seq} (lines removed or reordered)"
            )
        if isinstance(seq, int):
            expected_seq = seq
        expected_seq += 1
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        if canonical != line:
            report.problems.append(f"line {n}: not in canonical form (edited by hand?)")
        prev = line_hash(line)
        report.count += 1
    report.head = prev
    if expect_head is not None and expect_head.lower() != report.head:
        report.problems.append(
            f"head {report.head} differs from the expected {expect_head.lower()}: lines were removed from "
            "the end, or added"
        )
    if expect_count is not None and expect_count != report.count:
        report.problems.append(f"{report.count} entries, expected {expect_count}")
    return report


def entries(path: str) -> list[dict[str, Any]]:
    """All entries (no checking: use :func:`verify` first)."""
    with open(path, "rb") as fh:
        return [json.loads(line) for line in fh if line.strip()]
