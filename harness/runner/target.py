"""Bring up a scenario's target: which backend of :mod:`harness.sut`, with which options.

The result is a :class:`harness.sut.target.Target` (the runner uses nothing else): the bundled
recommender as local processes (:class:`~harness.sut.recommender.RecommenderCluster`, a fault
proxy in front of every shard copy and the region, Redis when the scenario asks for it) or as
containers (:class:`~harness.sut.containers.DockerCluster`), or a generic target's commands
(:class:`~harness.sut.generic.GenericCluster`). Every backend is given the run's watchdog as
its registry, so each process or container is known to it from the moment it exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.model.errors import UsageError
from harness.model.scenario import Scenario
from harness.model.target import GenericTarget, RecommenderTarget
from harness.process import Registry
from harness.sut.generic import GenericCluster
from harness.sut.recommender import RecommenderCluster, RecommenderOptions
from harness.sut.target import Target


def start_target(
    scenario: Scenario,
    run_dir: Path,
    registry: Registry | None,
    log=print,
    redis_address: str | None = None,
) -> Target:
    """The scenario's target, started in ``run_dir/cluster``. ``redis_address``: where the
    Redis the harness starts listens (process backend only)."""
    workdir = run_dir / "cluster"
    t = scenario.target
    if isinstance(t, GenericTarget):
        return GenericCluster(t, workdir, log, registry).start()
    assert isinstance(t, RecommenderTarget)
    options = RecommenderOptions(
        shards=t.shards,
        preset=t.preset,
        redis=t.redis,
        sla_ms=scenario.sla_ms,
        redis_address=redis_address,
        gateways=t.gateways,
        up_args=t.args,
        proxy=t.proxy,
    )
    if t.backend == "docker":
        if t.args:
            raise UsageError(
                f"target.args {list(t.args)!r} go to `python -m system_under_test up`, which the"
                " process backend runs; the docker backend starts each component itself: drop"
                " args or use backend: process"
            )
        if redis_address is not None and t.redis:
            raise UsageError(
                f"--redis-address {redis_address!r} applies to the process backend; with "
                "--backend docker Redis is a container on the cluster's own network"
            )
        return start_docker_recommender(options, workdir, log, registry=registry)
    return start_recommender(options, workdir, log, registry)


def start_docker_recommender(
    options: RecommenderOptions,
    workdir: Path,
    log=print,
    docker: Any = None,
    registry: Any = None,
) -> Target:
    """The bundled recommender as containers (:mod:`harness.sut.containers`); ``docker`` is a
    ``DockerOptions`` (default: from ``RECCHAOS_DOCKER_*`` and ``DOCKER_HOST``)."""
    from harness.sut.containers import DockerCluster, DockerOptions

    workdir.mkdir(parents=True, exist_ok=True)
    docker = docker if docker is not None else DockerOptions.from_env()
    return DockerCluster(options, docker, workdir, log=log, registry=registry).start()


def start_recommender(
    options: RecommenderOptions, workdir: Path, log=print, registry: Registry | None = None
) -> RecommenderCluster:
    """The bundled recommender started in ``workdir`` (its manifest and logs go there)."""
    return RecommenderCluster(options, workdir, log=log, registry=registry).start()


@contextmanager
def watched(target: Target, watchdog: Any) -> Iterator[Target]:
    """``target`` with the processes it started beside its manifest (proxy, Redis) given to
    ``watchdog`` (again: registering twice is harmless); stopped on the way out, whatever
    happens."""
    try:
        for name, ref in target.extra_pids():
            watchdog.add_process(name, ref)
        yield target
    finally:
        target.stop()
