"""The HTML summary of an exploration (``explore.html``), from its ``explore.json`` only.

What a reader needs first: the verdict, and for a failure the first failing schedule, the
minimal one, what each took (runs, wall time) and how to replay them; then the shrink path from
the first failing schedule to the minimal one, each step drawn as its faults on the load's time
axis; then every example tried, in order, with its verdict, why, and its run directories.
Self-contained like the run report (inline CSS, inline SVG, nothing fetched).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.model.errors import UsageError
from reports.page import Raw, badge, page, table
from reports.svg import FAULT_FILL, PALETTE, esc

STRIP_W, STRIP_H = 360, 14


def read_exploration(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the exploration record: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != "recchaos-exploration":
        raise UsageError(f"{path}: not an exploration record (kind recchaos-exploration)")
    return data


def write_html(record_path: Path) -> Path:
    """Render ``explore.html`` next to ``record_path`` (an ``explore.json``); its path."""
    data = read_exploration(record_path)
    out = record_path.with_name("explore.html")
    out.write_text(render(data), encoding="utf-8")
    return out


def render(d: dict[str, Any]) -> str:
    body = [_header(d), _found(d), _shrink_path(d), _examples(d), _replay(d)]
    return page(f"explore {d.get('scenario_name', '')}", "".join(body))


def _header(d: dict[str, Any]) -> str:
    started = d.get("started_wall")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else "?"
    s = d.get("settings", {})
    budget = (
        f"time budget {s.get('time_budget_s')} s"
        if s.get("time_budget_s")
        else f"budget {s.get('budget')} schedules"
    )
    status = d.get("status", "?")
    note = f" · {esc(d['stopped'])}" if d.get("stopped") else ""
    return (
        f"<h1>explore {esc(d.get('scenario_name', ''))} {badge(d.get('verdict'))}</h1>"
        f'<p class="meta"><code>{esc(d.get("scenario_path", ""))}</code> · seed {d.get("seed")}'
        f" · status <b>{esc(status)}</b> · started {esc(when)} · {len(d.get('examples', []))}"
        f" schedules in {d.get('runs', 0)} runs, {float(d.get('elapsed_s', 0)):.0f} s ·"
        f" {esc(budget)}, shrink budget {s.get('shrink_budget')} runs, re-runs"
        f" {s.get('reruns')}{note}</p>"
        f'<p class="meta">search space: {esc(d.get("space", ""))}</p>'
    )


def _found(d: dict[str, Any]) -> str:
    first, minimal = d.get("first_failing"), d.get("minimal")
    if not minimal:
        counts = _counts(d.get("examples", []))
        return (
            '<h2 id="found">Result</h2><p>No failing schedule: '
            + ", ".join(f"{n} {v}" for v, n in counts.items())
            + ".</p>"
        )
    rows = [
        [
            what,
            e["index"],
            e["faults"],
            e["runs_so_far"],
            f"{float(e['seconds']):.0f} s",
            e["label"],
        ]
        for what, e in (("first failing", first), ("minimal", minimal))
        if e
    ]
    example = _by_index(d).get(minimal["index"], {})
    checks = "".join(f"<li>{esc(m)}</li>" for m in example.get("failing", []))
    return (
        '<h2 id="found">Failing schedule found</h2>'
        + table(
            [
                "schedule",
                "example",
                "faults",
                "runs so far",
                "wall time",
                "faults (kind, target, when)",
            ],
            rows,
        )
        + f"<p>Why it counts: {esc(example.get('reason', ''))}. Failing checks:</p><ul>{checks}</ul>"
        + f"<p>Minimal scenario: <code>{esc(d.get('minimal_scenario') or '')}</code> (copy it"
        " into <code>scenarios/</code> as a regression case).</p>"
    )


def _shrink_path(d: dict[str, Any]) -> str:
    steps = d.get("shrink_path", [])
    if not steps:
        return ""
    by_index = _by_index(d)
    rows = [
        [
            i,
            by_index[n]["index"],
            by_index[n]["faults"],
            Raw(strip(by_index[n]["schedule"], float(d.get("load_duration_s") or 1))),
            by_index[n]["label"],
        ]
        for i, n in enumerate(steps)
        if n in by_index
    ]
    return (
        '<h2 id="shrink">Shrink path</h2><p class="note">From the first failing schedule (step 0)'
        " to the minimal one; every step is a smaller schedule that failed too.</p>"
        + table(["step", "example", "faults", "timeline", "schedule"], rows)
    )


def _examples(d: dict[str, Any]) -> str:
    length = float(d.get("load_duration_s") or 1)
    rows = []
    for e in d.get("examples", []):
        runs = "<br>".join(
            f"{esc(r.get('verdict') or 'incomplete')} {float(r.get('seconds', 0)):.0f} s"
            f" <code>{esc(Path(r['run_dir']).name if r.get('run_dir') else '-')}</code>"
            for r in e.get("runs", [])
        )
        rows.append(
            [
                e["index"],
                e["phase"]
                + (f" (step {e['shrink_step']})" if e.get("shrink_step") is not None else ""),
                Raw(badge(e["verdict"])),
                Raw(strip(e["schedule"], length)),
                e["label"],
                e.get("reason", ""),
                Raw(runs or "no run"),
            ]
        )
    return '<h2 id="examples">Schedules tried</h2>' + table(
        ["#", "phase", "verdict", "timeline", "schedule", "why", "runs"], rows
    )


def _replay(d: dict[str, Any]) -> str:
    r = d.get("replay", {})
    lines = [f"# the exploration (the database replays its failures first)\n{r.get('explore', '')}"]
    if r.get("minimal"):
        lines.append(f"# the minimal failing schedule\n{r['minimal']}")
    return '<h2 id="replay">Replay</h2><pre>' + esc("\n".join(lines)) + "</pre>"


def strip(schedule: Sequence[dict[str, Any]], length_s: float) -> str:
    """A schedule's faults as bars on the load's time axis (one row per fault)."""
    height = STRIP_H * max(1, len(schedule))
    parts = [f'<svg width="{STRIP_W}" height="{height}" viewBox="0 0 {STRIP_W} {height}">']
    parts.append(f'<rect x="0" y="0" width="{STRIP_W}" height="{height}" fill="#f6f6f6"/>')
    for i, f in enumerate(schedule):
        start = float(f.get("at_s", 0))
        end = start + float(f.get("duration_s") or (length_s - start))
        x, w = STRIP_W * start / length_s, max(2.0, STRIP_W * (end - start) / length_s)
        color = PALETTE[i % len(PALETTE)] if i else FAULT_FILL
        tip = esc(f"{f.get('kind')}({f.get('target')}) {start:g}-{end:g} s")
        parts.append(
            f'<rect x="{x:.1f}" y="{i * STRIP_H + 2}" width="{w:.1f}" height="{STRIP_H - 4}"'
            f' fill="{color}" opacity="0.8" data-tip="{tip}"><title>{tip}</title></rect>'
        )
    return "".join(parts) + "</svg>"


def _by_index(d: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {e["index"]: e for e in d.get("examples", [])}


def _counts(examples: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in examples:
        out[e["verdict"]] = out.get(e["verdict"], 0) + 1
    return out or {"schedules tried": 0}
