"""Bring up a scenario's target and describe it to the rest of the run.

The bundled recommender is started through :class:`harness.sut.recommender.RecommenderCluster`
(fault proxy in front of every shard copy and the region, Redis when the scenario asks for it).
A generic target's components are started from their commands and the endpoint is polled until
it answers. Either way the result is a :class:`RunningTarget`: the base URL to load, a manifest
for the injectors and the watchdog, the PIDs the watchdog must also stop, and ``stop()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.model.scenario import Scenario
from harness.model.target import GenericTarget, RecommenderTarget
from harness.sut.procs import StartError, log_tail, wait_until
from harness.sut.recommender import RecommenderCluster, RecommenderOptions

if TYPE_CHECKING:
    from harness.sut.containers import DockerCluster


@dataclass
class RunningTarget:
    base_url: str
    manifest_path: Path
    extra_pids: list[int] = field(default_factory=list)
    proxy_url: str | None = None
    cluster: RecommenderCluster | DockerCluster | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    redis: dict[str, Any] | None = None

    def restart(self, name: str) -> int:
        if self.cluster is None:
            raise StartError(f"restarting {name!r} needs the bundled recommender target")
        return self.cluster.restart(name)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def start_target(scenario: Scenario, run_dir: Path, log=print) -> RunningTarget:
    if isinstance(scenario.target, RecommenderTarget):
        return _start_recommender(scenario.target, scenario, run_dir, log)
    assert isinstance(scenario.target, GenericTarget)
    return _start_generic(scenario.target, run_dir, log)


def _start_recommender(t: RecommenderTarget, s: Scenario, run_dir: Path, log) -> RunningTarget:
    options = RecommenderOptions(shards=t.shards, preset=t.preset, redis=t.redis, sla_ms=s.sla_ms)
    if t.backend == "docker":
        return start_docker_recommender(options, run_dir / "cluster", log)
    return start_recommender(options, run_dir / "cluster", log)


def start_docker_recommender(
    options: RecommenderOptions, workdir: Path, log=print, docker: Any = None
) -> RunningTarget:
    """The bundled recommender as containers (:mod:`harness.sut.containers`); ``docker`` is a
    ``DockerOptions`` (default: from ``RECCHAOS_DOCKER_*`` and ``DOCKER_HOST``)."""
    from harness.sut.containers import DockerCluster, DockerOptions

    workdir.mkdir(parents=True, exist_ok=True)
    docker = docker if docker is not None else DockerOptions.from_env()
    cluster = DockerCluster(options, docker, workdir, log=log).start()
    # Redis is a container named in the manifest; the watchdog finds every PID there.
    return RunningTarget(cluster.gateway_url, cluster.manifest_path, [], None, cluster)


def start_recommender(options: RecommenderOptions, workdir: Path, log=print) -> RunningTarget:
    """The bundled recommender started in ``workdir`` (its manifest and logs go there)."""
    cluster = RecommenderCluster(options, workdir, log=log).start()
    extra = [
        p
        for p in (
            cluster.proxy.pid if cluster.proxy else None,
            cluster.redis.pid if cluster.redis else None,
        )
        if p
    ]
    redis = cluster.component("redis") if cluster.redis else None
    return RunningTarget(
        cluster.gateway_url, cluster.manifest_path, extra, cluster.proxy_url, cluster, redis=redis
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return 200 <= resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _start_generic(t: GenericTarget, run_dir: Path, log) -> RunningTarget:
    logs = run_dir / "cluster" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    target = RunningTarget(t.endpoint.rstrip("/"), run_dir / "cluster" / "manifest.json")
    components: list[dict[str, Any]] = []
    try:
        for name, argv in t.components.items():
            log_path = logs / f"{name}.log"
            with open(log_path, "ab") as fh:
                proc = subprocess.Popen(
                    list(argv),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            target.procs.append(proc)
            components.append(
                {
                    "name": name,
                    "role": name,
                    "shard": None,
                    "pid": proc.pid,
                    "address": "",
                    "log": str(log_path),
                    "command": list(argv),
                }
            )
        url = target.base_url + (t.ready_path or "/")
        for proc, comp in zip(target.procs, components, strict=True):
            if proc.poll() is not None:
                raise StartError(
                    f"{comp['name']} exited with code {proc.returncode}:\n"
                    f"{log_tail(Path(str(comp['log'])))}"
                )
        wait_until(lambda: _http_ok(url), 60.0, f"generic target answering {url}")
    except BaseException:
        target.stop()
        raise
    target.manifest_path.write_text(
        json.dumps({"gateway_url": target.base_url, "components": components}, indent=2) + "\n"
    )
    log(f"generic target up: {target.base_url} ({len(components)} components)")
    return target


@contextmanager
def watched(target: RunningTarget, watchdog: Any) -> Iterator[RunningTarget]:
    """``target`` with its extra processes (proxy, Redis) given to ``watchdog``; stopped on the
    way out, whatever happens."""
    try:
        for pid in target.extra_pids:
            watchdog.add_pid(pid)
        yield target
    finally:
        target.stop()
