"""The leak scanner: files, trees and blobs, the allowlist, the report.

Scans text and binary content (layers, setup scripts, kas files, ``bitbake -e``
dumps, sigdata, logs, deploy directories, unpacked root filesystems, tar and
cpio archives) for the kinds of secret ``hsmsign.secrets`` defines.

Standard library only at module level.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator

from .. import known_keys
from ..secrets import (
    _B64_BODY,
    _DASHES,
    _KEY_FILE_LINE,
    _KEYWORDS,
    _PIN_IN_URI,
    ASSIGNMENT,
    DEFINE,
    KINDS,
    PEM_BEGIN,
    PRIVATE_KEY_HEADER,
    PUBLIC_BLOCK,
    PUTTY_HEADER,
    URI_PIN_ATTR,
    Finding,
    _finding,
    _symmetric_finding,
    classify_assignment,
    redact,
    spsdk_pin_findings,
)
from .archives import ZSTD_MAGIC, archive_members
from .keys import (
    _PKCS7_DATA_OID,
    _children,
    _pem_body,
    _rsa_spki,
    _tlv,
    spki_from_certificate_der,
    spki_from_openssh_private,
    spki_from_private_der,
    spki_from_ssh_public_blob,
)


def _line_of(data: bytes, pos: int) -> int:
    if isinstance(data, bytes):
        return data.count(b"\n", 0, pos) + 1
    # an mmap of a big image: count in slices rather than copying everything before pos
    lines = 1
    step = 16 << 20
    for start in range(0, pos, step):
        lines += data[start : min(pos, start + step)].count(b"\n")
    return lines


def _line_text(data: bytes, pos: int, limit: int = 160) -> str:
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    if end < 0:
        end = len(data)
    return data[start : min(end, start + limit)].decode("utf-8", "replace").strip()



def scan_text(text: str, source: str = "<text>") -> list[Finding]:
    """Scan a text (a file's content, a ``bitbake -e`` dump, a log)."""
    return scan_bytes(text.encode("utf-8", "replace"), source)


def scan_bytes(data: bytes, source: str, *, depth: int = 0) -> list[Finding]:
    """Scan one blob: text or binary; archives are opened and their members scanned."""
    findings: list[Finding] = []
    if data[:4] == ZSTD_MAGIC and not shutil.which("zstd"):
        return [_finding(source, 0, "unreadable", "zstd stream not opened: install zstd", source)]
    members = archive_members(data, source, depth)
    if members is not None:
        for member_source, member_data in members:
            findings.extend(scan_bytes(member_data, member_source, depth=depth + 1))
        return findings
    findings.extend(_scan_pem(data, source))
    findings.extend(_scan_pin_value(data, source))
    findings.extend(_scan_ssh_public(data, source))
    is_text = b"\0" not in data[:8192]
    if is_text:
        findings.extend(_scan_assignments(data, source))
        findings.extend(_scan_key_file_content(data, source))
        findings.extend(spsdk_pin_findings(data, source))
    else:
        findings.extend(_scan_der(data, source))
    return _dedupe(findings)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, int, str]] = set()
    out = []
    for f in sorted(findings, key=lambda f: f.line):
        k = (f.source, f.line, f.id)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


def _scan_pem(data: bytes, source: str) -> list[Finding]:
    out: list[Finding] = []
    pos = data.find(PEM_BEGIN)
    while pos >= 0:
        m = PRIVATE_KEY_HEADER.match(data, pos)
        if m is not None and _B64_BODY.search(data[m.end() : m.end() + 240]) is None:
            m = None  # the header alone (a regex, a doc): no key follows it
        if m is not None:
            label = m.group(1).decode()
            end = data.find(_DASHES + b"END ", m.end())
            block = data[pos : end + 64] if end >= 0 else data[pos : pos + 8192]
            detail = ""
            spki = None
            body = _pem_body(block) if end >= 0 else None
            if body is not None and "OPENSSH" in label:
                spki = spki_from_openssh_private(body)
            elif body is not None and "PGP" not in label:
                spki = spki_from_private_der(body)
            if spki is not None:
                detail = _known_detail(spki) or f"public key sha256 {hashlib.sha256(spki).hexdigest()}"
            size = (end - m.end()) if end >= 0 else 0
            out.append(
                _finding(
                    source,
                    _line_of(data, pos),
                    "private-key",
                    f"{_DASHES.decode()}BEGIN {label}{_DASHES.decode()} [{size} bytes redacted]",
                    body if body else block[:4096],
                    detail=detail,
                )
            )
        else:
            pm = PUBLIC_BLOCK.match(data, pos)
            if pm is not None:
                f = _public_block_finding(pm.group(0), pm.group(1).decode(), source, _line_of(data, pos))
                if f is not None:
                    out.append(f)
        pos = data.find(PEM_BEGIN, pos + 1)
    for m in PUTTY_HEADER.finditer(data):
        out.append(
            _finding(
                source,
                _line_of(data, m.start()),
                "private-key",
                "PuTTY private key file",
                data[m.start() : m.start() + 2048],
            )
        )
    return out


_SSH_PUBLIC_LINE = re.compile(
    rb"(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) (AAAA[A-Za-z0-9+/]+=*)"
)
_SSH_PUBLIC_PREFIX = (b"ssh-ed25519 ", b"ssh-rsa ", b"ecdsa-sha2-nistp")


def _scan_ssh_public(data: bytes, source: str) -> list[Finding]:
    """OpenSSH public keys (authorized_keys, *.pub, known_hosts) whose private half is published."""
    out: list[Finding] = []
    for prefix in _SSH_PUBLIC_PREFIX:
        pos = data.find(prefix)
        while pos >= 0:
            m = _SSH_PUBLIC_LINE.match(data, pos)
            if m is not None:
                try:
                    blob = base64.b64decode(m.group(1))
                except (binascii.Error, ValueError):
                    blob = b""
                spki = spki_from_ssh_public_blob(blob) if blob else None
                known = known_keys.lookup_spki_der(spki) if spki else None
                if known is not None and spki is not None:
                    fp = hashlib.sha256(spki).hexdigest()
                    out.append(
                        _finding(
                            source,
                            _line_of(data, pos),
                            "known-public-key",
                            f"{m.group(0).split(b' ')[0].decode()} key with sha256 {fp[:16]}…",
                            fp,
                            detail=f"{known.description}, found in {known.where()}",
                        )
                    )
            pos = data.find(prefix, pos + 1)
    return out


def _known_detail(spki: bytes) -> str | None:
    known = known_keys.lookup_spki_der(spki)
    if known is None:
        return None
    return f"PUBLISHED KEY: {known.description}, found in {known.where()}"


def _public_block_finding(block: bytes, label: str, source: str, line: int) -> Finding | None:
    body = _pem_body(block)
    if body is None:
        return None
    if label == "PUBLIC KEY":
        spki: bytes | None = body
    elif label == "RSA PUBLIC KEY":
        try:
            _, vs, ve = _tlv(body, 0)
            kids = _children(body, vs, ve)
            spki = _rsa_spki(body[kids[0][1] : kids[0][3]], body[kids[1][1] : kids[1][3]])
        except (ValueError, IndexError):
            return None
    else:
        spki = spki_from_certificate_der(body)
    if spki is None:
        return None
    known = known_keys.lookup_spki_der(spki)
    if known is None:
        return None
    fp = hashlib.sha256(spki).hexdigest()
    return _finding(
        source,
        line,
        "known-public-key",
        f"{label} with sha256 {fp[:16]}…",
        fp,
        detail=f"{known.description}, found in {known.where()}",
    )


def _scan_pin_value(data: bytes, source: str) -> list[Finding]:
    out = []
    pos = data.find(URI_PIN_ATTR)
    while pos >= 0:
        text = _line_text(data, pos)
        m = _PIN_IN_URI.search(text)
        if m is not None and m.group(2):
            out.append(_finding(source, _line_of(data, pos), "pin-value", redact(text), text))
        pos = data.find(URI_PIN_ATTR, pos + 1)
    return out


def _candidate_lines(lowered: bytes) -> list[int]:
    """Start offsets of the lines that hold a keyword (bytes.find per keyword: memchr speed)."""
    starts: set[int] = set()
    for kw in _KEYWORDS:
        pos = lowered.find(kw)
        while pos >= 0:
            starts.add(lowered.rfind(b"\n", 0, pos) + 1)
            end = lowered.find(b"\n", pos)
            if end < 0:
                break
            pos = lowered.find(kw, end)
    return sorted(starts)


def _scan_assignments(data: bytes, source: str) -> list[Finding]:
    """Assignments to secret-like names. Only lines holding a keyword are parsed (fast on big logs)."""
    out = []
    line_no = 1
    counted = 0
    n = len(data)
    for ls in _candidate_lines(data.lower()):
        le = data.find(b"\n", ls)
        if le < 0:
            le = n
        line_no += data.count(b"\n", counted, ls)
        counted = ls
        line = data[ls:le].decode("utf-8", "replace")
        am = ASSIGNMENT.match(line) or DEFINE.match(line)
        if am is None:
            continue
        op = am.groupdict().get("op") or " "
        f = classify_assignment(am.group("name"), am.group("value"), source, line_no, op)
        if f is not None and f.kind != "pin-value":  # pin-value is found by its own scan
            out.append(f)
    return out


def _scan_key_file_content(data: bytes, source: str) -> list[Finding]:
    """A small file holding only ``KEY [IV]`` in hex (swupdate's -K key file, OpenSSL -K)."""
    if len(data) > 512:
        return []
    m = _KEY_FILE_LINE.match(data)
    if m is None:
        return []
    raw = bytes.fromhex(m.group(1).decode())
    return [
        _symmetric_finding(
            raw, f"key file: {m.group(1)[:2].decode()}…[{len(m.group(1))} hex redacted]", source, 1
        )
    ]


def _scan_der(data: bytes, source: str) -> list[Finding]:
    """A file (or archive member) that is itself a DER private key or PKCS#12."""
    if len(data) < 64 or len(data) > 65536 or data[0] != 0x30:
        return []
    try:
        _, vs, ve = _tlv(data, 0)
        if ve != len(data):
            return []
        kids = _children(data, vs, ve)
    except ValueError:
        return []
    if (
        len(kids) >= 2
        and kids[0][0] == 0x02
        and data[kids[0][2] : kids[0][3]] == b"\x03"
        and kids[1][0] == 0x30
    ):
        inner = data[kids[1][2] : kids[1][3]]
        if _PKCS7_DATA_OID in inner[:16]:
            return [_finding(source, 0, "private-key-der", "PKCS#12 file [redacted]", data)]
    spki = spki_from_private_der(data)
    if spki is None:
        return []
    detail = _known_detail(spki) or f"public key sha256 {hashlib.sha256(spki).hexdigest()}"
    return [
        _finding(
            source, 0, "private-key-der", f"DER private key [{len(data)} bytes redacted]", data, detail=detail
        )
    ]



# --- files, trees, allowlists -------------------------------------------------------


class Allowlist:
    """Reviewed findings that are not reported.

    One entry per line (``#`` starts a comment)::

        id 3f2a9c0d1e2b4a5c                 # a finding's id, wherever it appears
        path tests/fixtures/*               # every finding under a path (fnmatch glob)
        path docs/*.md pin-assignment       # only findings of these kinds under a path
    """

    def __init__(self, ids: Iterable[str] = (), paths: Iterable[tuple[str, frozenset[str]]] = ()) -> None:
        self.ids = set(ids)
        self.paths = list(paths)

    @classmethod
    def load(cls, path: str) -> Allowlist:
        from ..errors import ConfigError

        ids: list[str] = []
        paths: list[tuple[str, frozenset[str]]] = []
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise ConfigError(
                f"cannot read allowlist {path}: {exc.strerror}", "check the --allowlist path"
            ) from exc
        for n, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if parts[0] == "id" and len(parts) == 2:
                ids.append(parts[1].lower())
            elif parts[0] == "path" and len(parts) >= 2:
                kinds = frozenset(parts[2:])
                unknown = kinds - set(KINDS)
                if unknown:
                    raise ConfigError(
                        f"{path}:{n}: unknown finding kind {sorted(unknown)[0]!r}",
                        f"kinds are: {', '.join(KINDS)}",
                    )
                paths.append((parts[1], kinds))
            else:
                raise ConfigError(
                    f"{path}:{n}: cannot read allowlist entry {line!r}",
                    "write 'id <finding id>' or 'path <glob> [kind ...]'",
                )
        return cls(ids, paths)

    def allows(self, f: Finding) -> bool:
        if f.id in self.ids:
            return True
        file_part = f.source.split("!", 1)[0]
        for glob, kinds in self.paths:
            if (fnmatch.fnmatch(file_part, glob) or fnmatch.fnmatch(f.source, glob)) and (
                not kinds or f.kind in kinds
            ):
                return True
        return False


SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".ruff_cache", ".pytest_cache", ".mypy_cache"})
MMAP_THRESHOLD = 64 * 1024 * 1024


def iter_files(paths: Iterable[str]) -> Iterator[str]:
    """Regular files under the given paths (files and directories; symlinks are not followed)."""
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if os.path.isfile(full) and not os.path.islink(full):
                        yield full
        else:
            yield p


def scan_file(path: str) -> list[Finding]:
    """Scan one file (archives included). Devices, FIFOs and sockets are not read."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return [_finding(path, 0, "unreadable", "not a regular file: not read", path)]
        size = st.st_size
        if size >= MMAP_THRESHOLD and not _looks_compressed_or_archive(path):
            import mmap

            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _scan_large(mm, path)  # type: ignore[arg-type]
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return [_finding(path, 0, "unreadable", f"cannot read: {exc.strerror}", path)]
    return scan_bytes(data, path)


def _looks_compressed_or_archive(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512)
    return (
        head[:2] == b"\x1f\x8b"
        or head[:3] == b"BZh"
        or head[:6] == b"\xfd7zXZ\x00"
        or head[:5] == b"07070"
        or head[:4] == ZSTD_MAGIC
    )


def _scan_large(mm: bytes, path: str) -> list[Finding]:
    """Big raw images (ext4, wic): only the byte-level scans, without copying the file."""
    return _dedupe(_scan_pem(mm, path) + _scan_pin_value(mm, path) + _scan_ssh_public(mm, path))


def scan_paths(paths: Iterable[str], allowlist: Allowlist | None = None) -> tuple[list[Finding], int, int]:
    """Scan files and trees; (findings not allowlisted, files scanned, bytes scanned)."""
    out: list[Finding] = []
    nfiles = 0
    nbytes = 0
    for path in iter_files(paths):
        nfiles += 1
        try:
            nbytes += os.path.getsize(path)
        except OSError:
            pass
        for f in scan_file(path):
            if allowlist is None or not allowlist.allows(f):
                out.append(f)
    return out, nfiles, nbytes

