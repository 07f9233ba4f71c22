"""Declarative service-level objectives and the evidence rules that guard every verdict.

An :class:`SLOSpec` names a metric, one bound (``at_most``, ``at_least``, ``above`` or
``below``) and where it applies: window metrics (percentiles, error ratio, shares, answer
quality) are judged in every selected window; fault metrics (time to failover, time to recover)
once per selected fault. Answer-quality metrics (``valid_share``, ``agreement_at_k``,
``ndcg_at_k``) may name a ``tier``: then only the answers served at that tier count.
:class:`Evidence` holds the thresholds below which a window is INCONCLUSIVE instead of judged.
A quantile SLO may set ``confidence`` (e.g. 0.95): its verdict then follows the quantile's
confidence interval, and a window whose interval straddles the limit is INCONCLUSIVE.

Overload metrics judge a target that sheds load: ``goodput`` (answers within the SLA per second
of the window, in answers/s), ``served_p99`` (p99 of the answered requests alone, in ms),
``rejection_p99`` (p99 of the shed requests alone, in ms: INCONCLUSIVE below ``min_samples``
rejections, 100 by default) and ``shed_share`` (shed requests among the intended). An
``error_ratio`` SLO with ``include_shed: false`` counts every failure but a shed request.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.model.errors import MISSING, Problem
from harness.model.faults import FAULT_KINDS
from harness.model.load import SURGE
from harness.model.requestlog import TIERS
from harness.model.stalls import DETECT_MS
from harness.model.validate import (
    INVALID,
    Bad,
    Conv,
    Fields,
    any_invalid,
    boolean,
    choice,
    integer,
    number,
    string,
)

LATENCY_METRICS = ("p50", "p95", "p99", "p99.9", "max")
QUANTILE_METRICS = ("p50", "p95", "p99", "p99.9")  # judged with a confidence interval
# p99 of the answered requests alone and of the shed ones alone (ms); also with an interval
SPLIT_QUANTILE_METRICS = ("served_p99", "rejection_p99")
RATIO_METRICS = ("error_ratio", "within_sla", "tier_share", "cold_start_share", "shed_share")
RATE_METRICS = ("goodput",)  # answers within the SLA per second of the window
QUALITY_METRICS = ("valid_share", "agreement_at_k", "ndcg_at_k")
FAULT_METRICS = ("time_to_failover", "time_to_last_miss", "time_to_recover")
METRICS = (
    LATENCY_METRICS
    + SPLIT_QUANTILE_METRICS
    + RATIO_METRICS
    + RATE_METRICS
    + QUALITY_METRICS
    + FAULT_METRICS
)
MIN_REJECTIONS = 100  # rejection_p99 without min_samples: fewer shed requests is INCONCLUSIVE
REFERENCE_METRICS = ("agreement_at_k", "ndcg_at_k")  # need a reference answer per user
WINDOW_KINDS = ("steady", "before", "during", "after")
EXPECTATIONS = ("hold", "violated")
CONDITIONS = ("both_copies_dead", "region_down")

BOUNDS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "at_most": (operator.le, "at most"),
    "at_least": (operator.ge, "at least"),
    "above": (operator.gt, "above"),
    "below": (operator.lt, "below"),
}


class FaultLike(Protocol):
    """A planned fault (FaultSpec) or one that happened (the run record's FaultEvent)."""

    @property
    def kind(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def origin(self) -> str: ...


@dataclass(frozen=True)
class FaultSelector:
    """Which faults an SLO is about: by index into ``faults``, and/or by kind and target glob."""

    index: int | None = None
    kind: str | None = None
    target: str | None = None

    def matches(self, fault: FaultLike) -> bool:
        if self.index is not None and fault.origin != f"faults[{self.index}]":
            return False
        if self.kind is not None and fault.kind != self.kind:
            return False
        return self.target is None or fnmatch.fnmatchcase(fault.target, self.target)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (("index", self.index), ("kind", self.kind), ("target", self.target))
            if v is not None
        }


@dataclass(frozen=True)
class SLOSpec:
    """``metric`` must be ``bound`` ``limit`` (ms for times, a 0..1 share for ratios)."""

    metric: str
    bound: str
    limit: float
    windows: tuple[str, ...] = WINDOW_KINDS
    fault: FaultSelector | None = None
    tier: str | None = None
    include_errors: bool = True
    unless: str | None = None
    min_samples: int | None = None
    expect: str = "hold"
    reason: str = ""
    confidence: float | None = None  # quantile metrics: judge by the interval at this level
    include_shed: bool = True  # error_ratio: count shed requests as errors
    of: str | None = None  # goodput: "capacity", the limit is a share of the measured capacity
    origin: str = field(default="", compare=False)

    @property
    def expects_violation(self) -> bool:
        """The scenario states that the SUT cannot hold this SLO (``expect: violated``)."""
        return self.expect == "violated"

    @property
    def per_fault(self) -> bool:
        return self.metric in FAULT_METRICS

    @property
    def unit(self) -> str:
        """``ms`` for times, ``answers/s`` for goodput, ``""`` for a share (0..1)."""
        if self.metric in RATE_METRICS:
            return "answers/s"
        return (
            "ms" if self.metric in LATENCY_METRICS + SPLIT_QUANTILE_METRICS + FAULT_METRICS else ""
        )

    def holds(self, value: float) -> bool:
        return BOUNDS[self.bound][0](value, self.limit)

    def bound_text(self) -> str:
        return BOUNDS[self.bound][1]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"metric": self.metric, self.bound: self.limit}
        if not self.per_fault:
            d["windows"] = list(self.windows)
        if self.fault is not None:
            d["fault"] = self.fault.to_dict()
        if self.tier is not None:
            d["tier"] = self.tier
        if self.metric in LATENCY_METRICS:
            d["include_errors"] = self.include_errors
        if self.unless is not None:
            d["unless"] = self.unless
        if not self.include_shed:
            d["include_shed"] = False
        if self.min_samples is not None:
            d["min_samples"] = self.min_samples
        if self.expects_violation:
            d["expect"] = self.expect
            d["reason"] = self.reason
        if self.confidence is not None:
            d["confidence"] = self.confidence
        if self.of is not None:
            d["of"] = self.of
        return d


@dataclass(frozen=True)
class Evidence:
    """Below these a window is INCONCLUSIVE: samples, generator lag p99, share actually sent.

    ``max_lag_p99_ms`` None means a quarter of the scenario's SLA. ``max_host_stall_ms``: a
    host stall this long or longer (None: a quarter of the SLA) makes a window check that fails
    only on the requests in flight during it INCONCLUSIVE (:class:`harness.checks.run.StallExcuse`).
    """

    min_samples: int = 100
    max_lag_p99_ms: float | None = None
    min_sent_ratio: float = 0.99
    max_host_stall_ms: float | None = None

    def lag_limit_ms(self, sla_ms: float) -> float:
        return sla_ms / 4 if self.max_lag_p99_ms is None else self.max_lag_p99_ms

    def host_stall_limit_ms(self, sla_ms: float) -> float:
        return sla_ms / 4 if self.max_host_stall_ms is None else self.max_host_stall_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_samples": self.min_samples,
            "max_lag_p99_ms": self.max_lag_p99_ms,
            "min_sent_ratio": self.min_sent_ratio,
            "max_host_stall_ms": self.max_host_stall_ms,
        }


def read_evidence(data: Any, path: str, problems: list[Problem]) -> Evidence | None:
    f = Fields(data, path, problems)
    n = f.get("min_samples", integer(1, 10_000_000), 100)
    lag = f.get("max_lag_p99_ms", number(0, lo_open=True, unit="ms"), None)
    sent = f.get("min_sent_ratio", number(0, 1, unit="share of intended requests"), 0.99)
    stall = f.get("max_host_stall_ms", number(DETECT_MS, unit="ms"), None)
    f.finish()
    if not f.ok or any_invalid(n, lag, sent, stall):
        return None
    return Evidence(min_samples=n, max_lag_p99_ms=lag, min_sent_ratio=sent, max_host_stall_ms=stall)


def read_slo(data: Any, path: str, problems: list[Problem], origin: str) -> SLOSpec | None:
    f = Fields(data, path, problems)
    metric = f.get("metric", choice(METRICS))
    bound, limit = _read_bound(f, metric)
    windows = _read_windows(f, metric)
    fault = _read_selector(f)
    tier = f.get("tier", choice(TIERS), None)
    if metric == "tier_share" and tier is None:
        tier = f.add("tier", MISSING, "one of " + ", ".join(TIERS))
    elif tier not in (None, INVALID) and metric not in ("tier_share",) + QUALITY_METRICS:
        tier = f.add(
            "tier", tier, "tier only with metric: tier_share, " + ", ".join(QUALITY_METRICS)
        )
    errors = f.get("include_errors", boolean(), True)
    unless = f.get("unless", choice(CONDITIONS), None)
    shed = f.get("include_shed", boolean(), True)
    if shed is False and metric != "error_ratio":
        shed = f.add(
            "include_shed",
            shed,
            "include_shed only with metric: error_ratio",
            "shed requests have their own metrics: shed_share, rejection_p99",
        )
    min_samples = f.get("min_samples", integer(1, 10_000_000), None)
    of = _read_of(f, metric, bound, limit)
    expect, reason = _read_expectation(f)
    confidence = _read_confidence(f, metric)
    f.finish()
    values = (
        metric,
        bound,
        limit,
        windows,
        fault,
        tier,
        errors,
        unless,
        min_samples,
        expect,
        reason,
        confidence,
    )
    if not f.ok or any_invalid(*values, shed, of):
        return None
    return SLOSpec(*values, origin=origin, include_shed=shed, of=of)


def _read_of(f: Fields, metric: Any, bound: Any, limit: Any) -> Any:
    """``of: capacity`` (goodput, at_least only): the limit is a share of the capacity measured
    in the same run (the scenario's ``capacity`` section), not answers/s."""
    of = f.get("of", choice(("capacity",)), None)
    if of is None or of is INVALID:
        return of
    if metric not in RATE_METRICS or bound != "at_least":
        return f.add(
            "of",
            of,
            "of only with metric: goodput and at_least",
            "a share of the measured capacity is a floor on goodput",
        )
    if isinstance(limit, float | int) and not 0 < limit <= 2:
        return f.add(
            "at_least",
            limit,
            "a share of the measured capacity above 0 and at most 2 (with of: capacity)",
        )
    return of


def _read_expectation(f: Fields) -> tuple[Any, Any]:
    """``expect: violated`` with a ``reason``: the SUT is known not to hold this SLO."""
    expect = f.get("expect", choice(EXPECTATIONS), "hold")
    reason = f.get("reason", string(what="why the SLO cannot hold (a non-empty string)"), "")
    if expect == "violated" and not reason:
        reason = f.add(
            "reason",
            MISSING,
            "why the SLO cannot hold (a non-empty string)",
            "expect: violated needs a reason",
        )
    elif expect == "hold" and reason:
        reason = f.add("reason", reason, "no reason unless expect: violated")
    return expect, reason


def _read_confidence(f: Fields, metric: Any) -> Any:
    """``confidence: 0.95``: a quantile is PASS or FAIL only when its interval at that level
    lies wholly on one side of the limit, INCONCLUSIVE when it straddles it."""
    conv = Conv("a number above 0.5 and below 1 (e.g. 0.95)", _level)
    level = f.get("confidence", conv, None)
    if level not in (None, INVALID) and metric not in QUANTILE_METRICS + SPLIT_QUANTILE_METRICS:
        return f.add(
            "confidence",
            level,
            "confidence only with a quantile metric: "
            + ", ".join(QUANTILE_METRICS + SPLIT_QUANTILE_METRICS),
            "other metrics have no order-statistic interval",
        )
    return level


def _level(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.5 < v < 1:
        raise Bad()
    return float(v)


def _read_bound(f: Fields, metric: Any) -> tuple[Any, Any]:
    given = [b for b in BOUNDS if f.has(b)]
    if len(given) != 1:
        for b in BOUNDS:
            f.raw(b)
        allowed = "exactly one of " + ", ".join(BOUNDS)
        shown = {b: f.data[b] for b in given} if given else MISSING
        return f.add("at_most" if not given else given[1], shown, allowed), INVALID
    bound = given[0]
    if metric in RATIO_METRICS:
        conv = number(0, 1, unit="a share of requests")
    elif metric in QUALITY_METRICS:
        conv = number(0, 1, unit="a mean over answers, 0..1")
    elif metric in RATE_METRICS:
        conv = number(0, unit="answers/s")
    else:
        conv = number(0, unit="ms")
    return bound, f.get(bound, conv)


def _read_windows(f: Fields, metric: Any) -> Any:
    if metric in FAULT_METRICS and f.has("windows"):
        return f.add(
            "windows",
            f.raw("windows"),
            "no windows key for " + str(metric),
            "fault metrics are measured once per fault; select faults with fault:",
        )
    raw = f.raw("windows", "every")
    if raw == "every":
        return WINDOW_KINDS
    if isinstance(raw, str):
        raw = [raw]
    allowed = "every, or a list of " + ", ".join(WINDOW_KINDS)
    if not isinstance(raw, list) or not raw or not all(r in WINDOW_KINDS for r in raw):
        return f.add("windows", raw, allowed)
    return tuple(dict.fromkeys(raw))


def _selector_conv() -> Conv:
    def check(v: Any) -> FaultSelector:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return FaultSelector(index=v)
        if not isinstance(v, dict) or not v or set(v) - {"index", "kind", "target"}:
            raise Bad()
        index, kind, target = v.get("index"), v.get("kind"), v.get("target")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise Bad("index is a position in faults, from 0")
        if kind is not None and kind not in FAULT_KINDS and kind != SURGE:
            raise Bad(f"unknown fault kind {kind!r} (or surge: a surge phase of the load)")
        if target is not None and not isinstance(target, str):
            raise Bad("target is a component name or glob pattern")
        return FaultSelector(index, kind, target)

    return Conv("a fault index, or a mapping with index, kind and/or target (a glob)", check)


def _read_selector(f: Fields) -> Any:
    return f.get("fault", _selector_conv(), None)


__all__ = [
    "BOUNDS",
    "CONDITIONS",
    "EXPECTATIONS",
    "Evidence",
    "FAULT_METRICS",
    "FaultSelector",
    "LATENCY_METRICS",
    "METRICS",
    "MIN_REJECTIONS",
    "QUANTILE_METRICS",
    "QUALITY_METRICS",
    "RATE_METRICS",
    "RATIO_METRICS",
    "REFERENCE_METRICS",
    "SLOSpec",
    "SPLIT_QUANTILE_METRICS",
    "TIERS",
    "WINDOW_KINDS",
    "read_evidence",
    "read_slo",
]
