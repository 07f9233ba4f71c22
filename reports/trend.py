"""``recchaos trend``: p99 per scenario and window across the runs in the history, with change
points marked.

Change points come from binary segmentation of log(p99) for a shift in the mean: split where the
squared-error cost drops most, keep the split when the drop beats a BIC-style penalty
``2 sigma^2 ln n`` (sigma from the median absolute first difference, so a step does not inflate
it), both sides have at least ``min_size`` runs, and the medians differ by the minimum effect;
then recurse on both halves. Noise on these machines is large, so a single slow run never makes a
change point: it takes ``min_size`` runs in a row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reports.compare import DEFAULT_EFFECT, MinEffect
from reports.history import RunEntry
from reports.html import page, table
from reports.markdown import md_table
from reports.svg import PALETTE, Chart, esc, finite_max, fmt


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


# assembling ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    scenario: str
    window: str
    runs: tuple[RunEntry, ...]
    p99: tuple[float, ...]
    changes: tuple[ChangePoint, ...]


def trend_lines(
    entries: Sequence[RunEntry],
    min_size: int = 3,
    min_effect: MinEffect = DEFAULT_EFFECT,
    max_windows: int = 6,
) -> list[Line]:
    lines = []
    for scen in dict.fromkeys(e.scenario for e in entries):
        runs = [e for e in entries if e.scenario == scen]
        names = list(dict.fromkeys(n for e in runs for n in e.windows))[:max_windows]
        for name in names:
            have = tuple(e for e in runs if name in e.windows)
            p99 = tuple(e.windows[name].p99 for e in have)
            lines.append(
                Line(scen, name, have, p99, tuple(change_points(p99, min_size, min_effect)))
            )
    return lines


def _when(e: RunEntry) -> str:
    t = e.started_wall or e.added_wall
    return time.strftime("%m-%d %H:%M", time.gmtime(t)) if t else str(e.id)


def scenario_chart(scenario: str, lines: Sequence[Line]) -> str:
    runs = list(dict.fromkeys(e.id for ln in lines for e in ln.runs))
    pos = {rid: i for i, rid in enumerate(runs)}
    entry = {e.id: e for ln in lines for e in ln.runs}
    top = max(finite_max([v for ln in lines for v in ln.p99], 1.0) * 1.2, 1.0)
    step = max(1, len(runs) // 10)
    chart = Chart.frame(
        f"{scenario}: p99 per run (error-inclusive), change points marked",
        (-0.5, max(len(runs) - 0.5, 0.5)),
        (0.0, top),
        height=280,
        y_label="p99 ms",
        x_label="run # (oldest to newest; hover for the date)",
        x_ticks=[(i, f"#{i + 1}") for i in range(len(runs)) if i % step == 0],
        css_class="chart trend",
    )
    for k, ln in enumerate(lines):
        color = PALETTE[k % len(PALETTE)]
        xs = [pos[e.id] for e in ln.runs]
        chart.line(
            xs,
            list(ln.p99),
            ln.window,
            color,
            x_fmt=lambda x: f"run {int(x) + 1} ({_when(entry[runs[int(x)]])})",
        )
        for cp in ln.changes:
            chart.vline(
                xs[cp.index] - 0.5,
                f"{ln.window[:20]} {cp.direction}",
                color,
                tip=f"change point, {ln.window}: {cp.describe()}",
                label_dy=12 * k,
            )
    return chart.render()


def render_html(lines: Sequence[Line], db: str) -> str:
    out = [
        "<h1>recchaos trend</h1>",
        f'<p class="meta">history <code>{esc(db)}</code>; p99 per run and window; dashed '
        "lines are change points (binary segmentation on log p99, BIC penalty, at least 3 "
        "runs a side, minimum effect 5% and 0.5 ms)</p>",
    ]
    if not lines:
        out.append("<p>No complete runs in the history yet.</p>")
    for scen in dict.fromkeys(ln.scenario for ln in lines):
        mine = [ln for ln in lines if ln.scenario == scen]
        out.append(f"<h2>{esc(scen)}</h2>" + scenario_chart(scen, mine))
    out.append(
        "<h2>Change points</h2>"
        + table(
            ["scenario", "window", "runs", "latest p99 ms", "median p99 ms", "change points"],
            [_summary(ln) for ln in lines],
            "trend",
        )
    )
    return page("recchaos trend", "".join(out))


def _summary(ln: Line) -> list[object]:
    finite = [v for v in ln.p99 if not math.isnan(v)]
    changes = (
        "; ".join(
            f"at run {cp.index + 1} ({_when(ln.runs[cp.index])}): {cp.describe()}"
            for cp in ln.changes
        )
        or "none"
    )
    return [
        ln.scenario,
        ln.window,
        len(ln.p99),
        ln.p99[-1] if ln.p99 else math.nan,
        float(np.median(finite)) if finite else math.nan,
        changes,
    ]


def render_markdown(lines: Sequence[Line]) -> str:
    rows = [[str(v) if not isinstance(v, float) else fmt(v) for v in _summary(ln)] for ln in lines]
    return (
        "## recchaos trend\n\n"
        + md_table(
            ["scenario", "window", "runs", "latest p99 ms", "median p99 ms", "change points"], rows
        )
        + "\n"
    )
