"""``python -m reports``: history plumbing for scripts (the nightly job); users want
``recchaos report|compare|trend``.

    python -m reports append-run RUN_DIR... [--db DB] [--batch B]
    python -m reports append-bench JSON... --batch B [--db DB]
    python -m reports set-baseline BATCH [--db DB]
    python -m reports has-baseline [--db DB]      (exit 0 yes, 1 no)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness.model.errors import RecchaosError
from reports.history import store as history


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports")
    sub = p.add_subparsers(dest="action", required=True)
    a = sub.add_parser("append-run")
    a.add_argument("run_dirs", nargs="+")
    b = sub.add_parser("append-bench")
    b.add_argument("files", nargs="+")
    b.add_argument("--batch", required=True)
    b.add_argument("--commit")
    s = sub.add_parser("set-baseline")
    s.add_argument("batch")
    sub.add_parser("has-baseline")
    for q in (a, b, s, sub.choices["has-baseline"]):
        q.add_argument("--db", help=f"history store (default ${history.ENV_DB} or beside the run)")
    a.add_argument("--batch")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except RecchaosError as exc:
        print(f"reports: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    if args.action == "append-run":
        for d in args.run_dirs:
            db = args.db or history.default_db(d)
            print(f"{d}: run {history.append_run(d, db, args.batch)} in {db}")
        return 0
    db = args.db or history.default_db(None)
    if args.action == "append-bench":
        n = sum(history.append_benchmarks(f, db, args.batch, args.commit) for f in args.files)
        print(f"{n} benchmark results added to batch {args.batch} in {db}")
        return 0
    if args.action == "set-baseline":
        history.set_baseline(db, args.batch)
        print(f"baseline: batch {args.batch} in {db}")
        return 0
    with history.connect(db) as conn:
        found = history.baseline_batch(conn)
    print(found or "no baseline")
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
