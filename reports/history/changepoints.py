"""Change points in a series of per-run p99 values, for the trend.

Binary segmentation of log(p99) for a shift in the mean: split where the squared-error cost
drops most, keep the split when the drop beats a BIC-style penalty ``2 sigma^2 ln n`` (sigma from
the median absolute first difference, so a step does not inflate it), both sides have at least
``min_size`` runs, and the medians differ by the minimum effect; then recurse on both halves.
Noise on these machines is large, so a single slow run never makes a change point: it takes
``min_size`` runs in a row. Pure: numbers in, change points out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reports.effect import DEFAULT_EFFECT, MinEffect
from reports.svg import finite_max, fmt


@dataclass(frozen=True)
class ChangePoint:
    index: int  # first run of the new segment
    before: float  # median of the segment before (ms)
    after: float

    @property
    def direction(self) -> str:
        return "up" if self.after > self.before else "down"

    def describe(self) -> str:
        rel = (self.after / self.before - 1) * 100 if self.before > 0 else math.inf
        return f"{self.direction} {fmt(self.before)} -> {fmt(self.after)} ms ({rel:+.0f}%)"


def _cost(x: np.ndarray) -> float:
    return float(((x - x.mean()) ** 2).sum()) if x.size else 0.0


def change_points(
    values: Sequence[float],
    min_size: int = 3,
    min_effect: MinEffect = DEFAULT_EFFECT,
    sigma_floor: float = 0.02,
) -> list[ChangePoint]:
    """Change points of a series of positive values (ms); inf is capped, nan left out first."""
    raw = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if raw.size < 2 * min_size:
        return []
    cap = finite_max(raw.tolist(), 1.0) * 4
    vals = np.where(np.isinf(raw), cap, np.maximum(raw, 1e-6))
    x = np.log(vals)
    d = np.diff(x)
    sigma = max(1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2), sigma_floor)
    penalty = 2 * sigma**2 * math.log(x.size)
    found: list[int] = []
    _split(x, vals, 0, x.size, min_size, penalty, min_effect, found)
    out = []
    bounds = [0, *sorted(found), x.size]
    for k, cp in enumerate(sorted(found)):
        before = float(np.median(vals[bounds[k] : cp]))
        after = float(np.median(vals[cp : bounds[k + 2]]))
        out.append(ChangePoint(cp, before, after))
    return out


def _split(
    x: np.ndarray,
    vals: np.ndarray,
    lo: int,
    hi: int,
    min_size: int,
    penalty: float,
    effect: MinEffect,
    found: list[int],
) -> None:
    if hi - lo < 2 * min_size:
        return
    seg = x[lo:hi]
    total = _cost(seg)
    best, best_gain = -1, 0.0
    for k in range(min_size, seg.size - min_size + 1):
        gain = total - _cost(seg[:k]) - _cost(seg[k:])
        if gain > best_gain:
            best, best_gain = k, gain
    if best < 0 or best_gain <= penalty:
        return
    left = float(np.median(vals[lo : lo + best]))
    right = float(np.median(vals[lo + best : hi]))
    if not (effect.met(left, right) or effect.met_down(left, right)):
        return
    found.append(lo + best)
    _split(x, vals, lo, lo + best, min_size, penalty, effect, found)
    _split(x, vals, lo + best, hi, min_size, penalty, effect, found)
