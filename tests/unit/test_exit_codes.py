"""One exit code for Ctrl-C, wherever it lands: 130 from a run the runner stopped (faults
healed, partial record) and from the command line around it, and the help says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import cli
from harness.model.errors import EXIT_INTERRUPTED
from harness.runner.run import RunOutcome


def test_ctrl_c_is_130_the_shells_code_for_sigint():
    assert EXIT_INTERRUPTED == 128 + 2


def test_an_interrupted_run_exits_130_with_its_replay(monkeypatch, capsys, tmp_path):
    stopped = RunOutcome(
        tmp_path, None, EXIT_INTERRUPTED, "interrupted; partial record written", "R"
    )
    monkeypatch.setattr("harness.runner.run.run", lambda settings: stopped)
    assert stopped.interrupted
    assert cli.main(["run", "scenarios/primary_kill.yaml"]) == 130
    out = capsys.readouterr().out
    assert "interrupted; partial record written\nReproduce with: R" in out


def test_ctrl_c_outside_a_run_exits_130_too(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    def register(sub):
        sub.add_parser("wait").set_defaults(func=interrupted)

    monkeypatch.setattr(cli, "COMMANDS", [register])
    assert cli.main(["wait"]) == 130
    assert capsys.readouterr().err == "recchaos: interrupted\n"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_the_help_lists_130(argv, capsys):
    assert cli.main(argv) == 0
    assert "4 harness error, 130 interrupted" in " ".join(capsys.readouterr().out.split())


def test_a_complete_run_is_not_interrupted():
    assert not RunOutcome(Path("r"), None, 4, "HarnessError: x", "R").interrupted
