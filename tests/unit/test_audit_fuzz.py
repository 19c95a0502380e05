"""Fuzzing the leak scanner: any input gives findings or nothing, never an exception."""

from __future__ import annotations

import gzip
import time

from hsmsign import audit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAMES = st.sampled_from(
    ["HSM_PIN", "password", "FW_AES_KEY", "UBOOT_SIGN_KEYDIR", "SRCREV", "x", "so-pin", "IV"]
)
OPS = st.sampled_from(["=", " = ", "?=", " ??= ", ":=", ": ", ":", "+=", " "])
VALUES = st.one_of(
    st.text(max_size=80),
    st.sampled_from(['""', "''", '"', "'", "", "${X}", "0x", "2b7e151628aed2a6abf7158809cf4f3c", "=="]),
)
MARKERS = st.sampled_from(
    [
        b"-----BEGIN ",
        b"-----BEGIN RSA " + b"PRIVATE KEY-----\n",
        b"-----END ",
        b"pin-value=",
        b"070701",
        b"\x1f\x8b",
        b"BZh",
        b"\xfd7zXZ\x00",
        b"\x30\x82\x01\x00\x02\x01\x00",
        b"\n",
        b"PuTTY-User-Key-File-2: ",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(NAMES, OPS, VALUES), max_size=8))
def test_assignment_lines_never_raise(lines: list[tuple[str, str, str]]) -> None:
    text = "\n".join(f"{n}{o}{v}" for n, o, v in lines)
    for f in audit.scan_text(text, "fuzz.conf"):
        assert f.kind in audit.KINDS and f.line >= 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(MARKERS, st.binary(max_size=64)), max_size=12))
def test_binary_soup_never_raises(parts: list[bytes]) -> None:
    blob = b"".join(parts)
    for data in (blob, gzip.compress(blob), b"070701" + blob):
        for f in audit.scan_bytes(data, "fuzz.bin"):
            assert f.kind in audit.KINDS


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=200), st.integers()))
def test_check_variable_never_raises(name: str, value: object) -> None:
    f = audit.check_variable(name, value)
    assert f is None or f.source == f"variable {name}"


def test_empty_values_are_not_findings() -> None:
    assert audit.scan_text('HSM_PIN =\npassword:\nFW_KEY = ""\nexport SO_PIN=\n', "x") == []


# Pieces that each pattern treats specially, repeated into long lines: any regex that can
# backtrack over a run of one of them shows up as a slow example. A line is a head (where a
# pattern starts), a filler run, and a tail (what makes the match fail at the end), or a mix.
HEADS = st.sampled_from(
    [
        "HSM_PIN=a",
        "export HSM_PIN=a",
        "#define HSM_PIN a",
        '{"HSM_PIN": "a',
        '"so_pin": 1',
        "pkcs11:?pin-value=a",
        "PIN-VALUE=",
        "pkcs11-tool --pin",
        "openssl -passin pass:",
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "-----BEGIN CERTIFICATE-----",
        "LS0tLS1CRUdJTiBSU0Eg",
        '{"kty": "RSA", "d": "',
        "---- BEGIN SSH2 ",
        "ssh-rsa AAAA",
        "AGE-SECRET-KEY-1",
        "NAME[",
        "A:b",
        "- password: ",
    ]
)
FILLERS = st.sampled_from(
    [" ", "\t", "a", "0", "=", ",", "-", '"', "'", "\\", ":", "LS0t", "{", "pass", "A:"]
)
TAILS = st.sampled_from(["b", "", "\\", '"', "=", ",x", "-----END ", "}"])
PIECES = st.sampled_from(
    [
        " ",
        "a",
        "=",
        '"',
        "\\n",
        "--pin ",
        "-p ",
        "pass:",
        "HSM_PIN=",
        '"HSM_PIN": "',
        '"kty"',
        "{",
        "pin-value=",
        "pkcs11-tool ",
        "LS0t",
        "-----BEGIN ",
        "---- BEGIN SSH2 ",
        "AAAA",
        "${",
    ]
)
LINE_CHARS = 10_000
TIME_BOUND = 0.2  # seconds of CPU per 10,000-character line


@st.composite
def long_lines(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        head, filler, tail = draw(HEADS), draw(FILLERS), draw(TAILS)
        return head + filler * ((LINE_CHARS - len(head) - len(tail)) // len(filler)) + tail
    runs = draw(st.lists(st.tuples(PIECES, st.integers(1, 3000)), min_size=1, max_size=5))
    line = "".join(piece * count for piece, count in runs)
    return (line * (LINE_CHARS // max(1, len(line)) + 1))[:LINE_CHARS]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_lines())
def test_adversarial_long_lines_scan_in_bounded_time(line: str) -> None:
    start = time.process_time()
    for f in audit.scan_text(line + "\n", "fuzz.txt"):
        assert f.kind in audit.KINDS
    audit.check_variable("HSM_FUZZ", line)
    assert time.process_time() - start < TIME_BOUND, line[:80]
