"""Short markdown summaries for CI pages (GitHub job summaries, merge-request comments).

One screen: the verdict, the failing or inconclusive checks, a per-window table of latency and
answer quality (valid share, agreement@k, NDCG@k, cold starts), the faults, and the replay
command. The HTML report next to it has the plots.
"""

from __future__ import annotations

import math
from typing import Any

from reports.page import md_table
from reports.rundir import RunDir
from reports.svg import fmt


def _ms(v: Any) -> str:
    if v in ("inf", "-inf"):
        return str(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(x) else fmt(x)


def _quality(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def run_summary(run: RunDir, html_name: str = "report.html") -> str:
    r = run.record
    icon = {"PASS": "✅", "FAIL": "❌", "INCONCLUSIVE": "⚠️"}.get(r.verdict or "", "⏸")
    if run.killed:
        icon = "🛑"
    out = [
        f"## {icon} {run.scenario_name}: {r.verdict or 'no verdict'}"
        + (" (KILLED)" if run.killed else "")
        + (" (PARTIAL RUN)" if run.partial else ""),
        "",
    ]
    out.append(
        f"seed {r.seed}, status {r.status}, commit `{r.git_commit or 'unknown'}`, "
        f"SLA {run.sla_ms:g} ms. Plots: [{html_name}]({html_name})"
    )
    out.append("")
    if run.partial:
        out += [f"- partial: {n}" for n in run.notes] + [""]
    if r.halt is not None:
        out += [f"**HALTED**: {r.halt.message()}", ""]
    out += [f"- harness error: `{e}`" for e in r.errors]
    out += [f"- warning: {w}" for w in r.warnings]
    bad = [c for c in r.checks if c.get("verdict") != "PASS"]
    passed = len(r.checks) - len(bad)
    out.append(f"**Checks**: {passed} of {len(r.checks)} PASS")
    out += [f"- **{c.get('verdict')}** {c.get('message', '')}" for c in bad]
    out.append("")
    rows = []
    for w in r.windows:
        lat = w.get("latency_with_errors_ms", {})
        rows.append(
            [
                w.get("window", {}).get("name", "?"),
                w.get("count", 0),
                _ms(lat.get("p50")),
                _ms(lat.get("p95")),
                _ms(lat.get("p99")),
                f"{float(w.get('error_ratio') or 0) * 100:.2f}%",
                _quality(w.get("valid_share")),
                _quality(w.get("agreement_at_k")),
                _quality(w.get("ndcg_at_k")),
                f"{float(w.get('cold_start_share') or 0) * 100:.1f}%",
            ]
        )
    if rows:
        heads = ["window", "requests", "p50 ms", "p95 ms", "p99 ms", "errors", "valid"]
        heads += ["agreement@k", "NDCG@k", "cold start"]
        out += [md_table(heads, rows), ""]
    if r.timeline:
        out.append(
            "**Faults**: "
            + "; ".join(
                f"{e.label} {e.inject_s:.1f}-{'?' if e.heal_s is None else f'{e.heal_s:.1f}'} s"
                + ("" if e.verified else " (not verified)")
                for e in r.timeline
            )
        )
        out.append("")
    out.append(f"Replay: `{r.replay or 'unknown'}`")
    return "\n".join(out) + "\n"
