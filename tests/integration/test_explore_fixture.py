"""The ``chaos_explore`` fixture with pytester and a fake example runner (a conftest overrides
``chaos_explore_runner``): a failing schedule fails the test with the minimal schedule and the
replay lines, the profile sets the budget, INCONCLUSIVE is skipped in pr and failed in
nightly. No cluster is started."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

pytest_plugins = ["pytester"]

FAKE = """
import json
import os

import pytest

from harness.checks.verdict import Verdict
from harness.explore.verdicts import RunResult

MODE = os.environ.get("FAKE_SYSTEM", "weak")
CHECK = {"verdict": "FAIL", "message": "p99 40.0 ms exceeds the SLO of 20.0 ms", "value": 40.0,
         "limit": 20.0, "where": "x", "metric": "p99",
         "interval": {"low_ms": 30.0, "high_ms": 50.0, "level": 0.95}}


class Fake:
    def run(self, scenario, settings):
        with open("runs.jsonl", "a") as fh:
            fh.write(json.dumps([f.label for f in scenario.faults]) + "\\n")
        if MODE == "broken":
            return RunResult(Verdict.PASS, not_restored="shard-0-primary is stopped")
        if MODE == "weak" and any(f.kind == "freeze" and f.target == "shard-1-primary"
                                  for f in scenario.faults):
            return RunResult(Verdict.FAIL, (CHECK,))
        return RunResult(Verdict.PASS)

    def close(self):
        pass


@pytest.fixture
def chaos_explore_runner():
    return lambda scenario, workdir, log: Fake()
"""

SCENARIO = """
name: explored
seed: 3
target: {kind: recommender, shards: 2, preset: tiny, redis: false}
warmup_s: 2
settle_s: 1
load: [{name: main, rate: 200, duration_s: 10}]
slos: [{metric: p99, at_most: 20}]
explore: {kinds: [freeze], targets: ["shard-*"], max_faults: 2, max_duration_s: 2}
"""

TEST = """
def test_no_schedule_breaks_the_slos(chaos_explore):
    outcome = chaos_explore("explored.yaml", budget=BUDGET)
    assert outcome.verdict.value == "PASS"
"""


def _plugin_args() -> list[str]:
    eps = metadata.entry_points(group="pytest11")
    installed = any(ep.value == "harness.pytest_plugin" for ep in eps)
    return [] if installed else ["-p", "harness.pytest_plugin"]


@pytest.fixture
def explore_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for var in ("RECCHAOS_SEED", "RECCHAOS_PROFILE", "RECCHAOS_OUT"):
        monkeypatch.delenv(var, raising=False)
    pytester.makeconftest(FAKE)
    pytester.makefile(".yaml", explored=SCENARIO)
    return pytester


def run(p: pytest.Pytester, budget: str = "None", *args: str) -> pytest.RunResult:
    p.makepyfile(test_inner_explore=TEST.replace("BUDGET", budget))
    return p.runpytest("-p", "no:cacheprovider", "-p", "no:benchmark", *_plugin_args(), *args)


def test_a_failing_schedule_fails_the_test_with_the_minimal_one(
    explore_dir: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SYSTEM", "weak")
    result = run(explore_dir, "20")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*exploration FAIL*",
            "*minimal failing schedule (example *, 1 fault(s)*freeze(shard-1-primary) at *",
            "*Replay the minimal schedule: recchaos run *minimal.yaml",
            "*Replay the exploration: recchaos explore explored.yaml --seed 3 --budget 20 *",
        ]
    )


def test_the_pr_profile_tries_a_few_schedules_and_passes(
    explore_dir: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SYSTEM", "robust")
    run(explore_dir).assert_outcomes(passed=1)
    runs = (explore_dir.path / "runs.jsonl").read_text().splitlines()
    assert len(runs) == 2  # PROFILE_BUDGETS["pr"]
    assert json.loads(runs[0]) == []  # the first example is the steady state: no fault


def test_inconclusive_is_skipped_in_pr_and_fails_in_nightly(
    explore_dir: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SYSTEM", "broken")
    skipped = run(explore_dir, "None", "-rs")
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(["*INCONCLUSIVE (skipped in the pr profile*"])
    failed = run(explore_dir, "None", "--chaos-profile", "nightly")
    failed.assert_outcomes(failed=1)
