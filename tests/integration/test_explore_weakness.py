"""``recchaos explore`` end to end on the bundled recommender: a planted weakness (a strict
primary-tier SLO that a freeze of one primary breaks) is found, confirmed by a re-run, shrunk to
one fault and written as a scenario that validates; nothing the exploration started is left
running."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.model.scenario import load_scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO = Path(__file__).resolve().parents[1] / "data" / "explore_weak.yaml"
TIMEOUT_S = 540


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cluster_pids(explore_dir: Path) -> list[int]:
    pids: list[int] = []
    for path in explore_dir.glob("cluster-*/cluster/components.json"):
        data = json.loads(path.read_text())
        pids += [c["pid"] for c in data.get("components", []) if c.get("pid")]
        pids += [data[k] for k in ("proxy_pid", "redis_pid") if data.get(k)]
    return pids


def test_explore_finds_the_planted_weakness_and_shrinks_it_to_one_fault(tmp_path: Path) -> None:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", "explore", str(SCENARIO), "--budget", "6"]
            + ["--shrink-budget", "12", "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"recchaos explore did not finish within {TIMEOUT_S} s:\n{exc.stdout!s:.3000}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    [explore_dir] = [p for p in tmp_path.iterdir() if p.name.endswith("explore_weak-s3")]
    record = json.loads((explore_dir / "explore.json").read_text())
    assert record["status"] == "complete" and record["verdict"] == "FAIL", output[-4000:]
    minimal = load_scenario(explore_dir / "minimal.yaml")
    assert [(f.kind, f.target) for f in minimal.faults] == [("freeze", "shard-1-primary")]
    first, last = record["first_failing"], record["minimal"]
    assert first["runs_so_far"] <= last["runs_so_far"] <= record["runs"]
    examples = {e["index"]: e for e in record["examples"]}
    assert all(examples[i]["verdict"] == "FAIL" for i in record["shrink_path"])
    assert "Replay the minimal schedule: recchaos run" in output
    assert (explore_dir / "explore.html").exists()
    assert not [p for p in _cluster_pids(explore_dir) if _alive(p)]
    print(
        f"first failing: e{first['index']} ({first['faults']} faults) after"
        f" {first['runs_so_far']} runs; minimal: e{last['index']} after {last['runs_so_far']}"
        f" runs; {record['runs']} runs, {time.monotonic() - started:.0f} s"
    )
