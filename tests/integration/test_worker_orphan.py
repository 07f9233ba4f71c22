"""A load worker whose starter died before the load began does not send its schedule orphaned.

Real processes: a parent starts a Locust master that waits for two workers and one worker, and
is SIGKILLed while that worker waits for the start (its progress loop, which watches for a dead
parent, has not begun). The test then starts the second worker, so the master starts both; the
first, re-parented by now, must stop within a few seconds instead of sending its 30 s schedule.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.load import LoadJob
from harness.model.load import LoadPhase, RequestMix
from harness.model.target import RequestTemplate
from harness.process import ManagedProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
SCHEDULE_S = 30.0
PARENT = """
import os, subprocess, sys, time
out, master_args, worker_args = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def start(name, args):
    log = open(os.path.join(out, name + ".log"), "w")
    return subprocess.Popen([sys.executable, "-m", "harness.load.worker", *args], stdout=log,
                            stderr=log, start_new_session=True)
master, worker = start("master", master_args), start("worker-0", worker_args)
print(master.pid, worker.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _progress_lines(log: Path) -> int:
    return sum('"event":"progress"' in line for line in log.read_text().splitlines())


def test_a_worker_orphaned_before_the_start_stops_once_started(stub_url: str, tmp_path: Path):
    request = RequestTemplate("GET", "/x", None, ())
    mix = RequestMix(zipf_exponent=1.1, users=100, k=10)
    job = LoadJob(target=stub_url, phases=(LoadPhase("steady", 20, SCHEDULE_S, mix),), seed=3,
                  output_dir=str(tmp_path / "out"), request=request, priority="normal")  # fmt: skip
    master = f"127.0.0.1:{free_port()}"
    master_args = [str(job.for_worker(0, 2).write(tmp_path / "job-master.json")),
                   "--locust-master-bind", master, "--expect-workers", "2"]  # fmt: skip
    worker_args = [str(job.for_worker(0, 2).write(tmp_path / "job-0.json")),
                   "--locust-master", master]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), " ".join(master_args), " ".join(worker_args)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    master_pid, orphan = (int(x) for x in parent.stdout.readline().split())
    second = None
    try:
        deadline = time.monotonic() + 30  # the worker has joined: the master acknowledged it
        while '"event":"ready"' not in (tmp_path / "worker-0.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "worker-0.log").read_text()
            time.sleep(0.1)
        parent.kill()
        parent.wait(timeout=10)
        second = ManagedProcess(
            [sys.executable, "-m", "harness.load.worker", *worker_args],
            tmp_path / "worker-1.log", name="worker-1", cwd=REPO, env=env,
        ).start()  # fmt: skip
        deadline = time.monotonic() + SCHEDULE_S / 2
        while _alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.2)
        log = (tmp_path / "worker-0.log").read_text()
        assert not _alive(orphan), (
            f"the orphaned worker still sends after {SCHEDULE_S / 2} s:\n{log}"
        )
        assert _progress_lines(tmp_path / "worker-0.log") < SCHEDULE_S / 2, log
    finally:
        for pid in (orphan, master_pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if second is not None:
            second.stop(grace_s=2.0)
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)


def test_a_worker_waiting_for_its_start_line_stops_at_once_on_sigterm(
    stub_url: str, tmp_path: Path
):
    request = RequestTemplate("GET", "/x", None, ())
    mix = RequestMix(zipf_exponent=1.1, users=100, k=10)
    job = LoadJob(target=stub_url, phases=(LoadPhase("steady", 20, SCHEDULE_S, mix),), seed=3,
                  output_dir=str(tmp_path / "out"), request=request, priority="normal")  # fmt: skip
    path = job.for_worker(0, 1).write(tmp_path / "job-0.json")
    argv = [sys.executable, "-m", "harness.load.worker", str(path), "--go-stdin"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "worker.log"
    with ManagedProcess(argv, log, name="worker", cwd=REPO, env=env, pipes=True) as proc:
        assert proc.popen is not None and proc.popen.stdout is not None
        line = proc.popen.stdout.readline()
        assert b'"event":"ready"' in line, (line, proc.tail_text(20))
        signalled = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        code = proc.popen.wait(timeout=30)
        took = time.monotonic() - signalled
    assert took < 5.0, f"the worker took {took:.1f} s to stop (it waits up to 60 s for the line)"
    assert code == 1 and "stopped by signal 15 before the start" in log.read_text(), (code, took)
    summary = json.loads((tmp_path / "out" / "summary-0.json").read_text())
    assert summary["sent"] == 0 and summary["partial"], summary
    assert "stopped by signal 15 before the start" in summary["error"], summary
