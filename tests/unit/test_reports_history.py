"""The SQLite history store: round trip, selectors, baselines, benchmarks, schema version."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from harness.model.errors import UsageError
from reports.history import store as history
from reports.synthetic import Synth, write_run


def add(tmp_path, db, name, batch, **kw):
    return history.append_run(write_run(tmp_path / name, Synth(**kw)), db, batch=batch)


def test_round_trip_keeps_windows_percentiles_and_histograms(tmp_path):
    db = tmp_path / "h.sqlite"
    run_id = add(tmp_path, db, "r1", "b1", seed=3)
    record = json.loads((tmp_path / "r1" / "run.json").read_text())
    [entry] = history.select_runs(db, "b1")
    assert entry.id == run_id and entry.scenario == "synthetic_kill" and entry.seed == 3
    assert entry.verdict == "PASS" and not entry.partial
    assert list(entry.windows) == [w["window"]["name"] for w in record["windows"]]
    w0 = record["windows"][0]
    got = entry.windows[w0["window"]["name"]]
    assert got.p99 == pytest.approx(w0["latency_with_errors_ms"]["p99"])
    assert got.response_hist == w0["histograms"]["response"]


def test_infinite_percentiles_survive(tmp_path):
    db = tmp_path / "h.sqlite"
    add(tmp_path, db, "r1", "b1", failures=60)  # 60 of 500 fail: p95 and p99 are inf
    [entry] = history.select_runs(db, "latest")
    during = next(w for n, w in entry.windows.items() if n.startswith("during"))
    assert math.isinf(during.p99)


def test_append_is_idempotent_per_run_directory(tmp_path):
    db = tmp_path / "h.sqlite"
    add(tmp_path, db, "r1", "b1")
    history.append_run(tmp_path / "r1", db, batch="b1")
    assert len(history.select_runs(db, "b1")) == 1


def test_selectors(tmp_path):
    db = tmp_path / "h.sqlite"
    for i, batch in enumerate(["b1", "b1", "b2", "b3"]):
        add(tmp_path, db, f"r{i}", batch, seed=i)
    assert [e.seed for e in history.select_runs(db, "latest")] == [3]
    assert [e.seed for e in history.select_runs(db, "previous")] == [2]
    assert [e.seed for e in history.select_runs(db, "b1")] == [0, 1]
    assert [e.seed for e in history.select_runs(db, "last:2")] == [2, 3]
    first = history.select_runs(db, "b1")[0]
    assert history.select_runs(db, f"run:{first.id}")[0].seed == 0
    with pytest.raises(UsageError, match="no such batch; selectors: latest, previous"):
        history.select_runs(db, "nope")
    with pytest.raises(UsageError, match="no baseline has been set yet"):
        history.select_runs(db, "baseline")
    history.set_baseline(db, "b2")
    assert [e.seed for e in history.select_runs(db, "baseline")] == [2]
    with pytest.raises(UsageError, match="no runs or benchmarks in batch 'zz'"):
        history.set_baseline(db, "zz")


def test_partial_runs_are_stored_but_left_out_of_selections(tmp_path):
    db = tmp_path / "h.sqlite"
    add(tmp_path, db, "r1", "b1")
    add(tmp_path, db, "r2", "b1", status="incomplete")
    assert len(history.select_runs(db, "b1")) == 1
    assert len(history.select_runs(db, "b1", include_partial=True)) == 2


def test_default_location_is_beside_the_runs(tmp_path, monkeypatch):
    monkeypatch.delenv(history.ENV_DB, raising=False)
    monkeypatch.delenv(history.ENV_BATCH, raising=False)
    run = write_run(tmp_path / "runs" / "r1", Synth())
    history.append_run(run)
    db = tmp_path / "runs" / history.DB_NAME
    assert db.is_file()
    [entry] = history.select_runs(db, "latest")
    assert entry.batch == "r1"  # without $RECCHAOS_BATCH each run is its own batch


def test_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "h.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(UsageError, match="schema version 99 is newer than this recchaos reads"):
        history.select_runs(db, "latest")


def test_missing_store_and_garbage_file(tmp_path):
    with pytest.raises(UsageError, match="no history store here"):
        history.select_runs(tmp_path / "none.sqlite", "latest")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(UsageError, match="not a usable recchaos history store"):
        history.select_runs(bad, "latest")


def test_benchmarks_round_trip(tmp_path):
    db = tmp_path / "h.sqlite"
    doc = {
        "benchmarks": [
            {
                "name": "test_routing",
                "stats": {
                    "median": 1.5e-6,
                    "mean": 1.6e-6,
                    "min": 1.4e-6,
                    "stddev": 1e-7,
                    "rounds": 3,
                    "data": [1.4e-6, 1.5e-6, 1.6e-6],
                },
            }
        ]
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    assert history.append_benchmarks(path, db, "b1") == 1
    [[bench]] = history.benchmark_files(db, "b1")
    assert bench.name == "test_routing" and bench.data == (1.4e-6, 1.5e-6, 1.6e-6)
    assert history.batches(sqlite3.connect(db)) == ["b1"]
