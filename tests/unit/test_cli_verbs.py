"""The verb table that lets `hsmsign VERB` build only its own parser stays true."""

from __future__ import annotations

import argparse
import importlib

import pytest
from hsmsign import cli


@pytest.mark.parametrize("module_name", cli.COMMAND_MODULES)
def test_each_module_registers_exactly_the_verbs_listed(module_name: str) -> None:
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    module.register(sub, cli.make_parents())
    assert tuple(sub.choices) == cli.COMMAND_VERBS[module_name]


def _verbs(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_a_named_verb_builds_only_its_module_and_help_builds_all() -> None:
    assert _verbs(cli.build_parser("sign")) == set(cli.COMMAND_VERBS["hsmsign.commands.core"])
    assert _verbs(cli.build_parser("csr")) == {"cert", "csr"}
    everything = {v for verbs in cli.COMMAND_VERBS.values() for v in verbs}
    assert _verbs(cli.build_parser()) == everything
    assert _verbs(cli.build_parser("no-such-verb")) == everything  # argparse then names the valid choices


def test_first_verb_skips_options() -> None:
    assert cli._first_verb(["-v", "-v", "fit", "sign", "x.itb"]) == "fit"
    assert cli._first_verb(["--version"]) is None
    assert cli._first_verb([]) is None


def test_unknown_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
