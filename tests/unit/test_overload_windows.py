"""Surge phases as events of the run's timeline (windows before, during and after a load surge)
and the overload metrics (goodput, served_p99, rejection_p99, shed_share, error_ratio without
shed requests) from synthetic request logs, with their verdicts and messages."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from harness.checks import Verdict, evaluate, judge
from harness.checks.run import fault_times
from harness.metrics import window_stats, windows_for
from harness.metrics.capacity import measure_capacity
from harness.model.errors import ScenarioError
from harness.model.load import LoadPhase, surge_events, with_surges
from harness.model.record import FaultEvent
from harness.model.requestlog import NOT_CHECKED, TIERS, empty_log, error_code
from harness.model.scenario import load_scenario, scenario_from_dict
from harness.model.slo import Evidence, SLOSpec

PHASES = (
    LoadPhase("normal", 200, 10),
    LoadPhase("overload", 1200, 10, surge=True),
    LoadPhase("recover", 200, 10),
)
WHERE = "scenarios/overload.yaml, slos[0]"
SHED = error_code("shed")


def overload_log(shed_every=2, shed_ms=1.0, served_ms=8.0, replica_after_s=0.0):
    """200/s for 10 s, 1,200/s for 10 s (every ``shed_every``-th request shed after
    ``shed_ms``, the rest answered after ``served_ms``), 200/s for 10 s answered in 2 ms at the
    primary tier (at the replica tier for ``replica_after_s`` after the surge)."""
    t = np.concatenate(
        [np.arange(0, 10, 1 / 200), 10 + np.arange(0, 10, 1 / 1200), 20 + np.arange(0, 10, 1 / 200)]
    )
    n = t.size
    rows = empty_log(n)
    rows["intended_ns"] = np.round(t * 1e9).astype(np.int64)
    rows["send_ns"] = rows["intended_ns"] + 100_000
    surge = (t >= 10) & (t < 20)
    shed = surge & (np.arange(n) % shed_every == 0)
    lat = np.where(surge, np.where(shed, shed_ms, served_ms), 2.0)
    rows["done_ns"] = rows["send_ns"] + (lat * 1e6).astype(np.int64)
    rows["status"] = np.where(shed, 503, 200)
    late = (t >= 20) & (t < 20 + replica_after_s)
    rows["tier"] = np.where(shed, -1, np.where(late, TIERS.index("replica"), 0))
    rows["error_kind"] = np.where(shed, SHED, 0)
    rows["answer"] = np.where(shed, NOT_CHECKED, 0)
    rows["agreement"] = np.where(shed, np.nan, 1.0)
    rows["ndcg"] = np.where(shed, np.nan, 0.2)
    return rows


# the model: a surge phase -------------------------------------------------------------------
def test_a_surge_phase_is_an_event_from_its_start_to_its_end():
    [e] = surge_events(PHASES)
    assert (e.kind, e.target, e.origin, e.label) == (
        "surge",
        "overload",
        "load[1]",
        "surge(overload)",
    )
    assert (e.inject_s, e.heal_s, e.verified) == (10.0, 20.0, True)
    assert e.params == {"rate": 1200, "duration_s": 10}
    assert surge_events(PHASES[:1]) == ()


def test_surges_merge_into_the_fault_timeline_in_time_order():
    kill = FaultEvent("kill", "gateway-0", {}, "faults[0]", 5 * 10**9, 0.0, 8 * 10**9, 0.0, True)
    late = FaultEvent("kill", "gateway-1", {}, "faults[1]", 22 * 10**9, 0.0, None, None, True)
    merged = with_surges((kill, late), PHASES)
    assert [e.label for e in merged] == ["kill(gateway-0)", "surge(overload)", "kill(gateway-1)"]


def test_windows_before_during_and_after_a_surge():
    timeline = with_surges((), PHASES)
    w = windows_for(timeline, 0.0, 30.0, 3.0, 2.0)
    assert [(x.name, x.start_s, x.end_s, x.kind, x.fault) for x in w] == [
        ("before surge(overload)", 3.0, 10.0, "before", 0),
        ("during surge(overload)", 10.0, 20.0, "during", 0),
        ("after surge(overload)", 22.0, 30.0, "after", 0),
    ]


def test_surge_round_trips_and_is_validated():
    base = {
        "name": "t",
        "seed": 1,
        "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
        "load": [p.to_dict() for p in PHASES],
        "slos": [{"metric": "goodput", "at_least": 500, "windows": ["during"]}],
    }
    s = scenario_from_dict(copy.deepcopy(base))
    assert [p.surge for p in s.load] == [False, True, False]
    assert scenario_from_dict(s.to_dict()).load == s.load
    bad = copy.deepcopy(base)
    bad["load"][1]["surge"] = "yes"
    bad["load"][2].update(rate=0, surge=True)
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(bad, "s.yaml")
    got = [(p.field, p.value, p.allowed) for p in info.value.problems]
    assert got == [
        ("load[1].surge", "yes", "true or false"),
        ("load[2].surge", True, "surge only on a phase with a rate above 0"),
    ]


@pytest.mark.parametrize(
    "slo, field, allowed",
    [
        ({"metric": "p99", "at_most": 20, "include_shed": False}, "include_shed", "error_ratio"),
        ({"metric": "goodput", "at_least": -1}, "at_least", "answers/s"),
        ({"metric": "shed_share", "above": 2}, "above", "a share of requests"),
        ({"metric": "time_to_recover", "at_most": 1, "fault": {"kind": "surges"}}, "fault", ""),
    ],
)
def test_overload_slo_fields_are_validated(slo, field, allowed):
    d = {
        "name": "t",
        "seed": 1,
        "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
        "load": [p.to_dict() for p in PHASES],
        "slos": [slo],
    }
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(d, "s.yaml")
    [p] = info.value.problems
    assert p.field == f"slos[0].{field}" and allowed in p.allowed


# the metrics -------------------------------------------------------------------------------
def during(rows):
    w = windows_for(with_surges((), PHASES), 0.0, 30.0, 3.0, 2.0)
    return {x.kind: window_stats(rows, x, 20.0) for x in w}


def test_overload_metrics_from_a_request_log():
    s = during(overload_log())["during"]
    assert (s.count, s.shed, s.successes) == (12_000, 6_000, 6_000)
    assert s.shed_share == pytest.approx(0.5)
    assert s.goodput == pytest.approx(600.0)  # 6,000 answers within the SLA in 10 s
    assert s.served_p99 == pytest.approx(8.1, abs=0.01)  # from the intended send
    assert s.rejection_p99 == pytest.approx(1.1, abs=0.01)
    assert s.error_ratio == pytest.approx(0.5) and s.unshed_error_ratio == 0
    assert s.metric("error_ratio", include_shed=False) == 0
    assert math.isinf(s.metric("p99"))  # a shed request is a miss like any failure
    d = s.to_dict()
    assert (d["shed"], d["goodput_per_s"], d["rejection_p99_ms"]) == (6000, 600.0, s.rejection_p99)
    assert "rejection" in d["histograms"]
    quiet = during(overload_log())["before"]
    assert quiet.shed == 0 and math.isnan(quiet.rejection_p99) and quiet.goodput == 200.0


def test_late_answers_are_not_goodput():
    s = during(overload_log(served_ms=30.0))["during"]
    assert s.goodput == 0 and s.served_p99 == pytest.approx(30.1, abs=0.05)


def test_overload_messages_name_value_unit_and_counts():
    s = during(overload_log(shed_ms=3.0))["during"]
    ev = Evidence()
    good = judge(SLOSpec("goodput", "at_least", 540.0), s, where=WHERE, sla_ms=20, evidence=ev)
    assert good.verdict is Verdict.PASS
    assert good.message.startswith(
        "goodput (answers within the 20 ms SLA per second) 600.0 answers/s during"
        " surge(overload) window [10.0 s, 20.0 s] meets the SLO of at least 540.0 answers/s"
    )
    assert "6,000 answered within the 20 ms SLA in 10.0 s" in good.message
    rej = judge(SLOSpec("rejection_p99", "at_most", 2.0), s, where=WHERE, sla_ms=20, evidence=ev)
    assert rej.verdict is Verdict.FAIL
    assert rej.message.startswith(
        "p99 of rejections (shed requests) 3.1 ms during surge(overload) window [10.0 s, 20.0 s]"
        " exceeds the SLO of 2.0 ms"
    )
    assert "6,000 shed" in rej.message and "95% CI" in rej.message
    served = judge(SLOSpec("served_p99", "at_most", 20.0), s, where=WHERE, sla_ms=20, evidence=ev)
    assert served.verdict is Verdict.PASS and "6,000 answered" in served.message
    shed = judge(SLOSpec("shed_share", "above", 0.0), s, where=WHERE, sla_ms=20, evidence=ev)
    assert shed.verdict is Verdict.PASS and "shed share 50%" in shed.message
    errors = SLOSpec("error_ratio", "at_most", 0.0, include_shed=False)
    r = judge(errors, s, where=WHERE, sla_ms=20, evidence=ev)
    assert r.verdict is Verdict.PASS and r.message.startswith(
        "error ratio (shed requests apart) 0%"
    )


def test_a_failed_error_ratio_names_the_failures_by_kind():
    rows = overload_log()
    after = np.flatnonzero(rows["intended_ns"] >= 23 * 10**9)
    rows["status"][after[:2]] = 504  # answered, but by the balancer's gateway timeout
    rows["tier"][after[:2]] = -1
    rows["error_kind"][after[2]] = error_code("timeout")
    s = during(rows)["after"]
    ev = Evidence()
    r = judge(SLOSpec("error_ratio", "at_most", 0.0), s, where=WHERE, sla_ms=20, evidence=ev)
    assert r.verdict is Verdict.FAIL
    assert "1,600 requests in the window (failed: http_status 2, timeout 1)" in r.message
    # shed requests apart: the surge window's 6,000 shed are not named as its failures
    s = during(rows)["during"]
    r = judge(
        SLOSpec("error_ratio", "at_most", 0.0, include_shed=False),
        s,
        where=WHERE,
        sla_ms=20,
        evidence=ev,
    )
    assert r.verdict is Verdict.PASS and "failed:" not in r.message


def test_too_few_rejections_is_inconclusive_not_pass():
    s = during(overload_log(shed_every=200))["during"]  # 60 shed requests
    slo = SLOSpec("rejection_p99", "at_most", 2.0)
    r = judge(slo, s, where=WHERE, sla_ms=20, evidence=Evidence())
    assert r.verdict is Verdict.INCONCLUSIVE
    assert "only 60 shed requests, fewer than the 100 needed to judge a p99" in r.message
    fewer = SLOSpec("rejection_p99", "at_most", 2.0, min_samples=50)
    r = judge(fewer, s, where=WHERE, sla_ms=20, evidence=Evidence())  # passes on the value
    assert r.verdict is Verdict.INCONCLUSIVE
    assert "60 shed requests are too few to bound their p99 from above" in r.message
    slow = during(overload_log(shed_every=200, shed_ms=5.0))["during"]
    r = judge(fewer, slow, where=WHERE, sla_ms=20, evidence=Evidence())  # fails on any bound
    assert r.verdict is Verdict.FAIL and "5.1 ms" in r.message


def test_a_lagging_generator_makes_the_surge_inconclusive():
    rows = overload_log()
    rows["send_ns"] += 9_000_000
    rows["done_ns"] += 9_000_000
    s = during(rows)["during"]
    r = judge(SLOSpec("goodput", "at_least", 1.0), s, where=WHERE, sla_ms=20, evidence=Evidence())
    assert r.verdict is Verdict.INCONCLUSIVE and "the load generator lagged" in r.message


def test_recovery_after_a_surge():
    rows = overload_log(replica_after_s=1.5)
    timeline = with_surges((), PHASES)
    r = fault_times(rows, timeline, 30.0, 20.0)[0].recovery
    assert r is not None and r.last_non_primary_ms == pytest.approx(1500, abs=10)


def synthetic_capacity(spec, held_up_to):
    """The scenario's capacity steps, every rate up to ``held_up_to`` answered in 3 ms, every
    rate above it with a tenth of its requests shed."""
    t = np.concatenate(
        [i * spec.step_s + np.arange(0, spec.step_s, 1 / r) for i, r in enumerate(spec.rates)]
    )
    rate = np.repeat(spec.rates, [round(spec.step_s * r) for r in spec.rates])
    rows = empty_log(t.size)
    rows["intended_ns"] = np.round(t * 1e9).astype(np.int64)
    rows["send_ns"] = rows["intended_ns"]
    shed = (rate > held_up_to) & (np.arange(t.size) % 10 == 0)
    rows["done_ns"] = rows["send_ns"] + 3_000_000
    rows["status"] = np.where(shed, 503, 200)
    rows["error_kind"] = np.where(shed, SHED, 0)
    capacity = measure_capacity(rows, spec, 20.0)
    assert capacity.rate == held_up_to
    return capacity


def test_the_overload_scenario_judges_a_synthetic_run():
    s = load_scenario("scenarios/overload.yaml", profile="pr")
    phases = s.load
    surge = next(p for p in phases if p.surge)
    start = sum(p.duration_s for p in phases[: phases.index(surge)])
    end = start + surge.duration_s
    total = sum(p.duration_s for p in phases)
    t = np.concatenate(
        [
            np.arange(0, start, 1 / phases[0].rate),
            start + np.arange(0, surge.duration_s, 1 / surge.rate),
            end + np.arange(0, total - end, 1 / phases[-1].rate),
        ]
    )
    rows = empty_log(t.size)
    rows["intended_ns"] = np.round(t * 1e9).astype(np.int64)
    rows["send_ns"] = rows["intended_ns"] + 100_000
    inside = (t >= start) & (t < end)
    shed = inside & (np.arange(t.size) % 2 == 0)
    # rejections at 1 ms (answered at once), served answers at 2 ms
    rows["done_ns"] = rows["send_ns"] + np.where(shed, 1_000_000, 2_000_000)
    rows["status"] = np.where(shed, 503, 200)
    rows["tier"] = np.where(shed, -1, 0)
    rows["error_kind"] = np.where(shed, SHED, 0)
    rows["answer"] = np.where(shed, NOT_CHECKED, 0)
    rows["agreement"] = np.where(shed, np.nan, 1.0)
    rows["ndcg"] = np.where(shed, np.nan, 0.2)
    capacity = synthetic_capacity(s.capacity, held_up_to=600)  # the floor: 540 answers/s
    ev = evaluate(s, rows, with_surges((), phases), total, capacity=capacity)
    not_passed = [c.message for c in ev.checks if c.verdict is not Verdict.PASS]
    assert ev.verdict is Verdict.PASS, not_passed
    metrics = {c.metric for c in ev.checks}
    assert {"goodput", "served_p99", "rejection_p99", "shed_share"} <= metrics
    [rejections] = [c for c in ev.checks if c.metric == "rejection_p99"]
    assert not rejections.expected_violation and rejections.value == pytest.approx(1.0, abs=0.2)
    # the same run with its rejections at 5 ms (a queue timeout waited out) fails that check
    rows["done_ns"] = rows["send_ns"] + np.where(shed, 5_000_000, 2_000_000)
    ev = evaluate(s, rows, with_surges((), phases), total)
    failed = [c.metric for c in ev.checks if c.verdict is Verdict.FAIL]
    assert ev.verdict is Verdict.FAIL and failed == ["rejection_p99"]
