"""hsmsign.errors: one-line messages even when an artifact names itself with control characters."""

from __future__ import annotations

from hsmsign.errors import VerificationError, printable


def test_printable_escapes_control_characters_and_bounds_length() -> None:
    assert printable("CN=acme\nms test") == "CN=acme\\nms test"
    assert printable("a\x1b[31mred\x00") == "a\\x1b[31mred\\x00"
    assert printable("CN=Grüße") == "CN=Grüße"  # printable non-ASCII stays as it is
    long = printable("x" * 500, limit=50)
    assert len(long) == 50 and long.endswith("...")


def test_error_message_with_escaped_name_is_one_line() -> None:
    name = printable("CN=a\nforged: OK")
    exc = VerificationError(f"the signer certificate ({name}) is not trusted")
    assert "\n" not in exc.message


def test_printable_neutralises_line_breaks_escapes_and_bidi_controls() -> None:
    cases = {
        "a\nb": "a\\nb",
        "a\rb": "a\\rb",
        "a\r\nOK": "a\\r\\nOK",
        "\x1b[2K\rOK": "\\x1b[2K\\rOK",
        "\x9b31m": "\\x9b31m",  # C1 CSI: an escape sequence without ESC
        "gmi.\u202eexe": "gmi.\\u202eexe",  # right-to-left override
        "a\u2066b\u2069": "a\\u2066b\\u2069",  # isolates
        "zero\u200bwidth": "zero\\u200bwidth",
        "line\u2028sep": "line\\u2028sep",
        "tab\there": "tab\\there",
        "\udcff": "\\udcff",  # a byte that is not UTF-8, kept by surrogateescape
        "plain name-1.img": "plain name-1.img",
    }
    for raw, shown in cases.items():
        assert printable(raw) == shown
        assert printable(shown) == shown  # idempotent: escaping what is shown changes nothing
        assert shown.isprintable()
    assert printable("x" * 500, limit=None) == "x" * 500


def test_cli_error_and_warning_lines_stay_one_line(capsys) -> None:  # type: ignore[no-untyped-def]
    from hsmsign.cli import _report
    from hsmsign.commands.common import warn

    _report(VerificationError("bad 'a\nhsmsign: OK'", "hint\x1b[2K"), 0)
    warn("member 'x\r\u202eOK'")
    err = capsys.readouterr().err
    assert err.count("\n") == 3
    assert all(line.isprintable() for line in err.splitlines())
