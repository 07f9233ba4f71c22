"""Corrupt run directories: ``recchaos report`` and ``compare`` exit 2 naming the file and what is
wrong, never with a traceback, and ``compare`` keeps exit 1 for a regression only. A run the
watchdog closed as ``killed`` is reported as such."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.model.errors import UsageError
from reports.rundir import load_run
from reports.synthetic import Synth, write_run


def edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        doc = json.loads((run / name).read_text())
        result = change(doc)
        (run / name).write_text(json.dumps(doc if result is None else result))

    return apply


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            (run / name).write_bytes(data)
        else:
            (run / name).write_text(data)

    return apply


def _set(path: str, value: object) -> Callable[[dict], None]:
    """Set a dotted path (``windows.0.histograms.response``) in a JSON document."""

    def change(doc: dict) -> None:
        *parents, last = path.split(".")
        node: object = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]  # type: ignore[index]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is _DELETE:
            del node[last]  # type: ignore[attr-defined]
        else:
            node[last] = value  # type: ignore[index]

    return change


_DELETE = object()

# (id, corruption, file named in the message, what the message says is wrong)
CORRUPTIONS = [
    ("record-cut-short", write("run.json", '{"schema_version": 1, "seed": '), "run.json",
     "cannot read the run record"),
    ("record-a-list", write("run.json", "[1, 2]"), "run.json", "expected a JSON object"),
    ("histogram-garbage", edit_json("run.json", _set("windows.0.histograms.response",
     "recchaos-hdr/1 0 0 AAAA")), "run.json",
     "windows[0].histograms.response: not an encoded recchaos histogram"),
    ("histogram-not-text", edit_json("run.json", _set("windows.1.histograms.lag", 123)),
     "run.json", "windows[1].histograms.lag: expected text, found 123"),
    ("histogram-negative-failures", edit_json("run.json", _set(
        "windows.0.histograms.service", "recchaos-hdr/1 0 -3 HISTFAAAABx4nJNpmSzMgADMUJoRRFybvITB/gNEAABQ2gSH")),
     "run.json", "non-negative overflow and failure counts"),
    ("percentile-text", edit_json("run.json", _set("windows.0.latency_with_errors_ms.p99", "fast")),
     "run.json", "windows[0].latency_with_errors_ms.p99: expected a number"),
    ("window-missing", edit_json("run.json", _set("windows.2.window", _DELETE)), "run.json",
     "windows[2].window: expected an object, found nothing"),
    ("window-bounds-text", edit_json("run.json", _set("windows.0.window.start_s", "early")),
     "run.json", "windows[0].window.start_s: expected a number"),
    ("count-negative", edit_json("run.json", _set("windows.0.count", -4)), "run.json",
     "windows[0].count: expected an integer >= 0"),
    ("fault-time-text", edit_json("run.json", _set("timeline.0.inject_ns", "soon")), "run.json",
     "timeline[0].inject_ns: expected an integer"),
    ("check-not-object", edit_json("run.json", _set("checks.0", "x")), "run.json",
     "checks[0]: expected an object"),
    ("errors-not-list", edit_json("run.json", _set("errors", "oops")), "run.json",
     "errors: expected a list"),
    ("seed-text", edit_json("run.json", _set("seed", "lucky")), "run.json",
     "seed: expected an integer"),
    ("started-text", edit_json("run.json", _set("started_wall", "yesterday")), "run.json",
     "started_wall: expected a number or null"),
    ("scenario-list", edit_json("run.json", _set("scenario", [])), "run.json",
     "scenario: expected an object"),
    ("halt-trip-text", edit_json("run.json", _set("halt", {"guard": "guards[0]", "rule": "r",
     "kind": "health", "evidence": "e", "since_s": 1.0, "trip_ns": "soon", "trip_wall": 0.0})),
     "run.json", "halt.trip_ns: expected an integer, found 'soon'"),
    ("halt-healed-not-list", edit_json("run.json", _set("halt", {"guard": "guards[0]",
     "rule": "r", "kind": "health", "evidence": "e", "since_s": 1.0, "trip_ns": 5,
     "trip_wall": 0.0, "healed": "freeze(gateway)"})), "run.json",
     "halt.healed: expected a list"),
    ("load-histograms-garbage", write("load/histograms.json", b"\x00\xffgarbage"),
     "load/histograms.json", "not JSON"),
    ("load-histograms-bad-encoding", edit_json("load/histograms.json",
     _set("response.encoded", "junk")), "load/histograms.json",
     "response.encoded: not an encoded recchaos histogram"),
    ("load-histograms-tag-missing", edit_json("load/histograms.json", _set("lag", _DELETE)),
     "load/histograms.json", "lag: expected an object, found nothing"),
    ("details-not-json", write("details.json", "{generator:"), "details.json", "not JSON"),
    ("details-a-list", write("details.json", "[]"), "details.json", "expected an object"),
    ("details-stage-text", edit_json("details.json", _set("gateway_stages_ms",
     {"rank": {"p99": "slow"}})), "details.json", "gateway_stages_ms.rank.p99"),
    ("requests-garbage", write("load/requests.npy", b"\x93NUMPY garbage"),
     "load/requests.npy", "not a recchaos request log"),
    ("requests-wrong-dtype", lambda run: np.save(run / "load" / "requests.npy",
     np.zeros(5)), "load/requests.npy", "not a recchaos request log"),
    ("metrics-not-prometheus", write("cluster/metrics-after.txt", "<html>502</html>"),
     "cluster/metrics-after.txt", "not Prometheus text"),
    ("metrics-bad-le", write("cluster/metrics-after.txt",
     'recchaos_request_seconds_bucket{tier="primary",le="soon"} 3\n'),
     "cluster/metrics-after.txt", "a bucket needs a numeric le label"),
    ("metrics-before-garbage", lambda run: (write("cluster/metrics-after.txt", "")(run),
     write("cluster/metrics-before.txt", "x{ 1")(run)), "cluster/metrics-before.txt",
     "not Prometheus text"),
]  # fmt: skip


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A baseline and a current set that compare calls a regression (exit 1) when intact."""
    root = tmp_path_factory.mktemp("sets")
    for i in range(3):
        write_run(root / "base" / f"r{i}", Synth(seed=i))
        write_run(root / "cur" / f"r{i}", Synth(seed=10 + i, slow=1.5))
    return root / "base", root / "cur"


def test_the_intact_sets_are_a_regression(sets, tmp_path, capsys):
    assert main(["compare", str(sets[0]), str(sets[1]), "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize(
    ("corrupt", "name", "problem"),
    [c[1:] for c in CORRUPTIONS],
    ids=[c[0] for c in CORRUPTIONS],
)
def test_report_and_compare_exit_2_naming_the_file(corrupt, name, problem, sets, tmp_path, capsys):
    base, intact = sets
    current = tmp_path / "cur"
    shutil.copytree(intact, current)
    run = current / "r1"
    corrupt(run)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / name}: " in err, err
    assert problem in err and "Traceback" not in err, err
    with pytest.raises(UsageError, match=re.escape(f"{run / name}: ")):
        load_run(run)
    out = tmp_path / "out"
    # exit 2, not the 1 that the intact sets give: a corrupt file is never read as a regression
    assert main(["compare", str(base), str(current), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{run / name}: " in err and problem in err, err
    assert not (out / "compare.html").exists()


def test_history_import_of_a_corrupt_run_exits_2(tmp_path, capsys):
    run = write_run(tmp_path / "r", Synth())
    edit_json("run.json", _set("windows.0.histograms.response", "nonsense"))(run)
    assert main(["history", "import", str(run), "--db", str(tmp_path / "h.sqlite")]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'run.json'}: corrupt" in err and "Traceback" not in err


def test_a_killed_run_is_reported_as_killed(tmp_path, capsys):
    run = write_run(tmp_path / "r", Synth())
    doc = json.loads((run / "run.json").read_text())
    doc.update(status="killed", ended_wall=1.8e9 + 12.5, errors=["harness died (SIGKILL)"])
    (run / "run.json").write_text(json.dumps(doc))
    loaded = load_run(run)
    assert loaded.killed and loaded.partial
    assert "2027-01-15 08:00:12 UTC" in loaded.notes[0] and "watchdog" in loaded.notes[0]
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert '<span class="verdict KILLED">KILLED</span>' in html
    assert "PARTIAL RUN" in html and "harness died (SIGKILL)" in html
    md = (run / "report.md").read_text()
    assert md.startswith("## 🛑 synthetic_kill: PASS (KILLED) (PARTIAL RUN)")
    capsys.readouterr()
    # compare leaves a killed run out, and says so
    other = write_run(tmp_path / "ok", Synth())
    assert main(["compare", str(other), str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert "r: partial (run KILLED" in (tmp_path / "o" / "compare.md").read_text()


def test_a_corrupt_histogram_in_the_history_store_exits_2(tmp_path, capsys):
    import sqlite3

    from reports.history import store

    db = tmp_path / "h.sqlite"
    for i in range(2):
        store.append_run(write_run(tmp_path / f"r{i}", Synth(seed=i)), db, batch=f"b{i}")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE windows SET response_hist = 'recchaos-hdr/1 0 0 AAAA'")
    args = ["compare", "history:b0", "history:b1", "--db", str(db), "--out", str(tmp_path)]
    assert main([*args, "--min-runs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{db}: corrupt history store: run 1, window" in err and "Traceback" not in err


def test_a_malformed_benchmark_file_exits_2(tmp_path, capsys):
    run = write_run(tmp_path / "r", Synth())
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"benchmarks": [{"name": "x", "stats": {"median": 1e-6}}]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmarks": [{"name": "x", "stats": {"median": "fast"}}]}))
    args = ["compare", str(run), str(run), "--out", str(tmp_path), "--bench-baseline", str(good)]
    assert main([*args, "--bench-current", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: benchmarks[0] is not a benchmark result" in err and "Traceback" not in err
