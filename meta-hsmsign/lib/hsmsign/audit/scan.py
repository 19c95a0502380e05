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
import dataclasses
import fnmatch
import hashlib
import io
import os
import re
import stat
from collections.abc import Iterable, Iterator

from .. import known_keys
from ..der import tlv
from ..secrets import (
    _DASHES,
    _KEY_FILE_LINE,
    _KEYWORDS,
    AGE_SECRET_KEY,
    ID_PREFIX,
    KINDS,
    PEM_BEGIN,
    PIN_TOOLS,
    PRIVATE_KEY_HEADER,
    PUBLIC_HEADER,
    PUTTY_HEADER,
    REDACTED,
    Finding,
    _finding,
    _looks_like_key_body,
    _symmetric_finding,
    b64url,
    base64_pems,
    classify_assignment,
    jwk_objects,
    jwk_secret,
    line_assignments,
    location_id,
    pin_arguments,
    pin_value_excerpt,
    pin_value_matches,
    spsdk_pin_findings,
    ssh2_blocks,
)
from .archives import MAX_DEPTH, SNIFF_LEN, Budget, Refused, Stream, members, sniff
from .keys import (
    _DER_ED448_OID,
    _DER_ED25519_OID,
    _SSH_CURVES,
    _children,
    _ec_spki,
    _rsa_spki,
    _tlv,
    find_der_private_keys,
    spki_from_certificate_der,
    spki_from_openssh_private,
    spki_from_private_der,
    spki_from_ssh_public_blob,
)


def _newlines(data: bytes, start: int, end: int) -> int:
    if isinstance(data, bytes):
        return data.count(b"\n", start, end)
    # an mmap of a big image: count in slices rather than copying everything before pos
    lines = 0
    step = 16 << 20
    for at in range(start, end, step):
        lines += data[at : min(end, at + step)].count(b"\n")
    return lines


def _line_of(data: bytes, pos: int) -> int:
    return _newlines(data, 0, pos) + 1


class _Lines:
    """Line numbers of offsets asked in increasing order: one pass over the data, not one per finding."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.line = 1

    def __call__(self, pos: int) -> int:
        if pos < self.pos:
            self.pos, self.line = 0, 1
        self.line += _newlines(self.data, self.pos, pos)
        self.pos = pos
        return self.line


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
    findings.extend(_scan_wrapped_keys(view, source))
    findings.extend(spsdk_pin_findings(view, source))
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
    findings.extend(_scan_wrapped_keys(data, source))
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
        # the name starts a record (not a ``pin-value`` attribute inside a URI: the URI scan reports that)
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
    seen: set[tuple[str, int, str, str]] = set()
    out = []
    for f in sorted(findings, key=lambda f: f.line):
        k = (f.source, f.line, f.kind, f.excerpt)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


_PEM_MAX = 65536  # the longest PEM block looked at (an RSA-16384 key is 13 KB)
_PEM_BODY_DROP = b" \t\r\n\"'\\"


def _pem_body(between: bytes) -> bytes | None:
    """The decoded body of a PEM block at any line width, also in a string literal (``\\n``).

    None when it is encrypted (RFC 1421 ``Proc-Type``) or not base64.
    """
    if b"Proc-Type" in between and b"ENCRYPTED" in between:
        return None
    lines = between.replace(b"\\r", b"").replace(b"\\n", b"\n").splitlines()
    body = b"".join(ln for ln in lines if b":" not in ln).translate(None, _PEM_BODY_DROP)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None


def _scan_pem(data: bytes, source: str) -> list[Finding]:
    out: list[Finding] = []
    line_of = _Lines(data)
    pos = data.find(PEM_BEGIN)
    while pos >= 0:
        nxt = pos + 1
        m = PRIVATE_KEY_HEADER.match(data, pos)
        if m is not None and not _looks_like_key_body(bytes(data[m.end() : m.end() + 400])):
            m = None  # the header alone (a regex, a doc): no key follows it
        if m is not None:
            label = m.group(1).decode()
            end = data.find(_DASHES + b"END ", m.end(), m.end() + _PEM_MAX)
            detail = ""
            spki = None
            body = _pem_body(bytes(data[m.end() : end])) if end >= 0 else None
            if body and "OPENSSH" in label:
                spki = spki_from_openssh_private(body)
            elif body and "PGP" not in label:
                spki = spki_from_private_der(body)
            if spki is not None:
                detail = _known_detail(spki) or f"public key sha256 {hashlib.sha256(spki).hexdigest()}"
            out.append(
                _finding(
                    source,
                    line_of(pos),
                    "private-key",
                    f"{_DASHES.decode()}BEGIN {label}{_DASHES.decode()} {REDACTED}",
                    detail=detail,
                )
            )
            if end >= 0:
                nxt = end
        else:
            pm = PUBLIC_HEADER.match(data, pos)
            if pm is not None:
                label = pm.group(1)
                end = data.find(_DASHES + b"END " + label + _DASHES, pm.end() + 16, pm.end() + 16384)
                if end >= 0:
                    body = _pem_body(bytes(data[pm.end() : end]))
                    f = _public_block_finding(body, label.decode(), source, line_of(pos)) if body else None
                    if f is not None:
                        out.append(f)
                    nxt = end
        pos = data.find(PEM_BEGIN, nxt)
    pos = data.find(b"PuTTY-User-Key-File-")
    while pos >= 0:
        if PUTTY_HEADER.match(data, pos):
            out.append(_finding(source, line_of(pos), "private-key", "PuTTY private key file"))
        pos = data.find(b"PuTTY-User-Key-File-", pos + 1)
    return out


_SSH_PUBLIC_LINE = re.compile(
    rb"(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) (AAAA[A-Za-z0-9+/]+=*)"
)
_SSH_PUBLIC_PREFIX = (b"ssh-", b"ecdsa-sha2-nistp")  # ssh-ed25519, ssh-rsa: one pass


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


def _public_block_finding(body: bytes, label: str, source: str, line: int) -> Finding | None:
    """A public key or certificate (DER ``body``) whose private half is published, or None."""
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
    return _known_public_finding(spki, label, source, line) if spki is not None else None


def _known_public_finding(spki: bytes, label: str, source: str, line: int) -> Finding | None:
    """A ``known-public-key`` finding when the SubjectPublicKeyInfo is on the published list."""
    known = known_keys.lookup_spki_der(spki)
    if known is None:
        return None
    fp = hashlib.sha256(spki).hexdigest()
    return _finding(
        source,
        line,
        "known-public-key",
        f"{label} with sha256 {fp[:16]}…",
        detail=f"{known.description}, found in {known.where()}",
    )


def _scan_pin_value(data: bytes, source: str) -> list[Finding]:
    """A ``pin-value`` attribute in any case, anywhere in a line of any length; the excerpt shows no value."""
    line_of = _Lines(data)
    return [
        _finding(source, line_of(start), "pin-value", pin_value_excerpt(data, start))
        for start, _ in pin_value_matches(data)
    ]


# lines naming a tool whose "-p" takes a PIN are parsed too ("pkcs11-tool -l -p PIN" holds no
# other keyword); the long options (--pin, --so-pin, --password) hold one themselves
_TOOL_KEYWORDS = (b"pkcs11-tool", b"yubihsm")
_MAX_CONTINUATION = 32
_OPTION_HINTS = ("pass", "pin", "puk", *PIN_TOOLS)


def _candidate_lines(lowered: bytes) -> list[int]:
    """Start offsets of the lines that hold a keyword (bytes.find per keyword: memchr speed)."""
    starts: set[int] = set()
    for kw in _KEYWORDS + _TOOL_KEYWORDS:
        pos = lowered.find(kw)
        while pos >= 0:
            starts.add(lowered.rfind(b"\n", 0, pos) + 1)
            end = lowered.find(b"\n", pos)
            if end < 0:
                break
            pos = lowered.find(kw, end)
    return sorted(starts)


def _scan_assignments(data: bytes, source: str) -> list[Finding]:
    """Assignments to secret-like names and PINs on command lines, in lines of any length.

    Only lines holding a keyword are parsed (fast on big logs); each is parsed whole.
    """
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
        for name, value, op, at_start in line_assignments(line):
            f = classify_assignment(name, value, source, line_no, op)
            # pin-value is found by its own scan
            if f is not None and f.kind != "pin-value" and (at_start or f.kind != "key-file-variable"):
                out.append(f)
        low = line.lower()
        if "-" in line and any(t in low for t in _OPTION_HINTS):
            out.extend(_pin_arguments(data, ls, le, line, source, line_no))
    return out


def _pin_arguments(data: bytes, ls: int, le: int, line: str, source: str, line_no: int) -> list[Finding]:
    """PINs given as option values in the command this line is part of (backslash continuations)."""
    logical = line
    first = line_no
    # an option line that continues a command: the tool is named on a line before it
    for _ in range(_MAX_CONTINUATION):
        if ls <= 0 or not logical.lstrip().startswith("-") or len(logical) > 4096:
            break
        prev = data.rfind(b"\n", 0, ls - 1) + 1
        text = data[prev : ls - 1].decode("utf-8", "replace")
        if not text.rstrip().endswith("\\"):
            break
        logical = text + "\n" + logical
        first -= 1
        ls = prev
    for _ in range(_MAX_CONTINUATION):
        if not logical.rstrip().endswith("\\") or le >= len(data) or len(logical) > 4096:
            break
        nxt = data.find(b"\n", le + 1)
        nxt = len(data) if nxt < 0 else nxt
        logical += "\n" + data[le + 1 : nxt].decode("utf-8", "replace")
        le = nxt
    return [
        _finding(source, first + logical.count("\n", 0, at), "pin-argument", excerpt)
        for at, excerpt in pin_arguments(logical)
    ]


def _scan_key_file_content(data: bytes, source: str) -> list[Finding]:
    """A small file holding only ``KEY [IV]`` in hex (swupdate's -K key file, OpenSSL -K)."""
    if len(data) > 512:
        return []
    m = _KEY_FILE_LINE.match(data)
    if m is None:
        return []
    raw = bytes.fromhex(m.group(1).decode())
    return [_symmetric_finding(raw, f"key file: {REDACTED}", source, 1)]


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


# --- keys in other wrappings: SSH2, age, JWK, base64 of PEM ---------------------------


def _scan_wrapped_keys(data: bytes, source: str) -> list[Finding]:
    """Key material that is not a PEM block: SSH2 (RFC 4716), age, JWK, base64-encoded PEM."""
    out: list[Finding] = []
    if b"BEGIN SSH2 " in data:
        line_of = _Lines(data)
        for pos, label, body in ssh2_blocks(data):
            if "PRIVATE" in label:
                excerpt = f"---- BEGIN SSH2 {label} ---- {REDACTED}"
                out.append(_finding(source, line_of(pos), "private-key", excerpt))
                continue
            spki = spki_from_ssh_public_blob(body) if body else None
            f = _known_public_finding(spki, f"SSH2 {label}", source, line_of(pos)) if spki else None
            if f is not None:
                out.append(f)
    pos = data.find(b"AGE-SECRET-KEY-1")
    if pos >= 0:
        line_of = _Lines(data)
        while pos >= 0:
            if AGE_SECRET_KEY.match(data, pos):
                out.append(_finding(source, line_of(pos), "private-key", f"AGE-SECRET-KEY-1 {REDACTED}"))
            pos = data.find(b"AGE-SECRET-KEY-1", pos + 1)
    if b"kty" in data:
        out.extend(_scan_jwk(data, source))
    if b"LS0t" in data:
        line_of = _Lines(data)
        for pos, decoded in base64_pems(data):
            line = line_of(pos)
            for f in _scan_pem(decoded, source):
                out.append(_finding(source, line, f.kind, "base64 of " + f.excerpt, detail=f.detail))
    return out


_JWK_CURVES = {
    "P-256": _SSH_CURVES[b"nistp256"],
    "P-384": _SSH_CURVES[b"nistp384"],
    "P-521": _SSH_CURVES[b"nistp521"],
}


def _unsigned(raw: bytes) -> bytes:
    raw = raw.lstrip(b"\0") or b"\0"
    return b"\0" + raw if raw[0] & 0x80 else raw


def _jwk_spki(obj: dict[str, object]) -> bytes | None:
    """The DER SubjectPublicKeyInfo of an RSA, EC or OKP JWK (RFC 7518 section 6, RFC 8037)."""
    kty = obj.get("kty")
    if kty == "RSA":
        n, e = b64url(obj.get("n")), b64url(obj.get("e"))
        return _rsa_spki(tlv(0x02, _unsigned(n)), tlv(0x02, _unsigned(e))) if n and e else None
    if kty == "EC":
        curve = _JWK_CURVES.get(str(obj.get("crv")))
        x, y = b64url(obj.get("x")), b64url(obj.get("y"))
        return _ec_spki(curve, b"\x04" + x + y) if curve and x and y else None
    if kty == "OKP":
        oid = {"Ed25519": _DER_ED25519_OID, "Ed448": _DER_ED448_OID}.get(str(obj.get("crv")))
        x = b64url(obj.get("x"))
        return tlv(0x30, tlv(0x30, tlv(0x06, oid)) + tlv(0x03, b"\0" + x)) if oid and x else None
    return None


def _scan_jwk(data: bytes, source: str) -> list[Finding]:
    """JSON Web Keys: RSA/EC/OKP with their private part ("d"), oct keys ("k"), published public keys."""
    out: list[Finding] = []
    line_of = _Lines(data)
    for pos, obj in jwk_objects(data):
        what = jwk_secret(obj)
        kty = str(obj.get("kty"))
        if what == "symmetric":
            raw = b64url(obj.get("k"))
            if raw:
                out.append(_symmetric_finding(raw, f'JWK oct key "k": "{REDACTED}"', source, line_of(pos)))
            continue
        spki = _jwk_spki(obj)
        if what == "private":
            detail = ""
            if spki is not None:
                detail = _known_detail(spki) or f"public key sha256 {hashlib.sha256(spki).hexdigest()}"
            out.append(
                _finding(source, line_of(pos), "private-key", f'JWK {kty} private key "d": "{REDACTED}"',
                         detail=detail)
            )
        elif spki is not None:
            f = _known_public_finding(spki, f"JWK {kty} public key", source, line_of(pos))
            if f is not None:
                out.append(f)
    return out


# --- files, trees, allowlists -------------------------------------------------------


class Allowlist:
    """Reviewed findings that are not reported.

    One entry per line (``#`` starts a comment)::

        id loc-3f2a9c0d1e2b4a5c             # one finding: its kind and place (see location_id)
        path tests/fixtures/*               # every finding under a path (fnmatch glob)
        path docs/*.md pin-assignment       # only findings of these kinds under a path

    An ``id`` without the ``loc-`` prefix is an old id made from the secret itself: it
    matches nothing and is reported in ``warnings`` (it can reveal a short PIN).
    """

    def __init__(
        self,
        ids: Iterable[str] = (),
        paths: Iterable[tuple[str, frozenset[str]]] = (),
        warnings: Iterable[str] = (),
    ) -> None:
        self.ids = set(ids)
        self.paths = list(paths)
        self.warnings = list(warnings)

    @classmethod
    def load(cls, path: str) -> Allowlist:
        from ..errors import ConfigError

        ids: list[str] = []
        paths: list[tuple[str, frozenset[str]]] = []
        warnings: list[str] = []
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
            if parts[0] == "id" and len(parts) == 2 and not parts[1].lower().startswith(ID_PREFIX):
                warnings.append(
                    f"{path}:{n}: 'id {parts[1]}' is an old-style id, made from the secret itself: it "
                    "matches nothing now and can reveal a short PIN; delete it, allowlist the 'loc-' id "
                    "that audit prints, and change the PIN or key if this file was ever shared"
                )
            elif parts[0] == "id" and len(parts) == 2:
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
        return cls(ids, paths, warnings)

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


def id_root(path: str) -> str:
    """The directory ids name files relative to: the enclosing git work tree, else the scanned directory.

    So ``hsmsign audit .`` and ``hsmsign audit conf/local.conf`` give a finding the same
    id, wherever the checkout is; a scanned file outside a repository counts from its directory.
    """
    start = os.path.abspath(path)
    base = start if os.path.isdir(start) else os.path.dirname(start)
    probe = base
    while True:
        if os.path.exists(os.path.join(probe, ".git")):
            return probe
        parent = os.path.dirname(probe)
        if parent == probe:
            return base
        probe = parent


def _placed(f: Finding, path: str, rel: str) -> Finding:
    """The finding with its id computed from the path relative to the id root (archive members kept)."""
    member = f.source[len(path) :] if f.source.startswith(path) else ""
    return dataclasses.replace(f, id=location_id(f.kind, rel + member, f.line))


def scan_paths(paths: Iterable[str], allowlist: Allowlist | None = None) -> tuple[list[Finding], int, int]:
    """Scan files and trees; (findings not allowlisted, files scanned, bytes scanned)."""
    out: list[Finding] = []
    nfiles = 0
    nbytes = 0
    for top in paths:
        root = id_root(top)
        for path in iter_files([top]):
            nfiles += 1
            try:
                nbytes += os.path.getsize(path)
            except OSError:
                pass
            rel = os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/")
            for f in scan_file(path):
                f = _placed(f, path, rel)
                if allowlist is None or not allowlist.allows(f):
                    out.append(f)
    return out, nfiles, nbytes
