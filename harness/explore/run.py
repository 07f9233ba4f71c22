"""One whole exploration, as ``recchaos explore`` and the ``chaos_explore`` fixture run it.

:func:`explore` resolves the scenario (profile, seed), checks that it can be explored here,
makes the exploration directory ``<out>/<stamp>-explore-<name>-s<seed>/`` and runs the search
(:class:`~harness.explore.search.Exploration`) on a runner from :mod:`harness.explore.cluster`.
Whatever happens (a failure found, nothing found, Ctrl-C, a harness error), the runner's
cluster is stopped and ``explore.json``, ``minimal.yaml`` (when a schedule failed) and the
HTML summary ``explore.html`` are left in that directory. The progress lines go to ``log``;
every run's own lines go to ``explore.log`` there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from harness.checks.verdict import Verdict
from harness.explore.cluster import runner_for
from harness.explore.record import RECORD, closing_note, record_dict, write_json, write_minimal
from harness.explore.search import ExampleRunner, Exploration
from harness.explore.settings import ExploreSettings
from harness.explore.space import SearchSpace
from harness.model.errors import (
    EXIT_HARNESS,
    EXIT_INTERRUPTED,
    HarnessError,
    UsageError,
)
from harness.model.fault_kinds import FAULT_KINDS, MECHANISMS
from harness.model.scenario import Scenario, load_scenario
from harness.runner.run import new_run_dir
from harness.runner.settings import RunSettings, apply_overrides

MakeRunner = Callable[[Scenario, Path, Callable[[str], None]], ExampleRunner]


@dataclass(frozen=True)
class ExploreOutcome:
    """How an exploration ended: its directory, verdict (None: interrupted or a harness error),
    exit code, closing note and, when a schedule failed, the minimal scenario file."""

    workdir: Path
    verdict: Verdict | None
    exit_code: int
    lines: tuple[str, ...]
    minimal: Path | None = None
    exploration: Exploration | None = None


def resolve(settings: ExploreSettings) -> Scenario:
    """The scenario as explored: its profile and the seed applied, checked for exploring."""
    scenario = load_scenario(settings.scenario_path, profile=settings.profile)
    scenario = apply_overrides(scenario, RunSettings(settings.scenario_path, seed=settings.seed))
    if not scenario.slos:
        raise UsageError(
            f"{settings.scenario_path}: slos: got none; explore needs at least one SLO for a"
            " schedule to break"
        )
    if os.geteuid() != 0:
        for axis in SearchSpace.of(scenario).kinds:
            spec = FAULT_KINDS[axis.kind]
            if spec.root:
                raise UsageError(
                    f"{settings.scenario_path}: explore.kinds: {axis.kind} needs root"
                    f" ({MECHANISMS[spec.mechanism]}); run as root or leave it out of kinds"
                )
    return scenario


def explore(
    settings: ExploreSettings,
    log: Callable[[str], None] = print,
    make_runner: MakeRunner = runner_for,
) -> ExploreOutcome:
    """Run one exploration (usage errors raise before anything starts)."""
    scenario = resolve(settings)
    workdir = new_run_dir(settings.out_dir, scenario, "explore")
    started_wall = time.time()
    with open(workdir / "explore.log", "a", encoding="utf-8") as fh:
        file_log = _to_file(fh)
        shown = _tee(fh, log if settings.progress else None)
        runner = make_runner(scenario, workdir, file_log)

        def write(exp: Exploration, status: str = "running", note: list[str] | None = None) -> None:
            write_json(workdir / RECORD, record_dict(exp, status, started_wall, note))

        exp = Exploration(scenario, settings, runner, workdir, log=shown, on_change=write)
        shown(
            f"explore {settings.scenario_path} (seed {scenario.seed}) in {workdir}:"
            f" {exp.space.describe()}; database {settings.database_dir}"
        )
        status, error = _search(exp, runner)
        minimal = write_minimal(exp)  # a failure found before an interruption is kept too
        lines = _ending(exp, status, error)
        write(exp, status, lines)
        _render(workdir, file_log)
        for line in lines:
            file_log(line)
    return _outcome(exp, workdir, status, lines, minimal)


def _search(exp: Exploration, runner: ExampleRunner) -> tuple[str, str]:
    try:
        exp.explore()
    except KeyboardInterrupt:
        return "interrupted", "interrupted (Ctrl-C): faults healed, cluster stopped"
    except HarnessError as exc:
        return "error", str(exc)
    finally:
        runner.close()
    return "complete", ""


def _ending(exp: Exploration, status: str, error: str) -> list[str]:
    if status == "complete":
        return closing_note(exp)
    return [f"exploration {status}: {error}", *closing_note(exp)[1:]]


def _outcome(
    exp: Exploration, workdir: Path, status: str, lines: list[str], minimal: Path | None
) -> ExploreOutcome:
    if status in ("interrupted", "error"):
        code = EXIT_INTERRUPTED if status == "interrupted" else EXIT_HARNESS
        return ExploreOutcome(workdir, None, code, tuple(lines), minimal, exp)
    verdict = exp.verdict
    return ExploreOutcome(workdir, verdict, verdict.exit_code, tuple(lines), minimal, exp)


def _render(workdir: Path, log: Callable[[str], None]) -> None:
    """The HTML summary from explore.json (a convenience: never fatal)."""
    try:
        from reports.explore import write_html

        write_html(workdir / RECORD)
    except Exception as exc:  # noqa: BLE001
        log(f"explore.html not written: {type(exc).__name__}: {exc}")


def _to_file(fh: TextIO) -> Callable[[str], None]:
    def write(line: str) -> None:
        fh.write(line + "\n")
        fh.flush()

    return write


def _tee(fh: TextIO, log: Callable[[str], None] | None) -> Callable[[str], None]:
    to_file = _to_file(fh)

    def both(line: str) -> None:
        to_file(line)
        if log is not None:
            log(line)

    return both


__all__ = ["ExploreOutcome", "explore", "resolve"]
