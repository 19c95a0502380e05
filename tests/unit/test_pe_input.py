"""The guess of `hsmsign pe sign`'s input before its parser exists (hsmsign.commands.pe_input).

The guess lets the image be read and hashed while the rest of hsmsign is imported. It must
never name another file than the parser does: either the same path, or no guess.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hsmsign import cli
from hsmsign.commands import pe_input
from hypothesis import given, settings
from hypothesis import strategies as st

SIGN = ["pe", "sign"]


def _sign_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser("pe")
    pe = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["pe"]
    verbs = next(a for a in pe._actions if isinstance(a, argparse._SubParsersAction))
    return verbs.choices["sign"]


def test_the_option_table_is_the_parsers() -> None:
    """Every option `pe sign` takes, and whether it takes a value, as the parser defines them."""
    options = {}
    for action in _sign_parser()._actions:
        for name in action.option_strings:
            if name not in ("-h", "--help"):
                options[name] = action.nargs != 0
    assert options == pe_input.SIGN_OPTIONS


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*SIGN, "--uri", "pkcs11:x", "--cert", "db.pem", "-o", "out.efi", "in.efi"], "in.efi"),
        ([*SIGN, "in.efi", "--cert", "db.pem", "--output", "out.efi"], "in.efi"),
        ([*SIGN, "--cert=db.pem", "--output=out.efi", "--append", "--json", "in.efi"], "in.efi"),
        (["-v", "-v", *SIGN, "--cert", "db.pem", "-o", "o.efi", "in.efi"], "in.efi"),
        ([*SIGN, "--cert", "db.pem", "-o", "o.efi", "--", "-dash.efi"], "-dash.efi"),
        (
            [
                *SIGN,
                "--mode",
                "development",
                "--role",
                "uefi",
                "--ledger",
                "l",
                "--cert",
                "c",
                "-o",
                "o",
                "x",
            ],
            "x",
        ),
    ],
)
def test_a_sign_command_names_its_input(argv: list[str], expected: str) -> None:
    assert pe_input.guess_input(argv) == expected
    assert cli.build_parser("pe").parse_args(argv).input == expected


@pytest.mark.parametrize(
    "argv",
    [
        [*SIGN, "--cert", "db.pem", "-o", "out.efi", "-h"],
        [*SIGN, "--help"],
        [*SIGN, "--cer", "db.pem", "-o", "out.efi", "in.efi"],  # an abbreviation: the parser decides
        [*SIGN, "--cert", "db.pem", "-oout.efi", "in.efi"],
        [*SIGN, "--json=yes", "in.efi"],
        [*SIGN, "a.efi", "b.efi"],
        [*SIGN, "--cert", "db.pem"],
        ["pe", "verify", "--cert", "db.pem", "in.efi"],
        ["sign", "--uri", "pkcs11:x", "in.bin"],
        ["--version"],
        [],
    ],
)
def test_anything_else_is_no_guess(argv: list[str]) -> None:
    assert pe_input.guess_input(argv) is None


_words = st.text(alphabet="abcdefghij.-_/=", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(sorted(pe_input.SIGN_OPTIONS) + ["--cer", "--out", "-x"]), _words),
        max_size=5,
    ),
    where=st.integers(min_value=0, max_value=5),
    path=_words,
    equals=st.booleans(),
)
def test_a_guess_is_always_what_the_parser_reads(
    pairs: list[tuple[str, str]], where: int, path: str, equals: bool
) -> None:
    """Options in any order and form, the input anywhere: the guess is the parser's input or none."""
    words: list[str] = []
    for name, value in pairs:
        takes_value = pe_input.SIGN_OPTIONS.get(name, True)
        if not takes_value:
            words.append(name)
        elif equals:
            words.append(f"{name}={value}")
        else:
            words += [name, value]
    at = min(where, len(words))
    while at < len(words) and at > 0 and words[at - 1] in pe_input.SIGN_OPTIONS and not equals:
        at += 1  # not between an option and its value
    argv = [*SIGN, *words[:at], path, *words[at:]]
    guess, out = pe_input.guess_input(argv), pe_input.guess_output(argv)
    if guess is None:
        assert out is None
        return
    try:
        parsed = cli.build_parser("pe").parse_args(argv)
    except SystemExit:
        return  # the parser refuses the line: the image read ahead is never adopted
    assert parsed.input == guess
    if out is not None:
        assert parsed.output == out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*SIGN, "--cert", "db.pem", "-o", "out.efi", "in.efi"], "out.efi"),
        ([*SIGN, "in.efi", "--output", "dir/out.efi", "--cert", "db.pem"], "dir/out.efi"),
        ([*SIGN, "--output=out.efi", "in.efi"], "out.efi"),
        ([*SIGN, "--cert", "db.pem", "in.efi"], None),  # none: the parser will say
        ([*SIGN, "-o", "a.efi", "--output", "b.efi", "in.efi"], None),  # two: the parser takes the last
        ([*SIGN, "--output=", "in.efi"], None),
        ([*SIGN, "-o", "--cert", "db.pem", "in.efi"], None),  # an option where the value should be
        ([*SIGN, "--cer", "db.pem", "-o", "out.efi", "in.efi"], None),  # no input guessed, no output
    ],
)
def test_a_sign_command_names_its_output(argv: list[str], expected: str | None) -> None:
    assert pe_input.guess_output(argv) == expected


def test_only_the_image_the_parser_names_is_adopted(tmp_path: pytest.TempPathFactory) -> None:
    pe_input.prefetch([*SIGN, "--cert", "db.pem", "-o", "o.efi", "missing-a.efi"])
    assert pe_input.adopt("missing-b.efi") is None  # another path: the one read ahead is dropped
    assert pe_input.adopt("missing-a.efi") is None  # and only once
    pe_input.prefetch([*SIGN, "--cert", "db.pem", "-o", "o.efi", "missing-a.efi"])
    job = pe_input.adopt("missing-a.efi")
    assert job is not None and job.path == "missing-a.efi"
    with pytest.raises(Exception, match="missing-a.efi"):
        job.parsed()  # the read's own error, raised where the command would raise it


def test_the_read_ahead_limits_are_atomics() -> None:
    import stat

    from hsmsign import atomic

    assert pe_input.READ_AHEAD_MAX == atomic.MAX_IMAGE
    assert (pe_input._S_IFMT, pe_input._S_IFREG) == (stat.S_IFMT(0o177777), stat.S_IFREG)


def test_an_output_made_early_is_adopted_only_under_its_own_name(tmp_path: Path) -> None:
    """The console script makes the output's temporary file before the parser exists
    (``open_output``): the command takes it when the parser names the same input and output;
    otherwise it is removed, and so is one no command takes (``abandon``)."""
    image = tmp_path / "in.efi"
    image.write_bytes(b"MZ" + bytes(200))  # not a PE image: the body is never copied
    argv = [*SIGN, "--cert", "db.pem", "-o", str(tmp_path / "out.efi"), str(image)]

    def temporaries() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-"))

    pe_input.load()
    for other in (str(tmp_path / "other.efi"), None):
        assert pe_input.prefetch(argv)
        pe_input.open_output()
        assert len(temporaries()) == 1
        assert pe_input.adopt(str(image), other) is None  # another output: dropped, and removed
        assert temporaries() == []
    assert pe_input.prefetch(argv)
    pe_input.open_output()
    pe_input.abandon()  # a usage error: the command never asked for it
    assert temporaries() == []
    assert pe_input.prefetch(argv)
    pe_input.open_output()
    job = pe_input.adopt(str(image), str(tmp_path / "out.efi"))
    assert job is not None
    early = job.take_output()
    assert early is not None and temporaries() == [early.tmp_name] and job.take_output() is None
    job.stop()  # taken: the command renames or removes it, not the job
    assert temporaries() == [early.tmp_name]
    early._discard()
    assert temporaries() == [] and not (tmp_path / "out.efi").exists()
