"""How values, limits and counts read in verdict messages ("143.2 ms", "1.25%", "4,812")."""

from __future__ import annotations

import math
from typing import Any

from harness.metrics.confidence import QuantileInterval
from harness.model.slo import LATENCY_METRICS, SLOSpec


def count(n: int) -> str:
    return f"{n:,}"


def number(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "ms":
        return "inf ms" if math.isinf(value) else f"{value:.1f} ms"
    if unit == "answers/s":
        return f"{value:,.1f} answers/s"
    if value == 0:
        return "0%"
    return f"{value * 100:.3g}%"


def metric_name(slo: SLOSpec, sla_ms: float) -> str:
    if slo.metric in LATENCY_METRICS:
        return slo.metric if slo.include_errors else f"{slo.metric} (successes only)"
    if slo.metric == "error_ratio" and not slo.include_shed:
        return "error ratio (shed requests apart)"
    return {
        "error_ratio": "error ratio",
        "shed_share": "shed share",
        "goodput": f"goodput (answers within the {sla_ms:g} ms SLA per second)",
        "served_p99": "p99 of served answers",
        "rejection_p99": "p99 of rejections (shed requests)",
        "within_sla": f"share answered within the {sla_ms:g} ms SLA",
        "tier_share": f"{slo.tier} share",
        "cold_start_share": "cold-start share",
        "time_to_failover": "time to failover (first replica answer)",
        "time_to_last_miss": "time to last miss",
        "time_to_recover": "time to recover (first primary answer)",
    }[slo.metric]


_VERBS = {
    ("at_most", True): "is within the SLO of at most",
    ("at_most", False): "exceeds the SLO of",
    ("below", True): "is below the SLO of",
    ("below", False): "is not below the SLO of",
    ("at_least", True): "meets the SLO of at least",
    ("at_least", False): "is below the SLO of at least",
    ("above", True): "is above the SLO of",
    ("above", False): "is not above the SLO of",
}


def comparison(slo: SLOSpec, holds: bool) -> str:
    """``exceeds the SLO of 20.0 ms``."""
    return f"{_VERBS[(slo.bound, holds)]} {number(slo.limit, slo.unit)}"


def requirement(slo: SLOSpec) -> str:
    """``the SLO asks for at most 20.0 ms``."""
    return f"the SLO asks for {slo.bound_text()} {number(slo.limit, slo.unit)}"


def interval(iv: QuantileInterval | dict[str, Any], ranks: bool = True) -> str:
    """``95% CI [140.0, 146.9] ms (ranks 1,968 and 1,992 of 2,000)``; an unbounded end reads
    ``inf`` (or 0) and says that the window has too few samples to bound it."""
    d = iv.to_dict() if isinstance(iv, QuantileInterval) else iv
    n, lo_rank, hi_rank = int(d["samples"]), int(d["low_rank"]), int(d["high_rank"])
    low, high = float(d["low_ms"]), float(d["high_ms"])
    hi_text = "inf" if math.isinf(high) else f"{high:.1f}"
    out = f"{float(d['level']) * 100:g}% CI [{low:.1f}, {hi_text}] ms"
    if not ranks:
        return out
    out += f" (ranks {count(lo_rank)} and {count(hi_rank)} of {count(n)}"
    open_ends = [side for side, off in (("below", lo_rank == 0), ("above", hi_rank > n)) if off]
    if open_ends:
        out += f"; too few samples to bound it {' or '.join(open_ends)}"
    return out + ")"
