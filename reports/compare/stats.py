"""Pure statistics for comparing a baseline with a current set of measurements.

Noisy machines (the same benchmark ran 1.4-2.4x slower an hour later on these VMs) make one run
against one run meaningless, so a regression needs both

* significance: with at least ``min_runs`` runs a side, a one-sided Mann-Whitney U test on the
  per-run values (exact by enumeration when small, normal approximation with tie correction
  otherwise), plus a bootstrap interval on the difference of medians for the reader; with fewer
  runs, a bootstrap of the quantile from the merged latency histograms (requests resampled) is
  shown for information only, since it covers sampling noise but not run-to-run machine noise
  (two identical short runs here differed 2x in p99); it decides only when the caller lowers
  ``min_runs`` on purpose;
* a minimum effect (:mod:`reports.effect`): the median moved up by at least 5% *and* 0.5 ms.

Everything here is numbers in, numbers out: no files, no clock, seeded randomness.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.metrics.histogram import LatencyHistogram
from reports.effect import DEFAULT_EFFECT, MinEffect, effect_sign

REGRESSION = "regression"
IMPROVEMENT = "improvement"
NO_CHANGE = "no change"
NOT_TESTED = "not tested"


# Mann-Whitney U ------------------------------------------------------------------------------
def _u_statistic(x: np.ndarray, y: np.ndarray) -> float:
    """U of ``x`` over ``y``: pairs with x > y, ties counting one half."""
    diff = x[:, None] - y[None, :]
    return float((diff > 0).sum() + 0.5 * (diff == 0).sum())


def mann_whitney_u(
    x: Sequence[float], y: Sequence[float], alternative: str = "greater", exact_limit: int = 20_000
) -> tuple[float, float]:
    """``(U, p)`` for H1 "x tends to be larger than y" (``greater``), ``less`` or ``two-sided``.

    U counts the pairs (xi, yj) with xi > yj (ties: one half). Exact p-values come from all
    ``C(n + m, n)`` relabellings when there are at most ``exact_limit`` of them (ties handled
    exactly; ``two-sided`` doubles the smaller tail); otherwise the normal approximation with
    tie and continuity corrections. Infinite values are fine (they rank highest); nan is not.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("mann_whitney_u: nan in the samples")
    n, m = a.size, b.size
    if n == 0 or m == 0:
        raise ValueError(f"mann_whitney_u needs two non-empty samples, got {n} and {m}")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    u = _u_statistic(a, b)
    if math.comb(n + m, n) <= exact_limit:
        p = _exact_p(a, b, u, alternative)
    else:
        p = _normal_p(a, b, u, alternative)
    return u, min(1.0, p)


def _exact_p(a: np.ndarray, b: np.ndarray, u: float, alternative: str) -> float:
    pooled = np.concatenate([a, b])
    n, total = a.size, a.size + b.size
    stats = []
    for idx in itertools.combinations(range(total), n):
        mask = np.zeros(total, dtype=bool)
        mask[list(idx)] = True
        stats.append(_u_statistic(pooled[mask], pooled[~mask]))
    s = np.asarray(stats)
    eps = 1e-9
    upper, lower = float((s >= u - eps).mean()), float((s <= u + eps).mean())
    if alternative == "greater":
        return upper
    if alternative == "less":
        return lower
    # Twice the smaller tail, as scipy does: with ties the null distribution is not symmetric,
    # and the distance-from-the-mean rule would give a different p.
    return min(1.0, 2.0 * min(upper, lower))


def _normal_p(a: np.ndarray, b: np.ndarray, u: float, alternative: str) -> float:
    n, m = a.size, b.size
    pooled = np.concatenate([a, b])
    _, counts = np.unique(pooled, return_counts=True)
    total = n + m
    tie = float((counts**3 - counts).sum())
    var = n * m / 12.0 * ((total + 1) - tie / (total * (total - 1)))
    if var <= 0:
        return 1.0
    mean = n * m / 2.0
    sd = math.sqrt(var)
    if alternative == "greater":
        z = (u - mean - 0.5) / sd
        return _sf(z)
    if alternative == "less":
        z = (u - mean + 0.5) / sd
        return 1.0 - _sf(z)
    z = (abs(u - mean) - 0.5) / sd
    return 2.0 * _sf(z)


def _sf(z: float) -> float:
    """Standard normal survival function."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


# bootstrap ---------------------------------------------------------------------------------
def bootstrap_median_diff(
    base: Sequence[float],
    cur: Sequence[float],
    n_boot: int = 2000,
    conf: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``median(cur*) - median(base*)`` over resampled runs.

    nan when a side is empty or the differences are not finite (an inf on both sides).
    """
    a, b = np.asarray(base, dtype=float), np.asarray(cur, dtype=float)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, (n_boot, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, (n_boot, b.size))], axis=1)
    with np.errstate(invalid="ignore"):
        d = mb - ma
    if np.isnan(d).any():
        return math.nan, math.nan
    lo, hi = np.quantile(d, [(1 - conf) / 2, (1 + conf) / 2])
    return float(lo), float(hi)


def _nonzero_buckets(h: LatencyHistogram) -> tuple[np.ndarray, np.ndarray]:
    """Values (ms, bucket upper edges; inf for overflow and failures) and counts."""
    hdr = h._hdr
    counts = np.ctypeslib.as_array(hdr.counts)[: hdr.counts_len].astype(np.int64)
    idx = np.nonzero(counts)[0]
    values = (
        np.array(
            [hdr.get_highest_equivalent_value(hdr.get_value_from_index(int(i))) for i in idx],
            dtype=float,
        )
        / 1000.0
    )
    extra = h.overflow + h.failures
    if extra:
        values = np.append(values, math.inf)
        counts = np.append(counts[idx], extra)
    else:
        counts = counts[idx]
    return values, counts


def _boot_quantiles(
    values: np.ndarray, counts: np.ndarray, q: float, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    total = int(counts.sum())
    draws = rng.multinomial(total, counts / total, size=n_boot)
    cum = np.cumsum(draws, axis=1)
    rank = max(1, int(q * total / 100 + 0.5))
    return values[(cum < rank).sum(axis=1)]


def bootstrap_quantile_diff(
    base: LatencyHistogram,
    cur: LatencyHistogram,
    q: float,
    n_boot: int = 1000,
    conf: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of ``quantile(cur*) - quantile(base*)`` with requests resampled (multinomial
    draws over the histograms' buckets, failures as inf). nan when a side is empty."""
    if base.total == 0 or cur.total == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    qa = _boot_quantiles(*_nonzero_buckets(base), q, n_boot, rng)
    qb = _boot_quantiles(*_nonzero_buckets(cur), q, n_boot, rng)
    with np.errstate(invalid="ignore"):
        d = qb - qa
    d = np.where(np.isnan(d), 0.0, d)  # inf on both sides: no measurable difference
    lo, hi = np.quantile(d, [(1 - conf) / 2, (1 + conf) / 2])
    return float(lo), float(hi)


# the decision --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Judgement:
    """How one metric moved from the baseline to the current set."""

    status: str  # regression | improvement | no change | not tested
    base: float  # median of the baseline's values
    cur: float
    delta: float
    rel: float
    p_value: float  # nan when no rank test ran
    ci: tuple[float, float]  # interval of the difference (cur - base)
    method: str
    n_base: int
    n_cur: int

    @property
    def regression(self) -> bool:
        return self.status == REGRESSION


def judge(
    base: Sequence[float],
    cur: Sequence[float],
    *,
    min_effect: MinEffect = DEFAULT_EFFECT,
    alpha: float = 0.05,
    min_runs: int = 3,
    hists: tuple[LatencyHistogram, LatencyHistogram] | None = None,
    q: float = 99.0,
    seed: int = 0,
) -> Judgement:
    """Compare per-run values (``base``, ``cur``; lower is better).

    With ``min_runs`` (and at least 3) runs a side: Mann-Whitney U, one-sided in the direction
    of the change, at ``alpha``. With ``hists`` (each side's merged histogram) and quantile ``q``,
    the request-level bootstrap interval must exclude 0; it decides only when the caller lowered
    ``min_runs`` below 3, and is shown for information (status ``not tested``) when a side has
    fewer than ``min_runs`` runs, since it cannot see run-to-run machine noise. Either way the
    minimum effect must be met.
    """
    a = [float(v) for v in base if not math.isnan(float(v))]
    b = [float(v) for v in cur if not math.isnan(float(v))]
    n = (len(a), len(b))
    if not a or not b:
        return Judgement(
            NOT_TESTED,
            _med(a),
            _med(b),
            math.nan,
            math.nan,
            math.nan,
            (math.nan, math.nan),
            "no data",
            *n,
        )
    enough = min(n) >= min_runs
    if enough and min(n) >= 3:
        mb, mc = _med(a), _med(b)
        direction = effect_sign(mb, mc, min_effect)
        p = mann_whitney_u(b, a, "greater" if direction >= 0 else "less")[1]
        ci = bootstrap_median_diff(a, b, seed=seed)
        significant = p <= alpha
        method = f"Mann-Whitney U on {n[0]} vs {n[1]} runs"
    elif hists is not None:
        mb, mc = hists[0].percentile_with_errors(q), hists[1].percentile_with_errors(q)
        direction = effect_sign(mb, mc, min_effect)
        ci = bootstrap_quantile_diff(hists[0], hists[1], q, seed=seed)
        p = math.nan
        significant = (ci[0] > 0) if direction > 0 else (ci[1] < 0)
        method = f"request bootstrap of merged histograms ({n[0]} vs {n[1]} runs"
        if not enough:
            significant = False
            method += f"; for information: a call needs {min_runs} runs a side"
        method += "; machine noise between runs not covered)"
    else:
        mb, mc = _med(a), _med(b)
        return Judgement(
            NOT_TESTED,
            mb,
            mc,
            _delta(mb, mc),
            _rel(mb, mc),
            math.nan,
            (math.nan, math.nan),
            f"too few runs ({n[0]} vs {n[1]}; need {max(min_runs, 3)})",
            *n,
        )
    status = NO_CHANGE if enough else NOT_TESTED
    if direction > 0 and significant:
        status = REGRESSION
    elif direction < 0 and significant:
        status = IMPROVEMENT
    return Judgement(status, mb, mc, _delta(mb, mc), _rel(mb, mc), p, ci, method, *n)


def _delta(base: float, cur: float) -> float:
    return 0.0 if math.isinf(base) and math.isinf(cur) else cur - base


def _rel(base: float, cur: float) -> float:
    return _delta(base, cur) / base if base > 0 and math.isfinite(base) else math.nan


def _med(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan
