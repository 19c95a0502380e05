"""DER, the few parts hsmsign writes and reads without asn1crypto.

``hsmsign pe sign`` builds and checks its Authenticode signature, reads its certificate and
fingerprints its key with these alone: importing asn1crypto (and the python-pkcs11 helpers
that need it) was a quarter of that command's cold start. Everything else (CMS for swupdate,
RAUC and dm-verity, ``pe verify`` of images signed elsewhere) still reads DER with asn1crypto.

Writing: :func:`tlv`, :func:`oid`, :func:`integer`, :func:`time`. Reading: :func:`element`
and :func:`children` walk DER with definite lengths and one-byte tags; with ``strict`` (the
default) a length must be written in the fewest bytes, as DER wants and cryptography's
reader checks. Malformed input raises ``ValueError``.
"""

from __future__ import annotations

import datetime
from typing import NamedTuple

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = b"\x05\x00"
OID = 0x06
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18


def length(n: int) -> bytes:
    """A DER length in the fewest bytes."""
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + length(len(body)) + body


def oid(dotted: str) -> bytes:
    """The DER OBJECT IDENTIFIER of ``1.2.840...`` (tag and length included)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0:
        raise ValueError(f"not an object identifier: {dotted}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(OID, bytes(out))


def integer(value: int) -> bytes:
    """The DER INTEGER of ``value`` (two's complement, fewest bytes)."""
    size = (value if value >= 0 else ~value).bit_length() // 8 + 1
    return tlv(INTEGER, value.to_bytes(size, "big", signed=True))


def time(when: datetime.datetime) -> bytes:
    """RFC 5652 11.3 (and RFC 5280 4.1.2.5): UTCTime for 1950 to 2049, GeneralizedTime
    otherwise, in UTC; a fraction of a second only in GeneralizedTime, as asn1crypto writes."""
    if when.tzinfo is None:
        raise ValueError("a signing time needs a time zone")
    when = when.astimezone(datetime.timezone.utc)
    if 1950 <= when.year <= 2049:
        return tlv(UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    text = f"{when.year:04d}" + when.strftime("%m%d%H%M%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return tlv(GENERALIZED_TIME, (text + "Z").encode("ascii"))


class Element(NamedTuple):
    """One TLV in a buffer: its tag, where it begins, where its contents begin and its end."""

    tag: int
    offset: int
    start: int
    end: int


def element(buf: bytes, offset: int = 0, end: int | None = None, *, strict: bool = True) -> Element:
    """The TLV at ``offset``, which must end by ``end`` (the buffer's end by default)."""
    limit = len(buf) if end is None else end
    if offset + 2 > limit:
        raise ValueError("DER element cut short")
    tag = buf[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("DER tag of more than one byte")
    first = buf[offset + 1]
    if first < 0x80:
        start, size = offset + 2, first
    else:
        n = first & 0x7F
        if n == 0 or n > 4:
            raise ValueError("indefinite or oversized DER length")
        if offset + 2 + n > limit:
            raise ValueError("DER length cut short")
        size = int.from_bytes(buf[offset + 2 : offset + 2 + n], "big")
        if strict and (size < 0x80 or buf[offset + 2] == 0):
            raise ValueError("DER length not in its fewest bytes")
        start = offset + 2 + n
    if start + size > limit:
        raise ValueError("DER length past the end")
    return Element(tag, offset, start, start + size)


def whole(buf: bytes, tag: int) -> Element:
    """``buf`` as exactly one element with ``tag``, nothing after it."""
    el = element(buf)
    if el.tag != tag or el.end != len(buf):
        raise ValueError(f"not one DER element with tag {tag:#04x}")
    return el


def children(buf: bytes, parent: Element, *, strict: bool = True) -> list[Element]:
    """The elements inside a constructed ``parent``, in order."""
    out = []
    offset = parent.start
    while offset < parent.end:
        el = element(buf, offset, parent.end, strict=strict)
        out.append(el)
        offset = el.end
    return out


def fields(buf: bytes, parent: Element, *tags: int) -> list[Element]:
    """The children of ``parent``, which must be exactly ``tags`` in that order."""
    found = children(buf, parent)
    if tuple(el.tag for el in found) != tags:
        raise ValueError(f"unexpected DER fields in a {parent.tag:#04x} element")
    return found


def raw(buf: bytes, el: Element) -> bytes:
    """The element's bytes, tag and length included."""
    return bytes(buf[el.offset : el.end])


def contents(buf: bytes, el: Element) -> bytes:
    return bytes(buf[el.start : el.end])


def read_integer(buf: bytes, el: Element) -> int:
    """A DER INTEGER's value; its contents must be in the fewest bytes."""
    body = buf[el.start : el.end]
    if el.tag != INTEGER or not body:
        raise ValueError("not a DER INTEGER")
    if len(body) > 1 and (body[0] == 0 and body[1] < 0x80 or body[0] == 0xFF and body[1] >= 0x80):
        raise ValueError("DER INTEGER not in its fewest bytes")
    return int.from_bytes(body, "big", signed=True)
