"""Fault-schedule exploration without a cluster: the explore section's reader, the search space
and its strategy, when a FAIL counts, and whole explorations against a fake runner whose
"system" fails by rule (a weakness to find, noise to see through, a cluster that does not
come back). Files go to tmp_path; no process is started."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checks.verdict import Verdict
from harness.cli import main
from harness.explore.run import ExploreOutcome, explore
from harness.explore.settings import ExploreSettings
from harness.explore.space import QUANTUM_S, SearchSpace, describe_schedule, nice_step
from harness.explore.strategies import schedule_of, schedules
from harness.explore.verdicts import RunResult, confident, confirm, first_look
from harness.model.errors import HarnessError, ScenarioError, UsageError
from harness.model.explore import Choices, ExploreSpec, Range
from harness.model.faults import FaultSpec
from harness.model.scenario import load_scenario, scenario_from_dict
from harness.runner.settings import RunSettings

BASE: dict[str, Any] = {
    "name": "weak",
    "seed": 5,
    "target": {"kind": "recommender", "shards": 2, "preset": "tiny", "redis": False},
    "warmup_s": 2,
    "settle_s": 1,
    "load": [{"name": "main", "rate": 200, "duration_s": 10}],
    "slos": [{"metric": "p99", "at_most": 20}],
    "explore": {
        "kinds": ["latency", "freeze"],
        "targets": ["shard-*"],
        "max_faults": 3,
        "max_duration_s": 3,
        "params": {"latency": {"delay_ms": {"min": 1, "max": 5}}},
    },
}


def scenario_data(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def explore_problems(section: Any, **changes: Any) -> list[str]:
    with pytest.raises(ScenarioError) as exc:
        scenario_from_dict(scenario_data(explore=section, **changes), "x.yaml")
    return [p.describe() for p in exc.value.problems]


# -- the explore section ----------------------------------------------------------------------
def test_explore_section_defaults_and_round_trip() -> None:
    s = scenario_from_dict(scenario_data(explore={}), "x.yaml")
    assert s.explore == ExploreSpec()
    assert s.explore.resolved_patterns(s.target) == (
        "shard-0-primary",
        "shard-0-replica",
        "shard-1-primary",
        "shard-1-replica",
        "region",
    )  # every component but the gateway
    kinds = s.explore.resolved_kinds(s.target)
    assert "kill" in kinds and "latency" in kinds and "partition" not in kinds  # no root kinds
    full = scenario_from_dict(scenario_data(), "x.yaml")
    assert full.explore is not None
    assert full.explore.params == {"latency": {"delay_ms": Range(1.0, 5.0)}}
    again = scenario_from_dict(full.to_dict(), "x.yaml")
    assert again.explore == full.explore


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"kinds": ["teleport"]}, "explore.kinds[0]: got 'teleport'; allowed: one of kill"),
        (
            {"targets": ["db-*"]},
            "explore.targets[0]: got 'db-*'; allowed: a name or pattern matching",
        ),
        (
            {"kinds": ["redis_down"], "targets": ["shard-*"]},
            "explore.kinds: got 'redis_down'; allowed: fault kinds that can hit at least one",
        ),
        ({"max_faults": 0}, "explore.max_faults: got 0; allowed: an integer from 1 to 20"),
        (
            {"min_duration_s": 4, "max_duration_s": 2},
            "explore.min_duration_s: got 4; allowed: a number <= max_duration_s (2 s)",
        ),
        (
            {"kinds": ["latency"], "params": {"freeze": {}}},
            "explore.params.freeze: got {}; allowed: parameters for one of the kinds latency",
        ),
        (
            {"kinds": ["latency"], "params": {"latency": {"delay_ms": {"min": 5}}}},
            "explore.params.latency.delay_ms: got {'min': 5}; allowed: a number > 0",
        ),
        (
            {"kinds": ["latency"], "params": {"latency": {"delay_ms": -3}}},
            "explore.params.latency.delay_ms: got -3; allowed: a number > 0 and <= 600000 (ms);"
            " or a list of such values, or {min: A, max: B} for a number",
        ),
        (
            {"kinds": ["latency"], "params": {"latency": {"speed": 3}}},
            "explore.params.latency.speed: got 3; allowed: the keys delay_ms, direction, jitter_ms",
        ),
        ({"budget": 3}, "explore.budget: got 3; allowed: the keys"),
    ],
)
def test_bad_explore_sections_name_field_value_and_allowed(section: Any, expected: str) -> None:
    problems = explore_problems(section)
    assert any(p.startswith(expected) for p in problems), problems


def test_parameters_fixed_listed_or_ranged() -> None:
    s = scenario_from_dict(
        scenario_data(
            explore={
                "kinds": ["latency", "app_error"],
                "targets": ["shard-*"],
                "params": {
                    "latency": {"delay_ms": [5, 50], "direction": "both"},
                    "app_error": {"rate": {"min": 0.1, "max": 1}},
                },
            }
        ),
        "x.yaml",
    )
    assert s.explore is not None
    assert s.explore.draws_for("latency") == {
        "delay_ms": Choices((5.0, 50.0)),
        "direction": Choices(("both",)),
    }
    assert s.explore.draws_for("app_error") == {"rate": Range(0.1, 1.0)}
    assert s.explore.to_dict()["params"]["latency"] == {
        "delay_ms": [5.0, 50.0],
        "direction": "both",
    }


# -- the search space --------------------------------------------------------------------------
def space_of(**changes: Any) -> SearchSpace:
    return SearchSpace.of(scenario_from_dict(scenario_data(**changes), "x.yaml"))


def test_fault_window_leaves_an_evidence_stretch_after_warmup_and_before_the_end() -> None:
    space = space_of()
    # 100 samples at 200/s = 0.5 s, a fifth to spare, on the 0.5 s grid: 1 s; [2 + 1, 10 - 1 - 1]
    assert space.window == (3.0, 8.0)
    assert (space.min_duration_s, space.max_duration_s, space.duration_steps) == (1.0, 3.0, 4)
    simplest = space.fault(0, 0, 0, 0, [0])
    assert simplest == FaultSpec(
        "latency",
        "shard-0-primary",
        7.0,
        1.0,
        {"delay_ms": 1.0, "jitter_ms": 0.0, "direction": "downstream"},
    )
    assert describe_schedule([simplest]) == "latency(shard-0-primary, delay_ms=1) at 7 s for 1 s"


def test_targets_keep_the_order_of_their_patterns() -> None:
    space = space_of(
        explore={"kinds": ["freeze"], "targets": ["shard-*-replica", "shard-1-primary", "shard-*"]}
    )
    assert space.kinds[0].targets == (
        "shard-0-replica",
        "shard-1-replica",
        "shard-1-primary",
        "shard-0-primary",
    )


def test_a_load_too_short_for_the_shortest_fault_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"explore.min_duration_s: got 1; the fault window"):
        space_of(load=[{"name": "main", "rate": 200, "duration_s": 4}])


def test_normalise_orders_faults_and_drops_clashes() -> None:
    space = space_of(load=[{"name": "main", "rate": 200, "duration_s": 20}])
    assert (space.settle_s, space.stretch_s) == (1.0, 1.0)
    a = FaultSpec("freeze", "shard-0-primary", 4.0, 2.0, {})
    same_target = FaultSpec("latency", "shard-0-primary", 5.0, 1.0, {"delay_ms": 2.0})
    overlapping = FaultSpec("freeze", "shard-1-replica", 3.5, 1.0, {})
    too_close = FaultSpec("freeze", "shard-1-primary", 7.5, 1.0, {})  # quiet 6+1 .. 7.5
    touching = FaultSpec("freeze", "shard-0-replica", 7.0, 1.0, {})  # quiet stretch of 0 s
    far = FaultSpec("freeze", "shard-1-primary", 8.0, 1.0, {})  # quiet 7 .. 8: judged
    out = space.normalise([a, same_target, overlapping, too_close, touching, far])
    assert [(f.target, f.at_s, f.origin) for f in out] == [
        ("shard-1-replica", 3.5, "faults[0]"),
        ("shard-0-primary", 4.0, "faults[1]"),
        ("shard-1-primary", 8.0, "faults[2]"),
    ]


def test_nice_steps() -> None:
    assert [nice_step(x) for x in (0.99, 0.0049, 10.16, 0)] == [1.0, 0.005, 20.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_drawn_schedule_is_a_valid_scenario_within_the_limits(data: st.DataObject) -> None:
    space = space_of()
    faults = data.draw(schedules(space))
    assert 0 <= len(faults) <= 3
    for f in faults:
        assert f.kind in ("latency", "freeze") and f.target.startswith("shard-")
        assert 1.0 <= (f.duration_s or 0) <= 3.0
        assert space.window[0] <= f.at_s and f.at_s + (f.duration_s or 0) <= space.window[1]
        assert (f.at_s / QUANTUM_S).is_integer()
        if f.kind == "latency":
            assert 1 <= f.params["delay_ms"] <= 5
    data_ = scenario_data(explore=None, faults=[f.to_dict() for f in faults])
    assert len(scenario_from_dict(data_, "x.yaml").faults) == len(faults)


def test_the_simplest_schedule_is_the_steady_state_and_a_slot_drops_out_at_zero() -> None:
    space = space_of()
    width = 1 + len(space.choice_bounds)
    assert schedule_of(space, [(0,) * width] * 3) == ()
    used = (1, 1, 2, 0, 0, 0)  # freeze, the third target, shortest, latest
    assert [f.label for f in schedule_of(space, [used, (0,) * width, (0,) * width])] == [
        "freeze(shard-1-primary)"
    ]


# -- when a FAIL counts ------------------------------------------------------------------------
def fail_check(
    value: float = 40.0, low: float = 30.0, high: float = 50.0, where: str = "w.yaml, slos[0]"
) -> dict[str, Any]:
    return {
        "verdict": "FAIL",
        "message": f"p99 {value} ms exceeds the SLO of 20.0 ms",
        "value": value,
        "limit": 20.0,
        "where": where,
        "metric": "p99",
        "interval": {"low_ms": low, "high_ms": high, "level": 0.95},
    }


def test_a_fail_is_confident_only_when_its_interval_clears_the_limit() -> None:
    assert confident(fail_check(40, 30, 50))
    assert not confident(fail_check(40, 15, 50))  # straddles
    assert confident(fail_check(40, 30, "inf"))  # run.json spells infinity "inf"
    assert not confident({**fail_check(), "interval": None})
    below = {**fail_check(0.5, 0.4, 0.6), "limit": 0.9}  # a value below an at_least limit
    assert confident(below)


def test_a_fail_without_interval_needs_its_rerun_to_reproduce() -> None:
    first = first_look(RunResult(Verdict.FAIL, ({**fail_check(), "interval": None},)))
    assert first.verdict is Verdict.FAIL and not first.confident
    same = RunResult(Verdict.FAIL, (fail_check(),))
    other = RunResult(Verdict.FAIL, (fail_check(where="w.yaml, slos[3]"),))
    assert confirm(first, [same], 1).verdict is Verdict.FAIL
    noise = confirm(first, [RunResult(Verdict.PASS)], 1)
    assert noise.verdict is Verdict.INCONCLUSIVE and "did not reproduce" in noise.reason
    assert confirm(first, [other], 1).verdict is Verdict.INCONCLUSIVE
    broken = RunResult(Verdict.FAIL, (fail_check(),), not_restored="shard-0-primary is stopped")
    assert confirm(first, [broken], 1).verdict is Verdict.INCONCLUSIVE
    assert "not yet confirmed" in confirm(first, [], 1).reason


def test_a_run_that_left_the_cluster_broken_is_inconclusive() -> None:
    j = first_look(RunResult(Verdict.FAIL, (fail_check(),), not_restored="redis is not running"))
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reason == "the steady state was not restored after it: redis is not running"


# -- whole explorations against a fake system ----------------------------------------------------
Rule = Callable[[tuple[FaultSpec, ...], int], RunResult]


class FakeRunner:
    """Runs an example by rule: ``rule(faults, nth run of this schedule)``."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.calls: list[tuple[FaultSpec, ...]] = []
        self.closed = False

    def run(self, scenario: Any, settings: RunSettings) -> RunResult:
        faults = tuple(
            FaultSpec(f.kind, f.target, f.at_s, f.duration_s, dict(f.params))
            for f in scenario.faults
        )
        nth = sum(1 for c in self.calls if c == faults)
        self.calls.append(faults)
        assert Path(settings.scenario_path).exists()
        return self.rule(faults, nth)

    def close(self) -> None:
        self.closed = True


def weak_primary(faults: tuple[FaultSpec, ...], nth: int) -> RunResult:
    """Any freeze of shard-1-primary breaks the p99, confidently."""
    if any(f.kind == "freeze" and f.target == "shard-1-primary" for f in faults):
        return RunResult(Verdict.FAIL, (fail_check(),), seconds=1.0)
    return RunResult(Verdict.PASS, seconds=1.0)


def write_scenario(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "weak.yaml"
    path.write_text(yaml.safe_dump(scenario_data(**changes)))
    return path


def run_explore(
    tmp_path: Path, rule: Rule, **kw: Any
) -> tuple[ExploreOutcome, FakeRunner, list[str]]:
    path = kw.pop("scenario", None) or write_scenario(tmp_path)
    fake = FakeRunner(rule)
    lines: list[str] = []
    settings = ExploreSettings(scenario_path=str(path), out_dir=tmp_path / "runs", **kw)
    outcome = explore(settings, log=lines.append, make_runner=lambda s, w, log: fake)
    return outcome, fake, lines


def test_finds_the_weakness_and_shrinks_it_to_one_fault(tmp_path: Path) -> None:
    outcome, fake, lines = run_explore(tmp_path, weak_primary, budget=40)
    assert outcome.verdict is Verdict.FAIL and outcome.exit_code == 1 and fake.closed
    exp = outcome.exploration
    assert exp is not None and exp.path
    minimal = exp.path[-1]
    assert minimal.faults == (
        FaultSpec("freeze", "shard-1-primary", 7.0, 1.0, {}, origin="faults[0]"),
    )
    assert all(e.verdict is Verdict.FAIL for e in exp.path)
    assert [e.shrink_step for e in exp.path] == list(range(len(exp.path)))
    assert [e.index for e in exp.path] == sorted(e.index for e in exp.path)
    assert (
        exp.path[0].runs_so_far
        <= minimal.runs_so_far
        == exp.runs - sum(len(e.runs) for e in exp.examples if e.index > minimal.index)
    )
    # the closing note: first and minimal schedules, runs and time each took, replay lines
    note = "\n".join(outcome.lines)
    assert "first failing schedule (example" in note and "minimal failing schedule" in note
    assert "freeze(shard-1-primary) at 7 s for 1 s" in note
    assert f"Replay the minimal schedule: recchaos run {outcome.workdir / 'minimal.yaml'}" in note
    assert "Replay the exploration: recchaos explore" in note and "--seed 5" in note
    assert any(line.startswith("[search 1] ") for line in lines)
    assert any("shrink step" in line for line in lines) or len(exp.path) == 1


def test_leaves_record_minimal_scenario_and_html(tmp_path: Path) -> None:
    outcome, *_ = run_explore(tmp_path, weak_primary, budget=40)
    record = json.loads((outcome.workdir / "explore.json").read_text())
    assert record["status"] == "complete" and record["verdict"] == "FAIL"
    assert record["shrink_path"][-1] == record["minimal"]["index"]
    assert record["minimal"]["faults"] == 1
    minimal = load_scenario(outcome.workdir / "minimal.yaml")  # loads and validates as is
    assert minimal.name == "weak-minimal" and minimal.seed == 5 and minimal.explore is None
    assert [f.label for f in minimal.faults] == ["freeze(shard-1-primary)"]
    text = (outcome.workdir / "minimal.yaml").read_text()
    assert "# Failing checks:\n#   p99 40.0 ms exceeds the SLO of 20.0 ms" in text
    assert minimal.description.endswith("It breaks slos[0] (p99) (a confident FAIL).")
    html = (outcome.workdir / "explore.html").read_text()
    assert "Shrink path" in html and "Failing schedule found" in html
    for example in record["examples"]:  # every example replays as is
        assert len(load_scenario(example["scenario_file"]).faults) == example["faults"]
    assert record["examples"][0]["label"] == "(no fault)"  # the simplest: the steady state


def test_noise_that_does_not_reproduce_is_never_a_failure(tmp_path: Path) -> None:
    def flaky(faults: tuple[FaultSpec, ...], nth: int) -> RunResult:
        if nth == 0 and any(f.kind == "freeze" for f in faults):  # fails once, never again
            return RunResult(Verdict.FAIL, ({**fail_check(), "interval": None},))
        return RunResult(Verdict.PASS)

    outcome, fake, _ = run_explore(tmp_path, flaky, budget=15)
    exp = outcome.exploration
    assert exp is not None and not exp.path and outcome.verdict is not Verdict.FAIL
    noisy = [e for e in exp.examples if "did not reproduce" in e.judgement.reason]
    assert noisy and all(len(e.runs) == 2 for e in noisy)  # the first run and one re-run
    assert not (outcome.workdir / "minimal.yaml").exists()


def test_a_confident_first_fail_must_reproduce_too(tmp_path: Path) -> None:
    # A machine stall slows many requests in a row: a confident interval from one run is not
    # enough to report the first failing schedule; its re-run must fail too.
    def stalled_once(faults: tuple[FaultSpec, ...], nth: int) -> RunResult:
        if nth == 0 and any(f.kind == "freeze" for f in faults):
            return RunResult(Verdict.FAIL, (fail_check(),))  # confident
        return RunResult(Verdict.PASS)

    outcome, *_ = run_explore(tmp_path, stalled_once, budget=15)
    exp = outcome.exploration
    assert exp is not None and not exp.path and outcome.verdict is not Verdict.FAIL
    noisy = [e for e in exp.examples if "did not reproduce" in e.judgement.reason]
    assert noisy and all(len(e.runs) == 2 for e in noisy)
    # A real weakness still shrinks on confident FAILs alone after the first one reproduced.
    (tmp_path / "weak").mkdir()
    outcome, *_ = run_explore(tmp_path / "weak", weak_primary, budget=40)
    exp = outcome.exploration
    assert exp is not None and outcome.verdict is Verdict.FAIL
    assert len(exp.path[0].runs) == 2 and "reproduced" in exp.path[0].judgement.reason
    assert all(len(e.runs) == 1 for e in exp.path[1:])


def test_an_unconfident_fail_that_reproduces_counts(tmp_path: Path) -> None:
    def steady(faults: tuple[FaultSpec, ...], nth: int) -> RunResult:
        if any(f.kind == "freeze" for f in faults):
            return RunResult(Verdict.FAIL, ({**fail_check(), "interval": None},))
        return RunResult(Verdict.PASS)

    outcome, *_ = run_explore(tmp_path, steady, budget=20)
    exp = outcome.exploration
    assert exp is not None and exp.path and len(exp.path[-1].faults) == 1
    assert all(len(e.runs) == 2 and "reproduced" in e.judgement.reason for e in exp.path)


def test_an_example_that_leaves_the_cluster_broken_is_inconclusive(tmp_path: Path) -> None:
    def breaks(faults: tuple[FaultSpec, ...], nth: int) -> RunResult:
        return RunResult(Verdict.FAIL, (fail_check(),), not_restored="shard-0-primary is stopped")

    outcome, *_ = run_explore(tmp_path, breaks, budget=4)
    exp = outcome.exploration
    assert exp is not None and not exp.path and outcome.verdict is Verdict.INCONCLUSIVE
    assert outcome.exit_code == 3
    assert all("not restored" in e.judgement.reason for e in exp.examples)


def test_search_and_shrink_budgets_bound_the_runs(tmp_path: Path) -> None:
    outcome, fake, _ = run_explore(tmp_path, lambda f, n: RunResult(Verdict.PASS), budget=4)
    assert len(fake.calls) == 4 and outcome.verdict is Verdict.PASS
    outcome, fake, lines = run_explore(tmp_path, weak_primary, budget=40, shrink_budget=1)
    exp = outcome.exploration
    assert exp is not None and exp.shrink_runs == 1 and exp.path
    assert any("shrink budget of 1 runs spent" in line for line in lines)


def test_time_budget_stops_starting_runs(tmp_path: Path) -> None:
    outcome, fake, lines = run_explore(
        tmp_path, lambda f, n: RunResult(Verdict.PASS, seconds=1), time_budget_s=1e-9
    )
    assert not fake.calls and outcome.verdict is Verdict.INCONCLUSIVE
    assert any("time budget of 1e-09 s spent" in line for line in lines)


def test_a_saved_failure_is_replayed_first_next_time(tmp_path: Path) -> None:
    first, *_ = run_explore(tmp_path, weak_primary, budget=40)
    assert first.verdict is Verdict.FAIL and (tmp_path / "runs" / "explore-db").is_dir()
    again, fake, _ = run_explore(tmp_path, weak_primary, budget=40)
    exp = again.exploration
    assert exp is not None and exp.saved_failures >= 1
    assert exp.examples[0].verdict is Verdict.FAIL  # the database's failure, before any draw


def test_harness_errors_in_a_row_stop_the_exploration(tmp_path: Path) -> None:
    def broken(faults: tuple[FaultSpec, ...], nth: int) -> RunResult:
        raise HarnessError("port in use")

    outcome, fake, _ = run_explore(tmp_path, broken, budget=10)
    assert outcome.exit_code == 4 and outcome.verdict is None and len(fake.calls) == 3
    assert "3 runs in a row did not complete" in outcome.lines[0] and fake.closed
    assert json.loads((outcome.workdir / "explore.json").read_text())["status"] == "error"


def test_ctrl_c_stops_the_cluster_and_keeps_the_record(tmp_path: Path) -> None:
    def interrupted(faults: tuple[FaultSpec, ...], nth: int) -> RunResult:
        raise KeyboardInterrupt

    outcome, fake, _ = run_explore(tmp_path, interrupted, budget=10)
    assert outcome.exit_code == 130 and fake.closed
    assert json.loads((outcome.workdir / "explore.json").read_text())["status"] == "interrupted"


def test_a_scenario_without_slos_cannot_be_explored(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, slos=[])
    with pytest.raises(UsageError, match="slos: got none; explore needs at least one SLO"):
        explore(
            ExploreSettings(str(path), out_dir=tmp_path),
            make_runner=lambda *a: FakeRunner(weak_primary),
        )


# -- the command line ----------------------------------------------------------------------------
def test_cli_budget_and_time_budget_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explore", "x.yaml", "--budget", "3", "--time-budget", "60"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "invalid value 0 for --budget; allowed: an integer >= 1"),
        (["--time-budget", "-5"], "invalid value -5.0 for --time-budget; allowed: a number"),
        (["--reruns", "11"], "invalid value 11 for --reruns; allowed: an integer from 0 to 10"),
        (["--seed", "-1"], "invalid value -1 for --chaos-seed from the command line (--seed)"),
    ],
)
def test_cli_bad_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    path = write_scenario(tmp_path)
    assert main(["explore", str(path), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_scenario_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(scenario_data(explore={"max_faults": "many"})))
    assert main(["explore", str(path), "--out", str(tmp_path)]) == 2
    assert "explore.max_faults: got 'many'" in capsys.readouterr().err


# -- the pytest session's cluster, borrowed --------------------------------------------------------
class FakePool:
    """A ClusterPool's interface, recording what the runner asks of it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def get(self, options: Any, log: Any) -> str:
        self.events.append("get")
        return "target"

    def discard(self, options: Any) -> None:
        self.events.append("discard")

    def settle(self, options: Any, outcome: Any) -> None:
        self.events.append(f"settle {outcome}")


@pytest.mark.parametrize(
    ("problems", "expected"),
    [
        ([None, None], ["get", "get", "settle o2"]),
        (["redis is not running", None], ["get", "discard", "get", "settle o2"]),
        ([None, "faults still active"], ["get", "get", "discard"]),
    ],
)
def test_a_borrowed_cluster_is_dropped_when_not_restored_and_settled_by_the_pool_rule(
    monkeypatch: pytest.MonkeyPatch, problems: list[str | None], expected: list[str]
) -> None:
    from harness.explore import cluster

    outcomes = iter(["o1", "o2"])
    told = iter(problems)
    monkeypatch.setattr(cluster, "run_against", lambda *a, **k: FakeOutcome(next(outcomes)))
    monkeypatch.setattr(cluster, "restore_problem", lambda *a: next(told))
    monkeypatch.setattr(cluster, "result_of", lambda o, s, p: RunResult(Verdict.PASS, (), None, p))
    pool = FakePool()
    runner = cluster.PooledClusterRunner(pool, "options", log=lambda line: None)  # type: ignore[arg-type]
    results = [runner.run(None, None) for _ in problems]  # type: ignore[arg-type]
    runner.close()
    assert [r.message for r in results] == problems
    assert pool.events == expected


class FakeOutcome(str):
    interrupted = False
