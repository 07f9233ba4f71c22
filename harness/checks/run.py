"""Judge a whole run: every SLO in every window (or fault) it selects, plus the evidence rules.

:func:`evaluate` goes from the request log, the fault timeline and the run's own problems to
windows, statistics, failover times, check results and one verdict: the runner only collects
the data. Every SLO yields at least one result (an SLO with nothing to judge is INCONCLUSIVE),
every fault that was not shown to take effect adds an INCONCLUSIVE result of its own, and so
does every problem of the run itself (:mod:`harness.checks.integrity`). A run a guard halted
gets a FAIL of its own (:func:`harness.checks.guards.halt_check`).

A window check that fails is judged again without the requests in flight during a host stall
(:mod:`harness.metrics.stalls`: a CPU of the machine ran nothing, not even the real-time stall
probe) of at least the evidence's ``max_host_stall_ms``: if it does not fail then, the run
cannot tell the system's failure from the machine's, and the check is INCONCLUSIVE with both
findings in its message (:class:`StallExcuse`). Never PASS: the requests the machine delayed
are not evidence that the system held its SLO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from harness.checks import text
from harness.checks.guards import halt_check
from harness.checks.integrity import RunProblems, problem_checks, run_verdict
from harness.checks.judge import evidence_problem, judge, judge_fault
from harness.checks.quality import judge_quality
from harness.checks.verdict import CheckResult, Verdict
from harness.metrics.capacity import Capacity
from harness.metrics.failover import Failover, Recovery, time_to_failover, time_to_recover
from harness.metrics.stalls import at_least, in_flight_during, spells
from harness.metrics.stats import WindowStats, in_window, window_stats
from harness.metrics.windows import Window, windows_for
from harness.model.faults import FAULT_KINDS
from harness.model.record import FaultEvent, Halt
from harness.model.scenario import Scenario
from harness.model.slo import QUALITY_METRICS, SLOSpec
from harness.model.stalls import HostStall


@dataclass(frozen=True)
class FaultTimes:
    failover: Failover
    recovery: Recovery | None


@dataclass(frozen=True)
class Evaluation:
    windows: tuple[WindowStats, ...]
    faults: dict[int, FaultTimes]
    checks: tuple[CheckResult, ...]
    verdict: Verdict


def evaluate(
    scenario: Scenario,
    requests: np.ndarray,
    timeline: Sequence[FaultEvent],
    run_end_s: float,
    run_start_s: float = 0.0,
    problems: RunProblems | None = None,
    halt: Halt | None = None,
    stalls: Sequence[HostStall] = (),
    capacity: Capacity | None = None,
) -> Evaluation:
    """The run judged: its SLO checks, then one check per problem of the run itself, then the
    halt (a guard that tripped), if any. ``stalls``: the host stalls the probes measured (the
    request log's clock), for :class:`StallExcuse`; ``capacity``: what the scenario's rate steps
    measured before the load, for a floor written as a share of it (``of: capacity``)."""
    problems = problems or RunProblems()
    wins = windows_for(timeline, run_start_s, run_end_s, scenario.warmup_s, scenario.settle_s)
    stats = tuple(window_stats(requests, w, scenario.sla_ms) for w in wins)
    times = fault_times(requests, timeline, run_end_s, scenario.sla_ms)
    excuse = StallExcuse.of(scenario, requests, stalls)
    checks = judge_run(scenario, stats, timeline, times, excuse, capacity)
    checks += problem_checks(problems)
    if halt is not None:
        checks += (halt_check(halt, scenario.where(halt.guard)),)
    return Evaluation(stats, times, checks, run_verdict(checks, problems))


def fault_times(
    requests: np.ndarray, timeline: Sequence[FaultEvent], run_end_s: float, sla_ms: float
) -> dict[int, FaultTimes]:
    out = {}
    for i, e in enumerate(timeline):
        heal = e.heal_s
        failover = time_to_failover(requests, e.inject_s, heal or run_end_s, sla_ms)
        if heal is None:
            out[i] = FaultTimes(failover, None)
            continue
        start = outage_end(timeline, heal)
        later = [x.inject_s for x in timeline if x.inject_s >= start]
        recovery = time_to_recover(requests, start, min(later + [run_end_s]))
        if start > heal:
            recovery = replace(recovery, from_s=start)
        out[i] = FaultTimes(failover, recovery)
    return out


def outage_end(timeline: Sequence[FaultEvent], heal_s: float) -> float:
    """When the outage a heal belongs to ends: the heal itself, or the later heal of a fault
    still in force then (and so on, while the heals overlap).

    A whole-cluster restart heals its faults one by one as each process is ready again: the
    gateway listened at 21.0 s, the shards at 24.4 s, and nothing could be served by the primary
    tier before that. Recovery is the system's, so its clock starts when the last of those
    heals. A fault that never heals is not part of the outage: it is the rest of the run's
    normal, and does not hold the clock back.
    """
    end, moved = heal_s, True
    while moved:
        moved = False
        for x in timeline:
            h = x.heal_s
            if h is not None and x.inject_s < end < h:
                end, moved = h, True
    return end


def judge_run(
    scenario: Scenario,
    stats: Sequence[WindowStats],
    timeline: Sequence[FaultEvent],
    times: Mapping[int, FaultTimes],
    excuse: StallExcuse | None = None,
    capacity: Capacity | None = None,
) -> tuple[CheckResult, ...]:
    results = [_unverified(scenario, e) for e in timeline if not e.verified]
    for slo in scenario.slos:
        where = scenario.where(slo.origin)
        found = (
            _judge_faults(scenario, slo, stats, timeline, times)
            if slo.per_fault
            else [
                _judge_one(scenario, slo, s, where, excuse, capacity)
                for s in stats
                if _selects(slo, s.window, timeline)
            ]
        )
        results += found or [_nothing_to_judge(slo, where)]
    return tuple(results)


def _judge_one(
    scenario: Scenario,
    slo: SLOSpec,
    stats: WindowStats,
    where: str,
    excuse: StallExcuse | None,
    capacity: Capacity | None,
) -> CheckResult:
    sla, evidence = scenario.sla_ms, scenario.evidence
    if slo.metric in QUALITY_METRICS:
        return judge_quality(slo, stats, where=where, sla_ms=sla, evidence=evidence)
    share = slo.limit
    if slo.of == "capacity":
        if capacity is None or capacity.rate is None:
            return _no_capacity(slo, stats, where, sla, capacity)
        slo = replace(slo, limit=share * capacity.rate)
    result = judge(slo, stats, where=where, sla_ms=sla, evidence=evidence)
    if capacity is not None and slo.of == "capacity":
        result = replace(
            result, message=f"{result.message}; the floor is {share:g} of the {capacity.describe()}"
        )
    return excuse.recheck(result, slo, stats, where) if excuse is not None else result


def _no_capacity(
    slo: SLOSpec, stats: WindowStats, where: str, sla_ms: float, capacity: Capacity | None
) -> CheckResult:
    why = capacity.describe() if capacity is not None else "no capacity was measured in this run"
    message = (
        f"{text.metric_name(slo, sla_ms)} {stats.window.describe()} ({where}) is judged against"
        f" {slo.limit:g} of the capacity, and there is none to judge it by: {why}"
    )
    return CheckResult(
        Verdict.INCONCLUSIVE, message, None, None, stats.window.name, where, slo.metric
    )


SPELL_GAP_NS = 3_000_000  # stalls of one CPU at most about a probe period (2 ms) apart: one spell


@dataclass(frozen=True)
class StallExcuse:
    """Judges a failed window check again without the requests a host stall delayed."""

    scenario: Scenario
    stalls: tuple[HostStall, ...]
    margin_ns: int  # a request this soon after a stall's end may still wait on its backlog
    stalled: np.ndarray = field(repr=False)  # the requests in flight during one of ``stalls``
    clean: np.ndarray = field(repr=False)  # the others
    _clean_stats: dict[tuple[str, float, float], WindowStats] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def of(
        cls, scenario: Scenario, requests: np.ndarray, stalls: Sequence[HostStall]
    ) -> StallExcuse | None:
        """None when no stall reaches the evidence's ``max_host_stall_ms``."""
        joined = spells(stalls, SPELL_GAP_NS)
        long = at_least(joined, scenario.evidence.host_stall_limit_ms(scenario.sla_ms))
        if not long:
            return None
        margin = int(scenario.sla_ms * 1e6)  # the backlog a stall leaves is served after it
        hit = in_flight_during(requests, long, margin)
        return cls(scenario, long, margin, requests[hit], requests[~hit])

    def recheck(
        self, result: CheckResult, slo: SLOSpec, stats: WindowStats, where: str
    ) -> CheckResult:
        if result.verdict is not Verdict.FAIL or slo.expects_violation:
            return result
        w = stats.window
        hit = int(in_window(self.stalled, w).shape[0])
        if not hit:
            return result
        lo, hi = w.start_s * 1e9, w.end_s * 1e9
        seen = [
            s
            for s in self.stalls
            if s.start_ns <= hi + self.margin_ns and s.end_ns + self.margin_ns >= lo
        ]
        key = (w.name, w.start_s, w.end_s)
        clean = self._clean_stats.get(key)
        if clean is None:  # one window often fails several checks: its stats once
            clean = self._clean_stats[key] = window_stats(self.clean, w, self.scenario.sla_ms)
        again = judge(
            slo,
            clean,
            where=where,
            sla_ms=self.scenario.sla_ms,
            evidence=self.scenario.evidence,
        )
        stalls = "; ".join(s.describe() for s in seen[:3]) + (
            f"; {len(seen) - 3} more" if len(seen) > 3 else ""
        )
        found = (
            f"; {hit} of the window's requests were in flight during a host stall ({stalls},"
            f" measured by the stall probe)"
        )
        if again.verdict is Verdict.FAIL:
            return replace(
                result, message=result.message + found + ", and it fails without them too"
            )
        return replace(
            result,
            verdict=Verdict.INCONCLUSIVE,
            message=(
                f"{result.message}{found}; without them it does not fail"
                f" ({text.metric_name(slo, self.scenario.sla_ms)}"
                f" {text.number(again.value, slo.unit)}, {again.verdict.value}): the machine, not"
                " the system under test, may have lost that time"
            ),
        )


def _judge_faults(
    scenario: Scenario,
    slo: SLOSpec,
    stats: Sequence[WindowStats],
    timeline: Sequence[FaultEvent],
    times: Mapping[int, FaultTimes],
) -> list[CheckResult]:
    out = []
    for i, event in enumerate(timeline):
        if slo.fault is not None and not slo.fault.matches(event):
            continue
        t = times[i].recovery if slo.metric == "time_to_recover" else times[i].failover
        if t is None:
            continue
        during = [s for s in stats if s.window.kind == "during" and s.window.fault == i]
        reason = (
            evidence_problem(during[0], scenario.evidence, scenario.sla_ms, 1) if during else None
        )
        out.append(
            judge_fault(
                slo,
                event,
                t,
                where=scenario.where(slo.origin),
                evidence=scenario.evidence,
                reason=reason,
            )
        )
    return out


def _selects(slo: SLOSpec, w: Window, timeline: Sequence[FaultEvent]) -> bool:
    if w.kind not in slo.windows:
        return False
    if slo.fault is not None and (w.fault is None or not slo.fault.matches(timeline[w.fault])):
        return False
    return slo.unless is None or not condition_holds(slo.unless, w, timeline)


def condition_holds(name: str, w: Window, timeline: Sequence[FaultEvent]) -> bool:
    """Does an ``unless`` condition hold at some time in the window?"""
    down = [timeline[j] for j in w.active if _takes_down(timeline[j])]
    if name == "region_down":
        return any(e.target == "region" for e in down)
    primaries = {
        e.target.removesuffix("-primary"): e for e in down if e.target.endswith("-primary")
    }
    for e in down:
        p = (
            primaries.get(e.target.removesuffix("-replica"))
            if e.target.endswith("-replica")
            else None
        )
        if p is not None and _overlap(p, e, w):
            return True
    return False


def _takes_down(e: FaultEvent) -> bool:
    spec = FAULT_KINDS.get(e.kind)  # a surge phase is no fault kind: it takes nothing down
    return spec is not None and spec.takes_down


def _overlap(a: FaultEvent, b: FaultEvent, w: Window) -> bool:
    end = w.end_s * 1e9
    start = max(a.inject_ns, b.inject_ns, w.start_s * 1e9)
    stop = min(
        a.heal_ns if a.heal_ns is not None else end,
        b.heal_ns if b.heal_ns is not None else end,
        end,
    )
    return start < stop


def _unverified(scenario: Scenario, e: FaultEvent) -> CheckResult:
    note = f": {e.note}" if e.note else ""
    where = scenario.where(e.origin)
    message = (
        f"fault {e.label} injected at {e.inject_s:.1f} s ({where}) was not shown to take"
        f" effect{note}; the windows it touches cannot be judged"
    )
    return CheckResult(Verdict.INCONCLUSIVE, message, None, None, None, where, "fault")


def _nothing_to_judge(slo: SLOSpec, where: str) -> CheckResult:
    kinds = ", ".join(slo.windows) if not slo.per_fault else "fault"
    message = (
        f"{slo.metric} ({where}) had nothing to judge: no {kinds} window or fault in"
        " this run matched it"
    )
    return CheckResult(Verdict.INCONCLUSIVE, message, None, slo.limit, None, where, slo.metric)
