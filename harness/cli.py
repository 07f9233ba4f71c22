"""The ``recchaos`` command line: a thin adapter over the harness's layers.

Each command group registers its parser in :data:`COMMANDS` (``scenarios``, ``sut``, ``run``,
``explore``, and ``report``, ``compare`` and ``trend`` from :mod:`reports.commands`). Every argument carries
help text, and an option with a fixed set of values lists them as ``choices``, so a wrong value
is refused by the parser with the allowed ones named. Exit codes: 0 PASS (or OK), 1 FAIL,
2 usage error, 3 INCONCLUSIVE, 4 harness error, 130 interrupted (Ctrl-C). ``recchaos sut ...``
becomes ``python -m system_under_test`` with its arguments unchanged (the recommender is never
imported here), which then names itself ``recchaos sut`` in its help.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.model.errors import EXIT_INTERRUPTED, EXIT_USAGE, RecchaosError, ScenarioError

Register = Callable[[Any], None]  # receives the subparsers action
COMMANDS: list[Register] = []
PASSTHROUGH: dict[str, Callable[[list[str]], int]] = {}


def command(register: Register) -> Register:
    COMMANDS.append(register)
    return register


# scenarios ----------------------------------------------------------------------------------
@command
def _scenarios(sub: Any) -> None:
    from harness.runner.settings import OPTIONS_BY_NAME

    profiles = OPTIONS_BY_NAME["profile"].pytest_choices  # the same choices as `run --profile`
    p = sub.add_parser("scenarios", help="check and show scenario files without running them")
    group = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = group.add_parser(
        "validate", help="validate scenario files (exit 0 if all are valid, 2 if not)"
    )
    v.add_argument("files", nargs="+", metavar="FILE", help="scenario YAML files")
    v.add_argument(
        "--profile",
        choices=profiles,
        help="also apply this profile (every profile is always checked)",
    )
    v.add_argument(
        "--strict",
        action="store_true",
        help="a warning (a mix drawing users the target does not know) is an error (exit 2)",
    )
    v.set_defaults(func=validate_files)
    s = group.add_parser("show", help="print a scenario as resolved, with its fault plan")
    s.add_argument("file", metavar="FILE", help="a scenario YAML file")
    s.add_argument("--profile", choices=profiles, help="apply this profile before printing")
    s.set_defaults(func=show_file)


def validate_files(args: argparse.Namespace) -> int:
    from harness.model.scenario import load_scenario
    from harness.runner.answers import scenario_warnings

    status = 0
    for path in args.files:
        try:
            scenario = load_scenario(path, profile=args.profile)
        except ScenarioError as exc:
            print(exc, file=sys.stderr)
            status = EXIT_USAGE
            continue
        warnings = scenario_warnings(scenario)
        for w in warnings:
            print(f"WARNING {w}", file=sys.stderr)
        if warnings and args.strict:
            print(f"{path}: --strict: {len(warnings)} warning(s) are errors", file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(f"OK {path}: {_summary(scenario)}")
    return status


def _summary(s: Any) -> str:
    plan = s.fault_plan()
    generated = len(plan) - len(s.faults)
    parts = [
        f"{len(s.load)} phase{'s' * (len(s.load) != 1)} ({s.load_duration_s:g} s)",
        f"{len(s.faults)} fault{'s' * (len(s.faults) != 1)}"
        + (f" + {generated} generated" if generated else ""),
        f"{len(s.slos)} SLO{'s' * (len(s.slos) != 1)}",
    ]
    if s.guards:
        parts.append(f"{len(s.guards)} guard{'s' * (len(s.guards) != 1)}")
    if s.profiles:
        parts.append("profiles " + ", ".join(s.profiles))
    if s.profile:
        parts.append(f"applied {s.profile}")
    return ", ".join(parts)


def show_file(args: argparse.Namespace) -> int:
    import yaml

    from harness.model.scenario import load_scenario

    try:
        scenario = load_scenario(args.file, profile=args.profile)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    doc = scenario.to_dict()
    doc["fault_plan"] = [dict(f.to_dict(), origin=f.origin) for f in scenario.fault_plan()]
    print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


# sut ----------------------------------------------------------------------------------------
@command
def _sut(sub: Any) -> None:
    sub.add_parser(
        "sut",
        add_help=False,
        help="the bundled recommender's own commands (train, up, down): recchaos sut --help",
    )


SUT_PROG_ENV = "RECCHAOS_SUT_PROG"  # read by system_under_test/__main__.py for its usage line


def run_sut(argv: list[str]) -> int:
    """Become ``python -m system_under_test ARGS`` (same interpreter, same PID): a signal to
    ``recchaos sut up`` reaches the launcher itself, which stops what it started; no wrapper
    process is left to die alone. Its exit code is ours."""
    env = {**os.environ, SUT_PROG_ENV: "recchaos sut"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "system_under_test", *argv], env)
    return 0  # not reached: execve replaces this process or raises


PASSTHROUGH["sut"] = run_sut


# run ----------------------------------------------------------------------------------------
@command
def _run(sub: Any) -> None:
    from harness.runner.settings import RUN_OPTIONS

    p = sub.add_parser(
        "run",
        help="run a chaos scenario and judge it (exit 0 PASS, 1 FAIL, "
        "3 INCONCLUSIVE, 2 usage error, 4 harness error, 130 interrupted by Ctrl-C)",
        description="Run a chaos scenario and judge it. Exit codes: 0 PASS, 1 FAIL, "
        "3 INCONCLUSIVE, 2 usage error, 4 harness error, 130 interrupted (Ctrl-C: faults "
        "healed, target stopped, partial record written). With --dry-run nothing is loaded or "
        "injected: 0 when every fault target exists, 2 naming what does not.",
    )
    p.add_argument("scenario", metavar="SCENARIO", help="scenario YAML file")
    for opt in RUN_OPTIONS:
        p.add_argument(
            opt.cli,
            dest=opt.name,
            type=opt.type,
            default=opt.default,
            choices=opt.pytest_choices or None,
            help=opt.help,
        )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no per-second progress lines"
    )
    p.add_argument("--load-workers", type=int, default=1, help="load worker processes (default 1)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="a warning about what the run can test (a mix drawing users the target does not "
        "know) is a usage error (exit 2) before any load",
    )
    p.add_argument(
        "--junit",
        metavar="FILE",
        help="also write JUnit XML (one test case, the recchaos.* properties the pytest plugin "
        "writes) to FILE",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve the scenario and profile, start the target without load or faults (or "
        "read --manifest), check that every fault target exists, print the fault plan and "
        "the load's totals, and exit 0 (or 2 naming what is missing)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        metavar="PATH",
        help="with --dry-run: check against the running target whose manifest this is "
        "(`recchaos sut up --manifest PATH`) instead of starting one",
    )
    p.set_defaults(func=run_scenario)


def run_scenario(args: argparse.Namespace) -> int:
    from harness.runner.run import run
    from harness.runner.settings import RUN_OPTIONS, RunSettings, check_dry_run

    settings = RunSettings(
        scenario_path=args.scenario,
        progress=args.progress,
        load_workers=args.load_workers,
        dry_run=args.dry_run,
        manifest=args.manifest,
        strict=args.strict,
        **{opt.name: getattr(args, opt.name) for opt in RUN_OPTIONS},
    )
    check_dry_run(settings)
    if settings.dry_run:
        from harness.runner.dryrun import dry_run

        return dry_run(settings, settings.manifest)
    outcome = run(settings)
    print(f"run record: {outcome.run_dir / 'run.json'}")
    if outcome.record is not None:
        add_to_history(outcome.run_dir)
    if args.junit and outcome.record is not None:
        from reports.junit import write_junit

        record, code = outcome.record.to_dict(), outcome.exit_code
        path = write_junit(args.junit, record, code, outcome.message, outcome.run_dir)
        print(f"junit: {path}")
    if outcome.exit_code != 0:
        print(f"{outcome.message}\nReproduce with: {outcome.replay}")
    return outcome.exit_code


def add_to_history(run_dir: Path, log: Callable[[str], object] = print) -> None:
    """Add a finished run to the history store (``$RECCHAOS_HISTORY``, else ``history.sqlite``
    beside the run directory). Here, in the adapter, because the runner never imports reports;
    a convenience, so never fatal: the run's verdict and exit code stand whatever happens."""
    from reports.history.store import append_run, default_db

    db = default_db(run_dir)
    try:
        run_id = append_run(run_dir, db)
    except Exception as exc:  # noqa: BLE001 - a corrupt or locked store must not fail the run
        log(f"history: run not added to {db}: {type(exc).__name__}: {exc}")
    else:
        log(f"history: run {run_id} in {db}")


# explore ------------------------------------------------------------------------------------
@command
def _explore(sub: Any) -> None:
    from harness.explore.settings import DEFAULT_BUDGET, DEFAULT_SHRINK_BUDGET
    from harness.explore.verdicts import DEFAULT_RERUNS
    from harness.runner.settings import DEFAULT_RUNS_DIR

    p = sub.add_parser(
        "explore",
        help="search fault schedules for one that breaks the scenario's SLOs, and shrink it "
        "(exit 0 none found, 1 found, 3 INCONCLUSIVE, 2 usage error, 4 harness error)",
        description="Let Hypothesis draw fault schedules within the scenario's explore: limits, "
        "run each for real, and shrink a failing one to the minimal failing schedule "
        "(docs/explore.md). Exit codes: 0 no schedule failed, 1 a failing schedule was found "
        "(minimal.yaml), 3 INCONCLUSIVE, 2 usage error, 4 harness error, 130 interrupted.",
    )
    p.add_argument("scenario", metavar="SCENARIO", help="scenario YAML file (with SLOs)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget",
        type=int,
        metavar="N",
        help=f"schedules to try while searching (default {DEFAULT_BUDGET})",
    )
    budget.add_argument(
        "--time-budget",
        dest="time_budget",
        type=float,
        metavar="S",
        help="instead of --budget: start no run after S seconds (shrinking included)",
    )
    p.add_argument(
        "--seed", type=int, help="seed of the draws and the request mix (default: the scenario's)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_RUNS_DIR,
        help="runs directory: the exploration's directory and the example database "
        "(explore-db) go there (default: ./runs)",
    )
    p.add_argument(
        "--database",
        type=Path,
        metavar="DIR",
        help="the example database: failing schedules saved there are replayed first next time "
        "(default: OUT/explore-db)",
    )
    p.add_argument("--profile", help="scenario profile to apply (default: none)")
    p.add_argument(
        "--shrink-budget",
        type=int,
        default=DEFAULT_SHRINK_BUDGET,
        metavar="N",
        help=f"runs allowed while shrinking a failure (default {DEFAULT_SHRINK_BUDGET})",
    )
    p.add_argument(
        "--reruns",
        type=int,
        default=DEFAULT_RERUNS,
        metavar="N",
        help="re-runs that must reproduce a FAIL without a confident interval, and the "
        f"first failing schedule's FAIL (default {DEFAULT_RERUNS})",
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no line per example"
    )
    p.set_defaults(func=explore_scenario)


def explore_scenario(args: argparse.Namespace) -> int:
    from harness.explore.run import explore
    from harness.explore.settings import ExploreSettings
    from harness.runner.settings import OPTIONS_BY_NAME

    seed = args.seed
    if seed is not None:
        seed = OPTIONS_BY_NAME["seed"].parse(seed, "the command line (--seed)")
    settings = ExploreSettings(
        scenario_path=args.scenario,
        out_dir=args.out,
        seed=seed,
        profile=args.profile,
        budget=args.budget,
        time_budget_s=args.time_budget,
        shrink_budget=args.shrink_budget,
        reruns=args.reruns,
        database=args.database,
        progress=args.progress,
    )
    outcome = explore(settings)
    for line in outcome.lines:
        print(line)
    return outcome.exit_code


# report, compare, trend, history (reports/: reads saved run records only) ---------------------
@command
def _reports(sub: Any) -> None:
    from reports.commands import add_parsers

    add_parsers(sub)


# entry point --------------------------------------------------------------------------------
def version() -> str:
    """The installed distribution's version (pyproject.toml's), or why there is none."""
    from importlib import metadata

    try:
        return metadata.version("recchaos")
    except metadata.PackageNotFoundError:
        return "(not installed: pip install -e . gives it a version)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recchaos",
        description="Fault-injection and latency chaos test harness.",
        epilog="exit codes: 0 PASS/OK, 1 FAIL, 2 usage error, 3 INCONCLUSIVE, 4 harness error, "
        "130 interrupted (Ctrl-C)",
    )
    parser.add_argument(
        "--version", action="version", version=f"recchaos {version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in PASSTHROUGH:
        return PASSTHROUGH[args_list[0]](args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits 2 on a usage error, 0 after --help
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except RecchaosError as exc:
        print(f"recchaos: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("recchaos: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
