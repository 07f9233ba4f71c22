"""``recchaos compare BASELINE CURRENT``: options in, ``compare.html`` and ``compare.md`` out, and
the exit code: 0 no regression, 1 a regression (and nothing else), 2 bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.model.errors import UsageError
from reports.compare.bench import compare_benchmarks
from reports.compare.render import headline, render_html, render_markdown
from reports.compare.sides import compare_sides, load_side
from reports.effect import parse_min_effect
from reports.history import store as history
from reports.history.benchfiles import read_benchmarks
from reports.page import write_text

EXIT_OK = 0
EXIT_REGRESSION = 1


def compare(args: argparse.Namespace) -> int:
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
    for r in result.quality_regressions:
        j = r.judgement
        print(
            f"  REGRESSION {r.scenario} / {r.window} {r.metric}: {j.base:.4g} -> {j.cur:.4g}"
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


def add_compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare run sets per scenario and window; exit 1 on a regression",
        description="BASELINE and CURRENT: a run directory, a directory of run directories, or "
        "history:SELECTOR (latest, previous, baseline, last:N, run:ID, or a batch name).",
    )
    p.add_argument("baseline", metavar="BASELINE", help="the runs to compare against")
    p.add_argument("current", metavar="CURRENT", help="the runs to judge")
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
    p.add_argument(
        "--bench-current", nargs="+", metavar="JSON", help="pytest-benchmark JSON files of CURRENT"
    )
    p.add_argument(
        "--set-baseline",
        action="store_true",
        help="without a regression, make CURRENT's history batch the baseline",
    )
    p.set_defaults(func=compare)
