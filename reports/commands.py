"""The reports' subcommands of ``recchaos`` (``report``, ``compare``, ``trend``, ``history``),
one module per product; :func:`add_parsers` is what :mod:`harness.cli` calls. Exit codes: 0 OK,
1 a regression (``compare`` only), 2 bad input (:class:`~harness.model.errors.UsageError`)."""

from __future__ import annotations

from typing import Any

from reports.compare.command import add_compare_parser
from reports.history.command import add_history_parser, add_trend_parser
from reports.report.command import add_report_parser


def add_parsers(sub: Any) -> None:
    """Add every reports subcommand to ``recchaos``'s subparsers."""
    for add in (add_report_parser, add_compare_parser, add_trend_parser, add_history_parser):
        add(sub)
