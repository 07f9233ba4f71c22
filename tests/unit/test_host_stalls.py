"""Host stalls in the judgement: which requests a stall may have delayed, and a window check that
fails only on those is INCONCLUSIVE, never PASS; one that fails without them stays FAIL."""

from __future__ import annotations

import numpy as np
import pytest

from harness.checks import Verdict, evaluate
from harness.metrics.stalls import at_least, in_flight_during, spells
from harness.model.errors import ScenarioError
from harness.model.requestlog import NOT_CHECKED, empty_log
from harness.model.scenario import scenario_from_dict
from harness.model.stalls import HostStall

MS = 1_000_000


def steady_log(rate=200, seconds=10, latency_ms=3.0):
    """``rate`` requests/s for ``seconds``, each answered at tier primary in ``latency_ms``."""
    t = np.arange(0, seconds, 1 / rate)
    rows = empty_log(t.size)
    rows["intended_ns"] = np.round(t * 1e9).astype(np.int64)
    rows["send_ns"] = rows["intended_ns"] + 100_000
    rows["done_ns"] = rows["send_ns"] + int(latency_ms * MS)
    rows["status"] = 200
    rows["tier"] = 0
    rows["answer"] = NOT_CHECKED
    return rows


def late_at(rows, start_s, count, latency_ms):
    """The ``count`` requests intended from ``start_s`` on answered after ``latency_ms``."""
    i = int(np.searchsorted(rows["intended_ns"], int(start_s * 1e9)))
    rows["done_ns"][i : i + count] = rows["intended_ns"][i : i + count] + int(latency_ms * MS)
    return rows


def scenario(**evidence):
    data = {
        "name": "stalls",
        "seed": 1,
        "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
        "warmup_s": 0,
        "load": [{"name": "main", "rate": 200, "duration_s": 10}],
        "slos": [
            {"metric": "within_sla", "at_least": 0.999},
            {"metric": "p99", "at_most": 20},
        ],
    }
    if evidence:
        data["evidence"] = evidence
    return scenario_from_dict(data, "stalls.yaml")


def stall(at_s, ms, cpu=1):
    start = int(at_s * 1e9)
    return HostStall(cpu, start, start + int(ms * MS))


def test_a_request_is_in_flight_during_a_stall_from_its_intended_send_to_its_answer():
    rows = empty_log(5)
    rows["intended_ns"] = [0, 10 * MS, 50 * MS, 80 * MS, 90 * MS]
    rows["done_ns"] = [5 * MS, 12 * MS, 55 * MS, 85 * MS, -1]  # the last never answered
    s = HostStall(0, 20 * MS, 30 * MS)
    # margin 20 ms: in flight at some time in [20, 50] ms
    assert in_flight_during(rows, [s], 20 * MS).tolist() == [False, False, True, False, False]
    assert in_flight_during(rows, [s], 60 * MS).tolist() == [False, False, True, True, True]
    assert in_flight_during(rows, [], 20 * MS).tolist() == [False] * 5
    assert at_least([s, stall(1, 2)], 5.0) == (s,)


def test_a_window_failed_only_by_requests_in_a_host_stall_is_inconclusive_with_both_findings():
    rows = late_at(steady_log(), 4.0, 4, 25.0)  # 4 of 2,000 late: 99.8% within the SLA
    (within, p99) = evaluate(scenario(), rows, [], 10.0).checks
    assert within.verdict is Verdict.FAIL and p99.verdict is Verdict.PASS
    ev = evaluate(scenario(), rows, [], 10.0, stalls=[stall(3.995, 12.0)])
    (within, p99) = ev.checks
    assert within.verdict is Verdict.INCONCLUSIVE and ev.verdict is Verdict.INCONCLUSIVE
    assert within.message.startswith("share answered within the 20 ms SLA 99.8%")
    assert "requests were in flight during a host stall (CPU 1 ran nothing for 12.0 ms" in (
        within.message
    )
    assert "without them it does not fail" in within.message
    assert p99.verdict is Verdict.PASS  # a check that passed is left alone


def test_a_window_that_fails_without_the_stalled_requests_too_stays_failed():
    rows = late_at(steady_log(), 4.0, 4, 25.0)
    rows = late_at(rows, 7.0, 4, 25.0)  # late again at 7 s, with no stall then
    (within, _) = evaluate(scenario(), rows, [], 10.0, stalls=[stall(3.995, 12.0)]).checks
    assert within.verdict is Verdict.FAIL
    assert within.message.endswith("and it fails without them too")


def test_a_stall_shorter_than_the_evidence_limit_or_elsewhere_excuses_nothing():
    rows = late_at(steady_log(), 4.0, 4, 25.0)
    short = evaluate(scenario(), rows, [], 10.0, stalls=[stall(3.995, 4.0)])
    assert short.checks[0].verdict is Verdict.FAIL  # 4 ms: below a quarter of the SLA
    elsewhere = evaluate(scenario(), rows, [], 10.0, stalls=[stall(8.0, 12.0)])
    assert elsewhere.checks[0].verdict is Verdict.FAIL
    strict = evaluate(scenario(max_host_stall_ms=15), rows, [], 10.0, stalls=[stall(3.995, 12.0)])
    assert strict.checks[0].verdict is Verdict.FAIL


def test_max_host_stall_ms_is_validated_with_its_place_and_what_is_allowed():
    with pytest.raises(ScenarioError) as err:
        scenario(max_host_stall_ms=1)
    assert "evidence.max_host_stall_ms" in str(err.value) and ">= 2" in str(err.value)


def test_stalls_of_one_cpu_close_together_are_one_spell_of_their_sum():
    a, b = stall(5.0055, 3.83, cpu=0), stall(5.0097, 2.59, cpu=0)
    other = stall(5.0080, 4.0, cpu=1)
    (spell, alone) = spells([a, b, other], 3_000_000)
    assert (spell.cpu, spell.start_ns, spell.end_ns) == (0, a.start_ns, b.end_ns)
    assert spell.stalled_ms == pytest.approx(6.42, abs=0.01) and spell.ms == pytest.approx(6.79)
    assert "CPU 0 ran nothing for 6.4 of 6.8 ms at 5.01 s" == spell.describe()
    assert alone == other  # another CPU's stall stays its own
    assert at_least([spell, alone], 5.0) == (spell,)
    assert spells([a, stall(5.02, 2.59, cpu=0)], 3_000_000) == (a, stall(5.02, 2.59, cpu=0))


def test_two_short_stalls_close_together_excuse_what_one_of_their_length_would():
    rows = late_at(steady_log(), 4.0, 1, 21.0)  # one late answer of 2,000: 99.95%
    rows = late_at(rows, 6.0, 2, 21.0)
    short = [stall(3.998, 3.8), stall(4.0022, 2.6), stall(5.998, 3.0)]
    (within, _) = evaluate(scenario(), rows, [], 10.0, stalls=short).checks
    assert within.verdict is Verdict.FAIL  # the late pair at 6 s had only a 3 ms stall
    short[2] = stall(5.998, 6.0)
    (within, _) = evaluate(scenario(), rows, [], 10.0, stalls=short).checks
    assert within.verdict is Verdict.INCONCLUSIVE
    assert "CPU 1 ran nothing for 6.4 of 6.8 ms at 4.00 s" in within.message
