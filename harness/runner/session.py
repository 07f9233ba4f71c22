"""A recommender started once and shared by many runs: the pytest plugin's session cluster.

:func:`shared_recommender` starts a watchdog for the whole session (it stops the cluster if the
test process dies), then the cluster; runs against it go through
:func:`harness.runner.run.run_against`, each with its own run directory, fault journal and
watchdog for its faults. The cluster is always stopped on the way out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.runner.target import RunningTarget, start_recommender, watched
from harness.sut.recommender import RecommenderOptions
from harness.watchdog import start_watchdog


@contextmanager
def shared_recommender(
    options: RecommenderOptions, workdir: Path, log=print
) -> Iterator[RunningTarget]:
    """The recommender up in ``workdir/cluster``; stopped (and the watchdog released) after."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster_dir = workdir / "cluster"
    with start_watchdog(
        workdir / "faults.journal", cluster_dir / "manifest.json", log_path=workdir / "watchdog.log"
    ) as watchdog:
        with watched(start_recommender(options, cluster_dir, log), watchdog) as target:
            yield target
