"""Signed manifests: one CMS signature over a list of files' sizes and SHA-256.

A deploy directory (images, FITs, bundles) is checked in one step: the manifest
is a small JSON document, signed as a detached CMS SignedData in
``MANIFEST.p7s`` next to it (``openssl cms -verify -binary -inform DER -in
MANIFEST.p7s -content MANIFEST -CAfile CERT`` checks it without hsmsign). Each
file is hashed locally; the token signs once, whatever the number of files.

Paths are relative to the manifest's directory (or ``base``), with ``/``
separators, never absolute and never with ``..``: a manifest cannot point a
verifier outside the directory it describes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, VerificationError

FORMAT = "hsmsign-manifest/1"
MAX_MANIFEST = 16 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


def _relative(path: str, base: str) -> str:
    full = os.path.realpath(path)
    root = os.path.realpath(base)
    rel = os.path.relpath(full, root)
    if rel == os.curdir or rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
        raise ConfigError(
            f"{path} is not inside {base}",
            "list files under the manifest's directory, or set --base to a directory that holds them all",
        )
    return rel.replace(os.sep, "/")


class _Counted:
    """A progress callback for ``signing.hash_file`` on one of several files: keeps how many of its
    bytes were hashed, and hands on the count of all files so far (``before`` + those)."""

    def __init__(self, before: int = 0, progress: Callable[[int], None] | None = None) -> None:
        self.done = 0
        self.before = before
        self.progress = progress

    def __call__(self, done: int) -> None:
        self.done = done
        if self.progress is not None:
            self.progress(self.before + done)


def build(
    files: Sequence[str], base: str, progress: Callable[[int], None] | None = None
) -> tuple[bytes, list[FileEntry]]:
    """The manifest bytes (canonical JSON, sorted by path) for ``files``; ``progress(bytes)`` is
    told how many bytes of them all were hashed so far."""
    from ..atomic import check_readable
    from ..signing import hash_file

    if not files:
        raise ConfigError("no files to list", "name the files: hsmsign manifest --output MANIFEST FILE...")
    entries: dict[str, FileEntry] = {}
    hashed = 0
    for f in files:
        if os.path.isdir(f):
            raise ConfigError(f"{f} is a directory", "list files (a shell glob such as deploy/* works)")
        check_readable(f)  # missing, a character device, unreadable: each said as it is
        if not os.path.isfile(f):
            raise ConfigError(
                f"{f} is not a regular file (a pipe, socket or device)",
                "list the files a verifier will find in the directory: regular files only",
            )
        rel = _relative(f, base)
        if rel in entries:
            raise ConfigError(f"{f} is listed twice")
        # the size of the very bytes hashed (the read refuses a file that changes meanwhile)
        size = _Counted(hashed, progress)
        digest = hash_file(f, "sha256", progress=size)
        entries[rel] = FileEntry(rel, size.done, digest.hex())
        hashed += size.done
    ordered = [entries[k] for k in sorted(entries)]
    doc = {
        "format": FORMAT,
        "hash": "sha256",
        "files": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in ordered],
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), ordered


def parse(data: bytes) -> list[FileEntry]:
    """Strictly read a manifest; VerificationError for anything unexpected."""
    if len(data) > MAX_MANIFEST:
        raise VerificationError("the manifest is implausibly large")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VerificationError("the manifest is not JSON", "is this an hsmsign manifest?") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("hash") != "sha256":
        raise VerificationError(f"the manifest is not in format {FORMAT}")
    files = doc.get("files")
    if not isinstance(files, list):
        raise VerificationError("the manifest has no file list")
    out: list[FileEntry] = []
    seen: set[str] = set()
    for item in files:
        if not isinstance(item, dict):
            raise VerificationError("a manifest entry is not an object")
        path, size, sha = item.get("path"), item.get("size"), item.get("sha256")
        if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool):
            raise VerificationError("a manifest entry lacks path or size")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise VerificationError(f"manifest entry {path!r}: sha256 is not 64 lowercase hex digits")
        parts = path.split("/")
        if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
            raise VerificationError(f"manifest entry {path!r} is not a plain relative path")
        if path in seen or size < 0:
            raise VerificationError(f"manifest entry {path!r} is duplicated or has a negative size")
        seen.add(path)
        out.append(FileEntry(path, size, sha))
    return out


@dataclass
class CheckResult:
    ok: list[str]
    missing: list[str]
    changed: list[str]


def check_files(
    entries: Sequence[FileEntry], base: str, progress: Callable[[int], None] | None = None
) -> CheckResult:
    """Each entry's file against its size and SHA-256; ``progress(bytes)`` as for :func:`build`."""
    from ..signing import hash_file

    result = CheckResult([], [], [])
    hashed = 0
    for e in entries:
        full = os.path.join(base, *e.path.split("/"))
        if not os.path.isfile(full):
            result.missing.append(e.path)
            continue
        if os.path.getsize(full) != e.size:
            result.changed.append(e.path)
            continue
        size = _Counted(hashed, progress)
        digest = hash_file(full, "sha256", progress=size).hex()
        hashed += size.done
        if digest != e.sha256:
            result.changed.append(e.path)
            continue
        result.ok.append(e.path)
    return result


def verify(
    manifest: bytes,
    signature: bytes,
    trusted: Sequence[Any],
    base: str,
    progress: Callable[[Sequence[FileEntry]], Callable[[int], None] | None] | None = None,
) -> CheckResult:
    """Signature first (nothing in an unsigned manifest is trusted), then each file.
    ``progress(entries)``, given the signed entries, makes the callback :func:`check_files` uses."""
    from . import cms

    cms.verify_detached(signature, content=manifest, trusted=trusted, like_openssl=True)
    entries = parse(manifest)
    result = check_files(entries, base, progress(entries) if progress is not None else None)
    if result.missing or result.changed:
        parts = []
        if result.changed:
            parts.append(f"changed: {', '.join(result.changed[:5])}")
        if result.missing:
            parts.append(f"missing: {', '.join(result.missing[:5])}")
        raise VerificationError(
            f"the signed manifest does not match the files ({'; '.join(parts)})",
            "the files changed after signing; rebuild and sign again",
        )
    return result
