"""``recchaos report RUN_DIR``: write ``report.html`` and ``report.md`` into the run directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reports.page import write_text
from reports.report.render import render_run
from reports.report.summary import run_summary
from reports.rundir import load_run


@dataclass(frozen=True)
class Written:
    html: Path
    markdown: Path
    partial: bool
    verdict: str | None


def write_report(
    run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> Written:
    """Render one run; raises :class:`~harness.model.errors.UsageError` for a bad run dir."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "report.md"
    write_text(html_path, render_run(run))
    write_text(md_path, run_summary(run, html_path.name))
    return Written(html_path, md_path, run.partial, run.record.verdict)
