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
