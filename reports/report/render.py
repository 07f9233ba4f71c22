"""The run report as one self-contained HTML file: inline CSS, inline SVG, a few lines of JS.

Order follows what a reader needs first: the verdict and the SLO table (with the answers'
validity and quality per window and tier), then latency over time with the fault windows shaded
(and a guard's halt marked) and answer quality under it, tier shares, the percentile spectrum per
window, the per-stage budget, generator health, the fault timeline, and how to replay the run.
Nothing is fetched from the network; the page opens from a file or a CI artifact as is.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from reports.page import Raw, badge, page, table
from reports.report import charts
from reports.report.series import Series, per_second
from reports.report.stages import StageRow, stage_rows
from reports.rundir import RunDir
from reports.svg import esc, fmt


def _pct(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(x) else f"{x * 100:.2f}%"


# sections -----------------------------------------------------------------------------------
def header(run: RunDir) -> str:
    r = run.record
    started = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.started_wall))
        if r.started_wall
        else "unknown"
    )
    profile = f", profile {r.profile}" if r.profile else ""
    killed = " " + badge("KILLED") if run.killed else ""
    out = [
        f"<h1>{esc(run.scenario_name)} {badge(r.verdict)}{killed}</h1>",
        f'<p class="meta">run <code>{esc(run.path.name)}</code> · seed {r.seed}{esc(profile)} · '
        f"started {esc(started)} · status <b>{esc(r.status)}</b> · commit "
        f"<code>{esc(r.git_commit or 'unknown')}</code> · SLA {run.sla_ms:g} ms</p>",
    ]
    if run.partial:
        items = "".join(f"<li>{esc(n)}</li>" for n in run.notes)
        out.append(
            f'<div class="partial"><b>PARTIAL RUN</b>: this report shows what was saved; '
            f"its verdict (if any) is not a full result.<ul>{items}</ul></div>"
        )
    if r.halt is not None:
        out.append(
            f'<div class="partial halt" id="halt"><b>HALTED by a guard</b>: '
            f"{esc(r.halt.message())}</div>"
        )
    if r.errors:
        items = "".join(f"<li><code>{esc(e)}</code></li>" for e in r.errors)
        out.append(
            f'<div class="partial"><b>Errors recorded by the harness</b><ul>{items}</ul></div>'
        )
    if r.warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in r.warnings)
        out.append(
            f'<div class="partial"><b>What this run could not test as asked</b><ul>{items}'
            "</ul></div>"
        )
    return "".join(out)


def slo_section(run: RunDir) -> str:
    checks = run.record.checks
    if not checks:
        body = (
            '<p class="note">No SLO checks were recorded (a run without checks is never PASS).</p>'
        )
    else:
        rows = [
            [
                Raw(badge(c.get("verdict"))),
                c.get("metric", ""),
                c.get("window") or "whole run",
                _num_or(c.get("value")),
                _ci(c.get("interval")),
                _num_or(c.get("limit")),
                c.get("where", ""),
                c.get("message", ""),
            ]
            for c in checks
        ]
        body = table(
            ["verdict", "metric", "window", "value", "CI", "limit", "SLO", "message"], rows, "slo"
        )
    return '<h2 id="slo">Verdict and SLOs</h2>' + body + window_table(run) + quality_table(run)


def _q(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(x) else f"{x:.3f}"


EXPECTED_MODEL = {
    "primary": "full",
    "retry": "full",
    "replica": "full",
    "degraded": "distilled",
    "static": "popular",
}


def quality_table(run: RunDir) -> str:
    """Per window and tier: answers checked, valid share, agreement@k and NDCG@k, next to
    what the tier's model scores offline on this run's users (``details.json``)."""
    expected = (run.details.get("answers") or {}).get("expected") or {}
    rows = []
    for w in run.record.windows:
        name = w.get("window", {}).get("name", "?")
        for tier, q in ((w.get("answers") or {}).get("by_tier") or {}).items():
            model = EXPECTED_MODEL.get(tier)
            exp = expected.get(model) or {} if model else {}
            rows.append(
                [
                    name,
                    tier,
                    q.get("checked", 0),
                    _q(q.get("valid_share")),
                    q.get("measured", 0),
                    _q(q.get("agreement_at_k")),
                    _q(q.get("ndcg_at_k")),
                    f"{model}: {_q(exp.get('agreement_at_k'))} / {_q(exp.get('ndcg_at_k'))}"
                    if exp
                    else "",
                ]
            )
    if not rows:
        return '<p class="note">No answers were checked in this run.</p>'
    return (
        '<p class="note">Answer quality per window and tier: valid share of the answers '
        "checked; mean agreement@k (overlap with the full model's unsharded top-k) and NDCG@k "
        "(against the held-out item) of those measured; and what the tier's model scores "
        "offline on this run's stream of users (agreement / NDCG).</p>"
        + table(
            [
                "window",
                "tier",
                "answers",
                "valid",
                "measured",
                "agreement@k",
                "NDCG@k",
                "offline (agreement / NDCG)",
            ],
            rows,
            "quality",
        )
    )


def _ci(interval: Any) -> str:
    """A quantile check's confidence interval, ``95%: 4.1-4.3``; empty for other checks."""
    if not isinstance(interval, dict):
        return ""
    try:
        level, low, high = (float(interval[k]) for k in ("level", "low_ms", "high_ms"))
    except (KeyError, TypeError, ValueError):
        return ""
    return f"{level * 100:g}%: {fmt(low)}-{fmt(high)}"


def _num_or(v: Any) -> Any:
    if isinstance(v, int | float):
        return v
    if v in ("inf", "-inf"):
        return float(v)
    return "" if v is None else str(v)


OVERLOAD_COLUMNS = ["goodput (answers/s)", "served p99", "shed", "rejection p99"]


def _overload_cells(w: dict[str, Any]) -> list[Any]:
    """Goodput, the served answers' p99, the shed share and the rejections' p99 of a window."""
    return [
        _num_or(w.get("goodput_per_s")),
        _num_or(w.get("served_p99_ms")),
        _pct(w.get("shed_share")),
        _num_or(w.get("rejection_p99_ms")),
    ]


def window_table(run: RunDir) -> str:
    """One row per window; the overload columns only when some window shed a request."""
    shed = any((w.get("shed") or 0) > 0 for w in run.record.windows)
    rows = []
    for w in run.record.windows:
        win = w.get("window", {})
        lat = w.get("latency_with_errors_ms", {})
        shares = w.get("tier_shares", {})
        tiers = ", ".join(f"{t} {_pct(v)}" for t, v in shares.items() if v and float(v) > 0)
        rows.append(
            [
                win.get("name", "?"),
                f"{win.get('start_s', 0):.1f}-{win.get('end_s', 0):.1f} s",
                w.get("count", 0),
                _num_or(lat.get("p50")),
                _num_or(lat.get("p95")),
                _num_or(lat.get("p99")),
                _num_or(lat.get("p99.9")),
                _pct(w.get("within_sla")),
                _pct(w.get("error_ratio")),
                *(_overload_cells(w) if shed else []),
                tiers,
                _pct(w.get("cold_start_share")),
                _q(w.get("valid_share")),
                _q(w.get("agreement_at_k")),
                _q(w.get("ndcg_at_k")),
                _num_or(w.get("lag_p99_ms")),
            ]
        )
    if not rows:
        return '<p class="note">No window statistics in the record.</p>'
    note = (
        "Per window (response time from the intended send, ms, "
        "error-inclusive: a failure counts as infinitely slow)."
    )
    if shed:
        note += (
            " Shed requests (a 503 with Retry-After) are failures there too; goodput counts the"
            " answers within the SLA per second, served p99 the answered requests alone,"
            " rejection p99 the shed ones alone (ms)."
        )
    return f'<p class="note">{note}</p>' + table(
        [
            "window",
            "span",
            "requests",
            "p50",
            "p95",
            "p99",
            "p99.9",
            "within SLA",
            "errors",
            *(OVERLOAD_COLUMNS if shed else []),
            "tiers",
            "cold start",
            "valid",
            "agreement@k",
            "NDCG@k",
            "lag p99",
        ],
        rows,
        "windows",
    )


def series_sections(run: RunDir, s: Series | None) -> str:
    r = run.record
    if s is None:
        return (
            '<h2 id="latency">Latency over time</h2><p class="note">No request log: '
            "per-second plots are not available for this run.</p>"
        )
    return (
        '<h2 id="latency">Latency over time</h2>'
        '<p class="note">p50/p95/p99 per second of intended send time; shaded bands are '
        "fault windows (inject to heal); red squares at the top: failures reach that "
        "percentile.</p>"
        + charts.latency_chart(s, r.timeline, run.end_s, run.sla_ms, r.halt)
        + quality_section(run, s)
        + '<h2 id="tiers">Tier shares over time</h2>'
        + charts.tier_chart(s, r.timeline, run.end_s)
        + '<div id="rates">'
        + charts.rate_chart(s, r.timeline, run.end_s)
        + "</div>"
    )


def quality_section(run: RunDir, s: Series) -> str:
    head = '<h2 id="quality">Answer quality over time</h2>'
    if not s.checked.any():
        return head + '<p class="note">No answers were checked in this run.</p>'
    note = (
        '<p class="note">Per second of intended send time: the share of checked answers that '
        "are valid, and the mean agreement@k and NDCG@k of the answers measured (cold starts "
        "and users without a reference answer are not measured).</p>"
    )
    return head + note + charts.quality_chart(s, run.record.timeline, run.end_s)


def spectrum_section(run: RunDir) -> str:
    svg = charts.spectrum_chart(run.record.windows, run.sla_ms) if run.record.windows else ""
    return '<h2 id="spectrum">Percentile spectrum per window</h2>' + (
        svg or '<p class="note">No window histograms in the record.</p>'
    )


def stage_section(run: RunDir) -> str:
    rows, gateway = stage_rows(run)
    note = (
        '<p class="note">Gateway rows: the whole run, from its <code>/metrics</code> scraped '
        "before and after the load (Prometheus histograms, quantiles interpolated inside "
        "buckets).</p>"
        if gateway
        else '<p class="note">This run saved no scrape of the gateway\'s <code>/metrics</code> '
        "(<code>cluster/metrics-after.txt</code>), so only the client-side stages are shown: "
        "generator lag, service (send to answer) and response (intended send to answer).</p>"
    )
    return (
        '<h2 id="stages">Per-stage latency against the budget</h2>'
        + note
        + charts.budget_chart(rows, run.sla_ms)
        + _stage_table(rows)
    )


def _stage_table(rows: list[StageRow]) -> str:
    return table(
        ["scope", "stage", "p50 ms", "p95 ms", "p99 ms", "source"],
        [[r.scope, r.stage, r.p50, r.p95, r.p99, r.source] for r in rows],
        "stages",
    )


def generator_section(run: RunDir, s: Series | None) -> str:
    gen = run.details.get("generator") or {}
    out = ['<h2 id="generator">Generator health</h2>']
    if s is not None:
        out.append(charts.lag_chart(s, run.record.timeline, run.end_s, run.sla_ms))
    keys = [
        "workers",
        "scheduled",
        "intended",
        "sent",
        "answered",
        "failed",
        "missed",
        "shed",
        "intended_rate",
        "achieved_rate",
        "lag_p50_ms",
        "lag_p99_ms",
        "lag_p999_ms",
        "cpu_ms_per_request",
        "partial",
    ]
    rows = [
        [
            k,
            gen[k]
            if isinstance(gen.get(k), int | float) and not isinstance(gen.get(k), bool)
            else str(gen.get(k)),
        ]
        for k in keys
        if k in gen
    ]
    out.append(
        table(["generator", "value"], rows, "generator")
        if rows
        else '<p class="note">No generator summary (details.json missing).</p>'
    )
    cross = run.details.get("tier_cross_check")
    if cross:
        out.append(
            f'<p class="note">Tier cross-check (gateway /metrics vs client): agree = '
            f"<b>{esc(cross.get('agree'))}</b> <code>{esc(json.dumps(cross))}</code></p>"
        )
    for key in ("unaccounted", "fault_problems", "load_errors"):
        if run.details.get(key):
            out.append(
                f'<p class="note">{esc(key)}: <code>{esc(json.dumps(run.details[key]))}</code></p>'
            )
    return "".join(out)


def halt_note(run: RunDir) -> str:
    """The halt under the fault timeline: when the guard tripped, how fast each heal followed."""
    h = run.record.halt
    if h is None:
        return ""
    late = [
        f"{e.label} {(e.heal_ns - h.trip_ns) / 1e6:.0f} ms"
        for e in run.record.timeline
        if e.label in h.healed and e.heal_ns is not None
    ]
    skipped = ", ".join(h.not_applied) or "none"
    return (
        f'<p class="note"><b>Halt</b> ({esc(h.guard)}, {esc(h.rule)}): the condition held from '
        f"{h.since_s:.2f} s; the harness knew at {h.trip_s:.3f} s and healed at once: "
        f"{esc(', '.join(late) or 'no fault was active')} after the trip. Planned faults not "
        f"applied: {esc(skipped)}.</p>"
    )


def timeline_section(run: RunDir) -> str:
    tl = run.record.timeline
    if not tl:
        return (
            '<h2 id="faults">Fault timeline</h2><p class="note">No faults were injected.</p>'
            + halt_note(run)
        )
    rows = [
        [
            i,
            e.kind,
            e.target,
            e.origin,
            f"{e.inject_s:.3f}",
            "not healed" if e.heal_s is None else f"{e.heal_s:.3f}",
            "" if e.heal_s is None else f"{e.heal_s - e.inject_s:.3f}",
            "yes" if e.verified else "NO",
            json.dumps(e.params) if e.params else "",
            e.note,
        ]
        for i, e in enumerate(tl)
    ]
    return (
        '<h2 id="faults">Fault timeline</h2>'
        + charts.timeline_chart(tl, run.end_s)
        + table(
            [
                "#",
                "kind",
                "target",
                "origin",
                "inject s",
                "heal s",
                "duration s",
                "verified",
                "params",
                "note",
            ],
            rows,
            "faults",
        )
        + halt_note(run)
    )


def replay_section(run: RunDir) -> str:
    r = run.record
    versions = ", ".join(f"{k} {v}" for k, v in r.versions.items())
    host = ", ".join(f"{k} {v}" for k, v in r.host.items())
    return (
        '<h2 id="replay">Seed and replay</h2>'
        f"<p>seed <b>{r.seed}</b>; replay with:</p><pre>{esc(r.replay or 'unknown')}</pre>"
        f'<p class="meta">commit <code>{esc(r.git_commit or "unknown")}</code> · '
        f"{esc(versions)}<br>host: {esc(host)} · scenario file "
        f"<code>{esc(r.scenario_path)}</code></p>"
    )


def render_run(run: RunDir) -> str:
    s = None
    if run.requests is not None and run.requests.size:
        s = per_second(run.requests, run.end_s, sla_ms=run.sla_ms)
    body = "".join(
        [
            header(run),
            slo_section(run),
            series_sections(run, s),
            spectrum_section(run),
            stage_section(run),
            generator_section(run, s),
            timeline_section(run),
            replay_section(run),
        ]
    )
    return page(f"recchaos {run.scenario_name}: {run.record.verdict or run.record.status}", body)
