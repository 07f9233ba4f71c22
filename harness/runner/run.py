"""The run lifecycle, the one place that knows it: target up, steady state, load plus faults,
heal, settle, judge, write the record, tear down. Small phase functions, one per step.
The scenario's guards are watched during the load (:mod:`harness.runner.guards`): one that trips
halts the run, healing every fault at once and applying no more.

:func:`run` starts the scenario's own target and stops it again (``recchaos run``, a pytest
scenario item); :func:`run_against` runs the same phases against a target that is already up
and stays up (the pytest plugin's session ``recommender``). Both go through :func:`execute`.

Whatever happens (a failed start, a crash, Ctrl-C), every fault is healed, the target is stopped
and ``run.json`` is left behind: ``complete`` with a verdict, or ``incomplete`` with the reason.
A watchdog process, started before anything else, heals and tears down if this process dies
without getting to do that, and marks ``run.json`` ``killed``.

The runner only sequences: the verdict, the run's own problems included, is
:func:`harness.checks.evaluate`'s. Every side effect the phases sequence (watchdog, journal,
steady-state probe, fault plan, load, clock, sleep) is a field of :class:`Effects`, so a unit test
drives the whole lifecycle with fakes.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harness.checks.integrity import RunProblems
from harness.checks.run import Evaluation, evaluate
from harness.checks.verdict import Verdict
from harness.inject.base import FaultStack, InjectContext
from harness.inject.journal import Journal
from harness.load.answers import AnswerCheck
from harness.load.driver import LoadResult, run_load
from harness.load.spec import RECOMMENDER_REQUEST, LoadJob
from harness.metrics.capacity import Capacity, measure_capacity
from harness.metrics.windows import unobserved_recoveries
from harness.model.errors import (
    EXIT_HARNESS,
    EXIT_INTERRUPTED,
    HarnessError,
    SutFailure,
    UsageError,
)
from harness.model.load import with_surges
from harness.model.record import FaultEvent, Halt, RecordFile, RunRecord
from harness.model.requestlog import TIERS, error_code, succeeded
from harness.model.scenario import Scenario
from harness.model.target import GenericTarget, RecommenderTarget
from harness.process.stallprobe import ProbeReport, stall_probes
from harness.runner import provenance
from harness.runner.answers import AnswerSetup, prepare_answers, score_answers
from harness.runner.faults import FaultPlanRun
from harness.runner.guards import GuardWatch, halt
from harness.runner.hdrfiles import write_hdr_files
from harness.runner.progress import ProgressDisplay
from harness.runner.scrape import (
    METRICS_AFTER,
    METRICS_BEFORE,
    cross_check,
    metrics_urls,
    scrape_tiers,
)
from harness.runner.settings import RunSettings, resolve_scenario
from harness.runner.target import start_target, watched
from harness.sut.target import Target
from harness.watchdog import WatchdogHandle, start_watchdog

START_LEAD_S = 3.0  # load workers import locust and open connections before the common start
STEADY_REQUESTS = 20


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its directory, verdict (None when it did not complete), exit code,
    message and replay command; for a complete run also the scenario as run, the judged
    windows and checks, and the final record."""

    run_dir: Path
    verdict: Verdict | None
    exit_code: int
    message: str
    replay: str
    scenario: Scenario | None = None
    evaluation: Evaluation | None = None
    record: RunRecord | None = None

    @property
    def interrupted(self) -> bool:
        """The run was stopped by Ctrl-C (exit code 130): faults healed, target stopped."""
        return self.verdict is None and self.exit_code == EXIT_INTERRUPTED


class FaultPlan(Protocol):
    """What the lifecycle needs of a fault plan in execution
    (:class:`harness.runner.faults.FaultPlanRun`)."""

    problems: list[str]

    def run(self, stop: threading.Event) -> None: ...

    def heal_all(self) -> list[str]: ...

    def timeline(self) -> tuple[FaultEvent, ...]: ...

    def active(self) -> list[str]: ...

    def halt(self) -> tuple[tuple[str, ...], int | None, list[str], tuple[str, ...]]: ...


def new_run_dir(root: Path, scenario: Scenario, kind: str = "") -> Path:
    """A new directory ``STAMP-[KIND-]NAME-sSEED`` under ``root`` (``-2``, ``-3``... if taken)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = root / f"{stamp}-{kind + '-' if kind else ''}{scenario.name}-s{scenario.seed}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def open_record(
    settings: RunSettings, scenario: Scenario, run_dir: Path, found: dict[str, Any]
) -> RecordFile:
    """``run.json`` opened as ``running``; ``found`` is where the run comes from (commit,
    versions, host: :func:`run_provenance`)."""
    replay = settings.replay or provenance.replay_command(
        settings.scenario_path,
        scenario.seed,
        settings.profile,
        settings.rate,
        settings.duration,
        settings.sla_ms,
        settings.backend,
    )
    record = RunRecord(
        scenario=scenario.to_dict(),
        seed=scenario.seed,
        scenario_path=settings.scenario_path,
        profile=settings.profile,
        replay=replay,
        started_wall=time.time(),
        **found,
    )
    return RecordFile(run_dir / "run.json", record)


def run_provenance() -> dict[str, Any]:
    """The commit, versions and host a run records."""
    return {
        "git_commit": provenance.git_commit(),
        "versions": provenance.versions(),
        "host": provenance.host(),
    }


def steady_state(
    target: Target,
    scenario: Scenario,
    timeout_s: float = 30.0,
    probe: Callable[[str, Scenario, int], tuple[int, str]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Before any fault: STEADY_REQUESTS answers in a row succeed inside the scenario's SLA
    (and at tier primary, for the recommender). "Steady" means serving in time, not merely
    answering: a cold cluster, or a component that has just come back, answers its first
    requests late. Bounded by ``timeout_s``; ``probe`` sends one request (status, tier)."""
    probe = probe or _probe
    deadline = clock() + timeout_s
    streak, seen, user = 0, Counter[str](), 0
    while streak < STEADY_REQUESTS:
        if clock() > deadline:
            raise SutFailure(
                f"steady state not reached within {timeout_s:.0f} s before any fault: "
                f"{STEADY_REQUESTS} answers in a row within the {scenario.sla_ms:g} ms SLA"
                f"{'' if isinstance(scenario.target, GenericTarget) else ' at tier primary'} "
                f"were expected from {target.base_url}; saw {dict(seen)}"
            )
        sent = clock()
        status, tier = probe(target.base_url, scenario, user)
        took_ms = (clock() - sent) * 1000
        user += 1
        good = 200 <= status < 300 and (
            isinstance(scenario.target, GenericTarget) or tier == "primary"
        )
        late = good and took_ms > scenario.sla_ms
        seen[f"{status} {tier}".strip() + (" late" if late else "")] += 1
        streak = streak + 1 if good and not late else 0


def _probe(base_url: str, scenario: Scenario, user: int) -> tuple[int, str]:
    template = (
        scenario.target.request
        if isinstance(scenario.target, GenericTarget)
        else RECOMMENDER_REQUEST
    )
    path, body = template.render(
        user_id=user, k=10, request_id=f"steady-{user}", seed=scenario.seed
    )
    req = urllib.request.Request(
        base_url + path,
        method=template.method,
        data=body.encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=2.0) as resp:
            return resp.status, resp.headers.get("X-Recchaos-Tier", "")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        raise SutFailure(f"steady state not reached: {base_url}{path} unreachable: {exc}") from None


def build_job(
    scenario: Scenario,
    target: Target,
    run_dir: Path,
    now_ns: int,
    answers: AnswerCheck | None = None,
) -> LoadJob:
    """The load job; it starts START_LEAD_S after ``now_ns`` (CLOCK_MONOTONIC)."""
    request = (
        scenario.target.request
        if isinstance(scenario.target, GenericTarget)
        else RECOMMENDER_REQUEST
    )
    return LoadJob(
        target=target.base_url,
        phases=scenario.load,
        seed=scenario.seed,
        output_dir=str(run_dir / "load"),
        request=request,
        start_mono_ns=now_ns + int(START_LEAD_S * 1e9),
        answers=answers,
    )


LoadFunction = Callable[
    [LoadJob, float, Callable[[dict[str, Any]], None], int, WatchdogHandle | None], LoadResult
]
"""``(job, timeout_s, on_progress, workers, watchdog) -> LoadResult``:
:func:`harness.load.driver.run_load`, its workers registered with the watchdog."""


def _run_load(
    job: LoadJob,
    timeout_s: float,
    on_progress: Callable[[dict[str, Any]], None],
    workers: int,
    watchdog: WatchdogHandle | None,
) -> LoadResult:
    return run_load(job, timeout_s, on_progress, workers=workers, registry=watchdog)


def load_with_faults(
    job: LoadJob,
    faults: FaultPlan,
    settings: RunSettings,
    display: ProgressDisplay,
    load_fn: LoadFunction = _run_load,
    guards: GuardWatch | None = None,
    on_halt: Callable[[Halt], None] = lambda halt: None,
    watchdog: WatchdogHandle | None = None,
) -> LoadResult:
    """Load in a background thread, faults on this one; both bounded by the load's length.
    A guard that trips wakes this thread, which heals every fault at once (``on_halt``). The
    load workers are registered with ``watchdog``."""
    result: dict[str, Any] = {}
    timeout = START_LEAD_S + job.duration_s + 60.0
    stop = threading.Event()
    watch = guards or GuardWatch((), job.target, job.start_mono_ns or 0)
    watch.on_trip = lambda trip: stop.set()

    def progress(line: dict[str, Any]) -> None:
        watch.on_progress(line)
        display.on_progress(line)

    def load() -> None:
        try:
            result["load"] = load_fn(job, timeout, progress, settings.load_workers, watchdog)
        except BaseException as exc:  # re-raised on the main thread
            result["error"] = exc

    thread = threading.Thread(target=load, name="load", daemon=True)
    thread.start()
    watch.start()
    halted = False
    try:
        faults.run(stop)
        halted = _halt_if_tripped(watch, faults, on_halt, halted)
        thread.join(timeout)
        _halt_if_tripped(watch, faults, on_halt, halted)  # a trip after the last fault action
    finally:
        stop.set()
        watch.stop()
    if thread.is_alive():
        raise HarnessError(f"the load driver did not return within {timeout:.0f} s")
    if "error" in result:
        raise result["error"]
    return result["load"]


def _halt_if_tripped(
    watch: GuardWatch, faults: FaultPlan, on_halt: Callable[[Halt], None], done: bool
) -> bool:
    if done or watch.trip is None:
        return done
    on_halt(halt(watch, faults))
    return True


def client_tiers(log: np.ndarray) -> Counter[str]:
    """Answers per tier as the client saw them; a bad answer was still served at its tier."""
    ok = log[succeeded(log) | (log["error_kind"] == error_code("bad_answer"))]
    codes, counts = np.unique(ok["tier"], return_counts=True)
    return Counter(
        {
            TIERS[c] if 0 <= c < len(TIERS) else "unknown": int(n)
            for c, n in zip(codes, counts, strict=True)
        }
    )


def judge(
    scenario: Scenario,
    result: LoadResult,
    faults: FaultPlan,
    record: RecordFile,
    cross: dict[str, Any],
    heal_errors: list[str],
    answers: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda _line: None,
    host: ProbeReport | None = None,
    capacity: Capacity | None = None,
) -> Evaluation:
    """The evaluation (:func:`harness.checks.evaluate`, the run's own problems included),
    written to ``run.json`` and ``details.json``; warnings about what the run could not observe
    go to ``log`` as well. ``host``: what the stall probes saw during the load (a check that
    failed only on requests in flight during a host stall is INCONCLUSIVE, not FAIL);
    ``capacity``: what the scenario's rate steps measured before the load."""
    timeline = with_surges(faults.timeline(), scenario.load)  # a surge is judged like a fault
    end_s = job_end_s(result)
    problems = RunProblems(
        faults=tuple(faults.problems),
        unaccounted=tuple(result.unaccounted()),
        heal_errors=tuple(heal_errors),
    )
    halt = record.record.halt
    origin = result.start_mono_ns
    stalls = host.relative_to(origin) if host is not None and host.trusted else ()
    ev = evaluate(
        scenario,
        result.log,
        timeline,
        end_s,
        problems=problems,
        halt=halt,
        stalls=stalls,
        capacity=capacity,
    )
    if host is not None:
        for note in host.notes:
            log(f"warning: host stalls not measured: {note}")
    unobserved = unobserved_recoveries(timeline, end_s, scenario.settle_s)
    for warning in unobserved:
        log(f"warning: {warning}")
    record.update(
        warnings=tuple(record.record.warnings) + unobserved,
        timeline=timeline,
        windows=tuple(w.to_dict() for w in ev.windows),
        checks=tuple(c.to_dict() for c in ev.checks),
        verdict=ev.verdict.value,
        load_end_s=end_s,
        origin_mono_ns=result.start_mono_ns,
        host_stalls=host.to_dict(origin) if host is not None else None,
    )
    _write_extra(record.path.parent, result, cross, faults, answers or {})
    write_hdr_files(record.path.parent, result.log, ev.windows, result.start_mono_ns)
    return ev


def job_end_s(result: LoadResult) -> float:
    intended = result.log["intended_ns"]
    return float(intended.max()) / 1e9 if intended.size else 0.0


def _write_extra(
    run_dir: Path,
    result: LoadResult,
    cross: dict[str, Any],
    faults: FaultPlan,
    answers: dict[str, Any],
) -> None:
    extra = {
        "generator": result.summary,
        "tier_cross_check": cross,
        "fault_problems": faults.problems,
        "unaccounted": result.unaccounted(),
        "load_errors": list(result.errors),
        "answers": answers,
    }
    (run_dir / "details.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")


# -- where the target comes from -------------------------------------------------------------


@dataclass(frozen=True)
class OwnTarget:
    """The run starts the scenario's target and stops it at its end (``recchaos run``);
    ``redis_address``: where the Redis it starts listens (``--redis-address``)."""

    redis_address: str | None = None

    def manifest(self, run_dir: Path) -> Path | None:
        return run_dir / "cluster" / "manifest.json"

    @contextmanager
    def up(
        self, scenario: Scenario, run_dir: Path, watchdog: WatchdogHandle, log
    ) -> Iterator[Target]:
        target = start_target(scenario, run_dir, watchdog, log, self.redis_address)
        with watched(target, watchdog):
            yield target


@dataclass
class SharedTarget:
    """A target started before the run and left running after it (the pytest session's
    recommender). Its own watchdog stops it; the run's watchdog only heals the run's faults."""

    target: Target

    def manifest(self, run_dir: Path) -> Path | None:
        return None

    @contextmanager
    def up(
        self, scenario: Scenario, run_dir: Path, watchdog: WatchdogHandle, log
    ) -> Iterator[Target]:
        check_shared(self.target, scenario)
        yield self.target


def check_shared(target: Target, scenario: Scenario) -> None:
    """A scenario run against a running recommender must describe that recommender."""
    options = target.options
    t = scenario.target
    if options is None or not isinstance(t, RecommenderTarget):
        raise UsageError(
            f"{scenario.source}: a run against a running target needs the bundled "
            "recommender target (kind: recommender)"
        )
    have = (options.shards, options.preset, options.redis)
    if (t.shards, t.preset, t.redis) != have:
        raise UsageError(
            f"{scenario.source}: target shards={t.shards} preset={t.preset} "
            f"redis={t.redis} does not match the running recommender (shards="
            f"{have[0]} preset={have[1]} redis={have[2]})"
        )


# -- the whole run ----------------------------------------------------------------------------


def run(settings: RunSettings, log=print) -> RunOutcome:
    """One whole run. Usage errors (bad scenario, bad options) raise before anything starts."""
    return execute(settings, resolve_scenario(settings), OwnTarget(settings.redis_address), log)


def run_against(target: Target, scenario: Scenario, settings: RunSettings, log=print) -> RunOutcome:
    """The run's phases against ``target``, which is already up and is left up."""
    return execute(settings, scenario, SharedTarget(target), log)


def execute(
    settings: RunSettings,
    scenario: Scenario,
    where: OwnTarget | SharedTarget,
    log=print,
    effects: Effects | None = None,
) -> RunOutcome:
    """Watchdog, record, target, phases; every ending (verdict, error, Ctrl-C) leaves
    ``run.json``, and a death of this process leaves it to the watchdog (``killed``).
    ``effects``: the side effects to sequence (default: the real ones)."""
    fx = effects or Effects()
    run_dir = new_run_dir(settings.out_dir, scenario)
    journal = fx.journal(run_dir / "faults.journal", run_dir.name)
    with ExitStack() as stack:
        stack.callback(journal.close)
        # The watchdog comes first, so no run record ever exists unwatched (a death at any
        # moment, start-up included, is covered), and is the last told that the run ended
        # normally: only once run.json says how it ended.
        watchdog = stack.enter_context(
            fx.watchdog(
                journal.path,
                where.manifest(run_dir),
                run_dir / "watchdog.log",
                run_dir / "run.json",
            )
        )
        record = open_record(settings, scenario, run_dir, fx.provenance())
        log(f"run {run_dir} (seed {scenario.seed}); replay with: {record.record.replay}")
        phases = Phases(settings, scenario, run_dir, record, journal, watchdog, fx)
        return _ending(phases, where, ProgressDisplay(enabled=settings.progress, log=log))


@dataclass(frozen=True)
class Phases:
    """One run's fixed parts: what it runs, where it writes, who watches, which effects."""

    settings: RunSettings
    scenario: Scenario
    run_dir: Path
    record: RecordFile
    journal: Journal
    watchdog: WatchdogHandle
    fx: Effects


def _ending(p: Phases, where: OwnTarget | SharedTarget, display: ProgressDisplay) -> RunOutcome:
    """The run's outcome, and ``run.json`` closed with it: ``complete``, or ``incomplete``
    with the reason (an error, Ctrl-C)."""
    record, replay = p.record, p.record.record.replay
    try:
        with where.up(p.scenario, p.run_dir, p.watchdog, display.log) as target:
            ev = run_phases(
                p.settings,
                p.scenario,
                target,
                p.run_dir,
                record,
                display,
                p.journal,
                p.fx,
                p.watchdog,
            )
    except KeyboardInterrupt:
        record.add_error("interrupted (Ctrl-C): faults healed, target stopped")
        record.finish("incomplete", ended_wall=time.time())
        message = "interrupted; partial record written"
        return RunOutcome(
            p.run_dir, None, EXIT_INTERRUPTED, message, replay, p.scenario, record=record.record
        )
    except Exception as exc:
        code = getattr(exc, "exit_code", EXIT_HARNESS)
        record.add_error(f"{type(exc).__name__}: {exc}")
        record.finish("incomplete", ended_wall=time.time())
        message = f"{type(exc).__name__}: {exc}"
        return RunOutcome(p.run_dir, None, code, message, replay, p.scenario, record=record.record)
    record.finish("complete", ended_wall=time.time())
    return RunOutcome(
        p.run_dir,
        ev.verdict,
        ev.verdict.exit_code,
        f"verdict {ev.verdict.value}",
        replay,
        p.scenario,
        ev,
        record.record,
    )


def run_phases(
    settings: RunSettings,
    scenario: Scenario,
    target: Target,
    run_dir: Path,
    record: RecordFile,
    display: ProgressDisplay,
    journal: Journal,
    effects: Effects | None = None,
    watchdog: WatchdogHandle | None = None,
) -> Evaluation:
    """Steady state, load plus faults, heal, settle, judge: against a target that is up. The
    load workers are registered with ``watchdog``."""
    fx = effects or Effects()
    fx.steady_state(target, scenario)
    setup = fx.answers(scenario, target, run_dir, settings.strict, display.log)
    if setup.warnings:
        record.update(warnings=setup.warnings)
    capacity = None
    if scenario.capacity is not None:
        capacity = capacity_steps(scenario, target, run_dir, settings, display, fx, watchdog)
        record.update(capacity=capacity.to_dict())
        fx.steady_state(target, scenario)  # serving inside the SLA again before the load
    scraped = metrics_urls(target.base_url, target.manifest())  # each gateway's own
    before = fx.scrape_tiers(scraped, run_dir / METRICS_BEFORE)
    job = build_job(scenario, target, run_dir, fx.monotonic_ns(), setup.check)
    faults = fx.fault_plan(scenario, target, run_dir, journal, job, display)
    record.update(
        origin_mono_ns=job.start_mono_ns or 0, files={"cluster": str(target.manifest_path.parent)}
    )
    guards = fx.guards(scenario, target.base_url, job.start_mono_ns or 0)
    with fx.stall_probes(run_dir / "host", watchdog) as host:
        result, heal_errors = load_and_heal(
            job, faults, settings, display, record, fx.load, guards, watchdog
        )
    fx.sleep(min(scenario.settle_s, 2.0))
    cross = cross_check(
        before,
        fx.scrape_tiers(scraped, run_dir / METRICS_AFTER),
        client_tiers(result.log),
        tolerance=max(5, len(result.log) // 100),
    )
    answers = answer_details(scenario, setup, result)
    ev = judge(
        scenario, result, faults, record, cross, heal_errors, answers, display.log, host, capacity
    )
    display.final(ev.verdict, record)
    return ev


def capacity_steps(
    scenario: Scenario,
    target: Target,
    run_dir: Path,
    settings: RunSettings,
    display: ProgressDisplay,
    fx: Effects,
    watchdog: WatchdogHandle | None,
) -> Capacity:
    """The scenario's rate steps against the target, lowest first, before its load: the
    capacity a floor on goodput can be a share of (:mod:`harness.metrics.capacity`). Its
    request log is in ``capacity/`` of the run directory."""
    spec = scenario.capacity
    assert spec is not None
    steps = replace(scenario, load=spec.phases(scenario.load[0].mix))
    job = replace(
        build_job(steps, target, run_dir, fx.monotonic_ns(), None),
        output_dir=str(run_dir / "capacity"),
    )
    rates = ", ".join(f"{r:g}" for r in spec.rates)
    display.log(
        f"measuring the capacity: {rates} requests/s, {spec.step_s:g} s each"
        f" ({spec.duration_s:g} s)"
    )
    result = fx.load(
        job,
        START_LEAD_S + spec.duration_s + 60.0,
        lambda line: None,
        settings.load_workers,
        watchdog,
    )
    capacity = measure_capacity(result.log, spec, scenario.sla_ms)
    display.log(capacity.describe())
    return capacity


def answer_details(scenario: Scenario, setup: AnswerSetup, result: LoadResult) -> dict[str, Any]:
    """Each answer's quality filled into the log; what ``details.json`` says about answers."""
    expected = score_answers(
        scenario, setup, result.log, result.answers, result.files.get("requests")
    )
    return {
        "checked": setup.check is not None,
        "format": setup.check.format if setup.check else None,
        "population": setup.population,
        "catalogue": setup.catalogue,
        "reference": str(setup.reference_path) if setup.reference_path else None,
        "reference_meta": setup.reference.meta if setup.reference is not None else None,
        "expected": expected,
        "warnings": list(setup.warnings),
    }


def plan_faults(
    scenario: Scenario,
    target: Target,
    run_dir: Path,
    journal: Journal,
    job: LoadJob,
    display: ProgressDisplay,
) -> FaultPlanRun:
    ctx = InjectContext.from_manifest(
        target.manifest_path,
        extra=_extra_components(target),
        proxy_url=target.proxy_url,
        restart=target.restart,
        seed=scenario.seed,
        run_id=run_dir.name,
        journal=journal,
    )
    faults = FaultPlanRun(
        scenario.fault_plan(),
        ctx,
        FaultStack(journal, origin_ns=job.start_mono_ns or 0),
        scenario.load_duration_s,
        log=display.note,
    )
    display.faults = faults
    return faults


def load_and_heal(
    job: LoadJob,
    faults: FaultPlan,
    settings: RunSettings,
    display: ProgressDisplay,
    record: RecordFile,
    load_fn: LoadFunction = _run_load,
    guards: GuardWatch | None = None,
    watchdog: WatchdogHandle | None = None,
) -> tuple[LoadResult, list[str]]:
    """The load with its faults (and guards); then every fault healed, whatever happened."""
    heal_errors: list[str] = []

    def on_halt(h: Halt) -> None:
        display.note(f"HALT: {h.message()}")
        record.update(halt=h, timeline=faults.timeline())

    try:
        result = load_with_faults(
            job, faults, settings, display, load_fn, guards, on_halt, watchdog
        )
    finally:
        heal_errors = faults.heal_all()
        for err in heal_errors:
            record.add_error(f"heal failed: {err}")
        record.update(timeline=faults.timeline())
    return result, heal_errors


def _extra_components(target: Target) -> list[Any]:
    from harness.inject.base import Component

    # Read afresh: a restart of Redis (a cold start) changes its PID, and a shared target
    # outlives the run that restarted it.
    return [Component.from_manifest(comp) for comp in target.extra_components()]


# -- the side effects a run sequences ---------------------------------------------------------


def watch_guards(scenario: Scenario, base_url: str, origin_ns: int) -> GuardWatch:
    """The scenario's guards, watched against the target at ``base_url`` from ``origin_ns``."""
    return GuardWatch(scenario.guards, base_url, origin_ns)


def _watchdog(journal: Path, manifest: Path | None, log_path: Path, record: Path) -> WatchdogHandle:
    return start_watchdog(journal, manifest, log_path=log_path, record=record)


@dataclass(frozen=True)
class Effects:
    """Every side effect the lifecycle sequences, one field each; the defaults are the real
    ones. The lifecycle's unit test passes fakes: no process, socket or sleep."""

    provenance: Callable[[], dict[str, Any]] = run_provenance
    journal: Callable[[Path, str], Journal] = Journal
    watchdog: Callable[[Path, Path | None, Path, Path], AbstractContextManager[Any]] = _watchdog
    steady_state: Callable[[Target, Scenario], None] = steady_state
    scrape_tiers: Callable[[tuple[str, ...], Path | None], Counter[str] | None] = scrape_tiers
    fault_plan: Callable[[Scenario, Target, Path, Journal, LoadJob, ProgressDisplay], FaultPlan] = (
        plan_faults
    )
    load: LoadFunction = _run_load
    guards: Callable[[Scenario, str, int], GuardWatch] = watch_guards
    answers: Callable[[Scenario, Target, Path, bool, Callable[[str], None]], AnswerSetup] = (
        prepare_answers
    )
    monotonic_ns: Callable[[], int] = time.monotonic_ns
    sleep: Callable[[float], None] = time.sleep
    stall_probes: Callable[[Path, WatchdogHandle | None], AbstractContextManager[ProbeReport]] = (
        stall_probes
    )
