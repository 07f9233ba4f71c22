"""``recchaos trend``: p99 per scenario and window across the runs in the history, with change
points (:mod:`reports.history.changepoints`) marked, as HTML and markdown."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reports.effect import DEFAULT_EFFECT, MinEffect
from reports.history.changepoints import ChangePoint, change_points
from reports.history.store import RunEntry
from reports.page import md_table, page, table
from reports.svg import PALETTE, Chart, esc, finite_max, fmt


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
