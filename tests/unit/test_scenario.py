"""Scenario validation: every problem reported with file, field path, value and what is allowed;
example scenarios valid under every profile; Python-built scenarios round-trip through to_dict."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.model.errors import EXIT_USAGE, ScenarioError, UsageError
from harness.model.faults import FaultSpec, RandomFaultSchedule
from harness.model.load import LoadPhase, RequestMix
from harness.model.scenario import (
    Scenario,
    load_scenario,
    scenario_from_dict,
    validate_scenario,
)
from harness.model.slo import Evidence, FaultSelector, SLOSpec
from harness.model.target import GenericTarget, RecommenderTarget, RequestTemplate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "scenarios").glob("*.yaml"))

BASE = {
    "name": "t",
    "seed": 1,
    "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
    "load": [{"name": "main", "rate": 100, "duration_s": 30}],
    "faults": [{"kind": "kill", "target": "shard-1-primary", "at_s": 10, "duration_s": 5}],
    "slos": [{"metric": "p99", "at_most": 20}],
}


def problems_of(data, source="s.yaml", **kw):
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, source, **kw)
    return info.value


def with_(**changes):
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def test_examples_exist_and_validate_under_every_profile():
    assert {p.name for p in EXAMPLES} >= {
        "steady_state.yaml",
        "primary_kill.yaml",
        "primary_freeze.yaml",
        "random_faults.yaml",
    }
    for path in EXAMPLES:
        s = load_scenario(path)
        for profile in s.profiles:
            assert load_scenario(path, profile=profile).profile == profile


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_round_trip(path):
    s = load_scenario(path)
    again = scenario_from_dict(json.loads(json.dumps(s.to_dict())), str(path))
    assert again == s
    assert again.fault_plan() == s.fault_plan()


def test_base_reads_defaults():
    s = scenario_from_dict(BASE, "s.yaml")
    assert s.sla_ms == 20.0 and s.warmup_s == 5.0 and s.settle_s == 2.0
    assert s.load[0].mix == RequestMix()
    assert s.faults[0].origin == "faults[0]"
    assert s.slos[0].origin == "slos[0]"
    assert s.where("slos[0]") == "s.yaml, slos[0]"
    assert s.target.component_names()[:2] == ("shard-0-primary", "shard-0-replica")


def test_error_names_file_field_value_and_allowed():
    d = with_()
    d["faults"][0]["duration_s"] = -3
    err = problems_of(d, "scenarios/x.yaml")
    assert isinstance(err, UsageError) and err.exit_code == EXIT_USAGE == 2
    assert (err.file, err.field, err.value) == ("scenarios/x.yaml", "faults[0].duration_s", -3)
    assert "> 0" in err.allowed
    assert str(err).startswith(
        "scenarios/x.yaml: faults[0].duration_s: got -3; allowed: a number > 0"
    )


def test_every_problem_is_collected():
    d = with_(seed="seven", sla_ms=0)
    d["target"]["shards"] = 0
    d["load"][0]["rate"] = -1
    d["slos"][0] = {"metric": "p98", "at_most": 20}
    err = problems_of(d)
    fields = [p.field for p in err.problems]
    assert fields == ["seed", "sla_ms", "target.shards", "load[0].rate", "slos[0].metric"]
    assert "5 problems" in str(err).splitlines()[0]


def test_unknown_key_gets_did_you_mean():
    d = with_()
    d["faults"][0]["durtion_s"] = 5
    del d["faults"][0]["duration_s"]
    err = problems_of(d)
    text = str(err)
    assert "faults[0].durtion_s" in text and "did you mean 'duration_s'?" in text
    assert "faults[0].duration_s: got missing" in text


def test_top_level_typo_and_missing_target():
    d = with_(slo=[])
    del d["target"]
    text = str(problems_of(d))
    assert "slo: got []" in text and "did you mean 'slos'?" in text
    assert "target: got missing; allowed: a mapping with kind: recommender" in text


def test_bool_is_not_an_integer():
    err = problems_of(with_(seed=True))
    assert err.field == "seed" and err.value is True


@pytest.mark.parametrize(
    "fault, field, fragment",
    [
        (
            {
                "kind": "latency",
                "target": "gateway-0",
                "at_s": 10,
                "duration_s": 1,
                "params": {"delay_ms": 5},
            },
            "faults[0].target",
            "shard-0-primary",
        ),
        (
            {"kind": "latency", "target": "region", "at_s": 10, "duration_s": 1},
            "faults[0].params.delay_ms",
            "missing",
        ),
        (
            {"kind": "app_error", "target": "region", "at_s": 10, "duration_s": 1},
            "faults[0].target",
            "one of shard-0-primary",
        ),
        (
            {"kind": "kill", "target": "shard-2-primary", "at_s": 10, "duration_s": 1},
            "faults[0].target",
            "shard-2-primary",
        ),
        (
            {"kind": "kill", "target": "shard-0-primary", "at_s": 2, "duration_s": 1},
            "faults[0].at_s",
            "warm-up",
        ),
        (
            {"kind": "kill", "target": "shard-0-primary", "at_s": 25, "duration_s": 10},
            "faults[0].duration_s",
            "<= 5",
        ),
        (
            {"kind": "kill", "target": "shard-0-primary", "at_s": 10},
            "faults[0].duration_s",
            "heal: end",
        ),
        (
            {
                "kind": "kill",
                "target": "shard-0-primary",
                "at_s": 10,
                "duration_s": 3,
                "heal": "end",
            },
            "faults[0].heal",
            "not both",
        ),
        (
            {
                "kind": "restart",
                "target": "gateway-0",
                "at_s": 10,
                "duration_s": 1,
                "params": {"delay_s": 2},
            },
            "faults[0].params.delay_s",
            "<= duration_s",
        ),
        (
            {"kind": "kil", "target": "gateway-0", "at_s": 10, "duration_s": 1},
            "faults[0].kind",
            "did you mean 'kill'",
        ),
        (
            {
                "kind": "packet_loss",
                "target": "redis",
                "at_s": 10,
                "duration_s": 1,
                "params": {"probability": 1.5},
            },
            "faults[0].params.probability",
            "<= 1",
        ),
    ],
)
def test_fault_problems(fault, field, fragment):
    err = problems_of(with_(faults=[fault], slos=[]))
    assert err.field == field, str(err)
    assert fragment in str(err)


def test_proxy_fault_params_defaults_and_jitter_rule():
    fault = {
        "kind": "latency",
        "target": "region",
        "at_s": 10,
        "duration_s": 1,
        "params": {"delay_ms": 5, "jitter_ms": 9},
    }
    err = problems_of(with_(faults=[fault], slos=[]))
    assert err.field == "faults[0].params.jitter_ms" and "<= delay_ms (5)" in str(err)
    fault["params"] = {"delay_ms": 5, "direction": "both"}
    s = scenario_from_dict(with_(faults=[fault], slos=[]))
    assert s.faults[0].params == {"delay_ms": 5.0, "jitter_ms": 0.0, "direction": "both"}
    fault = {"kind": "blackhole", "target": "shard-0-replica", "at_s": 10, "duration_s": 1}
    assert scenario_from_dict(with_(faults=[fault], slos=[])).faults[0].params == {
        "mode": "drop",
        "direction": "downstream",
    }


def test_redis_down_needs_redis():
    d = with_(faults=[{"kind": "redis_down", "at_s": 10, "duration_s": 1}], slos=[])
    assert scenario_from_dict(d).faults[0].target == "redis"
    d["target"]["redis"] = False
    err = problems_of(d)
    assert err.field == "faults[0].target" and "redis: true" in str(err)


def test_dependency_outages_take_their_mode_as_a_parameter():
    fault = {"kind": "redis_down", "at_s": 10, "duration_s": 1, "params": {"mode": "stop"}}
    assert scenario_from_dict(with_(faults=[fault], slos=[])).faults[0].params == {"mode": "stop"}
    fault["params"] = {"mode": "blackhole"}
    err = problems_of(with_(faults=[fault], slos=[]))
    assert err.field == "faults[0].params.mode" and "one of kill, stop" in str(err)
    fault = {"kind": "region_down", "at_s": 10, "duration_s": 1}
    assert scenario_from_dict(with_(faults=[fault], slos=[])).faults[0].params == {"mode": "kill"}


def test_a_random_schedule_restart_waits_no_longer_than_the_fault():
    sched = {"every_s": 10, "duration_s": 3, "kinds": ["restart"], "targets": ["shard-*"],
             "params": {"restart": {"delay_s": 5}}}  # fmt: skip
    err = problems_of(with_(faults=[], fault_schedule=sched, slos=[]))
    assert err.field == "fault_schedule.params.restart.delay_s" and "<= duration_s (3 s)" in str(
        err
    )


def test_heal_end_fault():
    d = with_(faults=[{"kind": "freeze", "target": "gateway-0", "at_s": 10, "heal": "end"}])
    s = scenario_from_dict(d)
    assert s.faults[0].duration_s is None and s.faults[0].end_s(30) == 30
    assert scenario_from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    "slo, field, fragment",
    [
        ({"metric": "p99"}, "slos[0].at_most", "exactly one of at_most"),
        ({"metric": "p99", "at_most": 1, "at_least": 0}, "slos[0].at_least", "exactly one"),
        ({"metric": "tier_share", "above": 0}, "slos[0].tier", "replica"),
        ({"metric": "error_ratio", "at_most": 2}, "slos[0].at_most", "<= 1"),
        ({"metric": "p99", "at_most": 1, "windows": ["durin"]}, "slos[0].windows", "during"),
        ({"metric": "p99", "at_most": 1, "fault": 3}, "slos[0].fault", "from 0 to 0"),
        (
            {"metric": "p99", "at_most": 1, "fault": {"kind": "freeze"}},
            "slos[0].fault",
            "kill(shard-1-primary)",
        ),
        (
            {"metric": "time_to_failover", "at_most": 1, "windows": ["during"]},
            "slos[0].windows",
            "once per fault",
        ),
        ({"metric": "p99", "at_most": 1, "windows": "steady"}, "slos[0].windows", "no steady"),
    ],
)
def test_slo_problems(slo, field, fragment):
    err = problems_of(with_(slos=[slo]))
    assert err.field == field, str(err)
    assert fragment in str(err)


def test_slo_windows_need_faults():
    err = problems_of(
        with_(faults=[], slos=[{"metric": "p99", "at_most": 1, "windows": ["during"]}])
    )
    assert err.field == "slos[0].windows" and "no faults" in str(err)
    err = problems_of(with_(faults=[], slos=[{"metric": "time_to_failover", "at_most": 1}]))
    assert err.field == "slos[0].metric"


def test_phase_names_unique_and_warmup_shorter_than_load():
    d = with_(
        load=[
            {"name": "a", "rate": 1, "duration_s": 20},
            {"name": "a", "rate": 1, "duration_s": 20},
        ],
        warmup_s=50,
    )
    fields = [p.field for p in problems_of(d).problems]
    assert fields == ["load[1].name", "warmup_s"]


def test_profiles_apply_and_problems_point_at_the_profile():
    d = with_(
        profiles={
            "pr": {"phases": {"main": {"duration_s": 20}}, "seed": 9},
            "nightly": {"phases": {"main": {"rate": -5}}},
        }
    )
    err = problems_of(d)
    assert err.field == "profiles.nightly.phases.main.rate"
    assert "profile 'nightly' sets load[0].rate" in str(err)
    del d["profiles"]["nightly"]
    s = scenario_from_dict(d, profile="pr")
    assert (s.seed, s.load[0].duration_s, s.profile) == (9, 20.0, "pr")
    assert scenario_from_dict(s.to_dict()) == s  # re-applying a profile changes nothing


def test_profile_that_breaks_a_cross_field_rule():
    d = with_(profiles={"pr": {"phases": {"main": {"duration_s": 12}}}})
    err = problems_of(d)
    assert err.field == "faults[0].duration_s" and "with profile 'pr' applied" in str(err)


def test_profile_structure_problems():
    d = with_(
        profiles={"pr": {"phases": {"mian": {"rate": 5}}, "faults": {4: {"at_s": 1}}, "ratee": 3}}
    )
    text = str(problems_of(d))
    assert "profiles.pr.ratee" in text
    assert "profiles.pr.phases.mian" in text and "did you mean 'main'?" in text
    assert "profiles.pr.faults.4" in text and "from 0 to 0" in text


def test_unknown_profile_requested():
    err = problems_of(with_(profiles={"pr": {}}), profile="nightly")
    assert err.field == "profile (from the command line)" and err.allowed == "one of pr"


def test_generic_target():
    d = with_(
        target={
            "kind": "generic",
            "components": {"api": "python -m http.server 8080", "db": ["redis-server"]},
            "endpoint": "http://127.0.0.1:8080/",
            "request": {
                "method": "POST",
                "path": "/rec?user=$user_id&k=$k",
                "body": '{"user": $user_id}',
            },
        },
        faults=[{"kind": "freeze", "target": "api", "at_s": 10, "duration_s": 2}],
    )
    s = scenario_from_dict(d)
    assert isinstance(s.target, GenericTarget)
    assert s.target.components["api"] == ("python", "-m", "http.server", "8080")
    assert s.target.endpoint == "http://127.0.0.1:8080"
    assert s.target.request.render(user_id=5, k=3, request_id=0, seed=1) == (
        "/rec?user=5&k=3",
        '{"user": 5}',
    )
    assert scenario_from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    "change, field, fragment",
    [
        ({"endpoint": "ftp://x"}, "target.endpoint", "http://"),
        ({"request": {"path": "/r?u=$user"}}, "target.request.path", "unknown placeholder $user"),
        ({"components": {}}, "target.components", "mapping of component name"),
        ({"components": {"API": "x"}}, "target.components.API", "component name"),
        ({"shards": 3}, "target.shards", "unknown key"),
    ],
)
def test_generic_target_problems(change, field, fragment):
    target = {"kind": "generic", "components": {"api": "srv"}, "endpoint": "http://h:1"}
    target.update(change)
    err = problems_of(with_(target=target, faults=[], slos=[]))
    assert err.field == field, str(err)
    assert fragment in str(err)


def test_network_faults_need_the_recommender():
    target = {"kind": "generic", "components": {"api": "srv"}, "endpoint": "http://h:1"}
    fault = {
        "kind": "latency",
        "target": "api",
        "at_s": 10,
        "duration_s": 1,
        "params": {"delay_ms": 5},
    }
    err = problems_of(with_(target=target, faults=[fault], slos=[]))
    assert err.field == "faults[0].target" and "need the recommender target" in str(err)


def test_random_schedule_reading_and_problems():
    sched = {
        "every_s": 10,
        "duration_s": 3,
        "kinds": ["kill", "latency"],
        "targets": ["shard-*"],
        "params": {"latency": {"delay_ms": 30}},
    }
    s = scenario_from_dict(with_(faults=[], fault_schedule=sched, slos=[]))
    plan = s.fault_plan()
    assert plan and all(f.origin.startswith("fault_schedule[") for f in plan)
    assert all(
        f.params
        == (
            {"delay_ms": 30.0, "jitter_ms": 0.0, "direction": "downstream"}
            if f.kind == "latency"
            else {}
        )
        for f in plan
    )
    bad = dict(sched, duration_s=10, targets=["nodes-*"])
    text = str(problems_of(with_(faults=[], fault_schedule=bad, slos=[])))
    assert "fault_schedule.targets[0]" in text
    bad = dict(sched, kinds=["latency"], targets=["gateway-0"])
    err = problems_of(with_(faults=[], fault_schedule=bad, slos=[]))
    assert err.field == "fault_schedule.kinds"
    bad = dict(sched, every_s=40)
    err = problems_of(with_(faults=[], fault_schedule=bad, slos=[]))
    assert err.field == "fault_schedule.every_s" and "no fault fits" in str(err)


def test_yaml_problems(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\nseed: 1\nseed: 2\n")
    err = pytest.raises(ScenarioError, load_scenario, dup).value
    assert err.field == "line 3, column 1" and "duplicate key 'seed'" in str(err)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: a\nload: [\n")
    err = pytest.raises(ScenarioError, load_scenario, broken).value
    assert err.file == str(broken) and err.allowed == "valid YAML"
    err = pytest.raises(ScenarioError, load_scenario, tmp_path / "missing.yaml").value
    assert "No such file" in str(err)
    merge = tmp_path / "merge.yaml"  # a merge key may be overridden: not a duplicate
    merge.write_text(
        "seed: 1\ntarget: {kind: recommender}\nload:\n"
        "  - &p {name: a, rate: 10, duration_s: 20}\n  - {<<: *p, name: b}\n"
    )
    assert [p.name for p in load_scenario(merge).load] == ["a", "b"]


def test_python_built_scenario_is_validated_like_a_file():
    s = Scenario(
        name="py",
        target=RecommenderTarget(shards=2),
        seed=3,
        load=(LoadPhase("main", 50.0, 20.0),),
        faults=(FaultSpec("kill", "shard-0-replica", 8.0, 4.0),),
        slos=(SLOSpec("p99", "at_most", 20.0),),
    )
    assert validate_scenario(s) == s
    bad = Scenario(
        name="py",
        target=RecommenderTarget(shards=2),
        seed=3,
        load=(LoadPhase("main", 50.0, 20.0),),
        faults=(FaultSpec("kill", "shard-5-replica", 8.0, 4.0),),
    )
    err = pytest.raises(ScenarioError, validate_scenario, bad).value
    assert (err.file, err.field, err.value) == ("<python>", "faults[0].target", "shard-5-replica")


# property: any valid scenario built from these parts round-trips --------------------------
phases = st.lists(
    st.builds(
        LoadPhase,
        name=st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        rate=st.floats(0, 1000, allow_nan=False).map(lambda x: round(x, 3)),
        duration_s=st.floats(10, 100).map(lambda x: round(x, 3)),
        mix=st.builds(
            RequestMix,
            zipf_exponent=st.floats(0, 3).map(lambda x: round(x, 3)),
            users=st.integers(1, 10_000),
            k=st.integers(1, 100),
        ),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda p: p.name,
)


@st.composite
def scenarios(draw):
    load = tuple(draw(phases))
    shards = draw(st.integers(1, 4))
    target = RecommenderTarget(shards=shards, preset="tiny", redis=draw(st.booleans()))
    end = sum(p.duration_s for p in load)
    names = target.component_names()
    faults = tuple(
        FaultSpec(
            draw(st.sampled_from(["kill", "freeze", "terminate", "cpu_freeze"])),
            draw(st.sampled_from(names)),
            at,
            draw(st.sampled_from([None, 1.0, 2.5])),
            origin=f"faults[{i}]",
        )
        for i, at in enumerate(
            draw(st.lists(st.floats(5, end - 3).map(lambda x: round(x, 2)), max_size=3))
        )
    )
    faults = tuple(
        FaultSpec(
            f.kind,
            f.target,
            f.at_s,
            f.duration_s,
            {"grace_s": 5.0} if f.kind == "terminate" else {},
            f.origin,
        )
        for f in faults
    )
    slos = (
        SLOSpec("p99", "at_most", draw(st.floats(1, 100).map(lambda x: round(x, 1)))),
        SLOSpec(
            "error_ratio",
            "at_most",
            0.0,
            windows=("during",) if faults else ("steady",),
            fault=FaultSelector(kind=faults[0].kind) if faults else None,
        ),
    )
    return Scenario(
        name="gen",
        target=target,
        seed=draw(st.integers(0, 2**63 - 1)),
        load=load,
        faults=faults,
        slos=slos,
        evidence=Evidence(min_samples=draw(st.integers(1, 999))),
    )


@given(scenarios())
@settings(max_examples=60, deadline=None)
def test_round_trip_property(s):
    assert validate_scenario(s) == s
    assert scenario_from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_random_schedule_spec_round_trip():
    s = scenario_from_dict(
        with_(
            faults=[],
            slos=[],
            fault_schedule={
                "every_s": 5,
                "duration_s": 1,
                "kinds": ["freeze"],
                "targets": ["gateway-0"],
                "seed": 4,
            },
        )
    )
    assert isinstance(s.fault_schedule, RandomFaultSchedule)
    assert scenario_from_dict(s.to_dict()) == s
    assert RequestTemplate().render(user_id=1, k=1, request_id=1, seed=1) == ("/", None)
