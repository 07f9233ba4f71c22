"""The kill and restart faults move their victim to the background before the SIGKILL
(``harness.inject.signals.into_background``): every thread SCHED_IDLE and, for a session leader
(each recommender process is one), its autogroup at nice 19. Checked on real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from harness.inject.signals import DYING_AUTOGROUP_NICE, into_background

THREADED = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"


def _spawn(new_session: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", THREADED], start_new_session=new_session)


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


def _threads(pid: int, want: int) -> list[int]:
    for _ in range(500):  # the second thread starts right after the interpreter: at most 5 s
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        if len(tids) >= want:
            return tids
        time.sleep(0.01)
    raise AssertionError(f"PID {pid} never had {want} threads")


def test_every_thread_goes_idle_and_a_session_leaders_autogroup_to_nice_19():
    proc = _spawn(new_session=True)
    try:
        tids = _threads(proc.pid, 2)
        note = into_background(proc.pid)
        assert note.startswith(f"{len(tids)} of {len(tids)} threads SCHED_IDLE"), note
        for tid in tids:
            assert os.sched_getscheduler(tid) == os.SCHED_IDLE
        group = Path(f"/proc/{proc.pid}/autogroup")
        if group.exists():  # kernels built without autogroups have no such file
            assert f"nice {DYING_AUTOGROUP_NICE}" in group.read_text()
            assert note.endswith(f"autogroup nice {DYING_AUTOGROUP_NICE}")
    finally:
        _stop(proc)


def test_a_process_that_leads_no_session_keeps_its_autogroup():
    """Its autogroup is its session's, shared with the harness: only the threads are moved."""
    proc = _spawn(new_session=False)
    try:
        _threads(proc.pid, 2)
        note = into_background(proc.pid)
        assert note.endswith("autogroup unchanged"), note
        assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
    finally:
        _stop(proc)


def test_a_process_already_gone_is_reported_not_raised():
    proc = _spawn(new_session=True)
    _stop(proc)
    assert into_background(proc.pid) == "gone"


def test_no_such_process():
    """PID 0 has no /proc entry: nothing to move."""
    assert into_background(0) == "gone"
