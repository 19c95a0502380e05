"""``hsmsign.der``: what it writes is asn1crypto's DER, byte for byte, and its reader refuses
what is not DER (or, with ``strict=False``, not BER with definite lengths)."""

from __future__ import annotations

import datetime
import random

import pytest
from asn1crypto import cms as acms
from asn1crypto import core
from hsmsign import der

UTC = datetime.timezone.utc


@pytest.mark.parametrize(
    "dotted",
    ["1.2.840.113549.1.7.2", "2.16.840.1.101.3.4.2.1", "1.3.6.1.4.1.311.2.1.4", "0.0", "2.999.1", "1.39.128"],
)
def test_oid_is_asn1cryptos(dotted: str) -> None:
    assert der.oid(dotted) == core.ObjectIdentifier(dotted).dump()


@pytest.mark.parametrize("dotted", ["1", "3.1", "1.40", "1.2.-3", "x.y"])
def test_what_is_no_oid_is_refused(dotted: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - int() or der.oid(), both ValueError
        der.oid(dotted)


def test_integer_and_length_are_asn1cryptos() -> None:
    rnd = random.Random(7)
    values = [0, 1, -1, 127, 128, -128, -129, 255, 256, 65535, 1 << 2047, -(1 << 2047)]
    values += [rnd.randrange(-(1 << 4100), 1 << 4100) >> rnd.randrange(4100) for _ in range(2000)]
    for value in values:
        assert der.integer(value) == core.Integer(value).dump(), value
    for size in (0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 24):
        assert der.tlv(0x04, bytes(size)) == core.OctetString(bytes(size)).dump(), size


@pytest.mark.parametrize(
    "when",
    [
        datetime.datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC),
        datetime.datetime(1950, 1, 1, tzinfo=UTC),
        datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime.datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime.datetime(2050, 1, 1, tzinfo=UTC),
        datetime.datetime(2050, 1, 1, 0, 0, 0, 250000, tzinfo=UTC),
        datetime.datetime(2026, 6, 1, 14, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_time_is_what_asn1crypto_writes_for_cms(when: datetime.datetime) -> None:
    kind = "utc_time" if 1950 <= when.astimezone(UTC).year <= 2049 else "generalized_time"
    assert der.time(when) == acms.Time({kind: when}).dump()


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        der.time(datetime.datetime(2026, 1, 1))  # noqa: DTZ001 - the case under test


def test_the_reader_walks_what_the_writer_wrote() -> None:
    blob = der.tlv(der.SEQUENCE, der.integer(5) + der.tlv(der.OCTET_STRING, bytes(300)) + der.NULL)
    top = der.whole(blob, der.SEQUENCE)
    number, octets, null = der.fields(blob, top, der.INTEGER, der.OCTET_STRING, 0x05)
    assert der.read_integer(blob, number) == 5
    assert der.contents(blob, octets) == bytes(300)
    assert der.raw(blob, null) == der.NULL
    with pytest.raises(ValueError, match="unexpected DER fields"):
        der.fields(blob, top, der.INTEGER, der.OCTET_STRING)
    with pytest.raises(ValueError, match="not one DER element"):
        der.whole(blob + b"\x00", der.SEQUENCE)


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (b"\x04\x81\x05hello", "fewest bytes"),  # a long form for a short length
        (b"\x04\x82\x00\x05hello", "fewest bytes"),  # a leading zero byte in the length
        (b"\x30\x80\x00\x00", "indefinite"),
        (b"\x04\x85\x00\x00\x00\x00\x05hello", "indefinite or oversized"),
        (b"\x04\x06hello", "past the end"),
        (b"\x04", "cut short"),
        (b"\x04\x82\x01", "cut short"),
        (b"\x1f\x81\x01\x00", "more than one byte"),
    ],
)
def test_the_reader_refuses_what_is_not_der(blob: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        der.element(blob)


def test_ber_lengths_only_where_asked() -> None:
    blob = b"\x04\x81\x05hello"
    assert der.element(blob, strict=False) == der.Element(0x04, 0, 3, 8)
    parent = der.Element(der.SEQUENCE, 0, 0, len(blob))
    assert der.children(blob, parent, strict=False) == [der.Element(0x04, 0, 3, 8)]
    with pytest.raises(ValueError, match="fewest bytes"):
        der.children(blob, parent)


@pytest.mark.parametrize(
    ("contents", "value"),
    [(b"\x00", 0), (b"\x7f", 127), (b"\x00\x80", 128), (b"\xff", -1), (b"\x80", -128), (b"\xff\x7f", -129)],
)
def test_read_integer(contents: bytes, value: int) -> None:
    blob = der.tlv(der.INTEGER, contents)
    assert der.read_integer(blob, der.element(blob)) == value


@pytest.mark.parametrize("contents", [b"", b"\x00\x01", b"\xff\x80"])
def test_read_integer_refuses_what_is_not_der(contents: bytes) -> None:
    blob = der.tlv(der.INTEGER, contents)
    with pytest.raises(ValueError, match="INTEGER"):
        der.read_integer(blob, der.element(blob))
