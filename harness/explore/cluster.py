"""Where an exploration's examples run: one recommender reused across them, restored between.

:class:`SharedClusterRunner` starts the bundled recommender (local processes) once and runs
every example against it through :func:`harness.runner.run.run_against`: each run has its own
run directory, journal and watchdog and heals what it injected. After each run it checks that
the cluster is back in its steady state (:func:`restore_problem`): no error recorded by the run
(a heal that failed), every component's process running (not gone, not stopped), no fault left
on the fault proxy, and 20 answers in a row at tier primary. When that fails the run's example
is INCONCLUSIVE (:mod:`harness.explore.verdicts`) and the cluster is stopped; the next example
starts a fresh one, so no example inherits a cluster in an unknown state.

Under pytest, :class:`PooledClusterRunner` borrows the session's cluster (the one the scenario
items of the same target share, :class:`harness.runner.session.ClusterPool`) instead of starting
one more: the same checks between examples, and at the end the pool's own rule (kept only after
a clean PASS).

A target that cannot be shared (a generic target, the docker backend, extra arguments) runs each
example on a target of its own instead (:class:`FreshTargetRunner`), as ``recchaos run`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from harness.explore.verdicts import RunResult
from harness.model.errors import HarnessError, SutFailure
from harness.model.scenario import Scenario
from harness.process import ProcessRef, StartError
from harness.runner.run import OwnTarget, RunOutcome, execute, run_against, steady_state
from harness.runner.session import ClusterPool, shared_recommender
from harness.runner.settings import RunSettings
from harness.sut.recommender import RecommenderOptions
from harness.sut.target import Target

RESTORE_TIMEOUT_S = 30.0  # a restarted primary's breaker must close again: half-open probes
STOPPED_STATES = {"stopped": "stopped", "tracing-stop": "stopped by a tracer", "dead": "dead"}


def result_of(outcome: RunOutcome, seconds: float, not_restored: str | None) -> RunResult:
    record = outcome.record
    return RunResult(
        outcome.verdict,
        tuple(record.checks) if record is not None else (),
        outcome.run_dir,
        outcome.message,
        seconds,
        not_restored,
    )


class SharedClusterRunner:
    """Examples on one bundled recommender, checked and, when needed, replaced between runs."""

    def __init__(self, options: RecommenderOptions, workdir: Path, log: Any = print) -> None:
        self.options = options
        self.workdir = workdir
        self.log = log
        self.starts = 0
        self._target: Target | None = None
        self._cm: AbstractContextManager[Target] | None = None

    def _up(self) -> Target:
        if self._target is None:
            self.starts += 1
            where = self.workdir / f"cluster-{self.starts}"
            self._cm = shared_recommender(self.options, where, self.log)
            try:
                self._target = self._cm.__enter__()
            except StartError as exc:
                self._cm = None
                raise HarnessError(f"the recommender did not start in {where}: {exc}") from exc
        return self._target

    def run(self, scenario: Scenario, settings: RunSettings) -> RunResult:
        return run_restored(self._up(), scenario, settings, self.log, self.close)

    def close(self) -> None:
        cm, self._cm, self._target = self._cm, None, None
        if cm is not None:
            cm.__exit__(None, None, None)


def run_restored(
    target: Target,
    scenario: Scenario,
    settings: RunSettings,
    log: Any,
    drop: Callable[[], None],
    seen: list[RunOutcome] | None = None,
) -> RunResult:
    """One example on a shared ``target``, then its steady state checked; ``drop()`` stops the
    cluster when it is not restored (the next example gets a fresh one)."""
    started = time.monotonic()
    outcome = run_against(target, scenario, settings, log=log)
    if seen is not None:
        seen[:] = [outcome]
    if outcome.interrupted:
        raise KeyboardInterrupt(outcome.message)
    problem = restore_problem(target, scenario, outcome)
    if problem is not None:
        log(f"steady state not restored ({problem}); starting a fresh cluster")
        drop()
    return result_of(outcome, time.monotonic() - started, problem)


class PooledClusterRunner:
    """Examples on the cluster a pytest session's pool shares for ``options``."""

    def __init__(self, pool: ClusterPool, options: RecommenderOptions, log: Any = print) -> None:
        self.pool = pool
        self.options = options
        self.log = log
        self._last: list[RunOutcome] = []

    def run(self, scenario: Scenario, settings: RunSettings) -> RunResult:
        try:
            target = self.pool.get(self.options, self.log)
        except StartError as exc:
            raise HarnessError(f"the shared recommender did not start: {exc}") from exc
        return run_restored(target, scenario, settings, self.log, self._drop, self._last)

    def _drop(self) -> None:
        self._last.clear()  # a dropped cluster is not the pool's to settle
        self.pool.discard(self.options)

    def close(self) -> None:
        """Leave the cluster to the pool only after a clean PASS, as the pool does after an
        item (a failing example's cluster passed the restore check, but the items that come
        next were promised the stricter rule)."""
        if self._last:
            self.pool.settle(self.options, self._last[0])


class FreshTargetRunner:
    """Every example on a target of its own, started and stopped by its run."""

    def __init__(self, log: Any = print) -> None:
        self.log = log

    def run(self, scenario: Scenario, settings: RunSettings) -> RunResult:
        started = time.monotonic()
        outcome = execute(settings, scenario, OwnTarget(), self.log)
        if outcome.interrupted:
            raise KeyboardInterrupt(outcome.message)
        return result_of(outcome, time.monotonic() - started, None)

    def close(self) -> None:
        pass


def runner_for(scenario: Scenario, workdir: Path, log: Any = print) -> Any:
    """A shared cluster for the bundled recommender on local processes, else fresh targets."""
    options = ClusterPool.options_for(scenario)
    if options is None:
        return FreshTargetRunner(log)
    return SharedClusterRunner(options, workdir, log)


def restore_problem(target: Target, scenario: Scenario, outcome: RunOutcome) -> str | None:
    """Why the cluster is not back in its steady state after ``outcome``'s run, or None."""
    record = outcome.record
    if record is not None and record.errors:
        return "the run recorded errors: " + "; ".join(record.errors)
    problem = process_problem(target) or proxy_problem(target)
    if problem is not None:
        return problem
    try:
        steady_state(target, scenario, timeout_s=RESTORE_TIMEOUT_S)
    except SutFailure as exc:
        return str(exc)
    return None


def process_problem(target: Target) -> str | None:
    """A component whose process is gone, stopped or a zombie (by its manifest PID), or a
    helper process of the cluster (the fault proxy, Redis) that is gone."""
    components = target.manifest().get("components", []) + target.extra_components()
    for comp in components:
        pid = int(comp.get("pid") or 0)
        ref = ProcessRef.of_pid(pid) if pid else None  # None for a zombie, too
        state = ref.state() if ref is not None else None
        if state is None:
            return f"{comp['name']} (PID {pid}) is not running"
        if state in STOPPED_STATES:
            return f"{comp['name']} (PID {pid}) is {STOPPED_STATES[state]}"
    for name, ref in target.extra_pids():
        if not ref.alive():
            return f"the {name} (PID {ref.pid}) is not running"
    return None


def _control_token(target: Target) -> str | None:
    """The run's control token, which the fault proxy's control API requires (from the token
    file the target's manifest names; None when it names none)."""
    from harness.auth import manifest_token_file, read_token_file

    path = manifest_token_file(target.manifest(), target.manifest_path)
    return read_token_file(path) if path is not None else None


def proxy_problem(target: Target) -> str | None:
    """A fault still active on the fault proxy."""
    if target.proxy_url is None:
        return None
    from harness.auth import TokenError
    from harness.proxy.client import ProxyClient, ProxyControlError

    try:
        routes = ProxyClient(target.proxy_url, token=_control_token(target)).routes()
    except (ProxyControlError, TokenError) as exc:
        return f"the fault proxy does not answer: {exc}"
    left = [f"{r['name']}: {len(r.get('faults') or [])}" for r in routes if r.get("faults")]
    return f"faults still active on the fault proxy ({', '.join(left)})" if left else None
