"""The leak scanner: files, trees and blobs, the allowlist, the report.

Scans text and binary content (layers, setup scripts, kas files, ``bitbake -e``
dumps, sigdata, logs, deploy directories, unpacked root filesystems, archives,
core files, images) for the kinds of secret ``hsmsign.secrets`` defines. Files are
read as streams, in windows (see "reading" below): memory stays bounded.

Standard library only at module level.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import fnmatch
import hashlib
import io
import os
import re
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
)
from .archives import MAX_DEPTH, SNIFF_LEN, Budget, Refused, Stream, members, sniff
from .keys import (
    _children,
    _pem_body,
    _rsa_spki,
    _tlv,
    find_der_private_keys,
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
    return _scan_top(Stream(io.BytesIO(data), source), source, depth)


# --- reading: containers, encodings, windows ------------------------------------------
#
# A file is read as a stream: containers (archives.py) hand their members on as streams,
# and content is scanned in windows of WINDOW bytes, each starting with the last OVERLAP
# bytes (or more, back to a line start) of the one before. Memory stays bounded by a few
# windows whatever the size of the file or of what it unpacks to.

WINDOW = 16 << 20
OVERLAP = 1 << 20
MAX_DER_CANDIDATES = 4096  # DER headers parsed per window: bounded work on hostile input
_NUL_TO_NL = bytes.maketrans(b"\0", b"\n")


class _Scan:
    """The findings of one scanned file and what it may still cost."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.budget = Budget()
        self.der_capped = False

    def warn(self, source: str, message: str) -> None:
        self.findings.append(_finding(source, 0, "unreadable", message, source))


def _scan_top(st: Stream, source: str, depth: int = 0) -> list[Finding]:
    scan = _Scan()
    try:
        _scan_stream(st, source, depth, scan)
    except Refused as exc:  # the decompression budget, or the file itself could not be read
        scan.warn(exc.source or source, str(exc))
    except OSError as exc:
        scan.warn(source, f"cannot read: {exc.strerror or exc}")
    return _dedupe(scan.findings)


def _scan_stream(st: Stream, source: str, depth: int, scan: _Scan) -> None:
    kind = sniff(st.peek(SNIFF_LEN))
    if kind is None:
        _scan_content(st, source, scan)
        return
    if depth >= MAX_DEPTH:
        scan.warn(source, f"{kind} nested deeper than {MAX_DEPTH} containers: not opened, scanned as it is")
        _scan_content(st, source, scan)
        return
    try:
        for member_source, member in members(kind, st, source, scan.budget):
            if isinstance(member, str):
                scan.warn(member_source, member)
                continue
            try:
                _scan_stream(member, member_source, depth + 1, scan)
            finally:
                member.close()
    except Refused as exc:
        if exc.exhausted:
            raise
        scan.warn(exc.source, str(exc))


def _text_encoding(head: bytes) -> str | None:
    """UTF-16 or UTF-32 text (by its byte-order mark, or by where its zero bytes are)."""
    if head[:4] in (b"\xff\xfe\0\0", b"\0\0\xfe\xff"):
        return "utf-32"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    n = len(head) & ~3
    if n < 8:
        return None
    zeros = [head[i:n:4].count(0) * 4 / n for i in range(4)]
    enc = None
    if n >= 16 and min(zeros[1:]) > 0.9 and zeros[0] < 0.1:
        enc = "utf-32-le"
    elif n >= 16 and min(zeros[:3]) > 0.9 and zeros[3] < 0.1:
        enc = "utf-32-be"
    elif min(zeros[1], zeros[3]) > 0.9 and max(zeros[0], zeros[2]) < 0.1:
        enc = "utf-16-le"
    elif min(zeros[0], zeros[2]) > 0.9 and max(zeros[1], zeros[3]) < 0.1:
        enc = "utf-16-be"
    if enc is None:
        return None
    text = head[:n].decode(enc, "replace")
    printable = sum(1 for c in text if c.isprintable() or c in "\t\r\n")
    return enc if printable >= 0.9 * len(text) else None


def _decoded(st: Stream, encoding: str) -> Iterator[bytes]:
    dec = codecs.getincrementaldecoder(encoding)(errors="replace")
    while True:
        raw = st.read(1 << 20)
        text = dec.decode(raw, final=not raw)
        if text:
            yield text.encode("utf-8", "replace")
        if not raw:
            return


def _scan_content(st: Stream, source: str, scan: _Scan) -> None:
    """Scan a stream's content window by window.

    In text that holds NUL bytes (environment dumps, ``find -print0`` lists) a NUL ends
    a line as a newline does, and line numbers count both; in binary content (images,
    executables, core files) they count newlines only.
    """
    encoding = _text_encoding(st.peek(4096))
    read = st.read if encoding is None else Stream.of_chunks(_decoded(st, encoding)).read
    carry = b""
    lines_before = 0  # line ends before the window
    offset = 0  # where the window starts in the (decoded) stream
    while True:
        failure = None
        try:
            chunk = read(WINDOW)
        except Refused as exc:  # scan what came before, then report it
            chunk, failure = b"", exc
        window = carry + chunk if carry else chunk
        last = len(chunk) < WINDOW
        if not window:
            if failure is not None:
                raise failure
            break
        binary = b"\0" in window and _looks_binary(window)
        view = window.translate(_NUL_TO_NL) if b"\0" in window and not binary else window
        cut = len(view) if last else _cut(view)
        whole = offset == 0 and last
        if binary:
            found = _scan_binary(window, source, whole, encoding is None, offset, scan)
        else:
            found = _scan_text_window(window, view, source, whole, encoding is None, offset, scan)
        lines_in = view.count(b"\n", 0, cut) if not last else 0
        if not last:
            limit = lines_in if view[cut - 1 : cut] == b"\n" else lines_in + 1
            found = [f for f in found if f.line <= limit]  # the rest is seen again in the next window
        for f in found:
            scan.findings.append(_at_line(f, f.line + lines_before) if f.line and lines_before else f)
        if failure is not None:
            raise failure
        if last:
            break
        lines_before += lines_in
        offset += cut
        carry = window[cut:]


def _cut(view: bytes) -> int:
    """Where the next window starts: a line start OVERLAP bytes or a little more from the end."""
    target = len(view) - OVERLAP
    nl = view.rfind(b"\n", max(0, target - OVERLAP), target)
    return nl + 1 if nl >= 0 else target


def _at_line(f: Finding, line: int) -> Finding:
    import dataclasses

    return dataclasses.replace(f, line=line)


def _scan_text_window(
    window: bytes, view: bytes, source: str, whole: bool, raw: bool, offset: int, scan: _Scan
) -> list[Finding]:
    """Text: ``view`` is the window with NULs turned into newlines (or the window itself)."""
    findings: list[Finding] = []
    findings.extend(_scan_pem(view, source))
    findings.extend(_scan_pin_value(view, source))
    findings.extend(_scan_ssh_public(view, source))
    findings.extend(_scan_assignments(view, source))
    if whole and view is window:
        findings.extend(_scan_key_file_content(view, source))
    if raw and view is not window:  # every DER private key holds a zero byte
        findings.extend(_scan_der(window, view, source, whole, offset, scan))
    return findings


def _scan_binary(
    window: bytes, source: str, whole: bool, raw: bool, offset: int, scan: _Scan
) -> list[Finding]:
    """Binary: runs of 4 KiB or more of zero bytes (free space in an image) are left out first."""
    data, segments = _without_zero_runs(window)
    findings: list[Finding] = []
    findings.extend(_scan_pem(data, source))
    findings.extend(_scan_pin_value(data, source))
    findings.extend(_scan_ssh_public(data, source))
    findings.extend(_scan_records(data, source))
    if raw:
        findings.extend(_scan_der(data, data, source, whole, offset, scan, segments))
    return findings


_ZERO_RUN = bytes(4096)


def _without_zero_runs(window: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """The window without its long zero runs (they hold no newline, so line numbers stay), and
    the (offset in the result, offset in the window) of each piece kept."""
    z = window.find(_ZERO_RUN)
    if z < 0:
        return window, [(0, 0)]
    pieces = []
    segments = []
    pos = kept = 0
    while z >= 0:
        pieces.append(window[pos:z])
        segments.append((kept, pos))
        kept += z - pos + 16
        pos = z + 4096
        while window[pos : pos + 4096] == _ZERO_RUN:
            pos += 4096
        tail = window[pos : pos + 4096]
        pos += len(tail) - len(tail.lstrip(b"\0"))
        z = window.find(_ZERO_RUN, pos)
    pieces.append(window[pos:])
    segments.append((kept, pos))
    return bytes(16).join(pieces), segments


_CONTROL_BYTES = bytes(b for b in range(32) if b not in (0, 9, 10, 11, 12, 13)) + b"\x7f"


def _looks_binary(window: bytes) -> bool:
    """Binary (an image, an executable, a core file) rather than text with a few NULs, from a sample."""
    step = max(512, len(window) // 64)
    sample = b"".join(window[i : i + 512] for i in range(0, len(window), step))
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    return controls * 100 > len(sample) or sample.count(0) * 4 > len(sample)


# ``NAME=value`` records inside binary data: an environment block in a core file, a string
# table. Found from each ``=`` after two name characters (a literal search with a
# look-behind: fast even on random data), then the name before it must be secret-like.
_RECORD_EQ = re.compile(rb"=(?:(?<=[A-Za-z0-9_.\-]{2}=)|(?<=[A-Za-z0-9_.\-]{2}[ \t]=))")
_NAME_BYTE = bytes(1 if chr(b).isalnum() or chr(b) in "_.-" else 0 for b in range(128)) + bytes(128)
_KEYWORD = re.compile(b"|".join(_KEYWORDS))
# A printf conversion in the value: a program's format string (``password=%s``), not a secret.
_PRINTF = re.compile(rb"%[-+ #0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspn]")


def _scan_records(view: bytes, source: str) -> list[Finding]:
    """Assignments in binary content: ``NAME=value`` up to the next NUL or newline."""
    starts = []
    lines = []
    for m in _RECORD_EQ.finditer(view):
        eq = m.start()
        q = eq - 1 if view[eq - 1] in (9, 32) else eq
        start = q - 2
        while start > 0 and q - start < 64 and _NAME_BYTE[view[start - 1]]:
            start -= 1
        # the name starts a record (not ``?pin-value=`` inside a URI: the URI scan reports that)
        before = view[start - 1] if start else 0
        starts_record = before < 0x21 or before > 0x7E or before in b"\"'"
        if starts_record and _KEYWORD.search(view[start:q].lower()):
            limit = min(len(view), eq + 4096)
            ends = [e for e in (view.find(b"\0", eq, limit), view.find(b"\n", eq, limit)) if e >= 0]
            line = view[start : min(ends) if ends else limit]
            if not _PRINTF.search(line, eq - start):
                starts.append(start)
                lines.append(line)
    if not lines:
        return []
    found = _scan_assignments(b"\n".join(lines), source)
    return [_at_line(f, view.count(b"\n", 0, starts[f.line - 1]) + 1) for f in found]


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


def _scan_der(
    data: bytes,
    view: bytes,
    source: str,
    whole: bool,
    offset: int,
    scan: _Scan,
    segments: list[tuple[int, int]] | None = None,
) -> list[Finding]:
    """DER private keys and PKCS#12 bundles: a whole file, or embedded at any offset in a blob.

    ``segments`` maps offsets in ``data`` back to the window (see ``_without_zero_runs``).
    """
    hits, tried = find_der_private_keys(data, MAX_DER_CANDIDATES)
    if tried >= MAX_DER_CANDIDATES and not scan.der_capped:
        scan.der_capped = True
        scan.warn(source, f"more than {MAX_DER_CANDIDATES} DER-like headers in 16 MiB: not all were checked")
    out = []
    for start, end, what in hits:
        der = data[start:end]
        spki = spki_from_private_der(der) if "private key" in what and "encrypted" not in what else None
        detail = ""
        if spki is not None:
            detail = _known_detail(spki) or f"public key sha256 {hashlib.sha256(spki).hexdigest()}"
        at = start
        if segments:
            kept, orig = segments[bisect.bisect_right(segments, (start, 1 << 62)) - 1]
            at = orig + start - kept
        alone = whole and start == 0 and end == len(data) and (not segments or len(segments) == 1)
        where = "" if alone else f" at byte {offset + at}"
        out.append(
            _finding(
                source,
                0 if alone else _line_of(view, start),
                "private-key-der",
                f"DER {what}{where} [{len(der)} bytes redacted]",
                der,
                detail=detail,
            )
        )
    return out


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
        if not stat.S_ISREG(os.stat(path).st_mode):
            return [_finding(path, 0, "unreadable", "not a regular file: not read", path)]
        with open(path, "rb") as fh:
            return _scan_top(Stream(fh, path), path)
    except OSError as exc:
        return [_finding(path, 0, "unreadable", f"cannot read: {exc.strerror or exc}", path)]


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

