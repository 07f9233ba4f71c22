"""What the pytest plugin added to the model and the runner's options: SLOs a scenario expects
to be violated (``expect: violated`` + ``reason``), profiles that skip (``skip: REASON``), and
option values parsed with a message that says where a bad one came from."""

from __future__ import annotations

import numpy as np
import pytest

from harness.checks import CheckResult, Verdict, judge
from harness.metrics import window_stats, windows_for
from harness.model.errors import ScenarioError, UsageError
from harness.model.record import FaultEvent
from harness.model.requestlog import empty_log
from harness.model.scenario import scenario_from_dict
from harness.model.slo import Evidence, SLOSpec
from harness.runner.settings import OPTIONS_BY_NAME, RunSettings, apply_overrides


def during_stats(latency_ms: float):
    """A 40 s run at 100/s with a kill from 12 s to 22 s; ``latency_ms`` during the kill."""
    rows = empty_log(4000)
    t = (np.arange(4000) * 10_000_000).astype(np.int64)
    rows["intended_ns"], rows["send_ns"] = t, t
    during = (t >= 12e9) & (t < 22e9)
    rows["done_ns"] = t + np.where(during, latency_ms * 1e6, 2e6).astype(np.int64)
    rows["status"], rows["tier"] = 200, 0
    kill = FaultEvent(
        "kill", "shard-1-primary", {}, "faults[0]", 12 * 10**9, 0.0, 22 * 10**9, None, True
    )
    w = windows_for([kill], 0.0, 40.0, 5.0, 2.0)
    return window_stats(rows, next(x for x in w if x.kind == "during"), 20)


WHERE = "scenarios/shard_latency_50ms.yaml, slos[2]"
SLOW = SLOSpec("p99", "at_most", 20.0, expect="violated", reason="no copy answers in time")


def base(**extra):
    data = {
        "name": "x",
        "seed": 1,
        "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
        "load": [{"name": "main", "rate": 100, "duration_s": 20}],
        "slos": [{"metric": "p99", "at_most": 20}],
    }
    data.update(extra)
    return data


def problems(data):
    with pytest.raises(ScenarioError) as err:
        scenario_from_dict(data, "s.yaml")
    return [(p.field, p.allowed) for p in err.value.problems]


def test_an_expected_violation_passes_and_says_so():
    r = judge(SLOW, during_stats(43.0), where=WHERE, sla_ms=20, evidence=Evidence())
    assert r.verdict is Verdict.PASS and r.expected_violation
    assert r.message.endswith("; violated as the scenario expects: no copy answers in time")
    assert "exceeds the SLO of 20.0 ms" in r.message


def test_an_expected_violation_that_holds_fails_as_stale():
    r = judge(SLOW, during_stats(4.0), where=WHERE, sla_ms=20, evidence=Evidence())
    assert r.verdict is Verdict.FAIL and not r.expected_violation
    assert "is within the SLO of at most 20.0 ms" in r.message
    assert r.message.endswith(
        "but the scenario expects this SLO to be violated (no copy answers in time):"
        " update the scenario's expectation"
    )


def test_check_results_round_trip_and_read_old_records():
    r = CheckResult(Verdict.PASS, "m", 1.0, 2.0, "w", "x", "p99", expected_violation=True)
    assert CheckResult.from_dict(r.to_dict()) == r
    old = {k: v for k, v in r.to_dict().items() if k != "expected_violation"}
    assert CheckResult.from_dict(old).expected_violation is False


def test_expect_and_reason_are_validated():
    slo = {"metric": "p99", "at_most": 20, "expect": "violated"}
    assert ("slos[0].reason", "why the SLO cannot hold (a non-empty string)") in problems(
        base(slos=[slo])
    )
    assert problems(base(slos=[{"metric": "p99", "at_most": 20, "reason": "x"}])) == [
        ("slos[0].reason", "no reason unless expect: violated")
    ]
    assert problems(base(slos=[{"metric": "p99", "at_most": 20, "expect": "fails"}])) == [
        ("slos[0].expect", "one of hold, violated")
    ]
    ok = scenario_from_dict(base(slos=[{**slo, "reason": "why"}]), "s.yaml")
    assert ok.slos[0].expects_violation and ok.slos[0].reason == "why"
    assert scenario_from_dict(ok.to_dict(), "s.yaml").slos == ok.slos


def test_a_profile_can_skip_with_a_reason():
    data = base(profiles={"pr": {"skip": "nightly only"}, "nightly": {}})
    assert scenario_from_dict(data, "s.yaml", profile="pr").skip_reason == "nightly only"
    assert scenario_from_dict(data, "s.yaml", profile="nightly").skip_reason is None
    assert scenario_from_dict(data, "s.yaml").skip_reason is None
    assert problems(base(profiles={"pr": {"skip": 3}})) == [
        ("profiles.pr.skip", "the reason this profile is skipped (a non-empty string)")
    ]


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [("seed", "12", 12), ("sla_ms", " 25 ", 25.0), ("profile", "nightly", "nightly")],
)
def test_option_values_parse(name, raw, value):
    assert OPTIONS_BY_NAME[name].parse(raw, "here") == value


@pytest.mark.parametrize(
    ("name", "raw", "allowed"),
    [
        ("seed", "-1", "an integer from 0 to 9223372036854775807"),
        ("seed", "x", "an integer from 0 to 9223372036854775807"),
        ("sla_ms", "0", "a number of milliseconds above 0"),
        ("rate", "inf", "a number of requests/s above 0"),
        ("profile", "weekly", "one of pr, nightly"),
    ],
)
def test_a_bad_option_value_names_value_origin_and_what_is_allowed(name, raw, allowed):
    opt = OPTIONS_BY_NAME[name]
    with pytest.raises(UsageError) as err:
        opt.parse(raw, "the environment variable " + opt.env)
    assert str(err.value) == (
        f"invalid value {raw!r} for {opt.pytest} from the environment variable {opt.env};"
        f" allowed: {allowed}"
    )


def test_overrides_apply_to_a_scenario_built_in_python():
    s = scenario_from_dict(base(), "<test>")
    out = apply_overrides(s, RunSettings("<test>", seed=9, sla_ms=30, duration=10))
    assert (out.seed, out.sla_ms, out.load_duration_s) == (9, 30, 10)
    assert apply_overrides(s, RunSettings("<test>")) is s
