"""Locust's distributed mode for the load worker: a master that starts N workers together.

Imported only by :mod:`harness.load.worker`, after locust (and its monkey-patching) is loaded.
The master (``--locust-master-bind [HOST:]PORT --expect-workers N``; HOST default 127.0.0.1, so
only this machine can join unless told otherwise) waits for N Locust workers, spawns
one user on each (which assigns worker indexes 0..N-1), then sends one ``recchaos_go`` message
with a common start time, and waits for every worker's ``recchaos_done``. It sends no requests;
its Locust statistics (and web UI, if someone attaches one) get the workers' request events.
A worker (``--locust-master HOST:PORT``) takes its index from the master's acknowledgement and
the worker count from its job, so the schedule is split exactly as in local mode.

The start time travels as wall-clock nanoseconds (``time.time_ns``) plus the master's monotonic
reading and host name: a worker on the same host uses the monotonic time directly, one on
another host converts the wall time to its own monotonic clock (clock sync is then the limit).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from harness.load.spec import LoadJob, host_port

ACK_TIMEOUT_S = 30.0
GO_LEAD_NS = 200_000_000  # the start is this far after the go message is sent


def _user_stub() -> type:
    """The master needs a user class of the same name as the workers' (it never runs it)."""
    from locust import User, task

    class OpenLoopUser(User):
        @task
        def open_loop(self) -> None:  # pragma: no cover - runs on workers only
            raise RuntimeError("the master does not send requests")

    return OpenLoopUser


def run_master(
    job: LoadJob,
    bind_port: int,
    expect_workers: int,
    emit: Callable[[dict[str, Any]], None],
    bind_host: str = "127.0.0.1",
) -> int:
    from locust.env import Environment

    if expect_workers != job.worker_count:
        emit(
            {
                "event": "error",
                "error": f"--expect-workers {expect_workers} differs from the "
                f"job's worker_count {job.worker_count}; set both to the same number",
            }
        )
        return 2
    env = Environment(user_classes=[_user_stub()], host=job.target)
    runner = env.create_master_runner(master_bind_host=bind_host, master_bind_port=bind_port)
    done: dict[int, int] = {}
    all_done = gevent.event.Event()

    def on_done(environment: Any, msg: Any, **_: Any) -> None:
        done[int(msg.data["worker"])] = int(msg.data["code"])
        if len(done) >= expect_workers:
            all_done.set()

    runner.register_message("recchaos_done", on_done)
    emit({"event": "ready", "role": "master", "host": bind_host, "port": bind_port})
    deadline = time.monotonic() + ACK_TIMEOUT_S
    while len(runner.clients.ready) < expect_workers:
        if time.monotonic() > deadline:
            emit(
                {
                    "event": "error",
                    "error": f"only {len(runner.clients.ready)} of "
                    f"{expect_workers} Locust workers connected within {ACK_TIMEOUT_S:.0f} s",
                }
            )
            runner.quit()
            return 1
        gevent.sleep(0.05)
    runner.start(expect_workers, spawn_rate=expect_workers)
    gevent.sleep(0.3)  # the spawn messages reach the workers
    start_mono = time.monotonic_ns() + GO_LEAD_NS
    start_wall = time.time_ns() + GO_LEAD_NS
    runner.send_message(
        "recchaos_go",
        {"start_mono_ns": start_mono, "start_wall_ns": start_wall, "host": socket.gethostname()},
    )
    emit({"event": "go", "start_mono_ns": start_mono})
    ok = all_done.wait(timeout=job.duration_s + job.timeout_s + 60)
    runner.quit()
    emit({"event": "done", "role": "master", "workers": done, "complete": bool(ok)})
    return 0 if ok and not any(done.values()) else 1


def attach_worker(
    env: Any, job: LoadJob, master: tuple[str, int], proc: Any
) -> tuple[Any, LoadJob]:
    """Connect to the master at ``(host, port)``; return the runner and the job with the
    assigned worker index."""
    host, port = master
    runner = env.create_worker_runner(host, port)

    def on_go(environment: Any, msg: Any, **_: Any) -> None:
        data = msg.data
        if data.get("host") == socket.gethostname():
            start = int(data["start_mono_ns"])
        else:
            start = int(data["start_wall_ns"]) - time.time_ns() + time.monotonic_ns()
        proc.start_ns = start
        proc.go.set()

    runner.register_message("recchaos_go", on_go)
    deadline = time.monotonic() + ACK_TIMEOUT_S
    while runner.worker_index < 0:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no acknowledgement from the Locust master at {host_port(host, port)} within "
                f"{ACK_TIMEOUT_S:.0f} s (is it running?)"
            )
        gevent.sleep(0.02)
    return runner, job.for_worker(runner.worker_index, job.worker_count)
