"""What a real ``recchaos run`` leaves for other tools and for the nightly merge: standard
HdrHistogram files that the hdrhistogram package's own reader turns back into run.json's
percentiles, the gateway's per-stage histograms in the report, a JUnit file with the plugin's
properties, and run directories that ``recchaos history import``, ``compare`` and ``trend`` take.

Two short real runs of ``tests/data/short_kill.yaml`` (12 s of load, a primary killed) are made
once for the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hdrh.log import HistogramLogReader

from harness.metrics.intervals import TAGS, hgrm_name, new_hdr
from reports.junit import properties

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "data" / "short_kill.yaml"


def recchaos(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("runs")
    dirs = []
    for i in range(2):
        junit = out / f"junit-{i}.xml"
        proc = recchaos(
            "run", str(SCENARIO), "--out", str(out / "runs"), "--no-progress", "--junit", str(junit)
        )
        tail = (proc.stdout + proc.stderr)[-3000:]
        assert proc.returncode in (0, 1, 3), tail
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("run record: ")][-1]
        run_dir = Path(line.removeprefix("run record: ")).parent
        assert json.loads((run_dir / "run.json").read_text())["status"] == "complete", tail
        (run_dir / "junit.xml").write_bytes(junit.read_bytes())
        dirs.append(run_dir)
    return dirs


def read_intervals(hlog: Path) -> dict[str, list]:
    reader = HistogramLogReader(str(hlog), new_hdr())
    got: dict[str, list] = {t: [] for t in TAGS}
    while (h := reader.get_next_interval_histogram()) is not None:
        got[h.get_tag()].append(h)
    start = reader.get_start_time_sec()
    return {t: [(h, start) for h in hs] for t, hs in got.items()}


def window_histogram(parts: list, start_s: float, end_s: float):
    """The intervals whose middle lies inside the window, added up (timestamps are absolute)."""
    h = new_hdr()
    for part, origin in parts:
        mid = (part.get_start_time_stamp() + part.get_end_time_stamp()) / 2000.0 - origin
        if start_s <= mid < end_s:
            h.add(part)
    return h


def test_the_hdrhistogram_log_reader_reproduces_run_json(runs):
    run_dir = runs[0]
    record = json.loads((run_dir / "run.json").read_text())
    intervals = read_intervals(run_dir / "latency.hlog")
    assert len(intervals["response"]) >= 12  # one per second at least, over 12 s of load
    assert record["windows"], "the run judged no window"
    for w in record["windows"]:
        win = w["window"]
        for tag, key in (("response", "latency_ms"), ("service", "service_ms")):
            h = window_histogram(intervals[tag], win["start_s"], win["end_s"])
            assert h.get_total_count() == w["successes"], (win["name"], tag)
            for q, name in ((50, "p50"), (95, "p95"), (99, "p99"), (99.9, "p99.9")):
                assert h.get_value_at_percentile(q) / 1000 == w[key][name], (win["name"], tag, q)
            assert h.get_max_value() / 1000 == w[key]["max"], (win["name"], tag)
        lag = window_histogram(intervals["lag"], win["start_s"], win["end_s"])
        assert lag.get_total_count() == w["sent"]
        assert lag.get_value_at_percentile(99) / 1000 == w["lag_p99_ms"]


def parse_hgrm(text: str) -> tuple[list[tuple[float, float, int]], dict[str, float]]:
    rows, footer = [], {}
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("#["):
            for item in line.strip("#[]").split(","):
                k, v = item.split("=")
                footer[k.strip()] = float(v)
        elif len(parts) >= 3 and parts[0][0].isdigit():
            rows.append((float(parts[0]), float(parts[1]), int(parts[2])))
    return rows, footer


def test_one_hgrm_per_window_with_run_json_percentiles(runs):
    run_dir = runs[0]
    record = json.loads((run_dir / "run.json").read_text())
    files = sorted((run_dir / "hgrm").glob("*.hgrm"))
    names = [hgrm_name(i, w["window"]["name"]) for i, w in enumerate(record["windows"])]
    assert [f"hgrm/{p.name}" for p in files] == names
    for path, w in zip(files, record["windows"], strict=True):
        rows, footer = parse_hgrm(path.read_text())
        lat = w["latency_ms"]
        assert footer["TotalCount"] == w["successes"] and footer["Max"] == lat["max"]
        n = int(footer["TotalCount"])
        for q, name in ((50, "p50"), (95, "p95"), (99, "p99"), (99.9, "p99.9")):
            # HdrHistogram's rank for run.json's percentile; the table's TotalCount column says
            # which listed values lie below that rank and which reach it: the value sits between
            rank = max(1, int(q * n / 100 + 0.5))
            below = max((v for v, _, count in rows if count < rank), default=0.0)
            reach = min(v for v, _, count in rows if count >= rank)
            assert below < lat[name] <= reach, (path.name, name, below, lat[name], reach)


def test_the_report_has_the_gateways_stage_rows(runs):
    run_dir = runs[0]
    assert (run_dir / "cluster" / "metrics-before.txt").is_file()
    assert (run_dir / "cluster" / "metrics-after.txt").is_file()
    proc = recchaos("report", str(run_dir), timeout=120)
    assert proc.returncode == 0, proc.stderr
    html = (run_dir / "report.html").read_text()
    for stage in ("gateway total", "gateway rank", "gateway retrieve", "shard call"):
        assert f"<td>{stage}</td>" in html, stage
    assert "saved no scrape" not in html


def test_the_junit_file_carries_the_plugin_properties(runs):
    for run_dir in runs:
        record = json.loads((run_dir / "run.json").read_text())
        root = ET.parse(run_dir / "junit.xml").getroot()
        [case] = root.iter("testcase")
        got = [(p.get("name"), p.get("value")) for p in case.iter("property")]
        assert got == properties(record)
        verdict = record["verdict"]
        assert (case.find("failure") is not None) == (verdict == "FAIL")


def test_history_import_compare_and_trend_over_the_real_runs(runs, tmp_path):
    db = tmp_path / "history.sqlite"
    proc = recchaos(
        "history", "import", *map(str, runs), "--db", str(db), "--batch", "night-1", "--report"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": short_kill ") == 2 and "2 run(s) imported" in proc.stdout
    listing = recchaos("history", "list", "night-1", "--db", str(db))
    rows = [ln.split("\t") for ln in listing.stdout.splitlines()[1:]]
    assert [r[2] for r in rows] == ["short_kill", "short_kill"] and {r[3] for r in rows} == {
        "complete"
    }
    # one run against the other: too few runs for a call, so never exit 1
    cmp = recchaos("compare", str(runs[0]), str(runs[1]), "--out", str(tmp_path))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert "not tested" in (tmp_path / "compare.md").read_text()
    trend = recchaos("trend", "--db", str(db), "--out", str(tmp_path))
    assert trend.returncode == 0 and "trend: 2 runs" in trend.stdout
    assert all((r / "report.html").is_file() for r in runs)
