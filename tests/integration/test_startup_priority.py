"""A server's start-up runs under SCHED_IDLE and its serving at normal priority
(system_under_test/runtime.py): checked in a child process, which owns its scheduling policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from system_under_test import runtime

CHILD = r"""
import json, os, sys, threading
from system_under_test import runtime
group_before = runtime.autogroup_nice()
started = runtime.start_up_in_background(dict(os.environ))
during = os.sched_getscheduler(0)
group_during = runtime.autogroup_nice()
# A thread made during start-up inherits SCHED_IDLE: serving_priority must move it too.
ev, done = threading.Event(), threading.Event()
t = threading.Thread(target=lambda: (ev.set(), done.wait(10)))
t.start(); ev.wait(10)
tid = t.native_id
inherited = os.sched_getscheduler(tid)
ok = runtime.serving_priority()
after = [os.sched_getscheduler(int(x)) for x in os.listdir("/proc/self/task")]
group_warming = runtime.autogroup_nice()  # serving_priority gave the share back: the warm-up runs at it
share_ok = runtime.serving_share()  # idempotent once the share is back
group_after = runtime.autogroup_nice()
done.set(); t.join(10)
print(json.dumps({"started": started, "during": during, "inherited": inherited, "ok": ok,
                  "after": after, "group_before": group_before, "group_during": group_during, "group_warming": group_warming, "share_ok": share_ok,
                  "group_after": group_after}))
"""


def run_child(new_session: bool = True, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        start_new_session=new_session,  # like every component the launcher starts
    )
    return json.loads(out.stdout), out.stderr


@pytest.mark.skipif(not runtime.can_restore_priority(), reason="cannot leave SCHED_IDLE here")
def test_start_up_is_idle_and_serving_is_normal_for_every_thread():
    got, _ = run_child(RECCHAOS_STARTUP_PRIORITY="idle")
    assert got["started"] is True and got["during"] == os.SCHED_IDLE
    assert got["inherited"] == os.SCHED_IDLE
    assert got["ok"] is True and set(got["after"]) == {os.SCHED_OTHER}


def test_normal_start_up_priority_is_left_alone():
    got, _ = run_child(RECCHAOS_STARTUP_PRIORITY="normal")
    assert got["started"] is False and got["during"] == os.SCHED_OTHER
    assert set(got["after"]) == {os.SCHED_OTHER}


def test_a_bad_start_up_priority_is_named_and_ignored():
    got, err = run_child(RECCHAOS_STARTUP_PRIORITY="fast")
    assert got["started"] is False and got["during"] == os.SCHED_OTHER
    assert "RECCHAOS_STARTUP_PRIORITY='fast'" in err and "idle, normal" in err


def test_without_a_way_back_start_up_is_not_moved(monkeypatch):
    monkeypatch.setattr(runtime, "can_restore_priority", lambda: False)
    assert runtime.start_up_in_background({}) is False
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.skipif(not runtime.can_restore_priority(), reason="cannot leave SCHED_IDLE here")
@pytest.mark.skipif(runtime.autogroup_nice() is None, reason="no scheduler autogroups here")
def test_start_up_lowers_its_own_sessions_autogroup_and_the_warm_up_restores_it():
    # Each component leads its own session, so its own autogroup: SCHED_IDLE alone would still
    # compete with the serving sessions at full group weight.
    got, _ = run_child(new_session=True, RECCHAOS_STARTUP_PRIORITY="idle")
    assert got["group_before"] == 0
    assert got["group_during"] == runtime.STARTUP_AUTOGROUP_NICE
    # Back to the full share with the normal policy, before the warm-up: a warm-up under the
    # normal policy at the low share kept its core from counting as idle to waking servers.
    assert got["ok"] is True and got["group_warming"] == 0
    assert got["share_ok"] is True and got["group_after"] == 0


@pytest.mark.skipif(not runtime.can_restore_priority(), reason="cannot leave SCHED_IDLE here")
@pytest.mark.skipif(runtime.autogroup_nice() is None, reason="no scheduler autogroups here")
def test_a_server_inside_another_session_leaves_that_sessions_autogroup_alone():
    before = runtime.autogroup_nice()
    got, _ = run_child(new_session=False, RECCHAOS_STARTUP_PRIORITY="idle")
    assert got["group_during"] == before and got["group_after"] == before
    assert got["share_ok"] is True
    assert runtime.autogroup_nice() == before


def test_autogroup_lines_parse():
    assert runtime.parse_autogroup("/autogroup-12226 nice 19\n") == 19
    assert runtime.parse_autogroup("/autogroup-1 nice -3") == -3
    assert runtime.parse_autogroup("") is None
    assert runtime.parse_autogroup("/autogroup-1 nice x") is None


LEAVING = r"""
import atexit, json, logging, os, sys
from system_under_test import runtime
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
atexit.register(lambda: print("finalized", flush=True))  # skipped: no interpreter teardown
real_exit = os._exit
def seen_exit(code):
    tasks = os.listdir("/proc/self/task")
    print(json.dumps({"policies": [os.sched_getscheduler(int(t)) for t in tasks],
                      "group": runtime.autogroup_nice(), "code": code}), flush=True)
    real_exit(code)
os._exit = seen_exit
logging.getLogger("shard").info("stopped")
runtime.leave_quietly(3)
"""


def test_a_stopped_server_leaves_in_the_background_without_finalizing():
    # A shard's interpreter teardown took about 200 ms of CPU at full share after SIGTERM.
    out = subprocess.run(
        [sys.executable, "-c", LEAVING],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert out.returncode == 3, out.stderr
    assert "finalized" not in out.stdout
    assert "stopped" in out.stderr  # the log was flushed before the exit
    seen = json.loads(out.stdout)
    assert set(seen["policies"]) == {os.SCHED_IDLE}
    if runtime.autogroup_nice() is not None:
        assert seen["group"] == runtime.STARTUP_AUTOGROUP_NICE
