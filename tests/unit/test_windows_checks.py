"""Windows aligned to the fault timeline, window statistics from the request log, failover and
recovery times, the judges' verdicts and messages, and how verdicts combine."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.checks import (
    CheckResult,
    RunProblems,
    Verdict,
    combine,
    evaluate,
    judge,
    problem_checks,
    run_verdict,
)
from harness.checks.judge import judge_fault
from harness.checks.run import condition_holds, fault_times, outage_end
from harness.metrics import (
    Window,
    time_to_failover,
    time_to_recover,
    window_stats,
    windows_for,
)
from harness.metrics.windows import unobserved_recoveries
from harness.model.record import FaultEvent
from harness.model.requestlog import NOT_CHECKED, TIERS, empty_log, error_code
from harness.model.scenario import load_scenario
from harness.model.slo import Evidence, SLOSpec

KILL = FaultEvent(
    "kill", "shard-1-primary", {}, "faults[0]", 12 * 10**9, 1e9, 22 * 10**9, 1e9 + 10, verified=True
)


def event(kind, target, start, end, verified=True, origin="faults[0]"):
    heal = None if end is None else int(end * 1e9)
    return FaultEvent(kind, target, {}, origin, int(start * 1e9), 0.0, heal, None, verified)


def synth(duration_s, rate, behave):
    """A request log: ``behave(t_s) -> (latency_ms, tier index, ok)`` as arrays."""
    n = int(duration_s * rate)
    rows = empty_log(n)
    t = (np.arange(n) * (1e9 / rate)).astype(np.int64)
    rows["intended_ns"] = t
    rows["send_ns"] = t + 100_000
    lat_ms, tier, ok = behave(t / 1e9)
    rows["done_ns"] = rows["send_ns"] + (np.asarray(lat_ms) * 1e6).astype(np.int64)
    rows["status"] = np.where(ok, 200, 503)
    rows["tier"] = np.where(ok, tier, -1)
    rows["error_kind"] = np.where(ok, 0, error_code("http_status"))
    # Every answer valid and the full model's own (the scenarios' quality SLOs hold); the
    # quality checks themselves are tested in test_answer_quality.py.
    rows["answer"] = np.where(ok, 0, NOT_CHECKED)
    rows["agreement"] = np.where(ok, 1.0, np.nan)
    rows["ndcg"] = np.where(ok, 0.2, np.nan)
    return rows


def healthy(t):
    return np.full(t.shape, 2.0), np.zeros(t.shape, int), np.ones(t.shape, bool)


def failover_run(during_ms=4.0):
    def behave(t):
        killed = (t >= 12) & (t < 22)
        lat = np.where(killed, during_ms, 2.0)
        tier = np.where(killed, TIERS.index("replica"), TIERS.index("primary"))
        return lat, tier, np.ones(t.shape, bool)

    return synth(40, 200, behave)


# windows ----------------------------------------------------------------------------------
def test_no_faults_one_steady_window_after_warmup():
    assert windows_for([], 0.0, 40.0, 5.0, 2.0) == (Window("steady", 5.0, 40.0, "steady"),)
    assert windows_for([], 0.0, 4.0, 5.0, 2.0) == ()


def test_before_during_after_one_fault():
    w = windows_for([KILL], 0.0, 40.0, 5.0, 2.0)
    assert [(x.name, x.start_s, x.end_s, x.kind, x.fault) for x in w] == [
        ("before kill(shard-1-primary)", 5.0, 12.0, "before", 0),
        ("during kill(shard-1-primary)", 12.0, 22.0, "during", 0),
        ("after kill(shard-1-primary)", 24.0, 40.0, "after", 0),
    ]
    assert w[1].describe() == "during kill(shard-1-primary) window [12.0 s, 22.0 s]"
    assert w[1].active == (0,) and w[0].active == ()


def test_unhealed_fault_has_no_after_window():
    w = windows_for([event("freeze", "gateway", 10, None)], 0.0, 30.0, 5.0, 2.0)
    assert [(x.kind, x.end_s) for x in w] == [("before", 10.0), ("during", 30.0)]


def test_a_heal_too_close_to_the_end_for_an_after_window_is_named():
    late = event("kill", "shard-0-primary", 10, 22.5)
    assert windows_for([late], 0.0, 23.5, 5.0, 2.0)[-1].kind == "during"
    [sentence] = unobserved_recoveries([late], 23.5, 2.0)
    assert sentence.startswith("no after window for kill(shard-0-primary): it healed at 22.5 s")
    assert unobserved_recoveries([late], 24.6, 2.0) == ()  # an after window exists
    assert unobserved_recoveries([event("freeze", "gateway", 10, None)], 23.5, 2.0) == ()
    assert unobserved_recoveries([event("kill", "redis", 10, 30)], 23.5, 2.0) == ()


def test_overlapping_faults_have_no_quiet_window_between():
    a, b = event("kill", "shard-0-primary", 10, 20), event("kill", "shard-0-replica", 15, 25)
    w = windows_for([a, b], 0.0, 40.0, 5.0, 2.0)
    assert [(x.name, x.start_s, x.end_s) for x in w] == [
        ("before kill(shard-0-primary)", 5.0, 10.0),
        ("during kill(shard-0-primary)", 10.0, 20.0),
        ("during kill(shard-0-replica)", 15.0, 25.0),
        ("after kill(shard-0-replica)", 27.0, 40.0),
    ]
    assert w[1].active == (0, 1)


def test_repeated_faults_get_unique_names_and_follow_each_other():
    a, b = event("kill", "gateway", 10, 12), event("kill", "gateway", 20, 22)
    w = windows_for([a, b], 0.0, 30.0, 5.0, 2.0)
    names = [x.name for x in w]
    assert len(set(names)) == len(names) and "during kill(gateway) #2" in names
    after_first = next(x for x in w if x.name == "after kill(gateway) #1")
    assert (after_first.start_s, after_first.end_s) == (14.0, 20.0)


def test_window_round_trip():
    w = windows_for([KILL], 0.0, 40.0, 5.0, 2.0)[1]
    assert Window.from_dict(w.to_dict()) == w


# statistics -------------------------------------------------------------------------------
def test_window_stats_counts_percentiles_shares():
    def behave(t):
        fail = (np.arange(t.size) % 100) == 0  # 1% failures
        slow = (np.arange(t.size) % 100) == 1  # 1% above the SLA
        lat = np.where(slow, 30.0, 2.0)
        tier = np.where(np.arange(t.size) % 10 == 2, TIERS.index("replica"), 0)
        return lat, tier, ~fail

    rows = synth(10, 100, behave)
    s = window_stats(rows, Window("steady", 0.0, 10.0, "steady"), sla_ms=20)
    assert (s.count, s.sent, s.successes, s.errors) == (1000, 1000, 990, 10)
    assert s.error_ratio == pytest.approx(0.01)
    assert s.within_sla == 980 and s.misses == 20 and s.within_sla_share == pytest.approx(0.98)
    assert s.latency.p50 == pytest.approx(2.1, abs=0.01)  # from the intended send time
    assert s.service.p50 == pytest.approx(2.0, abs=0.01)  # from the actual send
    assert s.latency.max == pytest.approx(30.1, abs=0.05)
    assert s.latency_all.p999 == math.inf and s.latency_all.p50 == s.latency.p50
    assert s.tier_share("replica") == pytest.approx(0.1) and s.tier_share("degraded") == 0
    assert s.error_kinds == {"http_status": 10}
    assert s.lag_p99_ms == pytest.approx(0.1, abs=0.001) and s.sent_ratio == 1.0
    assert s.metric("p99", include_errors=False) == s.latency.p99
    assert s.metric("tier_share", tier="primary") == pytest.approx(0.89)
    d = s.to_dict()
    assert d["count"] == 1000 and d["latency_with_errors_ms"]["p99.9"] == math.inf


def test_unsent_requests_count_against_the_window():
    rows = synth(10, 100, healthy)
    rows["send_ns"][:50] = -1
    rows["done_ns"][:50] = -1
    rows["status"][:50] = 0
    rows["error_kind"][:50] = error_code("not_sent")
    s = window_stats(rows, Window("steady", 0.0, 10.0, "steady"), sla_ms=20)
    assert s.sent_ratio == 0.95 and s.errors == 50 and s.error_kinds == {"not_sent": 50}


def test_window_stats_of_a_long_run_count_every_request_once():
    # Its cost: benchmarks/test_components.py::test_window_stats.
    rows = synth(1000, 200, healthy)  # 200,000 requests
    wins = windows_for(
        [event("kill", "gateway", t, t + 5) for t in range(100, 900, 100)], 0.0, 1000.0, 5.0, 2.0
    )
    stats = [window_stats(rows, w, 20) for w in wins]
    assert sum(s.count for s in stats if s.window.kind == "during") == 8 * 5 * 200


def test_time_to_failover_and_recover():
    def behave(t):
        dead = (t >= 12) & (t < 12.01)  # 10 ms of errors, then the replica serves
        killed = (t >= 12) & (t < 22)
        lat = np.where(killed, 5.0, 2.0)
        tier = np.where(killed, TIERS.index("replica"), 0)
        return lat, tier, ~dead

    rows = synth(40, 1000, behave)
    f = time_to_failover(rows, 12.0, 22.0, sla_ms=20)
    assert f.first_replica_ms == pytest.approx(10.0 + 0.1 + 5.0, abs=0.01)
    assert f.last_miss_ms == pytest.approx(9.0 + 0.1 + 5.0, abs=0.01)  # last failure completed
    assert f.misses == 10 and f.requests == 10_000
    r = time_to_recover(rows, 22.0, 40.0)
    assert r.first_primary_ms == pytest.approx(0.1 + 2.0, abs=0.01)
    assert r.last_non_primary_ms == 0.0 and r.requests == 18_000
    healthy_rows = synth(40, 100, healthy)
    assert time_to_failover(healthy_rows, 12.0, 22.0).first_replica_ms is None


# judges -----------------------------------------------------------------------------------
SLO_P99 = SLOSpec("p99", "at_most", 20.0, origin="slos[0]")
WHERE = "scenarios/primary_kill.yaml, slos[0]"


def during_stats(rows, verified=True):
    w = windows_for([event("kill", "shard-1-primary", 12, 22, verified)], 0.0, 40.0, 5.0, 2.0)
    return window_stats(rows, next(x for x in w if x.kind == "during"), 20)


def test_fail_message_names_value_window_limit_and_where():
    r = judge(
        SLO_P99, during_stats(failover_run(143.2)), where=WHERE, sla_ms=20, evidence=Evidence()
    )
    assert r.verdict is Verdict.FAIL
    assert r.message == (
        "p99 143.4 ms during kill(shard-1-primary) window [12.0 s, 22.0 s] exceeds the SLO of"
        " 20.0 ms (scenarios/primary_kill.yaml, slos[0]); 2,000 requests in the window;"
        " 95% CI [143.2, 143.4] ms (ranks 1,971 and 1,989 of 2,000)"
    )
    assert (r.limit, r.window, r.where) == (20.0, "during kill(shard-1-primary)", WHERE)


def test_pass_message():
    r = judge(SLO_P99, during_stats(failover_run()), where=WHERE, sla_ms=20, evidence=Evidence())
    assert r.verdict is Verdict.PASS
    assert re.fullmatch(
        r"p99 4\.1 ms during .* is within the SLO of at most 20\.0 ms \(.*\);"
        r" 2,000 requests in the window; 95% CI \[4\.1, 4\.1\] ms \(ranks 1,971 and 1,989 of"
        r" 2,000\)",
        r.message,
    )


def test_failures_make_error_inclusive_percentiles_infinite():
    rows = failover_run()
    rows["status"][2500:2600] = 503
    r = judge(SLO_P99, during_stats(rows), where=WHERE, sla_ms=20, evidence=Evidence())
    assert r.verdict is Verdict.FAIL and "p99 inf ms" in r.message and "100 failed" in r.message
    success_only = SLOSpec("p99", "at_most", 20.0, include_errors=False)
    assert (
        judge(success_only, during_stats(rows), where=WHERE, sla_ms=20, evidence=Evidence()).verdict
        is Verdict.PASS
    )
    rows["status"][:] = 503
    r = judge(success_only, during_stats(rows), where=WHERE, sla_ms=20, evidence=Evidence())
    assert r.verdict is Verdict.FAIL and "no successful request to measure: all 2,000" in r.message


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        ("samples", "only 2,000 requests, fewer than the 5,000 needed"),
        ("lag", "the load generator lagged (send lag p99 9.1 ms, limit 5.0 ms)"),
        ("sent", "the load generator sent only 90% of the 2,000 intended requests"),
        ("unverified", "the fault kill(shard-1-primary) was not shown to take effect"),
    ],
)
def test_weak_evidence_is_inconclusive_never_pass(spoil, fragment):
    rows = failover_run()
    evidence = Evidence(min_samples=5000 if spoil == "samples" else 100)
    if spoil == "lag":
        rows["send_ns"] += 9_000_000
        rows["done_ns"] += 9_000_000
    if spoil == "sent":
        rows["send_ns"][2400:2600] = -1
    stats = during_stats(rows, verified=spoil != "unverified")
    slo = SLOSpec("p99", "at_most", 1000.0)  # would pass on the value alone
    r = judge(slo, stats, where=WHERE, sla_ms=20, evidence=evidence)
    assert r.verdict is Verdict.INCONCLUSIVE
    assert fragment in r.message and "cannot be judged" in r.message and WHERE in r.message


@given(st.lists(st.sampled_from(list(Verdict)), max_size=8))
def test_combine(verdicts):
    got = combine(verdicts)
    if Verdict.FAIL in verdicts:
        assert got is Verdict.FAIL
    elif Verdict.INCONCLUSIVE in verdicts or not verdicts:
        assert got is Verdict.INCONCLUSIVE
    else:
        assert got is Verdict.PASS
    assert combine([]) is Verdict.INCONCLUSIVE


def test_verdict_exit_codes_and_result_round_trip():
    assert [v.exit_code for v in Verdict] == [0, 1, 3]
    r = CheckResult(Verdict.FAIL, "m", 1.0, 2.0, "w", "x.yaml, slos[0]", "p99")
    assert CheckResult.from_dict(r.to_dict()) == r


# whole runs -------------------------------------------------------------------------------
def test_evaluate_primary_kill_pass_and_fail():
    s = load_scenario("scenarios/primary_restart.yaml")  # a kill, then the restart
    good = evaluate(s, failover_run(), [KILL], 40.0)
    assert good.verdict is Verdict.PASS, [c.message for c in good.checks if c.verdict != "PASS"]
    metrics = {c.metric for c in good.checks}
    assert {"p99", "tier_share", "time_to_failover", "time_to_recover"} <= metrics
    bad = evaluate(s, failover_run(143.2), [KILL], 40.0)
    assert bad.verdict is Verdict.FAIL
    failed = [c.message for c in bad.checks if c.verdict is Verdict.FAIL]
    assert any(
        m.startswith("p99 143.4 ms during kill(shard-1-primary) window [12.0 s, 22.0 s]")
        and "(scenarios/primary_restart.yaml, slos[0])" in m
        for m in failed
    )
    assert any("time to failover" in m and "exceeds the SLO of 20.0 ms" in m for m in failed)


def test_evaluate_unverified_fault_is_inconclusive():
    s = load_scenario("scenarios/primary_kill.yaml")
    unverified = FaultEvent(**{**KILL.__dict__, "verified": False, "note": "pid still alive"})
    result = evaluate(s, failover_run(), [unverified], 40.0)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert any("was not shown to take effect: pid still alive" in c.message for c in result.checks)


def test_slo_with_nothing_to_judge_is_inconclusive():
    s = load_scenario("scenarios/primary_kill.yaml")
    result = evaluate(s, failover_run(), [], 40.0)  # the kill never happened
    assert result.verdict is Verdict.INCONCLUSIVE
    assert any("had nothing to judge" in c.message for c in result.checks)


def test_unless_both_copies_dead():
    a, b = event("kill", "shard-1-primary", 10, 20), event("kill", "shard-1-replica", 15, 25)
    other = event("kill", "shard-2-replica", 15, 25)
    wins = windows_for([a, b], 0.0, 40.0, 5.0, 2.0)
    during_a = next(w for w in wins if w.name == "during kill(shard-1-primary)")
    assert condition_holds("both_copies_dead", during_a, [a, b])
    wins = windows_for([a, other], 0.0, 40.0, 5.0, 2.0)
    during_a = next(w for w in wins if w.name == "during kill(shard-1-primary)")
    assert not condition_holds("both_copies_dead", during_a, [a, other])
    region = event("region_down", "region", 10, 20)
    w = windows_for([region], 0.0, 40.0, 5.0, 2.0)[1]
    assert condition_holds("region_down", w, [region])


def test_a_fault_that_was_not_applied_makes_the_run_inconclusive_and_says_why():
    """A planned fault that failed to apply (and requests unaccounted for) are INCONCLUSIVE
    checks of their own, after the SLO checks, never a silent verdict."""
    s = load_scenario("scenarios/primary_kill.yaml")
    log = failover_run()
    problem = "redis_down(redis) (faults[1]) failed to apply: no process 4242"
    problems = RunProblems(faults=(problem,), unaccounted=("3 vanished",))
    plain = evaluate(s, log, [KILL], 40.0)
    judged = evaluate(s, log, [KILL], 40.0, problems=problems)
    assert plain.verdict is Verdict.PASS  # but for the problems
    assert judged.verdict is Verdict.INCONCLUSIVE
    assert judged.checks[: len(plain.checks)] == plain.checks
    assert judged.checks[len(plain.checks) :] == (
        CheckResult(Verdict.INCONCLUSIVE, problem, None, None, None, "faults", "fault"),
        CheckResult(
            Verdict.INCONCLUSIVE,
            "requests not accounted for: 3 vanished",
            None,
            None,
            None,
            "load",
            "accounting",
        ),
    )


def test_a_failed_heal_makes_a_pass_inconclusive_and_leaves_a_fail_a_fail():
    s = load_scenario("scenarios/primary_kill.yaml")
    healed_badly = RunProblems(heal_errors=("kill(shard-1-primary): start timed out",))
    good = evaluate(s, failover_run(), [KILL], 40.0, problems=healed_badly)
    assert good.verdict is Verdict.INCONCLUSIVE
    assert all(c.verdict is Verdict.PASS for c in good.checks)  # the error is the record's
    bad = evaluate(s, failover_run(143.2), [KILL], 40.0, problems=healed_badly)
    assert bad.verdict is Verdict.FAIL


@given(
    st.lists(st.sampled_from(list(Verdict)), max_size=6),
    st.lists(st.text(max_size=5), max_size=2),
    st.lists(st.text(max_size=5), max_size=2),
    st.booleans(),
)
def test_problems_never_make_a_pass_nor_hide_a_fail(verdicts, faults, unaccounted, heal_failed):
    checks = tuple(CheckResult(v, "m", None, None, None, "x") for v in verdicts)
    problems = RunProblems(tuple(faults), tuple(unaccounted), ("h",) if heal_failed else ())
    verdict = run_verdict(checks + problem_checks(problems), problems)
    if Verdict.FAIL in verdicts:
        assert verdict is Verdict.FAIL
    elif problems or not verdicts or Verdict.INCONCLUSIVE in verdicts:
        assert verdict is Verdict.INCONCLUSIVE
    else:
        assert verdict is Verdict.PASS


def test_recovery_is_counted_from_the_end_of_the_outage_a_heal_belongs_to():
    # A whole-cluster restart: the gateway heals at 21 s, the shards (still down until then)
    # at 24.4 s; the first primary answer comes at 24.6 s. A replica-only permanent fault
    # (never healed) does not hold the clock back.
    gateway = event("restart", "gateway", 6, 21)
    shard = event("restart", "shard-0-primary", 6, 24.4, origin="faults[1]")
    forever = event("kill", "shard-2-replica", 3, None, origin="faults[2]")
    timeline = [gateway, shard, forever]
    assert outage_end(timeline, 21.0) == 24.4 and outage_end(timeline, 24.4) == 24.4

    def behave(t):
        up = t >= 24.6
        return np.full(t.shape, 3.0), np.where(up, 0, TIERS.index("replica")), (t < 6) | (t >= 21)

    rows = synth(40, 200, behave)
    times = fault_times(rows, timeline, 40.0, 20.0)
    assert times[0].recovery.from_s == 24.4 and times[1].recovery.from_s is None
    assert times[0].recovery.first_primary_ms == pytest.approx(200 + 3.0, abs=6)
    slo = SLOSpec("time_to_recover", "at_most", 2000.0, origin="slos[0]")
    check = judge_fault(slo, gateway, times[0].recovery, where=WHERE, evidence=Evidence())
    assert check.verdict is Verdict.PASS
    assert "after the heal of restart(gateway) at 21.0 s (counted from 24.4 s" in check.message
