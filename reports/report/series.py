"""Time series and spectra for the report, computed from saved data only (pure numpy).

:func:`per_second` bins the request log by *intended* send time (the open-loop schedule, so a stall
shows up in the second it should have been served, not when it finally was) and gives per bin
p50/p95/p99 of the response time from the intended send, error-inclusive (a failed or unsent request
is infinitely slow, as in :mod:`harness.metrics.stats`), tier counts, failures and the generator's
lag, and the answers' quality: checked and valid answers, cold starts, and the mean agreement@k and
NDCG@k of the answers measured in the bin. Percentiles use HdrHistogram's rank rule (nearest rank,
rounded) on exact values. :func:`spectrum` is the percentile spectrum of one window's stored
histogram, sampled the way HdrHistogram plots it: evenly in ``log10(1 / (1 - q))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.metrics.histogram import LatencyHistogram
from harness.model.requestlog import TIERS, succeeded

QUANTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True)
class Series:
    """Per-bin values; ``t_s`` is each bin's start in seconds since the load origin."""

    bin_s: float
    t_s: np.ndarray
    count: np.ndarray  # intended requests
    failures: np.ndarray  # not answered with a 2xx (never sent included)
    quantiles: dict[float, np.ndarray]  # ms, inf where failures reach the rank, nan when empty
    tiers: dict[str, np.ndarray]  # successful answers per tier
    lag_p99_ms: np.ndarray  # intended -> actual send, of the sent requests; nan when none
    within_sla: np.ndarray  # answered within the SLA
    checked: np.ndarray  # answers the load worker checked
    valid: np.ndarray  # of those, valid
    cold_start: np.ndarray  # cold-start answers (users the target does not know)
    agreement: np.ndarray  # mean overlap@k with the reference; nan when none was measured
    ndcg: np.ndarray  # mean NDCG@k against the held-out item; nan when none was measured

    @property
    def valid_share(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.checked > 0, self.valid / np.maximum(self.checked, 1), np.nan)

    def __len__(self) -> int:
        return int(self.t_s.size)


def rank_quantiles(
    values: np.ndarray, groups: np.ndarray, n_groups: int, qs: tuple[float, ...]
) -> dict[float, np.ndarray]:
    """Per group, the nearest-rank quantiles of ``values`` (which may hold inf); nan if empty."""
    order = np.lexsort((values, groups))
    v, g = values[order], groups[order]
    starts = np.searchsorted(g, np.arange(n_groups), side="left")
    sizes = np.bincount(g, minlength=n_groups)
    out: dict[float, np.ndarray] = {}
    for q in qs:
        rank = np.maximum(1, np.floor(q * sizes / 100.0 + 0.5).astype(np.int64))
        res = np.full(n_groups, np.nan)
        has = sizes > 0
        res[has] = v[starts[has] + np.minimum(rank[has], sizes[has]) - 1]
        out[q] = res
    return out


def per_second(
    requests: np.ndarray,
    end_s: float | None = None,
    bin_s: float = 1.0,
    sla_ms: float = 20.0,
    qs: tuple[float, ...] = QUANTILES,
) -> Series:
    """Bin the request log by intended send time (``bin_s`` seconds per bin)."""
    if bin_s <= 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    t = requests["intended_ns"]
    last = max(float(t.max()) / 1e9 if t.size else 0.0, end_s or 0.0)
    n_bins = max(1, math.ceil(last / bin_s - 1e-9))  # a row at exactly the end joins the last bin
    bins = np.clip((t // int(bin_s * 1e9)).astype(np.int64), 0, n_bins - 1)
    ok = succeeded(requests)
    response_ms = np.where(ok, (requests["done_ns"] - t) / 1e6, np.inf)
    sent = requests["send_ns"] >= 0
    lag_ms = (requests["send_ns"][sent] - t[sent]) / 1e6
    lag = rank_quantiles(lag_ms, bins[sent], n_bins, (99.0,))[99.0]
    tiers = {
        name: np.bincount(bins[ok & (requests["tier"] == i)], minlength=n_bins)
        for i, name in enumerate(TIERS)
    }
    return Series(
        bin_s=bin_s,
        t_s=np.arange(n_bins) * bin_s,
        count=np.bincount(bins, minlength=n_bins),
        failures=np.bincount(bins[~ok], minlength=n_bins),
        quantiles=rank_quantiles(response_ms, bins, n_bins, qs),
        tiers=tiers,
        lag_p99_ms=lag,
        within_sla=np.bincount(bins[response_ms <= sla_ms], minlength=n_bins),
        checked=np.bincount(bins[requests["answer"] >= 0], minlength=n_bins),
        valid=np.bincount(bins[requests["answer"] == 0], minlength=n_bins),
        cold_start=np.bincount(bins[requests["cold_start"]], minlength=n_bins),
        agreement=bin_means(requests["agreement"], bins, n_bins),
        ndcg=bin_means(requests["ndcg"], bins, n_bins),
    )


def bin_means(values: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Mean of the non-NaN ``values`` per bin; NaN for a bin with none."""
    has = ~np.isnan(values)
    total = np.bincount(bins[has], weights=values[has].astype(np.float64), minlength=n_bins)
    count = np.bincount(bins[has], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def spectrum_points(count: int, step: float = 0.1, top: float = 6.0) -> list[float]:
    """Percentiles ``100 (1 - 10^-x)`` for x = 0, step, ... up to one rank past ``count``."""
    if count <= 0:
        return []
    limit = min(top, math.log10(count) + step)
    n = int(limit / step + 1e-9) + 1
    return [100.0 * (1.0 - 10.0 ** -(i * step)) for i in range(n)]


def spectrum(hist: LatencyHistogram, with_errors: bool = True) -> list[tuple[float, float]]:
    """``(percentile, ms)`` pairs of a histogram; the 0th point is the minimum (p0 = first rank).

    Error-inclusive by default: where failures reach a rank the value is inf.
    """
    population = hist.total if with_errors else hist.count
    pick = hist.percentile_with_errors if with_errors else hist.percentile
    out = []
    for q in spectrum_points(population):
        out.append((q, pick(max(q, 1e-9))))
    return out


def spectrum_x(q: float) -> float:
    """The spectrum's x coordinate: ``log10(1 / (1 - q/100))`` (0 at p0, 2 at p99, 3 at p99.9)."""
    return -math.log10(max(1.0 - q / 100.0, 1e-12))
