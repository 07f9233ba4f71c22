"""The result of a run driven from a test, with its per-window statistics and assertion helpers.

:class:`ChaosRun` wraps a finished run (:class:`harness.runner.run.RunOutcome`): the run record,
the window statistics, the fault timeline and the failover/recovery times. Its ``assert_*``
helpers build an SLO exactly as a scenario file would write it (same validation, same judges in
:mod:`harness.checks`), judge it against the run, and raise

- :class:`SLOViolation` (an ``AssertionError``) when any window or fault breaks it, or
- :class:`InconclusiveCheck` when there is too little evidence to say (the pytest plugin skips
  such a test in the pr profile and fails it in the nightly one: never a pass),

with messages that name the value, the window, the limit, where the assertion is written, and
the command that replays the run with its seed. No pytest here: the plugin adapts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.checks.run import FaultTimes, judge_run
from harness.checks.verdict import CheckResult, Verdict, combine
from harness.metrics.stats import WindowStats
from harness.model.errors import Inconclusive, Problem, ScenarioError
from harness.model.record import FaultEvent, RunRecord
from harness.model.scenario import Scenario
from harness.model.slo import SLOSpec, read_slo


class SLOViolation(AssertionError):
    """An assertion on a chaos run failed; the message carries every failing check and the
    replay command."""

    def __init__(self, message: str, checks: Sequence[CheckResult] = ()) -> None:
        super().__init__(message)
        self.checks = tuple(checks)


class InconclusiveCheck(Inconclusive):
    """An assertion could not be judged (too few samples, a lagging generator, a fault not
    shown to take effect). Never a pass."""

    def __init__(self, message: str, checks: Sequence[CheckResult] = ()) -> None:
        super().__init__(message)
        self.checks = tuple(checks)


@dataclass(frozen=True)
class ChaosRun:
    """One finished run: record, windows, faults, and the assertions a test makes on it."""

    scenario: Scenario
    record: RunRecord
    windows: tuple[WindowStats, ...]
    fault_times: dict[int, FaultTimes]
    run_dir: Path
    replay: str

    # -- what happened ---------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.scenario.seed

    @property
    def verdict(self) -> Verdict | None:
        """The verdict of the SLOs given to the run itself (``slos=``); None if it had none."""
        return Verdict(self.record.verdict) if self.scenario.slos and self.record.verdict else None

    @property
    def timeline(self) -> tuple[FaultEvent, ...]:
        return self.record.timeline

    def window(self, name: str) -> WindowStats:
        """A window by kind (``steady``, ``before``, ``during``, ``after``: the first one) or by
        its full name (``during kill(shard-1-primary)``)."""
        for w in self.windows:
            if w.window.name == name:
                return w
        for w in self.windows:
            if w.window.kind == name:
                return w
        names = ", ".join(w.window.name for w in self.windows) or "none"
        raise KeyError(f"no window {name!r} in this run; windows: {names}")

    def summary(self) -> str:
        """One line per window: requests, p95/p99, errors and tier shares."""
        lines = []
        for w in self.windows:
            tiers = " ".join(
                f"{t} {100 * n / w.count:.1f}%" for t, n in w.tier_counts.items() if n and w.count
            )
            lines.append(
                f"{w.window.describe()}: {w.count:,} requests, p95 {_ms(w.latency_all.p95)},"
                f" p99 {_ms(w.latency_all.p99)}, {w.errors:,} failed, {tiers or 'no answers'}"
            )
        return "\n".join(lines)

    # -- assertions --------------------------------------------------------------------------
    def assert_slo(self, metric: str, **spec: Any) -> tuple[CheckResult, ...]:
        """Judge one SLO written as in a scenario's ``slos`` list, e.g.
        ``assert_slo("p99", at_most=20, windows=["during"], fault={"kind": "kill"})``.
        Returns the check results when it holds everywhere it applies."""
        origin = _call_text(metric, spec)
        slo = self._slo({"metric": metric, **spec}, origin)
        scenario = replace(self.scenario, slos=(slo,))
        results = judge_run(scenario, self.windows, self.timeline, self.fault_times)
        return self._raise_unless_pass(results)

    def assert_p99(self, at_most_ms: float | None = None, **spec: Any) -> tuple[CheckResult, ...]:
        """p99 (failures count as infinitely slow) within ``at_most_ms`` (default: the SLA)."""
        limit = self.scenario.sla_ms if at_most_ms is None else at_most_ms
        return self.assert_slo("p99", at_most=limit, **spec)

    def assert_p95(self, at_most_ms: float, **spec: Any) -> tuple[CheckResult, ...]:
        return self.assert_slo("p95", at_most=at_most_ms, **spec)

    def assert_no_errors(self, **spec: Any) -> tuple[CheckResult, ...]:
        return self.assert_slo("error_ratio", at_most=0, **spec)

    def assert_tier_share(self, tier: str, **spec: Any) -> tuple[CheckResult, ...]:
        """``assert_tier_share("replica", above=0, windows=["during"])``: a share 0..1 of the
        intended requests in each window that the tier served."""
        return self.assert_slo("tier_share", tier=tier, **spec)

    def assert_failover(self, at_most_ms: float, fault: Any = None) -> tuple[CheckResult, ...]:
        """Inject to the first answer served by the replica tier, for each (selected) fault."""
        return self.assert_slo("time_to_failover", at_most=at_most_ms, **_fault(fault))

    def assert_recovery(self, at_most_ms: float, fault: Any = None) -> tuple[CheckResult, ...]:
        """Heal to the first answer served entirely by the primary tier, per (selected) fault."""
        return self.assert_slo("time_to_recover", at_most=at_most_ms, **_fault(fault))

    def assert_verdict(self) -> None:
        """The SLOs given to the run (``slos=``) all held."""
        checks = [CheckResult.from_dict(c) for c in self.record.checks]
        if not checks:
            raise InconclusiveCheck(f"the run had no SLOs to judge\n{self._footer()}")
        self._raise_unless_pass(checks)

    # -- helpers -----------------------------------------------------------------------------
    def _slo(self, data: dict[str, Any], origin: str) -> SLOSpec:
        problems: list[Problem] = []
        slo = read_slo(data, origin, problems, origin)
        if problems or slo is None:
            raise ScenarioError(self.scenario.source, problems or [Problem(origin, data, "an SLO")])
        return slo

    def _raise_unless_pass(self, results: Sequence[CheckResult]) -> tuple[CheckResult, ...]:
        verdict = combine(results)
        if verdict is Verdict.PASS:
            return tuple(results)
        bad = [r for r in results if r.verdict is verdict]
        text = "\n".join(r.message for r in bad) + "\n" + self._footer()
        if verdict is Verdict.FAIL:
            raise SLOViolation(text, bad)
        raise InconclusiveCheck(text, bad)

    def _footer(self) -> str:
        return f"Reproduce with: {self.replay}\nrun record: {self.run_dir / 'run.json'}"


def _ms(value: float) -> str:
    return "inf ms" if math.isinf(value) else f"{value:.1f} ms"


def _fault(fault: Any) -> dict[str, Any]:
    return {} if fault is None else {"fault": fault}


def _call_text(metric: str, spec: dict[str, Any]) -> str:
    """``assert_slo(p99, at_most=20)``: where an assertion is written, for messages."""
    args = ", ".join([metric] + [f"{k}={v!r}" for k, v in spec.items()])
    return f"assert_slo({args})"


def chaos_run(outcome: Any, replay: str) -> ChaosRun:
    """The :class:`ChaosRun` of a complete :class:`~harness.runner.run.RunOutcome`."""
    ev = outcome.evaluation
    return ChaosRun(
        outcome.scenario, outcome.record, ev.windows, ev.faults, outcome.run_dir, replay
    )
