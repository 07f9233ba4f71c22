"""The plugin's fixtures against a real tiny cluster: ``recommender`` (started once for the
session), ``load`` (open-loop phases) and ``chaos`` (a real fault), and what their assertion
helpers print when they fail."""

from __future__ import annotations

import json

import pytest

from harness.assertions import SLOViolation

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]


def test_load_runs_open_loop_phases_and_judges_every_window(load, recommender):
    run = load(rate=100, duration_s=6, warmup_s=2)
    assert run.record.status == "complete"
    assert run.record.replay == run.replay and f"--chaos-seed {run.seed}" in run.replay
    steady = run.window("steady")
    assert steady.count >= 350, run.summary()  # 4 s of 100/s after the warm-up
    run.assert_no_errors()
    run.assert_tier_share("degraded", at_most=0)
    record = json.loads((run.run_dir / "run.json").read_text())
    assert record["seed"] == run.seed and record["status"] == "complete"
    assert record["files"]["cluster"] == str(recommender.manifest_path.parent)


def test_chaos_kills_a_primary_and_the_replica_serves(chaos, request):
    chaos.kill("shard-0-primary", at_s=3, duration_s=3)
    # The after-window opens once the restarted primary is back and settled (about 8.5 s): 12 s
    # of load leave it 3.5 s, 350 requests, above the 100 a window needs to be judged.
    run = chaos.run(rate=100, duration_s=12, warmup_s=2)
    [kill] = run.timeline
    assert kill.kind == "kill" and kill.target == "shard-0-primary" and kill.verified
    assert kill.heal_ns is not None  # started again by the heal: the next test gets it back
    run.assert_tier_share("replica", above=0, windows=["during"], fault=0)
    run.assert_no_errors()
    with pytest.raises(SLOViolation) as failed:
        run.assert_p99(at_most_ms=0.001, windows=["during"])
    text = str(failed.value)
    assert "p99" in text and "during kill(shard-0-primary) window [" in text
    assert "exceeds the SLO of 0.0 ms" in text
    assert f"({request.node.nodeid}, assert_slo(p99, at_most=0.001" in text
    assert (
        f"Reproduce with: pytest {request.node.nodeid} --chaos-seed {chaos.seed} --chaos-profile pr"
    ) in text
