"""Report, compare and trend outputs from synthetic run directories, and JUnit properties."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

from harness.cli import main
from harness.model.record import Halt, read_record
from reports.history import store as history
from reports.junit import properties
from reports.prom import parse_histograms
from reports.report.stages import bucket_quantile, metrics_rows
from reports.report.write import write_report
from reports.rundir import load_run
from reports.synthetic import Synth, write_run


def test_report_html_is_self_contained_and_has_every_section(tmp_path):
    run = write_run(tmp_path / "r", Synth())
    html = write_report(run).html.read_text()
    ids = ["slo", "latency", "quality", "tiers", "spectrum", "stages", "generator", "faults"]
    ids.append("replay")
    positions = [html.index(f'id="{i}"') for i in ids]
    assert positions == sorted(positions)  # verdict and SLO table first
    assert html.count("<svg") >= 7
    assert 'class="fault-window"' in html and "kill(shard-0-primary)" in html
    assert "recchaos run synthetic.yaml --seed 7" in html
    assert not re.search(r"(src|href)=\"https?://", html)  # nothing from the network
    assert "<script src" not in html


def test_report_slo_table_shows_each_quantile_checks_confidence_interval(tmp_path):
    run = write_run(tmp_path / "r", Synth())
    checks = read_record(run / "run.json").checks
    assert all(c["interval"]["level"] == 0.95 for c in checks)
    html = write_report(run).html.read_text()
    assert "<th>CI</th>" in html
    low, high = checks[0]["interval"]["low_ms"], checks[0]["interval"]["high_ms"]
    assert f"95%: {low:.3g}-{high:.3g}" in html


def test_report_shows_answer_quality_by_window_and_tier_and_the_runs_warnings(tmp_path):
    run = write_run(tmp_path / "r", Synth(agreement=0.6))
    record = json.loads((run / "run.json").read_text())
    record["warnings"] = ["synthetic.yaml: load[0] (main) draws users beyond the population"]
    (run / "run.json").write_text(json.dumps(record))
    details = json.loads((run / "details.json").read_text())
    details["answers"] = {"expected": {"full": {"agreement_at_k": 1.0, "ndcg_at_k": 0.2}}}
    (run / "details.json").write_text(json.dumps(details))
    html = write_report(run).html.read_text()
    assert "What this run could not test as asked" in html and "beyond the population" in html
    assert 'class="chart quality"' in html and "Answer quality over time" in html
    table = html[html.index('class="quality"') :]
    assert "agreement@k" in table and "full: 1.000 / 0.200" in table  # offline, beside measured
    assert "<td>replica</td>" in table and "<td>primary</td>" in table


def test_report_markdown_summary(tmp_path):
    run = write_run(tmp_path / "r", Synth(slow=4.0))
    md = write_report(run).markdown.read_text()
    assert md.startswith("## ❌ synthetic_kill: FAIL")
    assert "exceeds the SLO of 20 ms" in md
    assert "| window | requests | p50 ms | p95 ms | p99 ms | errors | valid | agreement@k |" in md
    assert "Replay: `recchaos run synthetic.yaml --seed 7`" in md


def test_gateway_stage_hooks(tmp_path):
    run = write_run(tmp_path / "r", Synth())
    details = json.loads((run / "details.json").read_text())
    details["gateway_stages_ms"] = {"features": {"p50": 0.1, "p95": 0.2, "p99": 0.3}}
    (run / "details.json").write_text(json.dumps(details))
    (run / "cluster").mkdir()
    (run / "cluster" / "metrics.txt").write_text(
        'recchaos_request_seconds_bucket{tier="primary",le="0.001"} 50\n'
        'recchaos_request_seconds_bucket{tier="primary",le="0.002"} 100\n'
        'recchaos_request_seconds_bucket{tier="primary",le="+Inf"} 100\n'
    )
    html = write_report(run).html.read_text()
    assert "gateway features" in html and "gateway total" in html
    assert "saved no scrape" not in html  # the client-only note goes away
    [row] = metrics_rows(load_run(run))
    assert abs(row.p50 - 1.0) < 1e-9 and abs(row.p99 - 1.98) < 1e-9


def test_per_stage_rows_from_the_scrapes_before_and_after(tmp_path):
    """What the runner saves: typed Prometheus text twice; the rows are the difference."""
    run = write_run(tmp_path / "r", Synth())
    (run / "cluster").mkdir()

    def text(n_fast: int, n_slow: int) -> str:
        lines = [
            "# HELP recchaos_stage_seconds Gateway time per stage.",
            "# TYPE recchaos_stage_seconds histogram",
        ]
        for stage in ("rank", "retrieve"):
            for le, c in (("0.001", n_fast), ("0.005", n_fast + n_slow), ("+Inf", n_fast + n_slow)):
                lines.append(f'recchaos_stage_seconds_bucket{{stage="{stage}",le="{le}"}} {c}')
            lines.append(f'recchaos_stage_seconds_count{{stage="{stage}"}} {n_fast + n_slow}')
            lines.append(f'recchaos_stage_seconds_sum{{stage="{stage}"}} 0.5')
        return "\n".join(lines) + "\n"

    (run / "cluster" / "metrics-before.txt").write_text(text(1000, 0))
    (run / "cluster" / "metrics-after.txt").write_text(text(1000, 100))
    rows = {r.stage: r for r in metrics_rows(load_run(run))}
    assert set(rows) == {"gateway rank", "gateway retrieve"}
    # only the 100 slow ones happened during the run: all between 1 and 5 ms
    assert 1.0 < rows["gateway rank"].p50 < 5.0 and rows["gateway rank"].source.endswith("before)")
    html = write_report(run).html.read_text()
    assert "gateway rank" in html and "whole load" in html


def test_bucket_quantile_interpolates_like_prometheus():
    hist = parse_histograms(
        'recchaos_shard_call_seconds_bucket{shard="0",copy="p",le="0.01"} 10\n'
        'recchaos_shard_call_seconds_bucket{shard="1",copy="p",le="0.01"} 10\n'
        'recchaos_shard_call_seconds_bucket{shard="0",copy="p",le="0.02"} 20\n'
        'recchaos_shard_call_seconds_bucket{shard="1",copy="p",le="0.02"} 20\n'
        'recchaos_shard_call_seconds_bucket{shard="0",copy="p",le="+Inf"} 20\n'
        'recchaos_shard_call_seconds_bucket{shard="1",copy="p",le="+Inf"} 20\n'
    )
    buckets = hist[("recchaos_shard_call_seconds", "shard call")]
    assert buckets == [(0.01, 20.0), (0.02, 40.0), (float("inf"), 40.0)]  # summed over shards
    assert abs(bucket_quantile(buckets, 0.5) - 0.01) < 1e-12
    assert abs(bucket_quantile(buckets, 0.75) - 0.015) < 1e-12


def test_compare_cli_exits_1_on_a_regression_and_writes_both_outputs(tmp_path, capsys):
    for i in range(3):
        write_run(tmp_path / "base" / f"r{i}", Synth(seed=i))
        write_run(tmp_path / "cur" / f"r{i}", Synth(seed=10 + i, slow=1.4))
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "cur"), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "REGRESSION synthetic_kill / during kill(shard-0-primary) p99" in printed
    assert "Mann-Whitney U on 3 vs 3 runs" in (out / "compare.html").read_text()
    assert "❌ recchaos compare: REGRESSION" in (out / "compare.md").read_text()
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "base"), "--out", str(out)]) == 0


def test_compare_history_batches_with_benchmarks_and_set_baseline(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    bench = {"benchmarks": [{"name": "test_routing", "stats": {"median": 1e-6}}]}
    for batch, slow in (("b1", 1.0), ("b2", 1.0)):
        for i in range(3):
            history.append_run(
                write_run(tmp_path / batch / f"r{i}", Synth(seed=i, slow=slow)), db, batch=batch
            )
            f = tmp_path / f"{batch}-{i}.json"
            f.write_text(json.dumps(bench))
            history.append_benchmarks(f, db, batch)
    args = [
        "compare",
        "history:b1",
        "history:latest",
        "--db",
        str(db),
        "--out",
        str(tmp_path / "o"),
        "--set-baseline",
    ]
    assert main(args) == 0
    assert "baseline: batch b2 is now the baseline" in capsys.readouterr().out
    assert "test_routing" in (tmp_path / "o" / "compare.md").read_text()
    assert main(["trend", "--db", str(db), "--out", str(tmp_path / "t")]) == 0
    assert "<svg" in (tmp_path / "t" / "trend.html").read_text()


def test_junit_properties(tmp_path):
    run = write_run(tmp_path / "r", Synth())
    props = dict(properties(read_record(run / "run.json").to_dict()))
    assert props["recchaos.scenario"] == "synthetic_kill"
    assert props["recchaos.seed"] == "7"
    assert props["recchaos.verdict"] == "PASS"
    assert props["recchaos.replay"] == "recchaos run synthetic.yaml --seed 7"
    assert float(props["recchaos.window[during kill(shard-0-primary)].p99_ms"]) > 0
    assert props["recchaos.fault[0]"].startswith("kill(shard-0-primary) 8.000-13.000 s")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    # the parsed run.json works as well (infinities arrive as "inf" text)
    assert dict(properties(json.loads((run / "run.json").read_text()))) == props


HALT = Halt(
    guard="guards[0]",
    rule="error ratio above 0.5 for 1 s",
    kind="error_ratio",
    value=0.98,
    limit=0.5,
    evidence="error ratio 0.98 (196 of 200 completed requests failed) from 6.0 s to 7.0 s",
    since_s=6.0,
    trip_ns=7_012_000_000,
    trip_wall=0.0,
    healed=("kill(shard-0-primary)",),
    healed_ns=7_015_000_000,
    not_applied=("kill(shard-1-primary) at 20 s",),
)


def test_a_halted_run_shows_the_halt_in_the_html_the_summary_and_junit(tmp_path):
    run = write_run(tmp_path / "r", Synth())
    doc = json.loads((run / "run.json").read_text())
    doc["halt"] = asdict(HALT)
    (run / "run.json").write_text(json.dumps(doc))
    out = write_report(run)
    html = out.html.read_text()
    assert "HALTED by a guard" in html and HALT.message() in html
    assert "halt (guards[0])" in html  # the marker on the latency chart
    assert "the harness knew at 7.012 s and healed at once" in html
    assert "kill(shard-1-primary) at 20 s" in html
    assert f"**HALTED**: {HALT.message()}" in out.markdown.read_text()
    props = dict(properties(doc))
    assert props["recchaos.halt"] == "guards[0]: error ratio above 0.5 for 1 s at 7.012 s"
