"""Statistics of one window, computed (vectorised) from the request log.

Response time runs from the intended send time (coordinated omission corrected), service time
from the actual send, generator lag from intended to actual send. Percentiles come from
:class:`~harness.metrics.histogram.LatencyHistogram`, success-only and error-inclusive (a failed
or never-sent request counts as infinitely slow). Shares are of the intended requests in the
window, so a request that was never sent counts against the system, and the generator's own
shortfall is reported (``sent_ratio``, lag) for the judges to discount. A quantile's confidence
interval comes from the same histogram (:meth:`WindowStats.interval`). Answer quality (valid
share, agreement and NDCG, over all and per tier; cold starts) comes from
:mod:`harness.metrics.quality`; an invalid answer is a failure like any other.

Under overload a target may shed requests (a fast 503 with ``Retry-After``, the error kind
``shed``): they are counted apart (``shed``, ``shed_share``) with their own response-time
histogram (``rejection_p99``), beside the answered requests' own p99 (``served_p99``) and the
goodput (answers within the SLA per second of the window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.metrics.confidence import DEFAULT_LEVEL, QuantileInterval, quantile_interval
from harness.metrics.histogram import LatencyHistogram
from harness.metrics.quality import WindowQuality, window_quality
from harness.metrics.windows import Window
from harness.model.requestlog import ERROR_KINDS, TIERS, error_code, succeeded

QUANTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
QUANTILE_OF = dict(QUANTILES)
SHED = error_code("shed")


@dataclass(frozen=True)
class Percentiles:
    """p50/p95/p99/p99.9/max in ms (inf where a failure or an overflow reaches that rank)."""

    p50: float
    p95: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, h: LatencyHistogram, with_errors: bool = False) -> Percentiles:
        pick = h.percentile_with_errors if with_errors else h.percentile
        p50, p95, p99, p999 = (pick(q) for _, q in QUANTILES)
        top = h.max_with_errors_ms() if with_errors else h.max_ms
        return cls(p50, p95, p99, p999, top)

    def get(self, metric: str) -> float:
        return self.p999 if metric == "p99.9" else float(getattr(self, metric))

    def to_dict(self) -> dict[str, float]:
        return {
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
            "p99.9": self.p999,
            "max": self.max,
        }


@dataclass(frozen=True, eq=False)
class WindowStats:
    """Counts, percentiles, shares and generator health of one window."""

    window: Window
    count: int
    sent: int
    successes: int
    within_sla: int
    tier_counts: dict[str, int]
    error_kinds: dict[str, int]
    latency: Percentiles
    latency_all: Percentiles
    service: Percentiles
    lag_p99_ms: float
    lag_max_ms: float
    response_hist: LatencyHistogram
    service_hist: LatencyHistogram
    lag_hist: LatencyHistogram
    quality: WindowQuality
    shed: int = 0
    rejection_hist: LatencyHistogram | None = None  # response times of the shed requests

    @property
    def errors(self) -> int:
        return self.count - self.successes

    @property
    def misses(self) -> int:
        """Intended requests not answered within the SLA (errors included)."""
        return self.count - self.within_sla

    def _share(self, n: int) -> float:
        return n / self.count if self.count else math.nan

    @property
    def error_ratio(self) -> float:
        return self._share(self.errors)

    @property
    def unshed_error_ratio(self) -> float:
        """Failures other than a shed request among the intended requests."""
        return self._share(self.errors - self.shed)

    @property
    def shed_share(self) -> float:
        return self._share(self.shed)

    @property
    def goodput(self) -> float:
        """Answers within the SLA per second of the window (answers/s)."""
        d = self.window.duration_s
        return self.within_sla / d if d > 0 else math.nan

    @property
    def served_p99(self) -> float:
        """p99 of the answered requests alone (ms); NaN when none was answered."""
        return self.latency.p99 if self.successes else math.nan

    @property
    def rejection_p99(self) -> float:
        """p99 of the shed requests alone (ms, from the intended send); NaN when none was."""
        h = self.rejection_hist
        return h.percentile(99) if h is not None and h.count else math.nan

    @property
    def within_sla_share(self) -> float:
        return self._share(self.within_sla)

    @property
    def sent_ratio(self) -> float:
        return self._share(self.sent)

    def tier_share(self, tier: str) -> float:
        return self._share(self.tier_counts.get(tier, 0))

    @property
    def cold_start_share(self) -> float:
        """Cold-start answers (users the target does not know) among the intended requests."""
        return self._share(self.quality.cold_start)

    def answer_metric(self, name: str, tier: str | None = None) -> float:
        """``valid_share``, ``agreement_at_k`` or ``ndcg_at_k`` over the window's answers (of
        ``tier`` only, if given); NaN when none was checked or measured."""
        q = self.quality.tier(tier)
        if name == "valid_share":
            return q.valid_share
        return q.agreement if name == "agreement_at_k" else q.ndcg

    def metric(
        self,
        name: str,
        *,
        include_errors: bool = True,
        tier: str | None = None,
        include_shed: bool = True,
    ) -> float:
        """The value of a window metric named as in an SLO (``p99``, ``error_ratio``, ...)."""
        if name == "error_ratio":
            return self.error_ratio if include_shed else self.unshed_error_ratio
        if name == "shed_share":
            return self.shed_share
        if name == "goodput":
            return self.goodput
        if name == "served_p99":
            return self.served_p99
        if name == "rejection_p99":
            return self.rejection_p99
        if name == "within_sla":
            return self.within_sla_share
        if name == "tier_share":
            return self.tier_share(tier or "")
        if name == "cold_start_share":
            return self.cold_start_share
        if name in ("valid_share", "agreement_at_k", "ndcg_at_k"):
            return self.answer_metric(name, tier)
        return (self.latency_all if include_errors else self.latency).get(name)

    def interval(
        self, name: str, *, include_errors: bool = True, level: float = DEFAULT_LEVEL
    ) -> QuantileInterval | None:
        """The confidence interval of a quantile metric (``p99``, ...) of the response time;
        None for other metrics and for an empty window. ``served_p99`` is the p99 of the
        answered requests, ``rejection_p99`` of the shed ones."""
        if name == "served_p99":
            return quantile_interval(self.response_hist, name, 0.99, with_errors=False, level=level)
        if name == "rejection_p99":
            h = self.rejection_hist
            if h is None:
                return None
            return quantile_interval(h, name, 0.99, with_errors=False, level=level)
        q = QUANTILE_OF.get(name)
        if q is None:
            return None
        return quantile_interval(
            self.response_hist, name, q / 100, with_errors=include_errors, level=level
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.to_dict(),
            "count": self.count,
            "sent": self.sent,
            "successes": self.successes,
            "errors": self.errors,
            "misses": self.misses,
            "error_ratio": self.error_ratio,
            "within_sla": self.within_sla_share,
            "shed": self.shed,
            "shed_share": self.shed_share,
            "goodput_per_s": self.goodput,
            "served_p99_ms": self.served_p99,
            "rejection_p99_ms": self.rejection_p99,
            "tier_shares": {t: self.tier_share(t) for t in TIERS},
            "tier_counts": dict(self.tier_counts),
            "cold_start_share": self.cold_start_share,
            "valid_share": self.answer_metric("valid_share"),
            "agreement_at_k": self.answer_metric("agreement_at_k"),
            "ndcg_at_k": self.answer_metric("ndcg_at_k"),
            "answers": self.quality.to_dict(),
            "error_kinds": dict(self.error_kinds),
            "latency_ms": self.latency.to_dict(),
            "latency_with_errors_ms": self.latency_all.to_dict(),
            "service_ms": self.service.to_dict(),
            "lag_p99_ms": self.lag_p99_ms,
            "lag_max_ms": self.lag_max_ms,
            "histograms": {
                "response": self.response_hist.encode(),
                "service": self.service_hist.encode(),
                "lag": self.lag_hist.encode(),
                **(
                    {"rejection": self.rejection_hist.encode()}
                    if self.rejection_hist is not None
                    else {}
                ),
            },
        }


def in_window(requests: np.ndarray, window: Window) -> np.ndarray:
    """The rows whose intended send time lies in [start, end) of the window."""
    t = requests["intended_ns"]
    return requests[(t >= round(window.start_s * 1e9)) & (t < round(window.end_s * 1e9))]


def _us(ns: np.ndarray) -> np.ndarray:
    return (np.maximum(ns, 0) + 500) // 1000


def window_stats(requests: np.ndarray, window: Window, sla_ms: float) -> WindowStats:
    rows = in_window(requests, window)
    ok = succeeded(rows)
    sent = rows["send_ns"] >= 0
    response_ns = rows["done_ns"][ok] - rows["intended_ns"][ok]
    response = LatencyHistogram.from_us(_us(response_ns), failures=int((~ok).sum()))
    service = LatencyHistogram.from_us(_us(rows["done_ns"][ok] - rows["send_ns"][ok]))
    lag = LatencyHistogram.from_us(_us(rows["send_ns"][sent] - rows["intended_ns"][sent]))
    tiers = rows["tier"][ok]
    shed = rows["error_kind"] == SHED
    timed = shed & (rows["done_ns"] >= 0)
    rejected = LatencyHistogram.from_us(_us(rows["done_ns"][timed] - rows["intended_ns"][timed]))
    return WindowStats(
        window=window,
        count=int(rows.shape[0]),
        sent=int(sent.sum()),
        successes=int(ok.sum()),
        within_sla=int((response_ns <= sla_ms * 1e6).sum()),
        tier_counts={t: int((tiers == i).sum()) for i, t in enumerate(TIERS)},
        error_kinds=_error_kinds(rows[~ok]),
        latency=Percentiles.of(response),
        latency_all=Percentiles.of(response, True),
        service=Percentiles.of(service),
        lag_p99_ms=lag.percentile(99) if lag.count else math.nan,
        lag_max_ms=lag.max_ms,
        response_hist=response,
        service_hist=service,
        lag_hist=lag,
        quality=window_quality(rows),
        shed=int(shed.sum()),
        rejection_hist=rejected,
    )


def _error_kinds(failed: np.ndarray) -> dict[str, int]:
    """Failures by kind; an error-free row with a non-2xx status counts as ``http_status``."""
    kinds = failed["error_kind"].astype(np.int64)
    kinds = np.where(kinds == 0, ERROR_KINDS.index("http_status"), kinds)
    values, counts = np.unique(kinds, return_counts=True)
    return {
        ERROR_KINDS[v] if 0 <= v < len(ERROR_KINDS) else f"code {v}": int(c)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True)
    }
