"""The reports' subcommands of ``recchaos`` (``report``, ``compare``, ``trend``), one module per
product; :mod:`harness.cli` adds their parsers. Exit codes: 0 OK, 1 a regression (``compare``
only), 2 bad input (:class:`~harness.model.errors.UsageError`)."""

from __future__ import annotations

from reports.compare.command import add_compare_parser
from reports.history.command import add_trend_parser
from reports.report.command import add_report_parser

__all__ = ["add_compare_parser", "add_report_parser", "add_trend_parser"]
