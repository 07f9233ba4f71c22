"""``recchaos scenarios validate``: exit 0 for valid files, 2 for invalid ones, with messages that
name the file, the field path, the value and what is allowed (the real CLI in a fresh interpreter:
tests/integration/test_cli_subprocess.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scenarios").glob("*.yaml"))


@pytest.fixture
def bad_file():
    """A scenario with two problems (a negative duration, a misspelt key)."""
    return ROOT / "tests" / "data" / "bad_scenario.yaml"


def test_examples_validate(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert cli.main(["scenarios", "validate", *EXAMPLES]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [f"OK {p}" for p in EXAMPLES]


def test_bad_file_exit_2_and_message(bad_file, capsys):
    assert cli.main(["scenarios", "validate", str(bad_file)]) == 2
    err = capsys.readouterr().err
    assert f"{bad_file}: 2 problems" in err
    assert "faults[2].duration_s: got -2; allowed: a number > 0 (seconds)" in err
    assert "slos[0].windws: got ['during']; allowed: the keys" in err
    assert "did you mean 'windows'?" in err


def test_good_and_bad_together(bad_file, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.main(["scenarios", "validate", "scenarios/primary_kill.yaml", str(bad_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("OK scenarios/primary_kill.yaml")
    assert str(bad_file) in captured.err


def test_unknown_profile_and_missing_file(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert (
        cli.main(["scenarios", "validate", "--profile", "weekly", "scenarios/steady_state.yaml"])
        == 2
    )
    err = capsys.readouterr().err
    assert "argument --profile: invalid choice: 'weekly' (choose from 'pr', 'nightly')" in err
    assert cli.main(["scenarios", "validate", str(tmp_path / "nope.yaml")]) == 2
    assert "No such file or directory" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["scenarios", "validate"]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out


def test_show_prints_the_fault_plan(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert cli.main(["scenarios", "show", "scenarios/random_faults.yaml", "--profile", "pr"]) == 0
    out = capsys.readouterr().out
    assert "fault_plan:" in out and "origin: fault_schedule[2]" in out and "profile: pr" in out


def test_sut_becomes_the_recommenders_command_line(monkeypatch):
    calls = []

    class Exec(Exception):
        pass

    def fake_execve(path, argv, env):
        calls.append((path, argv, env[cli.SUT_PROG_ENV]))
        raise Exec  # execve never returns

    monkeypatch.setattr(cli.os, "execve", fake_execve)
    with pytest.raises(Exec):
        cli.main(["sut", "up", "--shards", "2", "--help"])
    argv = [sys.executable, "-m", "system_under_test", "up", "--shards", "2", "--help"]
    assert calls == [(sys.executable, argv, "recchaos sut")]
