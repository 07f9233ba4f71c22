"""Distribution-free confidence intervals for quantiles, from order statistics.

For ``n`` samples of a continuous distribution with ``q``-quantile ``x``, the number ``B`` of
samples at or below ``x`` is Binomial(n, q), so the ``r``-th smallest sample ``X(r)`` lies at or
below ``x`` exactly when ``B >= r``. Hence ``P(X(r) <= x <= X(s)) = P(r <= B < s)``, with no
assumption about the distribution's shape. :func:`quantile_ranks` picks the ranks that bracket
``q`` at a confidence level: the largest ``r`` with ``P(B < r) <= (1 - level) / 2`` and the
smallest ``s`` with ``P(B >= s) <= (1 - level) / 2``. Rank 0 stands for "no lower bound" and rank
``n + 1`` for "no upper bound": too few samples to bound that side (100 samples cannot bound a
p99 from above at 95%).

:func:`quantile_interval` reads the values at those ranks from a latency histogram (lowest value
of the bucket for the lower bound, highest for the upper, so bucketing never narrows the
interval; a failed request counts as infinitely slow in error-inclusive intervals). Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.metrics.histogram import LatencyHistogram

DEFAULT_LEVEL = 0.95
_TAIL_SDS = 12.0  # the binomial mass beyond 12 standard deviations (+ a margin) is < 1e-30


@dataclass(frozen=True)
class RankInterval:
    """Ranks ``low`` (0: unbounded below) and ``high`` (``n + 1``: unbounded above) of ``n``
    samples, and the exact probability that they bracket the quantile."""

    n: int
    q: float
    level: float
    low: int
    high: int
    coverage: float


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(B <= k)`` for ``B ~ Binomial(n, p)``, summed in log space over the part of the
    distribution that carries mass (exact to far below the tails a confidence level uses)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    lo, hi = _support(n, p)
    if k < lo:
        return 0.0
    if k >= hi:
        return 1.0
    return math.fsum(_pmf(j, n, p) for j in range(lo, k + 1))


def _support(n: int, p: float) -> tuple[int, int]:
    """The range of ``k`` outside which the binomial mass is negligible."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    margin = _TAIL_SDS * sd + 30
    return max(0, math.floor(mean - margin)), min(n, math.ceil(mean + margin))


def _pmf(k: int, n: int, p: float) -> float:
    log = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return math.exp(log)


def quantile_ranks(n: int, q: float, level: float = DEFAULT_LEVEL) -> RankInterval:
    """The order-statistic ranks that bracket the ``q``-quantile (0 < q < 1) of ``n`` samples
    with probability at least ``level`` (see the module docstring)."""
    if n < 0:
        raise ValueError(f"the number of samples must be >= 0, got {n}")
    if not 0 < q < 1:
        raise ValueError(f"the quantile must be in (0, 1), got {q}")
    if not 0 < level < 1:
        raise ValueError(f"the confidence level must be in (0, 1), got {level}")
    tail = (1 - level) / 2 * (1 + 1e-9)  # a tail exactly at the limit qualifies, as in exact math
    lo, hi = _support(n, q)
    pmf = {j: _pmf(j, n, q) for j in range(lo, hi + 1)}
    # Outside [lo, hi] the mass is negligible: every rank up to lo qualifies as a lower
    # bound, every rank above hi as an upper one, so the walks start at the support's edges.
    below = 0.0  # P(B < r), growing with r
    low = lo
    for r in range(max(lo, 0) + 1, n + 1):
        below += pmf.get(r - 1, 0.0)
        if below > tail:
            break
        low = r
    above = 0.0  # P(B >= s), growing as s falls
    high = hi + 1
    for s in range(hi, 0, -1):
        above += pmf.get(s, 0.0)
        if above > tail:
            break
        high = s
    inside = math.fsum(pmf.get(j, 0.0) for j in range(low, high))
    return RankInterval(n, q, level, low, high, min(1.0, inside))


@dataclass(frozen=True)
class QuantileInterval:
    """A confidence interval for one latency quantile of one window, in ms."""

    metric: str  # p50, p95, p99, p99.9
    level: float
    samples: int  # the population: latencies, plus failures when they count
    low_rank: int
    high_rank: int
    low_ms: float  # 0.0 when unbounded below (latencies are never negative)
    high_ms: float  # inf when unbounded above
    coverage: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "level": self.level,
            "samples": self.samples,
            "low_rank": self.low_rank,
            "high_rank": self.high_rank,
            "low_ms": self.low_ms,
            "high_ms": self.high_ms,
            "coverage": self.coverage,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantileInterval:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def quantile_interval(
    h: LatencyHistogram,
    metric: str,
    q: float,
    *,
    with_errors: bool,
    level: float = DEFAULT_LEVEL,
) -> QuantileInterval | None:
    """The ``level`` interval for quantile ``q`` (0..1) of ``h``; None when ``h`` is empty."""
    n = h.total if with_errors else h.count
    if n == 0:
        return None
    ranks = quantile_ranks(n, q, level)
    low = 0.0 if ranks.low == 0 else h.value_at_rank(ranks.low, edge="low")
    high = math.inf if ranks.high > n else h.value_at_rank(ranks.high, edge="high")
    return QuantileInterval(
        metric, level, n, ranks.low, ranks.high, low, high, round(ranks.coverage, 6)
    )
