"""The conventions a user of any command-line tool expects: ``--version``, fixed value sets as
``choices`` refused by the parser with the allowed values named, help text for every argument,
and ``recchaos sut --help`` naming the command the user typed."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

import system_under_test.__main__ as sut_main
from harness import cli


def test_version_prints_the_distributions_version(capsys):
    from importlib import metadata

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"recchaos {metadata.version('recchaos')}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["run", "s.yaml", "--profile", "weekly"],
            "recchaos run: error: argument --profile: invalid choice: 'weekly' "
            "(choose from 'pr', 'nightly')",
        ),
        (
            ["run", "s.yaml", "--backend", "k8s"],
            "argument --backend: invalid choice: 'k8s' (choose from 'process', 'docker')",
        ),
        (
            ["scenarios", "show", "s.yaml", "--profile", "PR"],
            "argument --profile: invalid choice: 'PR' (choose from 'pr', 'nightly')",
        ),
    ],
)
def test_a_value_outside_the_choices_is_a_usage_error_naming_them(capsys, argv, message):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def arguments(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from arguments(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


def test_every_argument_and_positional_has_help():
    found = list(arguments(cli.build_parser(), "recchaos"))
    assert len(found) > 30  # the walk reached every subcommand
    missing = [
        f"{path} {'/'.join(a.option_strings) or a.dest}"
        for path, a in found
        if not a.help or a.help == argparse.SUPPRESS
    ]
    assert not missing, f"arguments without help text: {missing}"


def test_every_subcommand_has_help_in_the_command_list():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {c.dest: c.help for c in sub._choices_actions}
    assert set(listed) == set(sub.choices) and all(listed.values()), listed


def test_recchaos_sut_help_names_recchaos_sut(monkeypatch, capsys):
    seen = {}

    class Exec(Exception):
        pass

    def fake_execve(path, argv, env):
        seen["env"] = env
        raise Exec  # execve never returns

    monkeypatch.setattr(cli.os, "execve", fake_execve)
    with pytest.raises(Exec):
        cli.main(["sut", "--help"])
    monkeypatch.setenv(cli.SUT_PROG_ENV, seen["env"][cli.SUT_PROG_ENV])
    assert sut_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: recchaos sut COMMAND [options]")
    assert "python -m system_under_test" not in out
    monkeypatch.delenv(cli.SUT_PROG_ENV)
    assert sut_main.usage().startswith("usage: python -m system_under_test COMMAND")


@pytest.mark.parametrize("command", sorted(sut_main.COMMANDS))
def test_every_sut_command_help_names_the_command_typed(monkeypatch, capsys, command):
    """``recchaos sut COMMAND --help`` prints its help (no formatting error) under the name the
    user typed, never ``python -m system_under_test``."""
    monkeypatch.setenv(cli.SUT_PROG_ENV, "recchaos sut")
    # A server command moves its own process to the background before it parses (runtime.py):
    # here that process is the test run's, which must keep its priority and its session's share.
    monkeypatch.setenv("RECCHAOS_STARTUP_PRIORITY", "normal")
    with pytest.raises(SystemExit) as done:
        sut_main.main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: recchaos sut {command} "), out[:200]
    assert "python -m system_under_test" not in out
