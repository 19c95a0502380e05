"""The CLI experience: version, --json on every verb that reports, help and errors."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hsmsign
import pytest
from hsmsign.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]

# Leaf verbs without --json, each for a reason. Everything else that runs must offer it.
NO_JSON_BY_DESIGN = {
    ("pubkey",): "its output is the public key itself (PEM or DER), on stdout or --output",
    ("mkimage",): "a drop-in for U-Boot's mkimage: mkimage owns the command line and the output",
}


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs and path:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from leaves(child, (*path, name))


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """Without building the full parser, as argparse's version action would: the version when
    ``--version`` comes before any help option, the help otherwise."""
    for argv in (["--version"], ["-v", "--version"], ["--version", "--help"]):
        assert main(argv) == 0
        assert capsys.readouterr().out.strip() == f"hsmsign {hsmsign.__version__}"
    with pytest.raises(SystemExit) as exc:
        main(["--help", "--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: hsmsign")


def test_version_from_a_fresh_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hsmsign", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"hsmsign {hsmsign.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+([a-z0-9.+-]*)?", hsmsign.__version__)


def test_changelog_has_a_section_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(hsmsign.__version__)}\]", changelog, re.M), (
        f"CHANGELOG.md has no '## [{hsmsign.__version__}]' section"
    )


def test_every_verb_that_reports_has_json() -> None:
    parser = build_parser()
    all_leaves = dict(leaves(parser))
    missing = [
        "hsmsign " + " ".join(path)
        for path, p in all_leaves.items()
        if "--json" not in options_of(p) and path not in NO_JSON_BY_DESIGN
    ]
    assert not missing, "verbs that report but have no --json: " + ", ".join(missing)
    stale = [path for path in NO_JSON_BY_DESIGN if path not in all_leaves]
    assert not stale, f"exemptions for verbs that no longer exist: {stale}"


def test_json_output_is_one_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    uri = "pkcs11:token=acme%20prod;object=fw?pin-source=file:/run/secrets/hsm-pin"
    assert main(["uri", "--json", uri]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["identity"] == "pkcs11:token=acme%20prod;object=fw"
    assert data["pin_source"].startswith("file")


def test_every_verb_has_help_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for path, _p in leaves(build_parser()):
        if path == ("mkimage",):
            continue  # '--help' goes to the real mkimage
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: hsmsign {' '.join(path)}"), path


def test_help_stays_light() -> None:
    # --help must not load python-pkcs11 or cryptography: cold start, and no token needed to read help
    code = (
        "import sys, contextlib, io\n"
        "from hsmsign.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['sign', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('pkcs11', 'cryptography', 'asn1crypto') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_an_error_is_one_line_with_a_hint_and_never_the_pin() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSM")}
    secret = "73915284"
    uri = f"pkcs11:token=t?pin-value={secret}"
    proc = subprocess.run(
        [sys.executable, "-m", "hsmsign", "uri", "--mode", "production", uri],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 4  # a policy refusal
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("hsmsign: error: ")
    assert lines[1].startswith("  hint: ") and "pin-source=file:" in lines[1]
    assert "Traceback" not in proc.stderr
    assert secret not in proc.stderr + proc.stdout


def test_no_verb_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: hsmsign" in err and "exit codes:" in err


def groups(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every verb or kind that has actions of its own (``pe``, ``imx ahab``...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if child._subparsers is not None:
                    yield (*path, name), child
                yield from groups(child, (*path, name))


def test_a_group_without_its_action_prints_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``hsmsign imx`` showed the top level's help, which does not list imx's kinds."""
    found = list(groups(build_parser()))
    assert {("pe",), ("imx",), ("imx", "ahab"), ("imx", "hab"), ("ledger",)} <= {p for p, _ in found}
    for path, group in found:
        assert main(list(path)) == 2, path
        out = capsys.readouterr().out
        assert out.startswith(f"usage: hsmsign {' '.join(path)} "), (path, out[:80])
        actions = next(a for a in group._actions if isinstance(a, argparse._SubParsersAction))
        assert all(name in out for name in actions.choices), path


@pytest.mark.parametrize(
    ("argv", "said_by", "unknown"),
    [
        (["pe", "sign", "--cert", "c.pem", "-o", "o.efi", "i.efi", "--bogus"], "hsmsign pe sign", "--bogus"),
        (["ledger", "verify", "a.jsonl", "b.jsonl"], "hsmsign ledger verify", "b.jsonl"),
        (["manifest", "verify", "--cert", "c.pem", "MANIFEST", "--zz"], "hsmsign manifest", "--zz"),
        (["pe", "--bogus"], "hsmsign pe", "--bogus"),
        (["--bogus", "pe"], "hsmsign", "--bogus"),  # before the verb: the top level's
    ],
)
def test_an_unknown_argument_is_reported_by_its_verb(
    argv: list[str], said_by: str, unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse reports arguments no parser took with the top level's usage, which shows none of
    the verb's options; hsmsign has the verb's parser report them."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"\n{said_by}: error: unrecognized arguments: {unknown}\n" in err
    assert err.startswith(f"usage: {said_by} "), err[:80]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_only_for_big_files() -> None:
    from hsmsign.commands.common import PROGRESS_MIN_BYTES, Progress

    big = PROGRESS_MIN_BYTES
    assert PROGRESS_MIN_BYTES == 100 << 20  # the threshold: files over 100 MiB

    pipe = io.StringIO()  # not a terminal (CI logs, BitBake tasks): nothing at all
    p = Progress("hashing rootfs.ext4", big, stream=pipe)
    p(big // 2)
    p(big)
    p.done()
    assert pipe.getvalue() == ""

    small = _Terminal()  # a terminal, but a small file: nothing
    p = Progress("hashing u-boot.itb", big - 1, stream=small)
    p(big - 1)
    p.done()
    assert small.getvalue() == ""

    tty = _Terminal()
    p = Progress("hashing rootfs.ext4", big, stream=tty)
    p(big)  # the final update is always drawn
    p.done()
    out = tty.getvalue()
    assert out.startswith("\rhashing rootfs.ext4: 100.0% of 100 MiB")
    assert out.endswith("\n") and out.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "policy", "signature"),
    [
        (["--mode", "rsa-pss"], "production", "rsa-pss"),
        (["--mode=rsa"], "production", "rsa"),
        (["--mode", "development", "--mode", "cms"], "development", "cms"),
        (["--mode", "rsa-pss", "--mode=production"], "production", "rsa-pss"),
        (["--signing-mode", "rsa", "--mode", "development"], "development", "rsa"),
    ],
)
def test_swupdate_mode_names_the_policy_or_the_signature_type(
    argv: list[str], policy: str, signature: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HSMSIGN_MODE", raising=False)
    args = build_parser("swupdate").parse_args(["swupdate", "sign", *argv, "-o", "s.sig", "sw-description"])
    assert (args.mode, args.sig_mode) == (policy, signature)


def test_a_signature_type_is_not_a_policy_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser("sign").parse_args(["sign", "--mode", "rsa-pss", "file"])
    assert exc.value.code == 2
    assert "invalid choice: 'rsa-pss' (choose from 'development', 'production')" in capsys.readouterr().err


@pytest.mark.parametrize("columns", [None, "", "0", "-3", "abc", "45", "100", "250"])
def test_the_help_is_as_wide_as_argparse_makes_it(
    columns: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hsmsign's parsers find the help's width without shutil (hsmsign.cli.help_width): the
    same width argparse finds with shutil.get_terminal_size, and the same help text."""
    import shutil

    from hsmsign.cli import help_width

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert help_width() == shutil.get_terminal_size().columns - 2
    verb = build_parser("pe")._subparsers._group_actions[0].choices["pe"]  # type: ignore[union-attr]
    sign = verb._subparsers._group_actions[0].choices["sign"]
    stock = argparse.ArgumentParser(prog=sign.prog, formatter_class=argparse.RawDescriptionHelpFormatter)
    stock._actions, stock._action_groups = sign._actions, sign._action_groups
    stock.epilog, stock.description = sign.epilog, sign.description
    assert sign.format_help() == stock.format_help()


def test_a_cold_command_imports_no_shutil() -> None:
    """argparse imports shutil (and with it zlib, bz2 and lzma) to find the help's width, for every
    argument added; hsmsign's parsers give it the width, so parsing a command imports none of them."""
    code = (
        "import sys\n"
        "from hsmsign.cli import build_parser\n"
        "build_parser('pe').parse_args(['pe', 'sign', '--cert', 'c.pem', '-o', 'o.efi', 'i.efi'])\n"
        "print(sorted(m for m in ('shutil', 'zlib', 'bz2', 'lzma') if m in sys.modules))\n"
    )
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
