"""``recchaos trend``: the history's p99 per scenario and window, change points marked
(``trend.html``, ``trend.md``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from reports.history import store as history
from reports.history.trend import render_html, render_markdown, trend_lines
from reports.page import write_text

EXIT_OK = 0


def trend(args: argparse.Namespace) -> int:
    db = Path(args.db) if args.db else history.default_db(None)
    entries = history.scenario_history(db, args.scenario)
    if args.last:
        per_scenario: dict[str, list[int]] = {}
        for e in entries:
            per_scenario.setdefault(e.scenario, []).append(e.id)
        keep = {i for ids in per_scenario.values() for i in ids[-args.last :]}
        entries = [e for e in entries if e.id in keep]
    lines = trend_lines(entries)
    out = Path(args.out) if args.out else db.parent
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "trend.html", render_html(lines, str(db)))
    write_text(out / "trend.md", render_markdown(lines))
    n_cp = sum(len(ln.changes) for ln in lines)
    print(
        f"trend: {len(entries)} runs, {len(lines)} series, {n_cp} change point(s)\n"
        f"  {out / 'trend.html'}\n  {out / 'trend.md'}"
    )
    for ln in lines:
        for cp in ln.changes:
            print(
                f"  change point {ln.scenario} / {ln.window} at run {cp.index + 1}: {cp.describe()}"
            )
    return EXIT_OK


def add_trend_parser(sub) -> None:
    p = sub.add_parser(
        "trend",
        help="plot p99 per scenario across the history, change points "
        "marked (trend.html, trend.md)",
    )
    p.add_argument(
        "--db", help=f"history store (default ${history.ENV_DB} or runs/{history.DB_NAME})"
    )
    p.add_argument("--out", help="output directory (default: beside the history store)")
    p.add_argument("--scenario", help="only this scenario")
    p.add_argument("--last", type=int, help="only the last N runs of each scenario")
    p.set_defaults(func=trend)
