"""Capacity measured in the run: the ``capacity`` section, its steps judged from a request log,
and a goodput floor written as a share of it (``of: capacity``)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.checks import Verdict, evaluate
from harness.metrics.capacity import measure_capacity
from harness.model.capacity import CapacitySpec
from harness.model.errors import ScenarioError
from harness.model.requestlog import NOT_CHECKED, empty_log, error_code
from harness.model.scenario import scenario_from_dict

SHED = error_code("shed")


def steps_log(spec: CapacitySpec, shed_share: dict[float, float], latency_ms: float = 3.0):
    """Each step at its rate; at rate r a ``shed_share[r]`` share of requests is shed."""
    parts, shed = [], []
    for i, rate in enumerate(spec.rates):
        t = i * spec.step_s + np.arange(0, spec.step_s, 1 / rate)
        parts.append(t)
        every = int(round(1 / shed_share[rate])) if shed_share.get(rate) else 0
        shed.append(np.arange(t.size) % every == 0 if every else np.zeros(t.size, bool))
    t, is_shed = np.concatenate(parts), np.concatenate(shed)
    rows = empty_log(t.size)
    rows["intended_ns"] = np.round(t * 1e9).astype(np.int64)
    rows["send_ns"] = rows["intended_ns"] + 100_000
    rows["done_ns"] = rows["send_ns"] + int(latency_ms * 1e6)
    rows["status"] = np.where(is_shed, 503, 200)
    rows["tier"] = np.where(is_shed, -1, 0)
    rows["error_kind"] = np.where(is_shed, SHED, 0)
    rows["answer"] = NOT_CHECKED
    return rows


SPEC = CapacitySpec((100.0, 200.0, 300.0, 400.0), 3.0)


def test_capacity_is_the_highest_step_held_up_to_the_first_that_was_not():
    cap = measure_capacity(steps_log(SPEC, {300.0: 0.05}), SPEC, 20.0)
    assert cap.rate == 200.0  # 400/s holds again, after 300/s did not: noise, not capacity
    assert [s.held for s in cap.steps] == [True, True, False, True]
    third = cap.steps[2]
    assert third.count == 600 and third.shed == 30 and third.failed == 0  # last 2 of 3 s
    assert "capacity 200 requests/s, measured in this run" in cap.describe()
    assert "300/s p99 inf (30 shed, 0 failed of 600)" in cap.describe()


def test_no_capacity_when_the_lowest_step_fails_and_a_slow_step_does_not_hold():
    assert measure_capacity(steps_log(SPEC, {100.0: 0.5}), SPEC, 20.0).rate is None
    slow = measure_capacity(steps_log(SPEC, {}, latency_ms=25.0), SPEC, 20.0)
    assert slow.rate is None and "below the lowest step (100 requests/s)" in slow.describe()
    assert measure_capacity(steps_log(SPEC, {}), SPEC, 20.0).rate == 400.0


def scenario(capacity=True, **slo):
    data = {
        "name": "cap",
        "seed": 1,
        "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
        "warmup_s": 0,
        "load": [{"name": "main", "rate": 300, "duration_s": 10}],
        "slos": [{"metric": "goodput", "at_least": 0.9, "of": "capacity", **slo}],
        "profiles": {"nightly": {"capacity": {"step_s": 5}}},
    }
    if capacity:
        data["capacity"] = {"rates": [100, 200, 300, 400], "step_s": 3}
    return data


def load_log(rate=300, seconds=10):
    spec = CapacitySpec((float(rate),), float(seconds))
    return steps_log(spec, {})


def test_a_floor_of_capacity_is_that_share_of_the_rate_measured_in_the_run():
    s = scenario_from_dict(scenario(), "cap.yaml")
    assert s.capacity == SPEC
    assert scenario_from_dict(scenario(), "cap.yaml", profile="nightly").capacity.step_s == 5
    cap = measure_capacity(steps_log(SPEC, {}), SPEC, 20.0)  # 400/s: the floor is 360
    (check,) = evaluate(s, load_log(300), [], 10.0, capacity=cap).checks
    assert check.verdict is Verdict.FAIL and check.limit == pytest.approx(360.0)
    assert "the floor is 0.9 of the capacity 400 requests/s, measured in this run" in check.message
    lower = measure_capacity(steps_log(SPEC, {300.0: 0.05}), SPEC, 20.0)  # 200/s: floor 180
    (check,) = evaluate(s, load_log(300), [], 10.0, capacity=lower).checks
    assert check.verdict is Verdict.PASS and check.limit == pytest.approx(180.0)


def test_a_floor_of_capacity_without_a_measured_capacity_is_inconclusive():
    s = scenario_from_dict(scenario(), "cap.yaml")
    none = measure_capacity(steps_log(SPEC, {100.0: 0.5}), SPEC, 20.0)
    for cap in (none, None):
        (check,) = evaluate(s, load_log(300), [], 10.0, capacity=cap).checks
        assert check.verdict is Verdict.INCONCLUSIVE
        assert "judged against 0.9 of the capacity, and there is none to judge it by" in (
            check.message
        )


@pytest.mark.parametrize(
    ("data", "path", "allowed"),
    [
        (scenario(capacity=False), "slos[0].of", "only in a scenario with a capacity section"),
        (scenario(metric="p99", at_most=20), "slos[0].of", "of only with metric: goodput"),
        (scenario(at_least=5), "slos[0].at_least", "a share of the measured capacity"),
        ({**scenario(), "capacity": {"rates": [300, 200]}}, "capacity.rates", "strictly"),
        ({**scenario(), "capacity": {"rates": []}}, "capacity.rates", "1 to 20 rates"),
        ({**scenario(), "capacity": {"rates": [1], "step_s": 0}}, "capacity.step_s", ">= 1"),
        ({**scenario(), "capacity": {"step_s": 3}}, "capacity.rates", "a list of"),
    ],
)
def test_bad_capacity_input_names_the_field_and_what_is_allowed(data, path, allowed):
    if "metric" in data["slos"][0] and data["slos"][0]["metric"] == "p99":
        data["slos"][0].pop("at_least")
    with pytest.raises(ScenarioError) as err:
        scenario_from_dict(data, "cap.yaml")
    assert path in str(err.value) and allowed in str(err.value)
