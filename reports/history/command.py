"""``recchaos history import|list`` and ``recchaos trend``: putting run directories into the
history store (the nightly job's merge step, usable locally), listing what it holds, and the p99
trend across it (``trend.html``, ``trend.md``). Exit 0, or 2 for bad input: a corrupt run
directory is named and nothing is imported."""

from __future__ import annotations

import argparse
from pathlib import Path

from reports.history import store as history
from reports.history.trend import render_html, render_markdown, trend_lines
from reports.page import write_text
from reports.report.write import write_report
from reports.rundir import RunDir, find_run_dirs, load_run

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


def import_runs(args: argparse.Namespace) -> int:
    """Every run directory read and checked first, then appended: all or nothing."""
    runs: list[RunDir] = [load_run(d) for spec in args.run_dirs for d in find_run_dirs(spec)]
    db = Path(args.db) if args.db else history.default_db(runs[0].path)
    for run in runs:
        run_id = history.append_loaded(run, db, args.batch)
        r = run.record
        state = r.status + (", partial" if run.partial and r.status == "complete" else "")
        print(
            f"run {run_id}: {run.scenario_name} {r.verdict or 'no verdict'} ({state}) <- {run.path}"
        )
        if args.report:
            write_report(run.path)
    print(f"history: {len(runs)} run(s) imported into {db}")
    return EXIT_OK


LIST_COLUMNS = ("id", "batch", "scenario", "status", "verdict", "partial", "run_dir")


def list_runs(args: argparse.Namespace) -> int:
    """One tab-separated line per run (partial ones included), for people and scripts."""
    db = Path(args.db) if args.db else history.default_db(None)
    entries = history.select_runs(db, args.selector, include_partial=True)
    print("\t".join(LIST_COLUMNS))
    for e in entries:
        row = (e.id, e.batch, e.scenario, e.status, e.verdict or "-", int(e.partial), e.run_dir)
        print("\t".join(str(v) for v in row))
    return EXIT_OK


def add_history_parser(sub) -> None:
    p = sub.add_parser("history", help="import run directories into the history store, list it")
    group = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    i = group.add_parser(
        "import",
        help="add run directories to the history (idempotent; all checked before any is added)",
        description="RUN_DIR: a run directory or a directory of run directories (for instance "
        "the nightly job's downloaded artifacts). Exit 0, or 2 naming a corrupt file.",
    )
    i.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to add")
    i.add_argument(
        "--db",
        help=f"history store (default ${history.ENV_DB}, else {history.DB_NAME} beside the runs)",
    )
    i.add_argument(
        "--batch", help=f"batch name (default ${history.ENV_BATCH}, else one batch per run)"
    )
    i.add_argument("--report", action="store_true", help="also write each run's report.html/.md")
    i.set_defaults(func=import_runs)
    ls = group.add_parser("list", help="the runs a selector names, tab-separated")
    ls.add_argument(
        "selector",
        nargs="?",
        default="last:1000000000",
        metavar="SELECTOR",
        help="latest, previous, baseline, last:N, run:ID or a batch name (default: every run)",
    )
    ls.add_argument(
        "--db", help=f"history store (default ${history.ENV_DB} or runs/{history.DB_NAME})"
    )
    ls.set_defaults(func=list_runs)
