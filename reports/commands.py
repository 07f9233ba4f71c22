"""The ``report``, ``compare`` and ``trend`` commands behind ``harness/cli.py``: options in,
files out, an exit code back (0 OK, 1 regression, 2 usage error via :class:`UsageError`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.model.errors import UsageError
from reports import history
from reports.bench import compare_benchmarks, read_benchmarks
from reports.compare import parse_min_effect
from reports.report import write_report, write_text

EXIT_OK = 0
EXIT_REGRESSION = 1


def report(args: argparse.Namespace) -> int:
    written = write_report(args.run_dir, args.out)
    print(f"report: {written.html}\nsummary: {written.markdown}")
    if written.partial:
        print("note: PARTIAL run (see the report's banner for what is missing)")
    if args.append or args.db:
        db = Path(args.db) if args.db else history.default_db(args.run_dir)
        run_id = history.append_run(args.run_dir, db)
        print(f"history: appended as run {run_id} to {db}")
    return EXIT_OK


def compare(args: argparse.Namespace) -> int:
    from reports.compare_view import headline, render_html, render_markdown
    from reports.comparison import compare_sides, load_side

    try:
        effect = parse_min_effect(args.min_effect)
    except ValueError as exc:
        raise UsageError(f"--min-effect: {exc}") from None
    db = Path(args.db) if args.db else history.default_db(None)
    base = load_side(args.baseline, db)
    cur = load_side(args.current, db)
    bench = _bench_rows(args, base.batch, cur.batch, db)
    result = compare_sides(base, cur, effect, args.alpha, args.min_runs, bench)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.html", render_html(result))
    write_text(out / "compare.md", render_markdown(result))
    print(f"compare: {headline(result)}\n  {out / 'compare.html'}\n  {out / 'compare.md'}")
    for r in result.regressions:
        j = r.judgement
        print(
            f"  REGRESSION {r.scenario} / {r.window} {r.metric}: {j.base:.3g} -> {j.cur:.3g} ms"
            f" ({j.method}, p={j.p_value:.3g})"
        )
    for b in result.bench_regressions:
        print(
            f"  REGRESSION benchmark {b.name}: {b.judgement.base:.3g} -> {b.judgement.cur:.3g} us"
        )
    if args.set_baseline and not result.regressed:
        if cur.batch is None:
            raise UsageError(
                "--set-baseline needs CURRENT to be one history batch "
                "(history:latest or history:BATCH)"
            )
        history.set_baseline(db, cur.batch)
        print(f"baseline: batch {cur.batch} is now the baseline in {db}")
    return EXIT_REGRESSION if result.regressed else EXIT_OK


def _bench_rows(args: argparse.Namespace, base_batch: str | None, cur_batch: str | None, db: Path):
    if args.bench_baseline or args.bench_current:
        if not (args.bench_baseline and args.bench_current):
            raise UsageError("--bench-baseline and --bench-current go together")
        return compare_benchmarks(
            [read_benchmarks(p) for p in args.bench_baseline],
            [read_benchmarks(p) for p in args.bench_current],
            min_runs=args.min_runs,
        )
    if base_batch and cur_batch and db.is_file():
        a, b = history.benchmark_files(db, base_batch), history.benchmark_files(db, cur_batch)
        if a and b:
            return compare_benchmarks(a, b, min_runs=args.min_runs)
    return []


def trend(args: argparse.Namespace) -> int:
    from reports.trend import render_html, render_markdown, trend_lines

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


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained) and report.md")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="write the reports here instead of RUN_DIR")
    p.add_argument(
        "--append",
        action="store_true",
        help="also append the run to the history store (idempotent)",
    )
    p.add_argument(
        "--db", help=f"history store (default: RUN_DIR/../{history.DB_NAME}); implies --append"
    )
    p.set_defaults(func=report)


def add_compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare run sets per scenario and window; exit 1 on a regression",
        description="BASELINE and CURRENT: a run directory, a directory of run directories, or "
        "history:SELECTOR (latest, previous, baseline, last:N, run:ID, or a batch name).",
    )
    p.add_argument("baseline", metavar="BASELINE")
    p.add_argument("current", metavar="CURRENT")
    p.add_argument("--out", default=".", help="where compare.html and compare.md go (default .)")
    p.add_argument(
        "--db",
        help=f"history store for history:... (default ${history.ENV_DB} or runs/{history.DB_NAME})",
    )
    p.add_argument(
        "--min-effect",
        default="5%,0.5ms",
        help="smallest change called a regression (default 5%%,0.5ms: both)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument(
        "--min-runs",
        type=int,
        default=3,
        help="runs a side for the Mann-Whitney test; fewer: request bootstrap",
    )
    p.add_argument(
        "--bench-baseline",
        nargs="+",
        metavar="JSON",
        help="pytest-benchmark JSON files of the baseline",
    )
    p.add_argument("--bench-current", nargs="+", metavar="JSON")
    p.add_argument(
        "--set-baseline",
        action="store_true",
        help="without a regression, make CURRENT's history batch the baseline",
    )
    p.set_defaults(func=compare)


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
