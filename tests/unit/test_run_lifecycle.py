"""The run lifecycle (:func:`harness.runner.run.execute`) driven with fakes: the order of its
phases, what ``run.json`` holds and the outcome, for a PASS, a FAIL, a fault that was not
applied, a heal that failed, a crash during the load and Ctrl-C. Every side effect is a fake
(:class:`harness.runner.run.Effects`): no process, no socket, no sleep."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.checks.verdict import Verdict
from harness.load.driver import LoadResult
from harness.model.errors import EXIT_INTERRUPTED, SutFailure
from harness.model.record import FaultEvent
from harness.model.requestlog import TIERS, empty_log
from harness.model.scenario import Scenario, scenario_from_dict
from harness.model.stalls import HostStall
from harness.process.stallprobe import ProbeReport
from harness.runner.answers import AnswerSetup
from harness.runner.guards import GuardWatch
from harness.runner.run import STEADY_REQUESTS, Effects, RunOutcome, execute, steady_state
from harness.runner.settings import RunSettings

RATE, SECONDS = 100, 12
CLOCK_NS = 7_000_000_000  # the fake CLOCK_MONOTONIC: the load starts START_LEAD_S after it
KILL = {"kind": "kill", "target": "shard-0-primary", "at_s": 4, "duration_s": 3}


def scenario(
    faults: Sequence[dict[str, Any]] = (), guards: Sequence[dict[str, Any]] = ()
) -> Scenario:
    data = {
        "name": "lifecycle",
        "seed": 3,
        "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
        "warmup_s": 2,
        "settle_s": 1,
        "load": [{"name": "main", "rate": RATE, "duration_s": SECONDS}],
        "faults": list(faults),
        "slos": [{"metric": "p99", "at_most": 20}],
        "guards": list(guards),
    }
    return scenario_from_dict(data, "lifecycle.yaml")


def request_log(latency_ms: float) -> np.ndarray:
    """Every intended request answered at tier primary in ``latency_ms``."""
    n = RATE * SECONDS
    rows = empty_log(n)
    rows["id"] = np.arange(n)
    rows["intended_ns"] = (np.arange(n) * (1e9 / RATE)).astype(np.int64)
    rows["send_ns"] = rows["intended_ns"] + 100_000
    rows["done_ns"] = rows["send_ns"] + int(latency_ms * 1e6)
    rows["status"] = 200
    rows["tier"] = TIERS.index("primary")
    return rows


def load_result(job: Any, latency_ms: float) -> LoadResult:
    log = request_log(latency_ms)
    n = int(log.shape[0])
    summary = {"intended": n, "answered": n, "failed": 0, "missed": 0, "scheduled": n}
    return LoadResult(Path(job.output_dir), job.start_mono_ns, log, {}, summary, [])


@dataclass
class Story:
    """What the fakes saw, in order (the load runs on a thread of its own: see ``main``)."""

    events: list[str] = field(default_factory=list)

    def __call__(self, event: str) -> None:
        self.events.append(event)

    def main(self) -> list[str]:
        """The events on the runner's main line: the load thread's one left out."""
        return [e for e in self.events if e != "load"]


@dataclass
class FakeTarget:
    base_url: str
    manifest_path: Path

    def manifest(self) -> dict[str, Any]:
        return {"components": []}


@dataclass
class FakeWhere:
    """Where the target comes from: up and stopped again, like the run's own target."""

    story: Story
    target: FakeTarget

    def manifest(self, run_dir: Path) -> Path | None:
        return run_dir / "cluster" / "manifest.json"

    @contextmanager
    def up(self, scenario: Scenario, run_dir: Path, watchdog: Any, log: Any) -> Iterator[Any]:
        self.story("target up")
        try:
            yield self.target
        finally:
            self.story("target stopped")


@dataclass
class FakeFaultPlan:
    story: Story
    events: tuple[FaultEvent, ...] = ()
    problems: list[str] = field(default_factory=list)
    heal_errors: list[str] = field(default_factory=list)
    interrupt: bool = False
    wait: bool = False  # wait for the stop, as a plan with a fault still to heal does

    def run(self, stop: threading.Event) -> None:
        self.story("faults run")
        if self.interrupt:
            raise KeyboardInterrupt  # Ctrl-C lands on the main thread, which runs the faults
        if self.wait:
            assert stop.wait(10), "the plan was never stopped"

    def halt(self) -> tuple[tuple[str, ...], int | None, list[str], tuple[str, ...]]:
        self.story("halt")
        return ("freeze(gateway)",), 6_001_000_000, [], ("kill(shard-0-primary) at 9 s",)

    def heal_all(self) -> list[str]:
        self.story("heal all")
        return list(self.heal_errors)

    def timeline(self) -> tuple[FaultEvent, ...]:
        return self.events

    def active(self) -> list[str]:
        return []


@dataclass
class FakeJournal:
    story: Story
    path: Path

    def close(self) -> None:
        self.story("journal closed")


@dataclass
class Harness:
    """One run with fakes: ``latency_ms`` of every answer, or ``crash`` raised by the load."""

    tmp_path: Path
    story: Story = field(default_factory=Story)
    latency_ms: float = 2.0
    crash: BaseException | None = None
    plan: FakeFaultPlan | None = None
    lines: list[str] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)  # the load's progress lines
    warnings: tuple[str, ...] = ()
    stalls: tuple[HostStall, ...] = ()  # what the fake stall probes report (monotonic clock)

    def effects(self) -> Effects:
        story = self.story

        @contextmanager
        def stall_probes(out_dir: Path, watchdog: Any) -> Iterator[ProbeReport]:
            story("stall probes on")
            report = ProbeReport()
            try:
                yield report
            finally:  # filled in once stopped, as the real probes' report is
                story("stall probes off")
                report.stalls, report.trusted, report.cpus = self.stalls, True, (0, 1)

        @contextmanager
        def watchdog(
            journal: Path, manifest: Path | None, log_path: Path, record: Path
        ) -> Iterator[Any]:
            story("watchdog started")
            try:
                yield object()
            finally:  # as the real handle: told the run ended, whatever happened
                story("watchdog released")

        def load(
            job: Any, timeout_s: float, on_progress: Any, workers: int, watchdog: Any
        ) -> LoadResult:
            story("load")
            if self.crash is not None:
                raise self.crash
            for line in self.progress:
                on_progress(line)
            return load_result(job, self.latency_ms)

        def fault_plan(*args: Any) -> FakeFaultPlan:
            story("fault plan")
            return self.plan

        return Effects(
            provenance=lambda: {"git_commit": "abc123", "versions": {}, "host": {}},
            journal=lambda path, run_id: FakeJournal(story, path),
            watchdog=watchdog,
            steady_state=lambda target, scenario: story("steady state"),
            scrape_tiers=lambda url, save_to: story("scrape"),  # the gateway's /metrics unreadable
            fault_plan=fault_plan,
            load=load,
            answers=lambda scenario, target, run_dir, strict, log: AnswerSetup(
                warnings=self.warnings
            ),
            monotonic_ns=lambda: CLOCK_NS,
            sleep=lambda s: story(f"sleep {s:g}"),
            stall_probes=stall_probes,
        )

    def run(self, s: Scenario, effects: Effects | None = None) -> RunOutcome:
        self.plan = self.plan or FakeFaultPlan(self.story)
        target = FakeTarget("http://target.invalid", self.tmp_path / "cluster" / "manifest.json")
        settings = RunSettings("lifecycle.yaml", out_dir=self.tmp_path / "runs", progress=False)
        return execute(
            settings, s, FakeWhere(self.story, target), self.lines.append, effects or self.effects()
        )


def saved(outcome: RunOutcome) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((outcome.run_dir / "run.json").read_text())
    return data


COMPLETE = [
    "watchdog started",
    "target up",
    "steady state",
    "scrape",
    "fault plan",
    "stall probes on",
    "faults run",
    "heal all",
    "stall probes off",
    "sleep 1",
    "scrape",
    "target stopped",
    "watchdog released",
    "journal closed",
]


def test_a_pass_runs_every_phase_in_order_and_records_the_verdict(tmp_path):
    h = Harness(tmp_path)
    outcome = h.run(scenario())
    assert h.story.main() == COMPLETE
    assert h.story.events.index("load") < h.story.events.index("heal all")
    assert outcome.verdict is Verdict.PASS and outcome.exit_code == 0
    assert outcome.message == "verdict PASS" and not outcome.interrupted
    record = saved(outcome)
    assert record["status"] == "complete" and record["verdict"] == "PASS"
    assert record["errors"] == [] and record["git_commit"] == "abc123"
    assert record["origin_mono_ns"] == CLOCK_NS + 3_000_000_000  # START_LEAD_S after the clock
    assert [c["verdict"] for c in record["checks"]] == ["PASS"]
    assert record["replay"].startswith("recchaos run lifecycle.yaml --seed 3")
    assert h.lines[0].startswith(f"run {outcome.run_dir} (seed 3); replay with: recchaos run")
    assert h.lines[-1] == "verdict: PASS"
    details = json.loads((outcome.run_dir / "details.json").read_text())
    assert details["fault_problems"] == [] and details["unaccounted"] == []


def test_a_run_that_fails_only_through_a_host_stall_is_inconclusive_and_records_it(tmp_path):
    # Every answer late (a FAIL on its own), but a host stall spans the whole load: without the
    # requests in flight during it nothing is left to judge, so the run cannot say FAIL or PASS.
    origin = CLOCK_NS + 3_000_000_000
    whole = HostStall(1, origin - 1_000_000, origin + (SECONDS + 1) * 1_000_000_000)
    failed = Harness(tmp_path / "a", latency_ms=40.0).run(scenario())
    assert failed.verdict is Verdict.FAIL  # the same run without a stall
    h = Harness(tmp_path / "b", latency_ms=40.0, stalls=(whole,))
    outcome = h.run(scenario())
    assert outcome.verdict is Verdict.INCONCLUSIVE
    record = saved(outcome)
    (check,) = record["checks"]
    assert check["verdict"] == "INCONCLUSIVE" and "host stall" in check["message"]
    assert "CPU 1 ran nothing" in check["message"]
    stalls = record["host_stalls"]
    assert stalls["trusted"] and stalls["cpus"] == [0, 1]
    assert stalls["stalls"] == [{"cpu": 1, "at_s": -0.001, "ms": whole.ms}]


def test_what_the_run_could_not_test_is_recorded_as_a_warning(tmp_path):
    h = Harness(tmp_path, warnings=("lifecycle.yaml: load[0] (main) draws users beyond 4,000",))
    outcome = h.run(scenario())
    assert outcome.verdict is Verdict.PASS
    assert saved(outcome)["warnings"] == list(h.warnings)
    details = json.loads((outcome.run_dir / "details.json").read_text())
    assert details["answers"]["warnings"] == list(h.warnings)
    assert details["answers"]["checked"] is False


def test_a_fault_healed_too_late_for_an_after_window_is_a_warning(tmp_path):
    h = Harness(tmp_path)
    late = FaultEvent(
        "kill", "shard-0-primary", {}, "faults[0]", 4 * 10**9, 0.0, 11_500_000_000, None, True
    )
    h.plan = FakeFaultPlan(h.story, events=(late,))
    outcome = h.run(scenario([KILL]))
    assert outcome.verdict is Verdict.PASS  # nothing failed: the run just cannot see recovery
    [warning] = saved(outcome)["warnings"]
    assert warning.startswith(
        "no after window for kill(shard-0-primary): it healed at 11.5 s and the load ended at"
        " 12.0 s, before the 1 s of settling"
    )
    assert f"warning: {warning}" in h.lines


def test_a_fail_is_judged_complete_with_the_failing_check(tmp_path):
    h = Harness(tmp_path, latency_ms=50.0)
    outcome = h.run(scenario())
    assert h.story.main() == COMPLETE
    assert outcome.verdict is Verdict.FAIL and outcome.exit_code == 1
    record = saved(outcome)
    assert record["status"] == "complete" and record["verdict"] == "FAIL"
    [check] = record["checks"]
    assert check["verdict"] == "FAIL"
    assert check["message"].startswith("p99 50.")
    assert "exceeds the SLO of 20.0 ms (lifecycle.yaml, slos[0])" in check["message"]


def test_a_fault_that_was_not_applied_makes_the_run_inconclusive_and_says_why(tmp_path):
    h = Harness(tmp_path)
    problem = "kill(shard-0-primary) (faults[0]) was not applied: no process shard-0-primary"
    h.plan = FakeFaultPlan(h.story, problems=[problem])
    outcome = h.run(scenario([KILL]))
    assert h.story.main() == COMPLETE
    assert outcome.verdict is Verdict.INCONCLUSIVE and outcome.exit_code == 3
    record = saved(outcome)
    assert record["status"] == "complete" and record["verdict"] == "INCONCLUSIVE"
    unsure = [c for c in record["checks"] if c["verdict"] == "INCONCLUSIVE"]
    assert [(c["message"], c["where"], c["metric"]) for c in unsure] == [
        (problem, "faults", "fault")
    ]
    details = json.loads((outcome.run_dir / "details.json").read_text())
    assert details["fault_problems"] == [problem]


def test_a_heal_that_failed_is_an_error_and_never_a_pass(tmp_path):
    h = Harness(tmp_path)
    h.plan = FakeFaultPlan(h.story, heal_errors=["kill(shard-0-primary): start timed out"])
    outcome = h.run(scenario([KILL]))
    assert h.story.main() == COMPLETE
    assert outcome.verdict is Verdict.INCONCLUSIVE and outcome.exit_code == 3
    record = saved(outcome)
    assert record["status"] == "complete" and record["verdict"] == "INCONCLUSIVE"
    assert record["errors"] == ["heal failed: kill(shard-0-primary): start timed out"]
    assert outcome.evaluation is not None
    assert outcome.evaluation.verdict is Verdict.INCONCLUSIVE  # the record's, not a PASS


def test_a_heal_that_failed_leaves_a_fail_a_fail(tmp_path):
    h = Harness(tmp_path, latency_ms=50.0)
    h.plan = FakeFaultPlan(h.story, heal_errors=["kill(shard-0-primary): start timed out"])
    outcome = h.run(scenario([KILL]))
    assert outcome.verdict is Verdict.FAIL and saved(outcome)["verdict"] == "FAIL"


def test_a_crash_during_the_load_heals_stops_and_records_incomplete(tmp_path):
    h = Harness(tmp_path, crash=SutFailure("the gateway exited with code -9"))
    outcome = h.run(scenario([KILL]))
    assert h.story.main() == [
        "watchdog started",
        "target up",
        "steady state",
        "scrape",
        "fault plan",
        "stall probes on",
        "faults run",
        "heal all",
        "stall probes off",
        "target stopped",
        "watchdog released",
        "journal closed",
    ]
    assert outcome.verdict is None and outcome.exit_code == SutFailure.exit_code == 1
    assert outcome.message == "SutFailure: the gateway exited with code -9"
    record = saved(outcome)
    assert record["status"] == "incomplete" and record["verdict"] is None
    assert record["errors"] == ["SutFailure: the gateway exited with code -9"]
    assert record["ended_wall"] is not None


def test_ctrl_c_heals_stops_and_exits_130_with_a_partial_record(tmp_path):
    h = Harness(tmp_path)
    h.plan = FakeFaultPlan(h.story, interrupt=True)
    outcome = h.run(scenario([KILL]))
    assert h.story.main()[-6:] == [
        "faults run",
        "heal all",
        "stall probes off",
        "target stopped",
        "watchdog released",
        "journal closed",
    ]
    assert outcome.interrupted and outcome.verdict is None
    assert outcome.exit_code == EXIT_INTERRUPTED == 130
    assert outcome.message == "interrupted; partial record written"
    record = saved(outcome)
    assert record["status"] == "incomplete"
    assert record["errors"] == ["interrupted (Ctrl-C): faults healed, target stopped"]


def test_a_failed_steady_state_stops_the_target_before_any_load(tmp_path):
    h = Harness(tmp_path)
    effects = h.effects()

    def unsteady(target: Any, s: Scenario) -> None:
        raise SutFailure("steady state not reached within 30 s before any fault")

    h.plan = FakeFaultPlan(h.story)
    target = FakeTarget("http://target.invalid", tmp_path / "manifest.json")
    settings = RunSettings("lifecycle.yaml", out_dir=tmp_path / "runs", progress=False)
    outcome = execute(
        settings,
        scenario(),
        FakeWhere(h.story, target),
        h.lines.append,
        replace(effects, steady_state=unsteady),
    )
    assert h.story.events == [
        "watchdog started",
        "target up",
        "target stopped",
        "watchdog released",
        "journal closed",
    ]
    assert outcome.exit_code == 1 and saved(outcome)["status"] == "incomplete"


def test_a_guard_that_trips_halts_heals_at_once_records_the_halt_and_fails(tmp_path):
    failing = [
        {"worker": 0, "elapsed_s": t, "answered": 100, "failed": 100 * (t - 1), "missed": 0}
        for t in (1, 2, 3)
    ]  # every request failed from 1 s on
    h = Harness(tmp_path, progress=failing)
    h.plan = FakeFaultPlan(h.story, wait=True)
    origin = CLOCK_NS + 3_000_000_000

    def guards(s: Scenario, url: str, origin_ns: int) -> GuardWatch:
        assert (url, origin_ns) == ("http://target.invalid", origin)
        return GuardWatch(s.guards, url, origin_ns, clock=lambda: origin_ns + 6_000_000_000)

    s = scenario([KILL], guards=[{"kind": "error_ratio", "above": 0.5, "for_s": 2}])
    outcome = h.run(s, replace(h.effects(), guards=guards))
    assert h.story.main() == COMPLETE[:7] + ["halt"] + COMPLETE[7:]
    assert outcome.verdict is Verdict.FAIL and outcome.exit_code == 1
    record = saved(outcome)
    assert record["verdict"] == "FAIL" and record["status"] == "complete"
    halt = record["halt"]
    assert (halt["guard"], halt["trip_ns"], halt["healed_ns"]) == (
        "guards[0]",
        6_000_000_000,
        6_001_000_000,
    )
    assert halt["healed"] == ["freeze(gateway)"]
    assert halt["not_applied"] == ["kill(shard-0-primary) at 9 s"]
    guard = record["checks"][-1]
    assert (guard["verdict"], guard["metric"], guard["where"]) == (
        "FAIL",
        "guard",
        "lifecycle.yaml, guards[0]",
    )
    assert guard["message"].startswith(
        "guard error ratio above 0.5 for 2 s (guards[0]) tripped at 6.0 s: error ratio 1.00 "
        "(200 of 200 completed requests failed) from 1.0 s to 3.0 s; the run was halted: "
        "healed freeze(gateway) (all healed 1 ms after the trip)"
    )
    assert any(line.startswith("  * HALT: guard error ratio") for line in h.lines)


class SlowThenFast:
    """A probe and a clock: the first ``slow`` answers take 25 ms, the rest 3 ms."""

    def __init__(self, slow: int) -> None:
        self.now, self.n, self.slow = 0.0, 0, slow

    def probe(self, url: str, s: Scenario, user: int) -> tuple[int, str]:
        self.n += 1
        self.now += 0.025 if self.n <= self.slow else 0.003
        return 200, "primary"

    def clock(self) -> float:
        return self.now


def test_steady_state_means_answers_inside_the_sla_not_merely_answers():
    target = FakeTarget("http://target.invalid", Path("manifest.json"))
    cold = SlowThenFast(slow=5)
    steady_state(target, scenario(), probe=cold.probe, clock=cold.clock)  # type: ignore[arg-type]
    assert cold.n == 5 + STEADY_REQUESTS  # the late answers did not count
    always_late = SlowThenFast(slow=10**6)
    with pytest.raises(SutFailure, match=r"in a row within the 20 ms SLA at tier primary.*late"):
        steady_state(
            target,  # type: ignore[arg-type]
            scenario(),
            timeout_s=1.0,
            probe=always_late.probe,
            clock=always_late.clock,
        )
