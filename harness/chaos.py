"""Load and faults driven from inside a test, against a recommender that is already running.

:class:`Load` turns keyword arguments into a scenario (the same data a YAML file holds, validated
by the same rules), runs its phases against the running cluster through
:func:`harness.runner.run.run_against` and returns a :class:`~harness.assertions.ChaosRun`.
:class:`Chaos` collects faults (``kill``, ``freeze``, ``latency``, ...) and runs them with a load.
Both are what the pytest plugin's ``load`` and ``chaos`` fixtures return; nothing here imports
pytest. Same seed, same fault schedule and the same request sequence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.assertions import ChaosRun, chaos_run
from harness.model.errors import SutFailure, UsageError
from harness.model.scenario import Scenario, scenario_from_dict

# Users in each preset's data set: requests for ids beyond it get the cold-start answer.
PRESET_USERS = {"tiny": 4000}


@dataclass(frozen=True)
class RunContext:
    """What a test's runs share: the cluster, where runs go, the seed, SLA, profile, names."""

    target: Any  # harness.sut.target.Target
    out_dir: Path
    seed: int
    sla_ms: float
    profile: str
    source: str  # the test's node id: where its SLOs are written
    replay: str  # the command that reruns the test with this seed
    log: Callable[[str], None] = print

    @property
    def options(self) -> Any:
        return self.target.options

    @property
    def name(self) -> str:
        text = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.source.rsplit("::", 1)[-1]).strip("_.-")
        return text or "test"


@dataclass
class Load:
    """``load(rate=200, duration_s=15)``: open-loop load (and any faults) against the cluster."""

    test: RunContext
    calls: int = 0

    def __call__(
        self,
        rate: float = 200.0,
        duration_s: float = 15.0,
        *,
        phases: Sequence[dict[str, Any]] | None = None,
        faults: Sequence[dict[str, Any]] = (),
        fault_schedule: dict[str, Any] | None = None,
        slos: Sequence[dict[str, Any]] = (),
        warmup_s: float = 3.0,
        settle_s: float = 1.0,
        mix: dict[str, Any] | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> ChaosRun:
        scenario = self.scenario(
            phases or [{"name": "main", "rate": rate, "duration_s": duration_s}],
            faults,
            fault_schedule,
            slos,
            warmup_s,
            settle_s,
            mix,
            evidence,
        )
        return self.run(scenario)

    def scenario(
        self,
        phases: Sequence[dict[str, Any]],
        faults: Sequence[dict[str, Any]],
        fault_schedule: dict[str, Any] | None,
        slos: Sequence[dict[str, Any]],
        warmup_s: float,
        settle_s: float,
        mix: dict[str, Any] | None,
        evidence: dict[str, Any] | None,
    ) -> Scenario:
        """The scenario these arguments describe; ScenarioError (a usage error) names the field."""
        opts = self.test.options
        users = PRESET_USERS.get(opts.preset)
        data: dict[str, Any] = {
            "name": self.test.name,
            "seed": self.test.seed,
            "target": {
                "kind": "recommender",
                "shards": opts.shards,
                "preset": opts.preset,
                "redis": opts.redis,
            },
            "sla_ms": self.test.sla_ms,
            "warmup_s": warmup_s,
            "settle_s": settle_s,
            "mix": {**({"users": users} if users else {}), **(mix or {})},
            "load": [dict(p) for p in phases],
            "faults": [dict(f) for f in faults],
            "slos": [dict(s) for s in slos],
            "evidence": dict(evidence or {}),
        }
        if fault_schedule:
            data["fault_schedule"] = dict(fault_schedule)
        return scenario_from_dict(data, self.test.source)

    def run(self, scenario: Scenario) -> ChaosRun:
        """Run ``scenario`` against the cluster; a run that did not complete raises."""
        from harness.runner.run import run_against
        from harness.runner.settings import RunSettings

        self.calls += 1
        settings = RunSettings(
            self.test.source,
            out_dir=self.test.out_dir,
            progress=True,
            profile=self.test.profile,
            replay=self.test.replay,
        )
        outcome = run_against(self.test.target, scenario, settings, log=self.test.log)
        if outcome.verdict is None:
            where = f"\nReproduce with: {self.test.replay}\nrun record: {outcome.run_dir}/run.json"
            if outcome.interrupted:
                raise KeyboardInterrupt(outcome.message)
            if outcome.exit_code == SutFailure.exit_code:
                raise SutFailure(outcome.message + where)
            if outcome.exit_code == UsageError.exit_code:
                raise UsageError(outcome.message)
            raise RunIncomplete(outcome.message + where, outcome.exit_code)
        return chaos_run(outcome, self.test.replay)


class RunIncomplete(Exception):
    """The harness or the machine failed during a run (exit code 4): not the SUT's fault."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Chaos:
    """Faults scheduled against the cluster inside a test, then run with a load::

        chaos.kill("shard-1-primary", at_s=5, duration_s=4)
        run = chaos.run(rate=200, duration_s=15)
        run.assert_failover(at_most_ms=20)

    Times are seconds from the start of the load; ``duration_s=None`` heals at the end of it.
    """

    load: Load
    faults: list[dict[str, Any]] = field(default_factory=list)
    schedule: dict[str, Any] | None = None

    @property
    def seed(self) -> int:
        return self.load.test.seed

    @property
    def profile(self) -> str:
        return self.load.test.profile

    @property
    def sla_ms(self) -> float:
        return self.load.test.sla_ms

    def fault(
        self,
        kind: str,
        target: str | None = None,
        *,
        at_s: float,
        duration_s: float | None = None,
        **params: Any,
    ) -> Chaos:
        """Any fault kind of the scenario format (``docs/scenario-format.md``)."""
        spec: dict[str, Any] = {"kind": kind, "at_s": at_s, "params": params}
        if target is not None:
            spec["target"] = target
        if duration_s is None:
            spec["heal"] = "end"
        else:
            spec["duration_s"] = duration_s
        self.faults.append(spec)
        return self

    def kill(self, target: str, at_s: float, duration_s: float | None = None) -> Chaos:
        """SIGKILL; started again at the heal."""
        return self.fault("kill", target, at_s=at_s, duration_s=duration_s)

    def freeze(self, target: str, at_s: float, duration_s: float | None = None) -> Chaos:
        """SIGSTOP; SIGCONT at the heal."""
        return self.fault("freeze", target, at_s=at_s, duration_s=duration_s)

    def restart(self, target: str, at_s: float, duration_s: float, delay_s: float = 1.0) -> Chaos:
        return self.fault("restart", target, at_s=at_s, duration_s=duration_s, delay_s=delay_s)

    def latency(
        self,
        target: str,
        delay_ms: float,
        at_s: float,
        duration_s: float | None = None,
        jitter_ms: float = 0.0,
    ) -> Chaos:
        return self.fault(
            "latency",
            target,
            at_s=at_s,
            duration_s=duration_s,
            delay_ms=delay_ms,
            jitter_ms=jitter_ms,
        )

    def partition(self, target: str, at_s: float, duration_s: float | None = None) -> Chaos:
        """iptables DROP (needs root)."""
        return self.fault("partition", target, at_s=at_s, duration_s=duration_s)

    def redis_down(self, at_s: float, duration_s: float | None = None) -> Chaos:
        return self.fault("redis_down", at_s=at_s, duration_s=duration_s)

    def region_down(self, at_s: float, duration_s: float | None = None) -> Chaos:
        return self.fault("region_down", at_s=at_s, duration_s=duration_s)

    def random(
        self,
        every_s: float,
        duration_s: float,
        kinds: Sequence[str],
        targets: Sequence[str],
        **more: Any,
    ) -> Chaos:
        """A seeded random single-component fault every ``every_s`` (``fault_schedule``)."""
        self.schedule = {
            "every_s": every_s,
            "duration_s": duration_s,
            "kinds": list(kinds),
            "targets": list(targets),
            **more,
        }
        return self

    def run(self, rate: float = 200.0, duration_s: float = 15.0, **load: Any) -> ChaosRun:
        """The load with every fault scheduled so far."""
        return self.load(rate, duration_s, faults=self.faults, fault_schedule=self.schedule, **load)
