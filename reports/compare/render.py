"""Rendering a :class:`~reports.compare.sides.Comparison` as HTML (with a per-run strip chart per
scenario) and as markdown for CI pages."""

from __future__ import annotations

import math

from reports.compare.bench import BenchRow
from reports.compare.sides import Comparison, Row
from reports.compare.stats import Judgement
from reports.page import Raw, md_table, page, table
from reports.svg import PALETTE, Chart, esc, finite_max, fmt

STATUS_CLASS = {
    "regression": "REGRESSION",
    "improvement": "PASS",
    "no change": "OK",
    "not tested": "NONE",
}


def _badge(status: str) -> Raw:
    return Raw(f'<span class="verdict {STATUS_CLASS.get(status, "NONE")}">{esc(status)}</span>')


def _delta(j: Judgement) -> str:
    if math.isnan(j.delta):
        return "n/a"
    rel = "" if math.isnan(j.rel) else f" ({j.rel * 100:+.1f}%)"
    return f"{j.delta:+.3g}{rel}"


def _ci(j: Judgement) -> str:
    lo, hi = j.ci
    return "n/a" if math.isnan(lo) else f"[{lo:+.3g}, {hi:+.3g}]"


def _p(j: Judgement) -> str:
    return "-" if math.isnan(j.p_value) else f"{j.p_value:.3g}"


def headline(c: Comparison) -> str:
    n_reg, n_qual, n_bench = (
        len(c.regressions),
        len(c.quality_regressions),
        len(c.bench_regressions),
    )
    if n_reg or n_qual or n_bench:
        return (
            f"REGRESSION: {n_reg} latency, {n_qual} answer-quality and {n_bench} benchmark "
            "regression(s)"
        )
    return "no regression"


def strip_chart(c: Comparison, scenario: str) -> str:
    """Per window, each run's p99: baseline dots left, current dots right."""
    rows = [r for r in c.rows if r.scenario == scenario and r.metric == "p99"]
    if not rows:
        return ""
    vals = [v for r in rows for v in r.base_values + r.cur_values]
    top = finite_max(vals, 1.0) * 1.2
    chart = Chart.frame(
        f"{scenario}: p99 per run and window (baseline | current)",
        (-0.5, len(rows) - 0.5),
        (0.0, top),
        height=260,
        y_label="p99 ms",
        x_ticks=[(i, r.window[:28]) for i, r in enumerate(rows)],
        css_class="chart strip",
    )
    for i, r in enumerate(rows):
        for side, values, color, dx in (
            ("baseline", r.base_values, PALETTE[0], -0.15),
            ("current", r.cur_values, PALETTE[2], 0.15),
        ):
            for k, v in enumerate(values):
                shown = min(v, top) if math.isfinite(v) else top
                tip = f"{side} run {k + 1}, {r.window}: p99 {fmt(v, 'ms')}"
                chart.parts.append(
                    f'<circle class="pt" cx="{chart.x(i + dx):.1f}" cy="{chart.y(shown):.1f}" '
                    f'r="4" fill="{color}" data-tip="{esc(tip)}"><title>{esc(tip)}</title>'
                    "</circle>"
                )
    chart.legend_items += [("baseline", PALETTE[0]), ("current", PALETTE[2])]
    return chart.render()


def _row_cells(r: Row) -> list[object]:
    j = r.judgement
    return [
        _badge(j.status),
        r.scenario,
        r.window,
        r.metric,
        j.base,
        j.cur,
        _delta(j),
        _ci(j),
        _p(j),
        f"{j.n_base} | {j.n_cur}",
        j.method,
    ]


def _bench_cells(b: BenchRow) -> list[object]:
    j = b.judgement
    return [
        _badge(j.status),
        b.name,
        j.base,
        j.cur,
        _delta(j),
        _ci(j),
        _p(j),
        f"{j.n_base} | {j.n_cur}",
        j.method,
    ]


def render_html(c: Comparison) -> str:
    status = "FAIL" if c.regressed else "PASS"
    out = [
        f'<h1>recchaos compare <span class="verdict {status}">{esc(headline(c))}</span></h1>',
        f'<p class="meta">baseline <code>{esc(c.base.label)}</code> '
        f"({len(c.base.samples)} runs) · current <code>{esc(c.cur.label)}</code> "
        f"({len(c.cur.samples)} runs) · a regression needs significance (alpha {c.alpha:g}) "
        f"and a minimum effect of {esc(c.min_effect.describe())}</p>",
    ]
    if c.failed_runs:
        out.append(
            '<div class="partial"><b>Current runs with verdict FAIL</b>: '
            + esc(", ".join(s.label for s in c.failed_runs))
            + "</div>"
        )
    heads = [
        "status",
        "scenario",
        "window",
        "metric",
        "baseline ms",
        "current ms",
        "delta ms",
        "95% CI of delta",
        "p",
        "runs",
        "method",
    ]
    if c.regressions:
        out.append("<h2>Regressions</h2>" + table(heads, [_row_cells(r) for r in c.regressions]))
    out.append("<h2>Latency by scenario and window</h2>")
    for scen in dict.fromkeys(r.scenario for r in c.rows):
        out.append(strip_chart(c, scen))
    out.append(table(heads, [_row_cells(r) for r in c.rows], "compare"))
    if c.quality:
        qheads = ["status", "scenario", "window", "metric", "baseline", "current", "delta"]
        qheads += ["95% CI of delta", "p", "runs", "method"]
        out.append(
            "<h2>Answer quality by scenario and window</h2>"
            '<p class="note">Valid share, agreement@k with the reference and NDCG@k against the '
            "held-out item, over each window's answers (higher is better): a drop is a "
            "regression.</p>" + table(qheads, [_row_cells(r) for r in c.quality], "quality")
        )
    if c.bench:
        out.append(
            "<h2>Component benchmarks (median µs per call)</h2>"
            + table(
                [
                    "status",
                    "benchmark",
                    "baseline µs",
                    "current µs",
                    "delta µs",
                    "95% CI",
                    "p",
                    "files",
                    "method",
                ],
                [_bench_cells(b) for b in c.bench],
                "bench",
            )
        )
    if c.notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in c.notes) + "</ul>")
    return page(f"recchaos compare: {headline(c)}", "".join(out))


def render_markdown(c: Comparison, html_name: str = "compare.html") -> str:
    icon = "❌" if c.regressed else "✅"
    out = [
        f"## {icon} recchaos compare: {headline(c)}",
        "",
        f"baseline `{c.base.label}` ({len(c.base.samples)} runs), current `{c.cur.label}` "
        f"({len(c.cur.samples)} runs); minimum effect {c.min_effect.describe()}, "
        f"alpha {c.alpha:g}. Plots: [{html_name}]({html_name})",
        "",
    ]
    if c.failed_runs:
        out += [f"- current run with verdict FAIL: {s.label}" for s in c.failed_runs] + [""]
    rows = c.regressions + c.quality_regressions or [r for r in c.rows if r.metric == "p99"]
    title = "Regressions" if c.regressions or c.quality_regressions else "p99 per window"
    out += [
        f"**{title}**",
        "",
        md_table(
            ["status", "scenario", "window", "metric", "base ms", "cur ms", "delta", "CI", "p"],
            [
                [
                    r.judgement.status,
                    r.scenario,
                    r.window,
                    r.metric,
                    fmt(r.judgement.base),
                    fmt(r.judgement.cur),
                    _delta(r.judgement),
                    _ci(r.judgement),
                    _p(r.judgement),
                ]
                for r in rows
            ],
        ),
        "",
    ]
    if c.quality and not c.quality_regressions:
        out += [
            "**Answer quality per window** (higher is better)",
            "",
            md_table(
                ["status", "scenario", "window", "metric", "base", "cur", "delta", "p"],
                [
                    [
                        r.judgement.status,
                        r.scenario,
                        r.window,
                        r.metric,
                        fmt(r.judgement.base),
                        fmt(r.judgement.cur),
                        _delta(r.judgement),
                        _p(r.judgement),
                    ]
                    for r in c.quality
                ],
            ),
            "",
        ]
    if c.bench:
        out += [
            "**Component benchmarks** (median µs)",
            "",
            md_table(
                ["status", "benchmark", "base µs", "cur µs", "delta", "p"],
                [
                    [
                        b.judgement.status,
                        b.name,
                        fmt(b.judgement.base),
                        fmt(b.judgement.cur),
                        _delta(b.judgement),
                        _p(b.judgement),
                    ]
                    for b in c.bench
                ],
            ),
            "",
        ]
    out += [f"- {n}" for n in c.notes]
    return "\n".join(out) + "\n"
