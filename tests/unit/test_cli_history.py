"""``recchaos run`` adds every run it finishes to the history store, from the CLI adapter (the
runner never imports reports); a store it cannot write never changes the run's exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import cli
from harness.runner import run as runner
from reports.history import store as history
from reports.synthetic import Synth, write_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_store_from_the_environment(monkeypatch):
    monkeypatch.delenv(history.ENV_DB, raising=False)
    monkeypatch.delenv("RECCHAOS_BATCH", raising=False)


def test_a_finished_run_lands_in_the_store_beside_it(tmp_path):
    run_dir = write_run(tmp_path / "runs" / "r1", Synth(seed=5))
    lines: list[str] = []
    cli.add_to_history(run_dir, lines.append)
    db = tmp_path / "runs" / "history.sqlite"
    [entry] = history.select_runs(db, "latest")
    assert entry.seed == 5 and entry.run_dir == str(run_dir.resolve())
    assert lines == [f"history: run {entry.id} in {db}"]


def test_a_store_that_cannot_be_written_is_reported_not_raised(tmp_path):
    run_dir = write_run(tmp_path / "r1", Synth())
    (tmp_path / "history.sqlite").write_bytes(b"not a database, " * 64)
    lines: list[str] = []
    cli.add_to_history(run_dir, lines.append)
    [line] = lines
    assert line.startswith(f"history: run not added to {tmp_path / 'history.sqlite'}: ")


def test_recchaos_run_adds_its_run_and_keeps_the_exit_code(tmp_path, monkeypatch, capsys):
    run_dir = write_run(tmp_path / "r1", Synth())
    record = object()  # only its presence matters: the run finished and wrote run.json

    def fake_run(settings):
        return runner.RunOutcome(
            run_dir, None, 3, "INCONCLUSIVE: few samples", "replay", None, None, record
        )  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "run", fake_run)
    assert cli.main(["run", str(ROOT / "scenarios" / "steady_state.yaml")]) == 3
    out = capsys.readouterr().out
    assert f"history: run 1 in {tmp_path / 'history.sqlite'}" in out
