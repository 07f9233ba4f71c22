"""Recommenders started once and shared by many runs: a pytest session's clusters.

:func:`shared_recommender` starts a watchdog for the whole session (it stops the cluster if the
test process dies), then the cluster; runs against it go through
:func:`harness.runner.run.run_against`, each with its own run directory, fault journal and
watchdog for its faults. The cluster is always stopped on the way out.

:class:`ClusterPool` is the sharing policy for scenario items: one recommender per target
options, started when the first item needs it, discarded after a run that does not end in a
clean PASS, and stopped at the end of the session. :func:`run_scenario` runs one item through
it, or on a target of its own (``recchaos run``'s way) when it cannot share or there is no pool
(``--chaos-fresh-cluster``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.model.target import RecommenderTarget
from harness.runner.target import start_recommender, watched
from harness.sut.recommender import RecommenderOptions
from harness.sut.target import Target
from harness.watchdog import start_watchdog

if TYPE_CHECKING:
    from harness.model.scenario import Scenario
    from harness.runner.run import RunOutcome
    from harness.runner.settings import RunSettings


@contextmanager
def shared_recommender(options: RecommenderOptions, workdir: Path, log=print) -> Iterator[Target]:
    """The recommender up in ``workdir/cluster``; stopped (and the watchdog released) after."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster_dir = workdir / "cluster"
    with start_watchdog(
        workdir / "faults.journal", cluster_dir / "manifest.json", log_path=workdir / "watchdog.log"
    ) as watchdog:
        with watched(start_recommender(options, cluster_dir, log, watchdog), watchdog) as target:
            yield target


def session_workdir(out_dir: Path, what: str, number: int | None = None) -> Path:
    """``out_dir/<stamp>-<what>-<pid>[-<number>]``: a session cluster's directory beside the
    run directories (it holds the component logs each ``run.json`` points to)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    suffix = f"-{number}" if number is not None else ""
    return out_dir / f"{stamp}-{what}-{os.getpid()}{suffix}"


def ends_clean(outcome: RunOutcome) -> bool:
    """A PASS with no recorded error: the only ending after which a shared cluster is known to
    be as it was (every other may have left it changed)."""
    record = outcome.record
    return (
        outcome.verdict is not None
        and outcome.verdict.value == "PASS"
        and not (record is not None and record.errors)
    )


StartCluster = Callable[[RecommenderOptions, Path, Any], AbstractContextManager[Target]]


class ClusterPool:
    """The recommenders scenario items share: one per distinct target (shards, preset, Redis,
    SLA), started when the first item needs it, stopped when a run does not end in a clean
    PASS (so no item inherits a cluster in an unknown state) and at the end of the session.

    Sharing saves each item the cluster's start and stop (about 12 s of the ~30 s a pr scenario
    takes on 2 cores). Every run still checks the steady state (20 answers in a row at tier
    primary) before its load, heals what it injected, and has its own run directory, journal
    and watchdog; the session's watchdog stops a shared cluster if the test process dies. The
    component logs are in the shared cluster's directory, which ``run.json`` names.
    """

    def __init__(self, out_dir: Path, start: StartCluster = shared_recommender) -> None:
        self.out_dir = out_dir
        self._start = start
        self._up: dict[RecommenderOptions, tuple[Target, AbstractContextManager[Any]]] = {}
        self._started = 0

    @staticmethod
    def options_for(
        scenario: Scenario, redis_address: str | None = None
    ) -> RecommenderOptions | None:
        """The cluster options for a scenario that can share one; None when it cannot.
        ``redis_address``: where the Redis the cluster starts listens (``--redis-address``)."""
        t = scenario.target
        if not isinstance(t, RecommenderTarget) or t.backend != "process" or t.args:
            return None
        if not t.share:  # asks for a cluster of its own (caches as a fresh start leaves them)
            return None
        return RecommenderOptions(
            shards=t.shards,
            preset=t.preset,
            redis=t.redis,
            sla_ms=scenario.sla_ms,
            redis_address=redis_address,
            gateways=t.gateways,
            proxy=t.proxy,
        )

    def get(self, options: RecommenderOptions, log: Any) -> Target:
        """The cluster for ``options``, started now if none is up."""
        if options not in self._up:
            self._started += 1
            workdir = session_workdir(self.out_dir, "shared-cluster", self._started)
            log(f"starting a shared recommender in {workdir} (items of this target reuse it)")
            cm = self._start(options, workdir, log)
            target = cm.__enter__()
            self._up[options] = (target, cm)
        return self._up[options][0]

    def settle(self, options: RecommenderOptions, outcome: RunOutcome) -> None:
        """After a run on the cluster for ``options``: keep it only if the run ended clean."""
        if not ends_clean(outcome):
            self.discard(options)

    def discard(self, options: RecommenderOptions) -> None:
        entry = self._up.pop(options, None)
        if entry is not None:
            entry[1].__exit__(None, None, None)

    def close(self) -> None:
        for options in list(self._up):
            self.discard(options)


def run_scenario(settings: RunSettings, pool: ClusterPool | None, log=print) -> RunOutcome:
    """One scenario item: a scenario on the bundled recommender (local processes) runs against
    the cluster it shares with the other items of the same target; any other, or every one
    without a pool, starts and stops its own, as ``recchaos run`` does."""
    from harness.runner.run import run, run_against
    from harness.runner.settings import resolve_scenario

    if pool is None:
        return run(settings, log=log)
    scenario = resolve_scenario(settings)
    options = pool.options_for(scenario, settings.redis_address)
    if options is None:
        return run(settings, log=log)
    outcome = run_against(pool.get(options, log), scenario, settings, log=log)
    pool.settle(options, outcome)
    return outcome
