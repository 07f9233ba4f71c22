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
TICKS = os.sysconf("SC_CLK_TCK")
# CPU the worker may have used between becoming real-time and its ready line being read: that
# line (the kernel counts CPU in 10 ms ticks). Its start-up after the switch, when it switched
# first, was 30-50 ms here (40 ms with a pr scenario's job).
AFTER_SWITCH_S = 0.02


def _stat(pid: int) -> tuple[int, float] | None:
    """The scheduling policy (field 41) and the CPU seconds used (fields 14 and 15) in
    ``/proc/PID/stat``; None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[38]), (int(fields[11]) + int(fields[12])) / TICKS


def _policy(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[0]


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
        # The policy is read every 2 ms until the ready line is read. The switch comes just
        # before that line, so the last looks may already see SCHED_FIFO: what counts is how
        # much CPU the worker used after the switch, which its start-up would show.
        looks = 0
        first_fifo_cpu: float | None = None
        deadline = time.monotonic() + 60
        while not ready and time.monotonic() < deadline:
            stat = _stat(pid)
            looks += 1
            if stat is not None and stat[0] == SCHED_FIFO and first_fifo_cpu is None:
                first_fifo_cpu = stat[1]
            time.sleep(0.002)
        assert ready, f"no 'ready' within 60 s; {proc.tail_text(20)}"
        after = _stat(pid)
        assert after is not None and after[0] == SCHED_FIFO, after
        assert looks > 50, f"only {looks} looks at the start-up: too fast to judge"
        if first_fifo_cpu is not None:
            used = after[1] - first_fifo_cpu
            assert used <= AFTER_SWITCH_S, (
                f"the worker used {used:.2f} s of CPU as SCHED_FIFO before it said ready "
                f"(at most {AFTER_SWITCH_S} s: its start-up ran real-time)"
            )
        assert ready[0]["priority"] == "realtime", ready[0]
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
