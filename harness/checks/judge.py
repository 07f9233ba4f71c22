"""Judges: one SLO against one window's statistics, or against one fault's failover times.

A judgement is PASS or FAIL only on enough evidence; otherwise INCONCLUSIVE, with the reason
and the value that was measured anyway. Messages name the value, the window, the limit and where
the SLO is written, e.g. "p99 143.2 ms during kill(shard-1-primary) window [12.0 s, 17.0 s]
exceeds the SLO of 20.0 ms (scenarios/primary_kill.yaml, slos[0]); 4,812 requests in the window;
95% CI [138.9, 151.0] ms (ranks 4,745 and 4,779 of 4,812)".

Every quantile check (p50, p95, p99, p99.9) states the distribution-free confidence interval of
its quantile (:mod:`harness.metrics.confidence`), at 95% or at the SLO's own ``confidence``; with
``confidence`` set the interval decides: PASS or FAIL only when it lies wholly on one side of the
limit, INCONCLUSIVE when it straddles it.

``rejection_p99`` is judged on the shed requests alone: below ``min_samples`` of them (100 by
default) the window is INCONCLUSIVE, since a p99 of a handful of rejections is their maximum
and says little; so is a p99 within the limit whose interval has no upper end (fewer than
368 rejections at 95%): it may FAIL on a few rejections, but PASSes only on enough of them. ``served_p99`` is the answered requests' own p99, with its own interval.
"""

from __future__ import annotations

import math
from typing import Any

from harness.checks import text
from harness.checks.verdict import CheckResult, Verdict
from harness.metrics.confidence import DEFAULT_LEVEL, QuantileInterval
from harness.metrics.failover import Failover, Recovery
from harness.metrics.stats import WindowStats
from harness.model.record import FaultEvent
from harness.model.slo import MIN_REJECTIONS, Evidence, SLOSpec


def evidence_problem(
    stats: WindowStats, evidence: Evidence, sla_ms: float, min_samples: int | None = None
) -> str | None:
    """Why this window cannot be judged, or None when the evidence is good enough."""
    needed = min_samples or evidence.min_samples
    if stats.count < needed:
        return (
            f"only {text.count(stats.count)} requests, fewer than the {text.count(needed)}"
            " needed to judge; lengthen the window or raise the rate"
        )
    if stats.sent_ratio < evidence.min_sent_ratio:
        return (
            f"the load generator sent only {text.number(stats.sent_ratio, '')} of the"
            f" {text.count(stats.count)} intended requests (at least"
            f" {text.number(evidence.min_sent_ratio, '')} needed)"
        )
    limit = evidence.lag_limit_ms(sla_ms)
    if stats.lag_p99_ms > limit:
        return (
            f"the load generator lagged (send lag p99 {stats.lag_p99_ms:.1f} ms, limit"
            f" {limit:.1f} ms), so slow responses may be its own"
        )
    if not stats.window.fault_verified:
        return f"the fault {stats.window.label} was not shown to take effect"
    return None


def judge(
    slo: SLOSpec, stats: WindowStats, *, where: str, sla_ms: float, evidence: Evidence
) -> CheckResult:
    """Judge one window metric SLO in one window."""
    value = stats.metric(
        slo.metric, include_errors=slo.include_errors, tier=slo.tier, include_shed=slo.include_shed
    )
    name = text.metric_name(slo, sla_ms)
    shown = text.number(value, slo.unit)
    window = stats.window.describe()
    if slo.metric == "rejection_p99":
        reason = evidence_problem(stats, evidence, sla_ms) or too_few_rejections(stats, slo)
    else:
        reason = evidence_problem(stats, evidence, sla_ms, slo.min_samples)
    if reason is not None:
        message = (
            f"{name} {window} cannot be judged: {reason} ({where}); measured {shown},"
            f" {text.requirement(slo)}"
        )
        return CheckResult(
            Verdict.INCONCLUSIVE, message, value, slo.limit, stats.window.name, where, slo.metric
        )
    if math.isnan(value) and slo.metric == "goodput":  # an empty window: nothing to rate
        message = f"{name} {window} has no duration to measure a rate over ({where})"
        return CheckResult(
            Verdict.INCONCLUSIVE, message, value, slo.limit, stats.window.name, where, slo.metric
        )
    if math.isnan(value) and not slo.expects_violation:  # success-only, no success at all
        message = (
            f"{name} {window} has no successful request to measure: all"
            f" {text.count(stats.count)} failed ({where}); {text.requirement(slo)}"
        )
        return CheckResult(
            Verdict.FAIL, message, value, slo.limit, stats.window.name, where, slo.metric
        )
    holds = not math.isnan(value) and slo.holds(value)
    interval = stats.interval(
        slo.metric, include_errors=slo.include_errors, level=slo.confidence or DEFAULT_LEVEL
    )
    tally = f"{text.count(stats.count)} requests in the window"
    if slo.metric in ("rejection_p99", "shed_share") or (
        slo.metric == "error_ratio" and not slo.include_shed
    ):
        tally += f", {text.count(stats.shed)} shed"
    elif slo.metric == "goodput":
        tally += (
            f", {text.count(stats.within_sla)} answered within the {sla_ms:g} ms SLA in"
            f" {stats.window.duration_s:.1f} s"
        )
    elif slo.metric == "served_p99":
        tally += f", {text.count(stats.successes)} answered"
    if math.isinf(value) and stats.errors:
        tally += f", {text.count(stats.errors)} failed (a failure counts as infinitely slow)"
    failed = failures(stats, slo.include_shed) if slo.metric == "error_ratio" else ""
    if failed:
        tally += f" (failed: {failed})"
    if interval is not None:
        tally += f"; {text.interval(interval)}"
    if slo.confidence is not None and interval is not None:
        if straddles(slo, interval):
            return too_close(slo, stats, value, f"{name} {shown} {window}", where, tally, interval)
        holds = slo.holds(interval.low_ms)  # both ends agree: the interval decides
    message = f"{name} {shown} {window} {text.comparison(slo, holds)} ({where}); {tally}"
    iv = interval.to_dict() if interval is not None else None
    return judged(slo, holds, message, value, stats.window.name, where, iv)


def failures(stats: WindowStats, include_shed: bool = True) -> str:
    """The window's failures by kind, most first (``http_status 2, timeout 1``): what a failed
    ``error_ratio`` check needs to say for its cause to be looked for."""
    kinds = {k: n for k, n in stats.error_kinds.items() if include_shed or k != "shed"}
    return ", ".join(
        f"{k} {text.count(n)}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])
    )


def too_few_rejections(stats: WindowStats, slo: SLOSpec) -> str | None:
    """Why ``rejection_p99`` cannot be judged in this window, or None: fewer shed requests than
    ``min_samples`` (default 100), or a p99 within the limit whose confidence interval has no
    upper end (too few rejections to bound it: a pass would rest on the largest few)."""
    needed = slo.min_samples or MIN_REJECTIONS
    if stats.shed < needed:
        return (
            f"only {text.count(stats.shed)} shed requests, fewer than the {text.count(needed)}"
            " needed to judge a p99 of rejections (min_samples); the target shed too little to"
            " show how fast it refuses"
        )
    iv = stats.interval("rejection_p99", level=slo.confidence or DEFAULT_LEVEL)
    if iv is not None and math.isinf(iv.high_ms) and slo.holds(stats.rejection_p99):
        return (
            f"{text.count(stats.shed)} shed requests are too few to bound their p99 from above"
            f" ({text.interval(iv)}); a longer or stronger surge sheds more"
        )
    return None


def too_close(
    slo: SLOSpec,
    stats: WindowStats,
    value: float,
    what: str,
    where: str,
    tally: str,
    interval: QuantileInterval,
) -> CheckResult:
    """INCONCLUSIVE: the SLO asks for ``confidence`` and the interval straddles the limit."""
    message = (
        f"{what} is too close to call at {(slo.confidence or 0) * 100:g}% confidence: the interval"
        f" straddles the SLO of {text.number(slo.limit, slo.unit)} ({where}); {tally}; more"
        " requests in the window (longer, or a higher rate) narrow it"
    )
    return CheckResult(
        Verdict.INCONCLUSIVE,
        message,
        value,
        slo.limit,
        stats.window.name,
        where,
        slo.metric,
        interval=interval.to_dict(),
    )


def straddles(slo: SLOSpec, interval: QuantileInterval) -> bool:
    """The SLO holds at one end of the interval and not at the other."""
    return slo.holds(interval.low_ms) != slo.holds(interval.high_ms)


def judged(
    slo: SLOSpec,
    holds: bool,
    message: str,
    value: float | None,
    window: str,
    where: str,
    interval: dict[str, Any] | None = None,
) -> CheckResult:
    """The check result of a judged SLO, its verdict set by :func:`expectation`."""
    verdict, message = expectation(slo, holds, message)
    return CheckResult(
        verdict,
        message,
        value,
        slo.limit,
        window,
        where,
        slo.metric,
        expected_violation=slo.expects_violation and verdict is Verdict.PASS,
        interval=interval,
    )


def expectation(slo: SLOSpec, holds: bool, message: str) -> tuple[Verdict, str]:
    """The verdict of a judged SLO. One the scenario expects to be violated (``expect:
    violated``) passes when violated and fails when it held: the expectation is then stale."""
    if not slo.expects_violation:
        return (Verdict.PASS if holds else Verdict.FAIL), message
    if holds:
        return Verdict.FAIL, (
            f"{message}; but the scenario expects this SLO to be violated ({slo.reason}):"
            " update the scenario's expectation"
        )
    return Verdict.PASS, f"{message}; violated as the scenario expects: {slo.reason}"


def fault_value(slo: SLOSpec, times: Failover | Recovery) -> float | None:
    if isinstance(times, Failover):
        return times.first_replica_ms if slo.metric == "time_to_failover" else times.last_miss_ms
    return times.first_primary_ms


def judge_fault(
    slo: SLOSpec,
    event: FaultEvent,
    times: Failover | Recovery,
    *,
    where: str,
    evidence: Evidence,
    reason: str | None = None,
) -> CheckResult:
    """Judge a fault metric SLO for one fault; ``reason`` is the during window's evidence."""
    value = fault_value(slo, times)
    name = text.metric_name(slo, 0)
    recover = isinstance(times, Recovery)
    at = (
        f"the heal of {event.label} at {event.heal_s or 0:.1f} s"
        if recover
        else (f"{event.label} at {event.inject_s:.1f} s")
    )
    if isinstance(times, Recovery) and times.from_s is not None:
        at += f" (counted from {times.from_s:.1f} s, when the last fault in force with it healed)"
    needed = slo.min_samples or evidence.min_samples
    if times.requests < needed:
        reason = (
            f"only {text.count(times.requests)} requests, fewer than the"
            f" {text.count(needed)} needed to judge"
        )
    elif not event.verified:
        reason = f"the fault {event.label} was not shown to take effect"
    label = f"after {at}"
    if reason is not None:
        message = f"{name} after {at} cannot be judged: {reason} ({where}); {text.requirement(slo)}"
        return CheckResult(
            Verdict.INCONCLUSIVE, message, value, slo.limit, label, where, slo.metric
        )
    tally = f"{text.count(times.requests)} requests {'after the heal' if recover else 'during the fault'}"
    if value is None:
        never = "the primary tier" if recover else "the replica tier"
        holds = slo.holds(math.inf)
        message = (
            f"{name}: no answer was served by {never} after {at}; {text.requirement(slo)}"
            f" ({where}); {tally}"
        )
    else:
        holds = slo.holds(value)
        message = (
            f"{name} {text.number(value, 'ms')} after {at} {text.comparison(slo, holds)}"
            f" ({where}); {tally}"
        )
    return judged(slo, holds, message, value, label, where)
