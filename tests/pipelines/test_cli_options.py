"""The command line's options, pinned: `synthgen --help` and every subcommand's `--help`
offer exactly the options in tests/data/cli_options.json (names, defaults, choices, help)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from synthgen.pipelines import cli
from tests.conftest import run_cli

EXPECTED = json.loads((Path(__file__).parents[1] / "data" / "cli_options.json").read_text())


def _describe(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """What a parser offers, independent of how its help is laid out."""
    actions = []
    for a in parser._actions:
        choices = a.choices
        if isinstance(choices, dict):  # the subcommands: their names
            listed: list[Any] | None = sorted(choices)
        else:
            listed = list(choices) if choices else None
        actions.append(
            {
                "options": a.option_strings,
                "dest": a.dest,
                "kind": type(a).__name__,
                "nargs": a.nargs,
                "const": a.const,
                "default": repr(a.default),
                "type": getattr(a.type, "__name__", repr(a.type)),
                "choices": listed,
                "required": a.required,
                "help": a.help,
                "metavar": a.metavar,
            }
        )
    return {
        "prog": parser.prog,
        "description": parser.description,
        "actions": actions,
        "exclusive": [
            [x.dest for x in g._group_actions] for g in parser._mutually_exclusive_groups
        ],
    }


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_every_subcommand_offers_the_pinned_options() -> None:
    parser = cli._parser()
    sub = _subcommands(parser)
    assert _describe(parser) == EXPECTED["synthgen"]
    assert [[c.dest, c.help] for c in sub._choices_actions] == EXPECTED["_subcommands"]
    named = sorted(k for k in EXPECTED if k not in ("synthgen", "_subcommands"))
    assert sorted(sub.choices) == named
    for name, subparser in sub.choices.items():
        assert _describe(subparser) == EXPECTED[name], name


@pytest.mark.parametrize("command", [c for c, _ in EXPECTED["_subcommands"]])
def test_each_help_prints_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli._parser().parse_args([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: synthgen {command} ")
    for action in EXPECTED[command]["actions"]:
        for option in action["options"]:
            assert option in text, (command, option)
        if action["help"] and not action["options"]:  # a positional: its help is shown
            assert action["help"].split()[0] in text


def test_the_installed_command_prints_the_same_help() -> None:
    done = run_cli("build", "--help")
    assert done.returncode == 0, done.stderr
    for action in EXPECTED["build"]["actions"]:
        for option in action["options"]:
            assert option in done.stdout, option


def test_plan_and_build_share_one_set_option() -> None:
    sub = _subcommands(cli._parser())
    sets = [
        next(a for a in sub.choices[name]._actions if "--set" in a.option_strings)
        for name in ("plan", "build")
    ]
    assert len({(a.dest, a.help, a.metavar, type(a).__name__) for a in sets}) == 1
    args = cli._parser().parse_args(["plan", "r.yaml", "--set", "a=1", "--set", "b=2"])
    assert args.overrides == ["a=1", "b=2"]
