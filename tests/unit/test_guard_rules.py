"""Guards: the ``guards:`` reader, the trip rule (a condition held without a break for
``for_s``), the error-ratio and health guards fed with samples, the watch that runs them with a
fake clock and probe, and the FAIL a halt gives. Pure: no server, no sleep."""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.checks.guards import ErrorRatioGuard, HealthGuard, Sustained, halt_check
from harness.checks.run import evaluate
from harness.checks.verdict import Verdict
from harness.model.errors import ScenarioError
from harness.model.guards import GuardSpec
from harness.model.record import Halt, RunRecord
from harness.model.requestlog import TIERS, empty_log
from harness.model.scenario import scenario_from_dict, validate_scenario
from harness.runner.guards import GuardWatch, halt

BASE = {
    "name": "g",
    "seed": 1,
    "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
    "load": [{"name": "main", "rate": 100, "duration_s": 30}],
    "slos": [{"metric": "p99", "at_most": 20}],
}
RATIO = {"kind": "error_ratio", "above": 0.5, "for_s": 3}
HEALTH = {"kind": "health", "path": "/healthz", "for_s": 1, "timeout_ms": 200, "every_s": 0.5}


def with_guards(*guards: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["guards"] = list(guards)
    return d


def problems(*guards: Any) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(with_guards(*guards), "g.yaml")
    return [p.describe() for p in info.value.problems]


# -- the reader ---------------------------------------------------------------------------------


def test_guards_are_read_with_defaults_and_round_trip():
    s = scenario_from_dict(with_guards(RATIO, {"kind": "health"}), "g.yaml")
    ratio, health = s.guards
    assert ratio == GuardSpec("error_ratio", 3.0, 0.5)
    assert ratio.origin == "guards[0]" and health.origin == "guards[1]"
    assert (health.path, health.timeout_ms, health.every_s, health.for_s) == (
        "/healthz",
        500.0,
        0.5,
        0.0,
    )
    assert ratio.describe() == "error ratio above 0.5 for 3 s"
    assert health.describe() == "GET /healthz failing (not 2xx within 500 ms)"
    assert validate_scenario(s).guards == s.guards
    assert scenario_from_dict(BASE, "g.yaml").guards == ()


@pytest.mark.parametrize(
    "guard, expected",
    [
        (
            {"kind": "error_ratio"},
            "guards[0].above: got missing; allowed: a share from 0 to below 1",
        ),
        (
            {"kind": "error_ratio", "above": 1},
            "guards[0].above: got 1; allowed: a share from 0 to below 1 (none is above 1)",
        ),
        ({"kind": "eror_ratio", "above": 0.5}, "did you mean 'error_ratio'?"),
        (
            {"kind": "error_ratio", "above": 0.5, "path": "/healthz"},
            "guards[0].path: got '/healthz'; allowed: no path on a error_ratio guard; "
            "path is for health",
        ),
        ({"kind": "health", "path": "healthz"}, "allowed: a URL path starting with /"),
        ({"kind": "health", "for_s": -1}, "guards[0].for_s: got -1; allowed: a number >= 0"),
        (
            {"kind": "health", "timeout_ms": 900, "every_s": 0.5},
            "guards[0].timeout_ms: got 900; allowed: at most every_s (500 ms); a probe must "
            "finish before the next one is due",
        ),
        ({"kind": "health", "evry_s": 1}, "unknown key; did you mean 'every_s'?"),
    ],
)
def test_a_bad_guard_is_refused_naming_the_field_the_value_and_what_is_allowed(guard, expected):
    found = problems(guard)
    assert any(expected in p for p in found), found


def test_guards_must_be_a_list():
    assert any("guards: got" in p and "a list of guards" in p for p in problems_raw("x"))


def problems_raw(value: Any) -> list[str]:
    d = copy.deepcopy(BASE)
    d["guards"] = value
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(d, "g.yaml")
    return [p.describe() for p in info.value.problems]


# -- the trip rule ------------------------------------------------------------------------------


def test_sustained_trips_after_for_s_without_a_break_and_resets_on_a_good_sample():
    rule = Sustained(2.0)
    assert not rule.update(0, 1, True)
    assert not rule.update(1, 2, False)  # reset
    assert not rule.update(2, 3, True)
    assert not rule.update(3, 4, None)  # no evidence: neither breaks nor resets
    assert rule.update(4, 5, True)  # held from 2 s to 5 s
    assert rule.since == 2


def first_trip(for_s: float, samples: list[tuple[float, bool | None]]) -> float | None:
    """The oracle: the end of the first sample at which a run of holding samples (gaps of no
    evidence allowed) reaches back ``for_s``; samples are consecutive intervals of the given
    lengths from t = 0."""
    t, since = 0.0, None
    for length, holds in samples:
        start, t = t, t + length
        if holds is None:
            continue
        if not holds:
            since = None
            continue
        since = start if since is None else since
        if t - since >= for_s - 1e-9:
            return t
    return None


@given(
    st.floats(0, 5),
    st.lists(st.tuples(st.floats(0.1, 2), st.sampled_from([True, False, None])), max_size=30),
)
def test_sustained_trips_exactly_when_the_oracle_does(for_s, samples):
    rule, t, tripped_at = Sustained(for_s), 0.0, None
    for length, holds in samples:
        start, t = t, t + length
        if rule.update(start, t, holds):
            tripped_at = t
            break
    assert tripped_at == first_trip(for_s, samples)


# -- the error-ratio guard ----------------------------------------------------------------------


def line(t: float, answered: int, failed: int, missed: int = 0, worker: int = 0) -> dict[str, Any]:
    return {
        "event": "progress",
        "worker": worker,
        "elapsed_s": t,
        "answered": answered,
        "failed": failed,
        "missed": missed,
    }


def ratio_guard(**kw: Any) -> ErrorRatioGuard:
    spec = GuardSpec("error_ratio", kw.pop("for_s", 3.0), 0.5, origin="guards[0]", **kw)
    return ErrorRatioGuard(spec)


def test_error_ratio_trips_on_the_third_failing_second_and_names_the_evidence():
    g = ratio_guard()
    assert g.observe(line(1, 100, 0)) is None
    assert g.observe(line(2, 110, 90)) is None  # 90 of 100 failed, from 1 s
    assert g.observe(line(3, 115, 185)) is None
    trip = g.observe(line(4, 120, 170, missed=110))  # 95 of 100 bad (failed or never sent)
    assert trip is not None
    assert (trip.since_s, trip.at_s) == (1.0, 4.0)
    assert trip.value == pytest.approx(280 / 300)
    assert trip.evidence == (
        "error ratio 0.93 (280 of 300 completed requests failed) from 1.0 s to 4.0 s"
    )


def test_error_ratio_resets_on_a_good_second_and_ignores_thin_seconds():
    g = ratio_guard()
    g.observe(line(1, 0, 100))
    g.observe(line(2, 0, 200))
    assert g.observe(line(3, 100, 200)) is None  # a good second: reset
    assert g.observe(line(4, 100, 300)) is None
    assert g.observe(line(5, 100, 305)) is None  # 5 requests: below min_requests, no evidence
    trip = g.observe(line(6, 100, 400))  # held from 3 s: the thin second did not break it
    assert trip is not None and (trip.since_s, trip.at_s) == (3.0, 6.0)
    assert "(195 of 195 completed requests failed)" in trip.evidence  # thin second left out


def test_error_ratio_is_at_most_the_limit_does_not_trip():
    g = ratio_guard(for_s=0.0)
    assert g.observe(line(1, 50, 50)) is None  # 0.5 is not above 0.5
    assert g.observe(line(2, 99, 102)) is not None


def test_error_ratio_reads_each_workers_own_counts():
    g = ratio_guard(for_s=2.0)
    assert g.observe(line(1, 0, 50, worker=0)) is None
    assert g.observe(line(1, 50, 0, worker=1)) is None  # worker 1 was fine: reset
    assert g.observe(line(2, 0, 100, worker=0)) is None
    trip = g.observe(line(3, 0, 150, worker=0))
    assert trip is not None and trip.since_s == 1.0


def test_a_line_without_counts_is_ignored():
    assert ratio_guard(for_s=0.0).observe({"event": "progress"}) is None


# -- the health guard ---------------------------------------------------------------------------


def test_health_trips_when_probes_fail_for_for_s_and_names_the_last_answer():
    g = HealthGuard(GuardSpec("health", 1.0, origin="guards[1]"))
    assert g.observe(0.0, 0.01, False, "HTTP 503") is None
    assert g.observe(0.5, 0.51, True, "HTTP 200") is None
    assert g.observe(1.0, 1.5, False, "no answer within 500 ms") is None
    trip = g.observe(1.5, 2.0, False, "no answer within 500 ms")
    assert trip is not None and trip.value is None and (trip.since_s, trip.at_s) == (1.0, 2.0)
    assert trip.evidence == (
        "GET /healthz failed 2 times in a row from 1.0 s to 2.0 s (last: no answer within 500 ms)"
    )


# -- the watch ----------------------------------------------------------------------------------


class Clock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def test_the_watch_trips_once_on_progress_and_keeps_the_time_it_knew():
    clock = Clock(10_000_000_000)
    trips: list[Any] = []
    spec = GuardSpec("error_ratio", 0.0, 0.5, origin="guards[0]")
    watch = GuardWatch([spec], "http://t.invalid/", 4_000_000_000, trips.append, clock=clock)
    watch.on_progress(line(5.9, 0, 100))
    clock.ns += 1
    watch.on_progress(line(6.9, 0, 200))  # a second trip is not reported again
    assert len(trips) == 1 and watch.trip is trips[0]
    assert watch.trip_ns == 6_000_000_000


def test_the_watch_probes_the_health_path_and_stops_probing_after_a_trip():
    seen: list[tuple[str, float]] = []
    tripped = threading.Event()

    def probe(url: str, timeout_s: float) -> tuple[bool, str]:
        seen.append((url, timeout_s))
        return False, "HTTP 503"

    spec = GuardSpec("health", 0.0, timeout_ms=200.0, every_s=0.05, origin="guards[0]")
    watch = GuardWatch([spec], "http://t.invalid/", 0, lambda trip: tripped.set(), probe)
    watch.start()
    try:
        assert tripped.wait(10)
    finally:
        watch.stop()
    assert seen == [("http://t.invalid/healthz", 0.2)]  # one failing probe trips a for_s of 0
    assert watch.trip is not None and "last: HTTP 503" in watch.trip.evidence


def test_stop_ends_a_watch_whose_probes_keep_passing():
    spec = GuardSpec("health", 0.0, timeout_ms=50.0, every_s=0.05, origin="guards[0]")
    watch = GuardWatch([spec], "http://t.invalid", 0, probe=lambda url, t: (True, "HTTP 200"))
    watch.start()
    watch.stop(timeout_s=5)
    assert not any(t.is_alive() for t in watch._threads) and watch.trip is None


class Plan:
    def halt(self) -> tuple[tuple[str, ...], int | None, list[str], tuple[str, ...]]:
        return ("freeze(gateway)",), 6_004_000_000, [], ("kill(shard-1-primary) at 12 s",)


def test_halt_builds_the_record_entry_from_the_trip_and_what_the_plan_healed():
    clock = Clock(10_000_000_000)
    spec = GuardSpec("error_ratio", 3.0, 0.5, origin="guards[0]")
    watch = GuardWatch([spec], "http://t.invalid", 4_000_000_000, clock=clock)
    for t, failed in ((3.0, 0), (4.0, 100), (5.0, 200), (6.0, 300)):
        watch.on_progress(line(t, 0, failed))
    h = halt(watch, Plan())
    assert (h.guard, h.kind, h.limit, h.trip_ns, h.healed_ns) == (
        "guards[0]",
        "error_ratio",
        0.5,
        6_000_000_000,
        6_004_000_000,
    )
    assert h.message() == (
        "guard error ratio above 0.5 for 3 s (guards[0]) tripped at 6.0 s: error ratio 1.00 "
        "(300 of 300 completed requests failed) from 3.0 s to 6.0 s; the run was halted: "
        "healed freeze(gateway) (all healed 4 ms after the trip); 1 planned fault not applied: "
        "kill(shard-1-primary) at 12 s"
    )
    record = RunRecord(scenario={}, seed=1, halt=h)
    assert RunRecord.from_dict(record.to_dict()).halt == h


# -- the verdict --------------------------------------------------------------------------------


def halted(**kw: Any) -> Halt:
    base = dict(
        guard="guards[0]",
        rule="error ratio above 0.5 for 3 s",
        kind="error_ratio",
        value=0.93,
        limit=0.5,
        evidence="error ratio 0.93 (280 of 300 completed requests failed) from 1.0 s to 4.0 s",
        since_s=1.0,
        trip_ns=4_100_000_000,
        trip_wall=0.0,
        healed=("freeze(gateway)",),
        healed_ns=4_102_000_000,
    )
    return Halt(**{**base, **kw})


def test_a_halt_is_a_fail_that_says_why():
    check = halt_check(halted(), "g.yaml, guards[0]")
    assert check.verdict is Verdict.FAIL and check.metric == "guard"
    assert (check.value, check.limit, check.where) == (0.93, 0.5, "g.yaml, guards[0]")
    assert check.message.startswith("guard error ratio above 0.5 for 3 s (guards[0]) tripped")
    assert "healed freeze(gateway) (all healed 2 ms after the trip)" in check.message


def test_a_halted_run_fails_even_when_every_slo_holds():
    s = scenario_from_dict(with_guards(RATIO), "g.yaml")
    n = 3000
    log = empty_log(n)
    log["intended_ns"] = (np.arange(n) * 1e7).astype(np.int64)
    log["send_ns"] = log["intended_ns"]
    log["done_ns"] = log["send_ns"] + 2_000_000
    log["status"] = 200
    log["tier"] = TIERS.index("primary")
    assert evaluate(s, log, (), 30.0).verdict is Verdict.PASS
    ev = evaluate(s, log, (), 30.0, halt=halted())
    assert ev.verdict is Verdict.FAIL
    assert ev.checks[-1].where == "g.yaml, guards[0]"


def test_a_short_probe_interval_shortens_the_default_timeout():
    s = scenario_from_dict(with_guards({"kind": "health", "every_s": 0.2}), "g.yaml")
    assert s.guards[0].timeout_ms == 200.0


def test_a_halt_with_no_active_fault_says_so():
    h = halted(healed=(), healed_ns=None)
    assert "; the run was halted: no fault was active" in h.message()


def test_scenarios_validate_counts_the_guards(tmp_path, capsys):
    import yaml

    from harness import cli

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(with_guards(RATIO, HEALTH)))
    assert cli.main(["scenarios", "validate", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith("1 SLO, 2 guards")
