"""The signing ledger: an append-only, hash-chained record of every signature.

Every command that makes a signature records one entry per signature. When
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
line, and appends its lines with a single ``write`` followed by ``fsync``, so
parallel BitBake tasks and processes never interleave or lose lines. A write that
fails half-way (disk full) is cut back to the previous end under the same lock.

Entries and artifacts land together: a command makes a :class:`Batch` before it opens
the token (:func:`preflight`: the ledger can be appended to, and its last line
verifies), and its staged outputs are renamed into place inside ``Batch.appended()``,
which cuts the ledger back if a rename fails. A ledger converted to CRLF line
endings does not verify and is not appended to (docs/ledger.md).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
import stat
import threading
from collections.abc import Iterator
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


def _regular(fd: int, path: str) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"ledger {path} is not a regular file", "point --ledger / HSMSIGN_LEDGER at a file")


@contextlib.contextmanager
def _locked(path: str, create: bool = True) -> Iterator[int]:
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot open ledger {path}: {exc.strerror}", "check HSMSIGN_LEDGER / --ledger and permissions"
        ) from exc
    _regular(fd, path)
    with _THREAD_LOCK:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise ConfigError(
                    f"cannot lock ledger {path}: {exc.strerror}",
                    "keep the ledger on a local file system (or NFSv4), then copy it out",
                ) from exc
            yield fd
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _tail(fd: int, size: int, path: str) -> tuple[int, str]:
    """The ``seq`` and chain hash of the ledger's last entry ((0, GENESIS) when empty).

    Refuses to chain onto a ledger whose end does not verify: a torn last line, CRLF line
    endings (the next entry would hash the line with its CR and break the chain), or a
    last line that is not a ledger entry in canonical form.
    """
    import json

    if size == 0:
        return 0, GENESIS
    if os.pread(fd, 1, size - 1) != b"\n":
        raise VerificationError(
            f"ledger {path} ends with an incomplete line",
            "run 'hsmsign ledger verify' and restore the ledger from its last good copy",
        )
    last = _last_line(fd, size) or b""
    if last.endswith(b"\r"):
        raise VerificationError(
            f"ledger {path} has CRLF line endings (converted, e.g. opened on Windows): appending would "
            "break the chain",
            f"convert it back with 'dos2unix {path}', then run 'hsmsign ledger verify'",
        )
    try:
        entry = json.loads(last)
        seq = entry["seq"]
        if not isinstance(seq, int) or canonical(entry) != last:
            raise ValueError("not canonical")
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError(
            f"ledger {path}: the last line is not a ledger entry in canonical form (edited?)",
            "run 'hsmsign ledger verify'; restore the ledger from its last good copy",
        ) from exc
    return seq, line_hash(last)


def canonical(entry: dict[str, Any]) -> bytes:
    """An entry's line (without newline): keys sorted, no spaces, ASCII."""
    import json

    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def preflight(path: str) -> None:
    """Check, before any token operation, that an entry could be appended to ``path`` now.

    The directory exists; the file, if it exists, is a regular file that opens for
    appending, can be locked and ends in a line that verifies; if it does not exist, the
    directory is writable. A ConfigError (exit 2) or VerificationError (exit 6) otherwise.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(
            f"cannot open ledger {path}: directory {directory} does not exist",
            "create it, or fix --ledger / HSMSIGN_LEDGER; nothing was signed",
        )
    if not os.path.lexists(path):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(
                f"cannot create ledger {path}: directory {directory} is not writable",
                "fix its permissions or --ledger / HSMSIGN_LEDGER; nothing was signed",
            )
        return
    with _locked(path, create=False) as fd:
        _tail(fd, os.fstat(fd).st_size, path)


class Batch:
    """The ledger entries of one command, appended together with its outputs or not at all.

    Created before the token is touched (it runs :func:`preflight`); ``add`` collects
    entries; ``appended()`` is the guard of ``hsmsign.atomic.staged``: it locks the
    ledger, appends every entry with one ``write`` and ``fsync``, and if renaming the
    outputs into place then fails, cuts the ledger back to where it was.
    """

    def __init__(self, ledger: str | None = None) -> None:
        self.path = ledger_path(ledger)
        self.entries: list[dict[str, Any]] = []
        self._epoch: str | None = None
        if self.path is not None:
            preflight(self.path)
            self._epoch = _ledger_time()

    def add(
        self,
        *,
        artifact: str,
        sha256_hex: str,
        key_fingerprint: str,
        uri_redacted: str,
        mechanism: str,
        kind: str,
    ) -> dict[str, Any] | None:
        if self.path is None:
            return None
        if "pin-value" in uri_redacted or "pin-source" in uri_redacted:
            raise ConfigError(
                "refusing to write a URI with PIN attributes into the ledger", "pass uri.identity()"
            )
        entry: dict[str, Any] = {
            "v": VERSION,
            "time": _now(self._epoch),
            "artifact": artifact,
            "sha256": sha256_hex.lower(),
            "key_fingerprint": key_fingerprint.lower(),
            "uri": uri_redacted,
            "mechanism": mechanism,
            "kind": kind,
            "build_host": os.uname().nodename,  # gethostname(2), as socket.gethostname()
            "pid": os.getpid(),
        }
        self.entries.append(entry)
        return entry

    @contextlib.contextmanager
    def appended(self) -> Iterator[None]:
        if self.path is None or not self.entries:
            yield
            return
        path = self.path
        with _locked(path) as fd:
            size = os.fstat(fd).st_size
            seq, prev = _tail(fd, size, path)
            lines = []
            for entry in self.entries:
                seq += 1
                entry["seq"], entry["prev"] = seq, prev
                line = canonical(entry)
                lines.append(line + b"\n")
                prev = line_hash(line)
            data = b"".join(lines)
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
                    "free space on the ledger's file system; nothing was written",
                ) from exc
            try:
                yield
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # the outputs did not land: neither do their entries
                    os.fsync(fd)
                raise


def _ledger_time() -> str | None:
    from .settings import Settings

    return Settings.from_env(check=False).ledger_time or None  # tests and reproducible replays


def _now(epoch: str | None) -> str:
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
    """Append one entry for a signature just made (no-op without a ledger); return the entry.

    Commands do not call this after writing their outputs: they use a :class:`Batch` as
    the guard of their staged outputs, so entry and artifact land together.
    """
    batch = Batch(ledger)
    entry = batch.add(
        artifact=artifact,
        sha256_hex=sha256_hex,
        key_fingerprint=key_fingerprint,
        uri_redacted=uri_redacted,
        mechanism=mechanism,
        kind=kind,
    )
    with batch.appended():
        pass
    return entry


class LedgerReport:
    """What :func:`verify` found. (A plain class: every signing command loads this module, and a
    dataclass costs a cold start 0.2 - 0.3 ms to make; docs/dev/internals.md, "Cold start".)"""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self.head = GENESIS
        self.problems: list[str] = []

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


MAX_LINE = 1 << 20  # a ledger line is well under 1 KiB; a longer one is not a ledger entry


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line with its newline, if any) of a ledger, each at most ``MAX_LINE`` bytes."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(
            f"cannot read ledger {path}: {exc.strerror}", "check --ledger / HSMSIGN_LEDGER"
        ) from exc
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ConfigError(f"ledger {path} is not a regular file", "check --ledger / HSMSIGN_LEDGER")
        n = 0
        while True:
            try:
                line = fh.readline(MAX_LINE + 1)
            except OSError as exc:
                raise ConfigError(f"cannot read ledger {path}: {exc.strerror}") from exc
            if not line:
                return
            n += 1
            yield n, line


def verify(path: str, *, expect_head: str | None = None, expect_count: int | None = None) -> LedgerReport:
    """Check the whole chain, reading line by line. Returns a report; every problem names its line.

    A ledger whose line endings were converted to CRLF does not verify: the next append
    would chain onto the line with its CR and break. The report says so once, and the
    chain is checked as it will be after ``dos2unix``.

    Raises :class:`ConfigError` when the file cannot be read.
    """
    import json

    report = LedgerReport(path=path)
    prev = GENESIS
    expected_seq = 1
    crlf = not_json = 0
    for n, raw in _lines(path):
        if len(raw) > MAX_LINE:
            report.problems.append(f"line {n}: longer than {MAX_LINE} bytes: not a ledger (stopped reading)")
            break
        if not raw.endswith(b"\n"):
            report.problems.append(f"line {n}: incomplete last line (torn write)")
            break
        line = raw[:-1]
        if line.endswith(b"\r"):
            crlf += 1
            line = line[:-1]
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError:
            report.problems.append(f"line {n}: not a JSON object")
            not_json += 1
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
        try:
            is_canonical = canonical(entry) == line
        except (TypeError, ValueError):
            is_canonical = False
        if not is_canonical:
            report.problems.append(f"line {n}: not in canonical form (edited by hand?)")
        prev = line_hash(line)
        report.count += 1
    if not_json and not report.count:
        # nothing in the file is an entry: the wrong file, not a damaged ledger (and its CRs are no
        # converted line endings)
        report.problems.insert(
            0, f"no line is a ledger entry (one JSON object per line): is {path} the signing ledger?"
        )
    elif crlf:
        report.problems.insert(
            0,
            f"line endings changed to CRLF on {crlf} line(s) (the file was converted, e.g. opened on "
            f"Windows): the next entry would break the chain; convert it back with 'dos2unix {path}' "
            "(the other problems listed, if any, remain after that)",
        )
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
    import json

    return [json.loads(line) for _, line in _lines(path) if line.strip()]
