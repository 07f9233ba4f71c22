"""Answer quality in comparisons: a drop in valid share, agreement@k or NDCG@k is a regression.

Values per run and window are the run record's means over the window's answers (tier ``all``),
with their answer counts and standard deviations. The decision mirrors latency's
(:mod:`reports.compare.stats`): with ``min_runs`` runs (at least 3) a side, a one-sided
Mann-Whitney U on the per-run values; with fewer, a two-sample z test on the pooled answers
(Welch), for information only unless the caller lowered ``min_runs`` on purpose, since it sees
sampling noise but not run-to-run machine noise. Either way the median (or mean) must drop by
at least the metric's minimum effect (:data:`MIN_DROP`, absolute, on the 0..1 scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reports.compare.stats import (
    IMPROVEMENT,
    NO_CHANGE,
    NOT_TESTED,
    REGRESSION,
    Judgement,
    bootstrap_median_diff,
    mann_whitney_u,
)

QUALITY_METRICS = ("valid_share", "agreement_at_k", "ndcg_at_k")
MIN_DROP = {"valid_share": 0.001, "agreement_at_k": 0.01, "ndcg_at_k": 0.01}

Stat = tuple[float, int, float]  # (mean, answers, standard deviation)


def window_quality(w: dict[str, Any]) -> dict[str, Stat]:
    """A run record window's quality: metric -> (mean, answers, sd); only measured metrics."""
    q = ((w.get("answers") or {}).get("by_tier") or {}).get("all") or {}
    out: dict[str, Stat] = {}
    share = _num(q.get("valid_share"))
    checked = int(q.get("checked") or 0)
    if checked and not math.isnan(share):
        out["valid_share"] = (share, checked, math.sqrt(max(share * (1 - share), 0.0)))
    measured = int(q.get("measured") or 0)
    for metric, sd in (("agreement_at_k", "agreement_sd"), ("ndcg_at_k", "ndcg_sd")):
        mean = _num(q.get(metric))
        if measured and not math.isnan(mean):
            out[metric] = (mean, measured, _num(q.get(sd)))
    return out


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def judge_quality(
    metric: str,
    base: Sequence[Stat],
    cur: Sequence[Stat],
    *,
    alpha: float = 0.05,
    min_runs: int = 3,
    seed: int = 0,
) -> Judgement:
    """Compare per-run quality stats of one window (higher is better)."""
    drop = MIN_DROP[metric]
    a, b = [s[0] for s in base], [s[0] for s in cur]
    n = (len(a), len(b))
    if not a or not b:
        nan = math.nan
        return Judgement(NOT_TESTED, nan, nan, nan, nan, nan, (nan, nan), "no data", *n)
    enough = min(n) >= min_runs
    if enough and min(n) >= 3:
        mb, mc = float(np.median(a)), float(np.median(b))
        direction = _direction(mb, mc, drop)
        p = mann_whitney_u(a, b, "greater" if direction >= 0 else "less")[1]
        ci = bootstrap_median_diff(a, b, seed=seed)
        significant = p <= alpha
        method = f"Mann-Whitney U on {n[0]} vs {n[1]} runs; minimum effect {drop:g}"
    else:
        mb, sb, nb = _pooled(base)
        mc, sc, nc = _pooled(cur)
        direction = _direction(mb, mc, drop)
        se = math.sqrt(sb**2 / max(nb, 1) + sc**2 / max(nc, 1))
        z = (mc - mb) / se if se > 0 else (0.0 if mc == mb else math.copysign(math.inf, mc - mb))
        p = _one_sided_p(z, direction)
        ci = (mc - mb - 1.96 * se, mc - mb + 1.96 * se)
        significant = p <= alpha and enough
        method = f"z test on {nb:,} vs {nc:,} answers ({n[0]} vs {n[1]} runs"
        if not enough:
            method += f"; for information: a call needs {min_runs} runs a side"
        method += f"; machine noise between runs not covered); minimum effect {drop:g}"
    status = NO_CHANGE if enough else NOT_TESTED
    if direction > 0 and significant:
        status = REGRESSION
    elif direction < 0 and significant:
        status = IMPROVEMENT
    rel = (mc - mb) / mb if mb > 0 else math.nan
    return Judgement(status, mb, mc, mc - mb, rel, p, ci, method, *n)


def _direction(base: float, cur: float, drop: float) -> int:
    """+1 worse (dropped by at least ``drop``), -1 better by as much, 0 otherwise."""
    if math.isnan(base) or math.isnan(cur) or abs(cur - base) < drop:
        return 0
    return 1 if cur < base else -1


def _pooled(stats: Sequence[Stat]) -> tuple[float, float, int]:
    """Mean, sd and count of all answers of several runs together."""
    total = sum(n for _, n, _ in stats)
    if not total:
        return math.nan, math.nan, 0
    mean = sum(m * n for m, n, _ in stats) / total
    var = sum(n * ((0.0 if math.isnan(s) else s) ** 2 + (m - mean) ** 2) for m, n, s in stats)
    return mean, math.sqrt(var / total), total


def _one_sided_p(z: float, direction: int) -> float:
    """p for "current is lower" (direction +1) or "higher" (-1); 1.0 when no direction."""
    if direction == 0 or math.isnan(z):
        return 1.0
    tail = -z if direction > 0 else z
    return 0.5 * math.erfc(tail / math.sqrt(2.0))
