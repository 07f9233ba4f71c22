"""Start the whole recommender for an integration test, with handles to break single components.

The processes and their command lines come from the launcher's own plan
(``launcher.plan_cluster``), so they are exactly what ``python -m system_under_test up`` starts.
Unlike ``up``, :func:`start_cluster` keeps every process handle (the recommender's own
:class:`~system_under_test.process.ManagedProcess`), so a test can SIGKILL, SIGSTOP/SIGCONT and
restart one component by name, and it always reaps everything it started (SIGCONT + SIGTERM,
then SIGKILL), even when start-up fails half-way. Failures carry the last log lines of every
component (:meth:`Cluster.diagnose`).

A later version may swap this for ``harness/sut`` or the launcher's ``up``/``down``; tests use only
``gateway_url``, ``kill``, ``freeze``, ``thaw``, ``restart``, ``diagnose`` and ``recommend``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from system_under_test import launcher
from system_under_test.process import ManagedProcess, log_tail

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    elapsed_s: float

    @property
    def tier(self) -> str:
        return str(self.body.get("tier", ""))


@dataclass
class Cluster:
    comps: dict[str, launcher.Component]
    log_dir: Path
    extra: list[ManagedProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # secrets every component gets

    @property
    def gateway_address(self) -> tuple[str, int]:
        host, port = self.comps["gateway"].address.rsplit(":", 1)
        return host, int(port)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.comps['gateway'].address}"

    # ---- faults

    def _proc(self, name: str) -> ManagedProcess:
        proc = self.comps[name].proc
        assert proc is not None, f"{name} was never started"
        return proc

    def kill(self, name: str) -> None:
        self._proc(name).stop(grace_s=0.0)  # SIGCONT + SIGKILL, reaped

    def freeze(self, name: str) -> None:
        self._proc(name).signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self._proc(name).signal(signal.SIGCONT)

    def restart(self, name: str, timeout_s: float = 60.0) -> None:
        """Start ``name`` again with its original command (same port) and wait until it answers."""
        self.kill(name)
        comp = self.comps[name]
        _spawn(comp, self.env)
        launcher.wait_ready([comp], timeout_s, log=lambda _: None)

    def alive(self, name: str) -> bool:
        return self._proc(name).alive()

    # ---- teardown and diagnostics

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """SIGCONT + SIGTERM to every process at once, SIGKILL after ``timeout_s``; reaped."""
        procs = [c.proc for c in reversed(list(self.comps.values())) if c.proc is not None]
        procs += self.extra
        for proc in procs:
            proc.signal(signal.SIGCONT)
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            proc.stop(grace_s=max(deadline - time.monotonic(), 0.1))

    def tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {name} ({c.log}):\n{log_tail(c.log, lines)}" for name, c in self.comps.items()
        )

    @contextlib.contextmanager
    def diagnose(self) -> Iterator[None]:
        """Re-raise any failure with every component's last log lines appended."""
        try:
            yield
        except Exception as exc:
            raise AssertionError(
                f"{exc}\n\nlast log lines of the cluster:\n{self.tails()}"
            ) from exc

    # ---- the client side

    def recommend(
        self, user_id: Any, k: Any = 10, timeout_s: float = 5.0, raw_body: bytes | None = None
    ) -> Reply:
        body = (
            raw_body if raw_body is not None else json.dumps({"user_id": user_id, "k": k}).encode()
        )
        return self.http("POST", "/v1/recommend", body, timeout_s)

    def http(
        self, method: str, path: str, body: bytes | None = None, timeout_s: float = 5.0
    ) -> Reply:
        host, port = self.gateway_address
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            start = time.perf_counter()
            conn.request(method, path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        parsed = (
            json.loads(data) if ctype.startswith("application/json") else {"text": data.decode()}
        )
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed, elapsed)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of one metric whose labels include ``labels``."""
        text = self.http("GET", "/metrics").body["text"]
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


def _spawn(comp: launcher.Component, extra_env: dict[str, str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra_env}
    comp.proc = ManagedProcess(comp.command, comp.log, name=comp.name, env=env, cwd=REPO).start()
    comp.pid = comp.proc.pid


def plan(
    shards: int, preset: str, log_dir: Path, redis_url: str | None = None, sla_ms: float = 20.0
) -> list[launcher.Component]:
    parser = argparse.ArgumentParser()
    launcher.add_up_arguments(parser)
    # One gateway, no balancer: these tests drive one gateway's own behaviour (fallback, HTTP
    # limits, overload) and break it directly; behind HAProxy a retry on the other gateway would
    # hide what they measure. The balancer's own tests start the default layout (test_launcher).
    argv = ["--shards", str(shards), "--preset", preset, "--sla-ms", str(sla_ms), "--gateways", "1"]
    if redis_url:
        argv += ["--redis", redis_url]
    return launcher.plan_cluster(parser.parse_args(argv), log_dir)


@contextlib.contextmanager
def start_cluster(
    log_dir: Path,
    shards: int = 2,
    preset: str = "tiny",
    redis_url: str | None = None,
    timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """Start shards (primary + replica each), region and gateway, each with ``env`` added to its
    environment (the control token, the Redis password); yield; always stop them."""
    comps = plan(shards, preset, log_dir, redis_url)
    cluster = Cluster({c.name: c for c in comps}, log_dir, env=dict(env or {}))
    try:
        for comp in comps[:-1]:
            _spawn(comp, cluster.env)
        launcher.wait_ready(comps[:-1], timeout_s, log=lambda _: None)
        _spawn(comps[-1], cluster.env)
        launcher.wait_ready(comps[-1:], timeout_s, log=lambda _: None)
        yield cluster
    finally:
        cluster.stop_all()
