"""Mergeable latency histograms: HdrHistogram in microseconds, 3 significant figures.

:class:`LatencyHistogram` wraps ``hdrhistogram`` 0.10.8, which silently ignores a value above its
highest trackable value (``record_value`` returns False). Here such a value is counted as
*overflow* and treated as larger than anything trackable (+inf in percentiles), never dropped.
Failed requests are counted too: success-only percentiles ignore them, error-inclusive ones count
each as infinitely slow. Histograms merge exactly (counts add), so percentiles of merged
histograms equal those of the union of the values; ``encode``/``decode`` carry one across
processes as text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3
_ENCODING = "recchaos-hdr/1"
_POWERS = np.array([1 << i for i in range(63)], dtype=np.int64)


class LatencyHistogram:
    """Latencies in integer microseconds, plus overflow and failure counts; results in ms."""

    def __init__(self, hdr: HdrHistogram | None = None, overflow: int = 0, failures: int = 0):
        self._hdr = (
            hdr if hdr is not None else HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        )
        self.overflow = overflow
        self.failures = failures

    # recording -----------------------------------------------------------------------------
    def record_us(self, value: int) -> bool:
        """Record one latency; False when it is above the range (then counted as overflow)."""
        value = int(value)
        if value < 0:
            raise ValueError(f"latency must be >= 0 microseconds, got {value}")
        if value <= HIGHEST_US and self._hdr.record_value(value):
            return True
        self.overflow += 1
        return False

    def record_failure(self, count: int = 1) -> None:
        self.failures += int(count)

    def record_many_us(self, values: np.ndarray | Iterable[int]) -> int:
        """Record many latencies (vectorised); returns how many overflowed."""
        arr = np.asarray(values, dtype=np.int64).ravel()
        if arr.size and arr.min() < 0:
            raise ValueError(f"latency must be >= 0 microseconds, got {int(arr.min())}")
        over = arr > HIGHEST_US
        self._add_counts(arr[~over])
        n_over = int(over.sum())
        self.overflow += n_over
        return n_over

    def _add_counts(self, values: np.ndarray) -> None:
        """Add in-range values straight into the HDR counts array, as ``record_value`` would one
        by one (a Python call per distinct value cost seconds on a long run's log)."""
        if not values.size:
            return
        hdr = self._hdr
        if (hdr.unit_magnitude, hdr.sub_bucket_half_count_magnitude) != (0, 10):
            # not this module's layout (1 us, 3 significant figures): the package's own way
            quantised, n = np.unique(_lowest_equivalent(values), return_counts=True)
            for value, count in zip(quantised.tolist(), n.tolist(), strict=True):
                hdr.record_value(value, count)
            return
        counts = np.bincount(_counts_index(values), minlength=hdr.counts_len)
        filled = np.flatnonzero(counts)
        np.ctypeslib.as_array(hdr.counts)[filled] += counts[filled].astype(np.uint64)
        hdr.total_count += int(values.size)
        # record_value was given each value's lowest equivalent: keep its min and max the same
        lowest = _lowest_equivalent(np.array([values.min(), values.max()]))
        hdr.min_value = min(hdr.min_value, int(lowest[0]))
        hdr.max_value = max(hdr.max_value, int(lowest[1]))

    @classmethod
    def from_us(cls, values: np.ndarray | Iterable[int], failures: int = 0) -> LatencyHistogram:
        h = cls(failures=failures)
        h.record_many_us(values)
        return h

    # merging -------------------------------------------------------------------------------
    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """A new histogram holding both (neither input changes)."""
        out = self.copy()
        out._hdr.add(other._hdr)
        out.overflow += other.overflow
        out.failures += other.failures
        return out

    __add__ = merge

    @classmethod
    def merge_all(cls, histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
        out = cls()
        for h in histograms:
            out._hdr.add(h._hdr)
            out.overflow += h.overflow
            out.failures += h.failures
        return out

    def copy(self) -> LatencyHistogram:
        return LatencyHistogram.decode(self.encode())

    # reading -------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Latencies recorded (in range plus overflow); failures are not latencies."""
        return int(self._hdr.get_total_count()) + self.overflow

    @property
    def total(self) -> int:
        return self.count + self.failures

    @property
    def max_ms(self) -> float:
        """Largest latency (upper edge of its bucket); inf with overflow; nan when empty."""
        if self.overflow:
            return math.inf
        if not self._hdr.get_total_count():
            return math.nan
        return self._hdr.get_max_value() / 1000.0

    def max_with_errors_ms(self) -> float:
        return math.inf if self.failures else self.max_ms

    def percentile(self, q: float) -> float:
        """Success-only percentile in ms (overflowed values count as +inf); nan when empty."""
        return self._at_rank(q, self.count)

    def percentile_with_errors(self, q: float) -> float:
        """Error-inclusive percentile in ms: every failure counts as infinitely slow."""
        return self._at_rank(q, self.total)

    def _at_rank(self, q: float, population: int) -> float:
        if not 0 < q <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {q}")
        if population == 0:
            return math.nan
        target = max(1, int(q * population / 100 + 0.5))  # HdrHistogram's rank rule
        counts = np.ctypeslib.as_array(self._hdr.counts)[: self._hdr.counts_len]
        cumulative = np.cumsum(counts, dtype=np.int64)
        in_range = int(cumulative[-1]) if cumulative.size else 0
        if target > in_range:
            return math.inf
        index = int(np.searchsorted(cumulative, target, side="left"))
        value = self._hdr.get_highest_equivalent_value(self._hdr.get_value_from_index(index))
        return value / 1000.0

    def value_at_rank(self, rank: int, edge: str = "high") -> float:
        """The ``rank``-th smallest value (1-based) in ms, failures and overflow ranked above
        every latency (+inf); ``edge`` ``low`` or ``high``: that end of its bucket."""
        if rank < 1 or rank > self.total:
            raise ValueError(f"rank must be in 1..{self.total}, got {rank}")
        counts = np.ctypeslib.as_array(self._hdr.counts)[: self._hdr.counts_len]
        cumulative = np.cumsum(counts, dtype=np.int64)
        if not cumulative.size or rank > int(cumulative[-1]):
            return math.inf
        value = self._hdr.get_value_from_index(int(np.searchsorted(cumulative, rank, "left")))
        if edge == "high":
            value = self._hdr.get_highest_equivalent_value(value)
        else:
            value = self._hdr.get_lowest_equivalent_value(value)
        return value / 1000.0

    # transport -----------------------------------------------------------------------------
    def encode(self) -> str:
        """Text form: ``recchaos-hdr/1 <overflow> <failures> <base64 HDR histogram>``."""
        hdr = self._hdr.encode().decode("ascii")
        return f"{_ENCODING} {self.overflow} {self.failures} {hdr}"

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        parts = text.split(" ")
        if len(parts) != 4 or parts[0] != _ENCODING:
            raise ValueError(f"not an encoded recchaos histogram: {text[:40]!r}")
        hdr = HdrHistogram.decode(parts[3].encode("ascii"))
        if (hdr.lowest_trackable_value, hdr.highest_trackable_value, hdr.significant_figures) != (
            LOWEST_US,
            HIGHEST_US,
            SIGNIFICANT_FIGURES,
        ):
            fresh = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
            fresh.add(hdr)
            hdr = fresh
        return cls(hdr, overflow=int(parts[1]), failures=int(parts[2]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "failures": self.failures,
            "overflow": self.overflow,
            "encoded": self.encode(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyHistogram:
        return cls.decode(d["encoded"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        mine = np.ctypeslib.as_array(self._hdr.counts)[: self._hdr.counts_len]
        theirs = np.ctypeslib.as_array(other._hdr.counts)[: other._hdr.counts_len]
        return (self.overflow, self.failures) == (
            other.overflow,
            other.failures,
        ) and np.array_equal(mine, theirs)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"LatencyHistogram(count={self.count}, failures={self.failures}, "
            f"overflow={self.overflow}, p99={self.percentile(99) if self.count else None})"
        )


def _shift(values: np.ndarray) -> np.ndarray:
    """The HDR bucket index of each value (3 significant figures, unit 1 us): how many low bits
    its bucket drops. The bit length comes from integer comparisons (not log2, which rounds near
    powers of two)."""
    return np.maximum(np.searchsorted(_POWERS, values, side="right") - 11, 0)


def _counts_index(values: np.ndarray) -> np.ndarray:
    """Each value's slot in hdrh's counts array: ``(bucket + 1) * 1024 + sub_bucket - 1024``."""
    shift = _shift(values)
    return (shift << 10) + (values >> shift)


def _lowest_equivalent(values: np.ndarray) -> np.ndarray:
    """Round each value down to the lowest value of its HDR bucket (3 significant figures).

    Values below 2048 are exact; above, the bucket width doubles with each power of two.
    """
    shift = _shift(values)
    return (values >> shift) << shift
