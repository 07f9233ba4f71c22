"""``recchaos report RUN_DIR``: options in, ``report.html`` and ``report.md`` out (exit 0; 2 for a
path that is not a run directory or a run directory with a corrupt file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from reports.history import store as history
from reports.report.write import write_report

EXIT_OK = 0


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


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained) and report.md")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds run.json)")
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
