"""Bad input: missing, corrupt and partial run directories give clear errors or partial reports."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.model.errors import UsageError
from reports.report.write import write_report
from reports.rundir import find_run_dirs, load_run
from reports.synthetic import Synth, write_run


def test_missing_directory(tmp_path):
    with pytest.raises(
        UsageError,
        match=r"no such run directory; expected a directory written "
        r"by `recchaos run`",
    ):
        load_run(tmp_path / "nope")


def test_a_file_is_not_a_run_directory(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hi")
    with pytest.raises(UsageError, match="not a directory"):
        load_run(f)


def test_directory_without_a_record_names_what_it_holds(tmp_path):
    (tmp_path / "load").mkdir()
    with pytest.raises(UsageError, match=r"not a run directory \(no run.json\).*it holds load"):
        load_run(tmp_path)
    with pytest.raises(UsageError, match="it is empty"):
        load_run(tmp_path / "load")


def test_corrupt_record(tmp_path):
    run = write_run(tmp_path / "r", Synth())
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])
    with pytest.raises(UsageError, match=r"cannot read the run record.*corrupt"):
        load_run(run)


def test_record_from_a_newer_schema(tmp_path):
    run = write_run(tmp_path / "r", Synth())
    doc = json.loads((run / "run.json").read_text())
    doc["schema_version"] = 42
    (run / "run.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="schema_version 42 is not supported"):
        load_run(run)


def test_record_with_wrong_field_types(tmp_path):
    run = write_run(tmp_path / "r", Synth())
    doc = json.loads((run / "run.json").read_text())
    doc["timeline"] = [{"kind": "kill"}]
    (run / "run.json").write_text(json.dumps(doc))
    with pytest.raises(
        UsageError, match=r"run.json: corrupt: timeline\[0\].target: expected text, found nothing"
    ):
        load_run(run)


def test_a_complete_run_is_not_partial(tmp_path):
    run = load_run(write_run(tmp_path / "r", Synth()))
    assert not run.partial and run.notes == [] and run.requests is not None


def test_incomplete_run_is_reported_as_partial(tmp_path):
    path = write_run(tmp_path / "r", Synth(status="incomplete"))
    doc = json.loads((path / "run.json").read_text())
    doc["errors"] = ["HarnessError: the load driver did not return within 75 s"]
    (path / "run.json").write_text(json.dumps(doc))
    run = load_run(path)
    assert run.partial
    assert "run status is 'incomplete'" in run.notes[0]
    assert "load driver did not return" in run.notes[0]
    written = write_report(path)
    assert written.partial
    html = written.html.read_text()
    assert "PARTIAL RUN" in html and "load driver did not return" in html
    assert "(PARTIAL RUN)" in written.markdown.read_text()


def test_missing_request_log_and_details_still_report(tmp_path):
    path = write_run(tmp_path / "r", Synth())
    (path / "load" / "requests.npy").unlink()
    (path / "details.json").unlink()
    run = load_run(path)
    assert any("requests.npy is missing" in n for n in run.notes)
    assert any("details.json is missing" in n for n in run.notes)
    html = write_report(path).html.read_text()
    assert "No request log" in html and "<svg" in html  # the spectrum still comes from the record


def test_running_record_without_windows(tmp_path):
    path = write_run(tmp_path / "r", Synth(status="running"))
    doc = json.loads((path / "run.json").read_text())
    doc["windows"], doc["checks"] = [], []
    (path / "run.json").write_text(json.dumps(doc))
    html = write_report(path).html.read_text()
    assert "PARTIAL RUN" in html and "No SLO checks were recorded" in html


def test_find_run_dirs(tmp_path):
    a = write_run(tmp_path / "set" / "a", Synth())
    b = write_run(tmp_path / "set" / "b", Synth())
    assert find_run_dirs(tmp_path / "set") == [a, b]
    assert find_run_dirs(a) == [a]
    with pytest.raises(UsageError, match="holds no run directories"):
        find_run_dirs(tmp_path)


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "recchaos: " in capsys.readouterr().err
    run = write_run(tmp_path / "r", Synth())
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["compare", str(run), str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert (
        main(["compare", str(run), str(run), "--min-effect", "lots", "--out", str(tmp_path)]) == 2
    )
    assert "--min-effect: min effect 'lots'" in capsys.readouterr().err
