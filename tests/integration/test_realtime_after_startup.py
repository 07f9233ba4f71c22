"""The real-time instruments take real-time priority only once their start-up is done.

The load worker and the fault proxy run as SCHED_FIFO while they work, so that the recommender's
processes cannot delay a send or a forwarded chunk. Their start-up (imports, the engine, the
schedule, connections, a full collection) is a few hundred milliseconds of CPU; taken at
real-time priority it held a core from the recommender just before the load began. Real
processes: the worker's scheduling policy is read from ``/proc`` every few milliseconds until it
says ``ready``, and the proxy's once its control API answers.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.load import LoadJob
from harness.model.load import LoadPhase, RequestMix
from harness.model.target import RequestTemplate
from harness.process import ManagedProcess, free_port
from harness.proxy.client import start_proxy

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
SCHED_OTHER, SCHED_FIFO = 0, 1


def _policy(pid: int) -> int | None:
    """The scheduling policy in ``/proc/PID/stat`` (field 41), None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[38])


def _can_be_realtime() -> bool:
    """Whether this machine lets a process here become SCHED_FIFO (root, a real-time budget)."""
    import subprocess

    probe = (
        "from harness.process.realtime import enter_realtime;"
        "import sys; sys.exit(0 if enter_realtime() is None else 1)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", probe], env=env, timeout=30).returncode == 0


@pytest.fixture(scope="module", autouse=True)
def realtime_allowed() -> None:
    if not _can_be_realtime():
        pytest.skip("this machine refuses SCHED_FIFO here: nothing to check")


def test_the_load_worker_becomes_real_time_only_when_ready(stub_url: str, tmp_path: Path) -> None:
    request = RequestTemplate("GET", "/x", None, ())
    mix = RequestMix(zipf_exponent=1.1, users=100, k=10)
    job = LoadJob(target=stub_url, phases=(LoadPhase("steady", 20, 0.5, mix),), seed=3,
                  output_dir=str(tmp_path / "out"), request=request, priority="realtime")  # fmt: skip
    path = job.for_worker(0, 1).write(tmp_path / "job-0.json")
    argv = [sys.executable, "-m", "harness.load.worker", str(path), "--go-stdin"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with ManagedProcess(argv, tmp_path / "worker.log", name="worker", cwd=REPO, env=env,
                        pipes=True) as proc:  # fmt: skip
        assert proc.popen is not None and proc.popen.stdout and proc.popen.stdin
        pid = proc.popen.pid
        ready: list[dict] = []

        def read_ready() -> None:
            assert proc.popen is not None and proc.popen.stdout is not None
            for line in proc.popen.stdout:
                event = json.loads(line)
                if event.get("event") == "ready":
                    ready.append(event)
                    return

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        seen_before: set[int | None] = set()
        samples = 0
        deadline = time.monotonic() + 60
        while not ready and time.monotonic() < deadline:
            seen_before.add(_policy(pid))
            samples += 1
            time.sleep(0.002)
        assert ready, f"no 'ready' within 60 s; {proc.tail_text(20)}"
        assert samples > 50, f"only {samples} looks at the start-up: too fast to judge"
        assert seen_before <= {SCHED_OTHER}, (
            f"policies seen before 'ready': {sorted(p for p in seen_before if p is not None)} "
            f"({samples} looks); SCHED_FIFO is {SCHED_FIFO}"
        )
        assert ready[0]["priority"] == "realtime", ready[0]
        assert _policy(pid) == SCHED_FIFO
        proc.popen.stdin.write(json.dumps({"start_mono_ns": time.monotonic_ns()}).encode() + b"\n")
        proc.popen.stdin.flush()
        assert proc.popen.wait(timeout=30) == 0, proc.tail_text(30)


def test_the_fault_proxy_is_real_time_once_it_serves(tmp_path: Path) -> None:
    routes = {"r": ("127.0.0.1:0", f"127.0.0.1:{free_port()}")}
    with start_proxy(routes, tmp_path / "proxy.log", timeout_s=30) as handle:
        deadline = time.monotonic() + 5
        while _policy(handle.pid) != SCHED_FIFO and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _policy(handle.pid) == SCHED_FIFO, (tmp_path / "proxy.log").read_text()[-2000:]
