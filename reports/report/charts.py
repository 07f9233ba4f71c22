"""The run report's charts, each a function from saved data to one SVG string.

Latency over time (fault windows shaded and labelled), answer quality over time (valid share,
agreement and NDCG), tier shares over time (stacked), the percentile spectrum per window
(HdrHistogram's log axis), the per-stage budget bars and the fault timeline. Data preparation lives
in :mod:`reports.report.series` and :mod:`reports.report.stages`; drawing in :mod:`reports.svg`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.metrics.histogram import LatencyHistogram
from harness.model.record import FaultEvent, Halt
from reports.report.series import Series, spectrum, spectrum_x
from reports.report.stages import StageRow
from reports.svg import FAULT_FILL, PALETTE, Chart, finite_max, fmt

TIER_COLORS = {
    "primary": "#2ca02c",
    "retry": "#98df8a",
    "replica": "#1f77b4",
    "degraded": "#ff7f0e",
    "static": "#9467bd",
    "failed": "#d62728",
}


def shade_faults(chart: Chart, timeline: Sequence[FaultEvent], end_s: float) -> None:
    for i, e in enumerate(timeline):
        heal = e.heal_s if e.heal_s is not None else end_s
        mark = "" if e.verified else " (not verified)"
        tip = (
            f"fault {i}: {e.label} from {e.inject_s:.2f} s to "
            f"{'not healed' if e.heal_s is None else f'{heal:.2f} s'}{mark}"
        )
        chart.shade(e.inject_s, heal, e.label + mark, tip)


def latency_chart(
    s: Series,
    timeline: Sequence[FaultEvent],
    end_s: float,
    sla_ms: float,
    halt: Halt | None = None,
) -> str:
    top = max(finite_max(s.quantiles[99.0].tolist(), sla_ms), sla_ms) * 1.15
    log = top > 8 * sla_ms
    lo = max(
        min([v for v in s.quantiles[50.0].tolist() if v > 0 and math.isfinite(v)], default=0.1)
        * 0.7,
        0.05,
    )
    chart = Chart.frame(
        f"Response time per {s.bin_s:g} s, from the intended send (error-inclusive)",
        (0.0, _x_end(s, end_s)),
        (lo if log else 0.0, top),
        y_log=log,
        x_label="seconds since load start",
        y_label="ms" + (" (log)" if log else ""),
        css_class="chart latency",
    )
    shade_faults(chart, timeline, end_s)
    if halt is not None:
        chart.vline(halt.trip_s, f"halt ({halt.guard})", "#b00020", halt.message(), label_dy=12)
    chart.hline(sla_ms, f"SLA {sla_ms:g} ms", "#b00020")
    mid = s.t_s + s.bin_s / 2
    for (q, name), color in zip(
        ((50.0, "p50"), (95.0, "p95"), (99.0, "p99")),
        (PALETTE[3], PALETTE[1], PALETTE[2]),
        strict=True,
    ):
        chart.line(mid.tolist(), s.quantiles[q].tolist(), name, color)
    return chart.render()


def quality_chart(s: Series, timeline: Sequence[FaultEvent], end_s: float) -> str:
    """Valid share, mean agreement@k and mean NDCG@k per bin, on one 0..1 axis."""
    chart = Chart.frame(
        f"Answer quality per {s.bin_s:g} s: valid share, agreement@k with the reference, "
        "NDCG@k against the held-out item",
        (0.0, _x_end(s, end_s)),
        (0.0, 1.05),
        height=240,
        x_label="seconds since load start",
        y_label="0..1",
        css_class="chart quality",
    )
    shade_faults(chart, timeline, end_s)
    mid = (s.t_s + s.bin_s / 2).tolist()
    for values, name, color in (
        (s.valid_share, "valid share", PALETTE[2]),
        (s.agreement, "agreement@k", PALETTE[0]),
        (s.ndcg, "NDCG@k", PALETTE[1]),
    ):
        if not np.isnan(values).all():
            chart.line(mid, values.tolist(), name, color, unit="")
    return chart.render()


def tier_chart(s: Series, timeline: Sequence[FaultEvent], end_s: float) -> str:
    chart = Chart.frame(
        "Who served: tier shares of intended requests per second (stacked)",
        (0.0, _x_end(s, end_s)),
        (0.0, 1.0),
        height=240,
        x_label="seconds since load start",
        y_label="share",
        css_class="chart tiers",
    )
    count = s.count.astype(float)
    count[count == 0] = math.nan
    layers = [(t, (v / count).tolist()) for t, v in s.tiers.items()]
    layers.append(("failed", (s.failures / count).tolist()))
    layers = [(n, [0.0 if math.isnan(x) else x for x in vals]) for n, vals in layers]
    chart.stacked(s.t_s.tolist(), layers, [TIER_COLORS.get(n, "#999") for n, _ in layers], s.bin_s)
    shade_faults(chart, timeline, end_s)
    return chart.render()


SPECTRUM_TICKS = [
    (0.0, "0%"),
    (1.0, "90%"),
    (2.0, "99%"),
    (3.0, "99.9%"),
    (4.0, "99.99%"),
    (5.0, "99.999%"),
]


def spectrum_chart(windows: Sequence[dict[str, Any]], sla_ms: float) -> str:
    curves = []
    for w in windows:
        enc = (w.get("histograms") or {}).get("response")
        if not enc:
            continue
        pts = spectrum(LatencyHistogram.decode(enc))
        if pts:
            curves.append((str(w.get("window", {}).get("name", "?")), pts))
    xmax = max([spectrum_x(p[-1][0]) for _, p in curves] + [2.0])
    ys = [v for _, pts in curves for _, v in pts]
    top = max(finite_max(ys, sla_ms), sla_ms) * 1.3
    lo = max(min([v for v in ys if v > 0 and math.isfinite(v)], default=0.1) * 0.8, 0.05)
    chart = Chart.frame(
        "Percentile spectrum per window (response time, error-inclusive)",
        (0.0, xmax),
        (lo, top),
        y_log=True,
        height=320,
        x_label="percentile (log scale of 1/(1-q), as HdrHistogram plots it)",
        y_label="ms (log)",
        x_ticks=[t for t in SPECTRUM_TICKS if t[0] <= xmax],
        css_class="chart spectrum",
    )
    chart.hline(sla_ms, f"SLA {sla_ms:g} ms", "#b00020")
    for i, (name, pts) in enumerate(curves):
        chart.line(
            [spectrum_x(q) for q, _ in pts],
            [v for _, v in pts],
            name,
            PALETTE[i % len(PALETTE)],
            x_fmt=lambda x: f"p{100 * (1 - 10**-x):.4g}",
        )
    return chart.render()


def budget_chart(rows: Sequence[StageRow], sla_ms: float) -> str:
    """Horizontal bars per (scope, stage): p50 solid, p95 and p99 lighter, the budget line."""
    if not rows:
        return ""
    finite = [r.p99 for r in rows if math.isfinite(r.p99)]
    top = max(max(finite, default=sla_ms), sla_ms) * 1.1
    row_h, left = 22, 330
    height = 80 + row_h * len(rows)
    chart = Chart.frame(
        f"Latency by stage against the {sla_ms:g} ms budget (p50 | p95 | p99)",
        (0.0, top),
        (0.0, 1.0),
        height=height,
        x_label="ms",
        left=left,
        y_axis=False,
        css_class="chart budget",
    )
    for i, r in enumerate(rows):
        yc = 34 + row_h * (i + 0.5)
        chart.text(left - 6, yc + 4, f"{r.scope} · {r.stage}", anchor="end", size=10)
        for name, value, color in (
            ("p99", r.p99, "#f4a6a6"),
            ("p95", r.p95, "#f7c873"),
            ("p50", r.p50, "#4c9f50"),
        ):
            shown = value if math.isfinite(value) else top
            if not math.isnan(shown):
                chart.hbar(
                    yc,
                    0.0,
                    shown,
                    color,
                    f"{r.scope} · {r.stage} {name}: {fmt(value, 'ms')} ({r.source})",
                    thickness=12,
                )
    budget_px = chart.x(sla_ms)
    chart.parts.append(
        f'<line x1="{budget_px:.1f}" y1="34" x2="{budget_px:.1f}" '
        f'y2="{height - 46}" stroke="#b00020" stroke-width="1.5" '
        f'stroke-dasharray="6,3"/>'
    )
    chart.text(budget_px - 3, 44, f"budget {sla_ms:g} ms", anchor="end", size=10, color="#b00020")
    chart.legend_items += [("p50", "#4c9f50"), ("p95", "#f7c873"), ("p99", "#f4a6a6")]
    return chart.render()


def timeline_chart(timeline: Sequence[FaultEvent], end_s: float) -> str:
    if not timeline:
        return ""
    labels = [f"{i}: {e.label}" for i, e in enumerate(timeline)]
    row_h, left = 22, 220
    height = 80 + row_h * len(timeline)
    chart = Chart.frame(
        "Fault timeline (inject to heal, seconds since load start)",
        (0.0, max(end_s, 1e-3)),
        (0.0, 1.0),
        height=height,
        x_label="seconds",
        left=left,
        y_axis=False,
        css_class="chart timeline",
    )
    for i, (e, label) in enumerate(zip(timeline, labels, strict=True)):
        yc = 34 + row_h * (i + 0.5)
        heal = e.heal_s if e.heal_s is not None else end_s
        chart.text(left - 6, yc + 4, label, anchor="end", size=10)
        state = "verified" if e.verified else "NOT verified"
        chart.hbar(
            yc,
            e.inject_s,
            heal,
            FAULT_FILL if e.verified else "#999",
            f"{e.label}: {e.inject_s:.2f} s to "
            f"{'never healed' if e.heal_s is None else f'{heal:.2f} s'}, {state}. "
            f"{e.note}",
            thickness=12,
        )
    return chart.render()


def lag_chart(s: Series, timeline: Sequence[FaultEvent], end_s: float, sla_ms: float) -> str:
    lags = s.lag_p99_ms.tolist()
    top = max(finite_max(lags, 1.0) * 1.2, 1.0)
    chart = Chart.frame(
        "Generator health: send lag p99 per second (intended -> actual send)",
        (0.0, _x_end(s, end_s)),
        (0.0, top),
        height=200,
        x_label="seconds since load start",
        y_label="lag ms",
        css_class="chart lag",
    )
    shade_faults(chart, timeline, end_s)
    chart.hline(0.1 * sla_ms, f"10% of SLA ({0.1 * sla_ms:g} ms)", "#b00020")
    chart.line((s.t_s + s.bin_s / 2).tolist(), lags, "lag p99", PALETTE[4])
    return chart.render()


def rate_chart(s: Series, timeline: Sequence[FaultEvent], end_s: float) -> str:
    per_s = 1.0 / s.bin_s
    intended = (s.count * per_s).tolist()
    top = max(finite_max(intended, 1.0) * 1.15, 1.0)
    chart = Chart.frame(
        "Requests per second: intended, answered, within the SLA",
        (0.0, _x_end(s, end_s)),
        (0.0, top),
        height=200,
        x_label="seconds since load start",
        y_label="req/s",
        css_class="chart rate",
    )
    shade_faults(chart, timeline, end_s)
    mid = (s.t_s + s.bin_s / 2).tolist()
    chart.line(mid, intended, "intended", "#7f7f7f", unit="req/s")
    chart.line(mid, ((s.count - s.failures) * per_s).tolist(), "answered", PALETTE[0], unit="req/s")
    chart.line(mid, (s.within_sla * per_s).tolist(), "within SLA", PALETTE[3], unit="req/s")
    return chart.render()


def _x_end(s: Series, end_s: float) -> float:
    return max(end_s, float(s.t_s[-1]) + s.bin_s) if len(s) else end_s
