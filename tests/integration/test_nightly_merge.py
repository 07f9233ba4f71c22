"""The nightly job's merge step (``scripts/nightly.sh merge``), as the workflow's merge job runs
it: run directories and benchmark files laid out as downloaded artifacts (one folder per
(scenario, round) job), merged into the history, compared with the baseline, trended.

The run directories are synthetic (:mod:`reports.synthetic`): what is tested here is the merge,
not a measurement; ``test_run_outputs.py`` merges real runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reports.synthetic import Synth, write_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("alpha", "beta")
BENCH = {"benchmarks": [{"name": "test_routing", "stats": {"median": 2e-6, "rounds": 5}}]}


def scenario_files(tmp_path: Path) -> str:
    """Scenario files whose ``name:`` matches the synthetic runs (merge counts runs by name)."""
    text = (ROOT / "tests" / "data" / "short_kill.yaml").read_text()
    paths = []
    for name in SCENARIOS:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.replace("name: short_kill", f"name: {name}"))
        paths.append(str(path))
    return " ".join(paths)


def artifacts(root: Path, night: int, slow: dict[str, float], rounds: int = 3) -> Path:
    """``root/night-N``: run-SCENARIO-round-R/BATCH/RUN_DIR and bench-round-R/benchmarks-..."""
    out = root / f"night-{night}"
    for r in range(1, rounds + 1):
        for k, name in enumerate(SCENARIOS):
            run = out / f"run-{name}-round-{r}" / "batch" / f"2026010{night}-00000{r}-{name}-s{k}"
            # the same seeds every night: only `slow` makes a difference between nights
            write_run(run, Synth(name=name, seed=10 * r + k, slow=slow.get(name, 1)))
        bench = out / f"bench-round-{r}" / "batch" / f"benchmarks-round-{r}.json"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(json.dumps(BENCH))
    return out


def merge(tmp_path: Path, night: int, path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "NIGHTLY_SCENARIOS": scenario_files(tmp_path),
        "NIGHTLY_ROUNDS": "3",
        "NIGHTLY_OUT": str(tmp_path / "out"),
        "NIGHTLY_PYTHON": sys.executable,
        "RECCHAOS_BATCH": f"night-{night}",
        "RECCHAOS_HISTORY": str(tmp_path / "out" / "history.sqlite"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / f"step-summary-{night}.md"),
        **env,
    }
    return subprocess.run(
        ["bash", "scripts/nightly.sh", "merge", str(path)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=240,
    )


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout + proc.stderr)[-4000:]


def test_three_nights_baseline_clean_then_regression(tmp_path):
    first = merge(tmp_path, 1, artifacts(tmp_path, 1, {}))
    assert first.returncode == 0, show(first)
    assert "no baseline yet: batch night-1 becomes the baseline" in first.stdout
    assert first.stdout.count("run ") >= 6 and "6 run(s) imported" in first.stdout
    reports = tmp_path / "out" / "reports"
    assert (reports / "night-1" / "trend.html").is_file()
    assert len(list((tmp_path / "night-1").rglob("report.html"))) == 6

    second = merge(tmp_path, 2, artifacts(tmp_path, 2, {}))
    assert second.returncode == 0, show(second)
    assert "baseline: batch night-2 is now the baseline" in second.stdout

    third = merge(tmp_path, 3, artifacts(tmp_path, 3, {"beta": 1.6}))
    assert third.returncode == 1, show(third)
    compare = (reports / "night-3" / "compare.md").read_text()
    assert "REGRESSION" in compare and "beta" in compare
    assert "is now the baseline" not in third.stdout  # a regressed night is not promoted
    summary = (reports / "night-3" / "summary.md").read_text()
    assert summary.startswith("# recchaos nightly night-3") and "## recchaos trend" in summary
    assert (tmp_path / "step-summary-3.md").read_text() == summary
    assert "test_routing" in compare  # the benchmark files were merged too


def test_a_missing_run_and_a_recorded_problem_are_harness_errors(tmp_path):
    night = artifacts(tmp_path, 1, {}, rounds=3)
    for run in (night / "run-beta-round-3").rglob("run.json"):
        run.unlink()  # that runner died before its run directory was uploaded
    problems = night / "run-beta-round-3" / "batch" / "problems.txt"
    problems.write_text("beta.yaml round 3: exit 4 and no run record\n")
    proc = merge(tmp_path, 1, night)
    assert proc.returncode == 4, show(proc)
    summary = (tmp_path / "out" / "reports" / "night-1" / "summary.md").read_text()
    assert "beta.yaml: 2 of 3 complete run(s) arrived" in summary
    assert "beta.yaml round 3: exit 4 and no run record" in summary
    assert "no baseline set" in proc.stdout  # an unclean first night is not a baseline


def test_a_fail_verdict_fails_the_night(tmp_path):
    night = artifacts(tmp_path, 1, {"alpha": 4.0})  # alpha's p99 breaks its 20 ms SLO
    proc = merge(tmp_path, 1, night)
    assert proc.returncode == 1, show(proc)
    assert "❌ FAIL: alpha" in (tmp_path / "out" / "reports" / "night-1" / "summary.md").read_text()


def test_a_corrupt_run_directory_stops_the_merge_before_anything_is_imported(tmp_path):
    night = artifacts(tmp_path, 1, {})
    [victim] = list((night / "run-alpha-round-2").rglob("run.json"))
    doc = json.loads(victim.read_text())
    doc["windows"][0]["histograms"]["response"] = "recchaos-hdr/1 0 0 AAAA"
    victim.write_text(json.dumps(doc))
    proc = merge(tmp_path, 1, night)
    assert proc.returncode == 2, show(proc)
    assert f"{victim}: corrupt: windows[0].histograms.response" in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "history.sqlite").exists()
