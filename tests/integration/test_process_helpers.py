"""The two copies of the managed-process helper held to the same behaviour: the harness's
(``harness/process``) and the recommender's own (``system_under_test/process.py``, which never
imports the harness). Every scenario runs against both, with real child processes: the ready
wait, the timeout and early-exit messages with the log tail, TERM then KILL, SIGCONT before
TERM for a stopped process, reaping, a bounded ``wait``, and PID-reuse safety (a PID with
another start time is never signalled).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType

import psutil
import pytest

import harness.process as harness_process
import system_under_test.process as sut_process

pytestmark = pytest.mark.integration

PY = sys.executable


@pytest.fixture(params=[harness_process, sut_process], ids=["harness", "system_under_test"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


def python(code: str) -> list[str]:
    return [PY, "-u", "-c", code]


def reaped(pid: int) -> bool:
    """Not our child any more: waitpid has nothing for it (it was reaped)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_ready_wait_returns_once_ready_and_stop_reaps(impl, tmp_path):
    marker = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
    with impl.ManagedProcess(python(code), tmp_path / "log", name="sleeper") as proc:
        assert proc.wait_ready(marker.exists, 10.0, "the marker file") is proc
        pid = proc.pid
        assert proc.alive() and proc.ref.alive()
    assert proc.returncode == -signal.SIGTERM
    assert reaped(pid) and not proc.ref.alive()
    assert proc.stop() == -signal.SIGTERM  # idempotent


def test_a_timeout_names_what_and_shows_the_log_tail(impl, tmp_path):
    code = "import time\nfor i in range(30): print(f'line {i}')\ntime.sleep(60)"
    proc = impl.ManagedProcess(python(code), tmp_path / "log", name="slow").start()
    time.sleep(0.3)  # let it print; the wait below is what is tested
    with pytest.raises(impl.StartError) as err:
        proc.wait_ready(lambda: False, 0.5, "the never-ready thing")
    text = str(err.value)
    assert "the never-ready thing not within 0.5 s" in text and f"PID {proc.pid}" in text, text
    tail = [line.strip() for line in text.splitlines() if "| line" in line]
    assert tail == [f"| line {i}" for i in range(10, 30)], text  # the last 20 lines
    assert str(tmp_path / "log") in text
    assert proc.returncode is not None and reaped(proc.pid)  # stopped by the failed wait


def test_an_exit_before_ready_gives_the_code_and_the_log_tail(impl, tmp_path):
    code = "import sys; print('boom: no config'); sys.exit(3)"
    proc = impl.ManagedProcess(python(code), tmp_path / "log", name="crasher").start()
    with pytest.raises(impl.StartError) as err:
        proc.wait_ready(lambda: False, 10.0, "its port listening")
    text = str(err.value)
    assert "crasher exited with code 3 before its port listening" in text, text
    assert "| boom: no config" in text, text
    assert reaped(proc.pid)


def test_stop_sends_sigkill_after_the_grace_to_a_process_that_ignores_sigterm(impl, tmp_path):
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    log = tmp_path / "log"
    proc = impl.ManagedProcess(python(code), log, name="stubborn").start()
    proc.wait_ready(lambda: "ready" in log.read_text(), 10.0, "ready printed")
    started = time.monotonic()
    assert proc.stop(grace_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5
    assert reaped(proc.pid)


def test_a_stopped_process_is_continued_so_it_can_act_on_sigterm(impl, tmp_path):
    code = (
        "import signal, sys, time\n"
        "def term(*_): print('got SIGTERM', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\nprint('ready', flush=True)\ntime.sleep(60)"
    )
    log = tmp_path / "log"
    proc = impl.ManagedProcess(python(code), log, name="frozen").start()
    proc.wait_ready(lambda: "ready" in log.read_text(), 10.0, "ready printed")
    os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, "never stopped"
        time.sleep(0.01)
    assert proc.stop(grace_s=5.0) == 0  # its own handler ran: it was continued first
    assert "got SIGTERM" in log.read_text()


def test_wait_is_bounded_and_stops_what_does_not_finish(impl, tmp_path):
    proc = impl.ManagedProcess(python("import time; time.sleep(60)"), tmp_path / "log").start()
    with pytest.raises(impl.StartError, match=r"did not finish within 0\.3 s"):
        proc.wait(0.3)
    assert reaped(proc.pid)
    done = impl.ManagedProcess(python("raise SystemExit(7)"), tmp_path / "log2").start()
    assert done.wait(10.0) == 7


def test_a_pid_with_another_start_time_is_never_signalled(impl, tmp_path):
    with impl.ManagedProcess(python("import time; time.sleep(60)"), tmp_path / "log") as proc:
        real = impl.ProcessRef.of_pid(proc.pid)
        assert real == proc.ref and str(real) == f"{proc.pid}:{real.create_time!r}"
        assert impl.ProcessRef.parse(str(real)) == real
        reused = impl.ProcessRef(proc.pid, real.create_time - 60.0)  # "an earlier process"
        assert not reused.alive() and reused.state() is None and reused.cmdline() is None
        assert reused.signal(signal.SIGTERM) is False
        result = impl.stop_processes([("reused", reused)], grace_s=0.2)
        assert (result.stopped, result.killed, result.left) == ([], [], [])
        assert proc.alive()
        result = impl.stop_processes([("real", real)], grace_s=5.0)
        assert result.stopped == [f"real (PID {proc.pid})"] and result.left == []
        assert proc.poll() == -signal.SIGTERM  # a zombie until reaped here, then gone
    assert reaped(proc.pid)


def test_stop_processes_kills_what_ignores_sigterm(impl, tmp_path):
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    log = tmp_path / "log"
    with impl.ManagedProcess(python(code), log) as proc:
        proc.wait_ready(lambda: "ready" in log.read_text(), 10.0, "ready printed")
        ref = impl.ProcessRef.of_pid(proc.pid)
        result = impl.stop_processes([("stubborn", ref)], grace_s=0.3)
        assert result.killed == [f"stubborn (PID {proc.pid})"] and result.left == []
        assert proc.poll() == -signal.SIGKILL


def test_the_two_copies_log_tail_alike(impl, tmp_path):
    log = tmp_path / "log"
    log.write_text("".join(f"l{i}\n" for i in range(50)))
    assert impl.log_tail(log, 3) == "    | l47\n    | l48\n    | l49"
    assert impl.log_tail(tmp_path / "none").startswith(f"    | (no log at {tmp_path / 'none'}")
    Path(log).write_text("")
    assert impl.log_tail(log) == "    | (empty log)"


# A process whose main thread has exited while another thread still runs: psutil reports it a
# zombie, but its listening socket is open until the last thread ends.
ZOMBIE_LEADER = """
import ctypes, socket, sys, threading, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
release = sys.stdin
def hold():
    release.readline()  # until the test closes our stdin
threading.Thread(target=hold).start()
time.sleep(0.2)
ctypes.CDLL(None).pthread_exit(None)  # the main thread alone exits
"""


def test_a_zombie_leader_with_threads_left_is_alive_and_its_old_port_is_not_its_listening(impl):
    import subprocess

    proc = subprocess.Popen(python(ZOMBIE_LEADER), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())
        ref = impl.ProcessRef(proc.pid, psutil.Process(proc.pid).create_time())
        deadline = time.monotonic() + 10
        while ref.state() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ref.state() == psutil.STATUS_ZOMBIE  # what psutil says of it
        assert ref.alive()  # but a thread still runs, and the port still accepts
        assert harness_process.tcp_open("127.0.0.1", port)
        # A restart's readiness asks whether *this* process listens: a zombie leader does not
        # count, so the new process is waited for, not the old one's socket.
        assert not harness_process.listens(proc.pid, "127.0.0.1", port)
        proc.stdin.close()  # the last thread ends
        proc.wait(timeout=10)
        assert not ref.alive() and not harness_process.tcp_open("127.0.0.1", port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_listens_names_the_process_that_holds_the_port():
    import socket
    import subprocess

    code = "import socket,sys;s=socket.socket();s.bind(('127.0.0.1',0));s.listen(1);print(s.getsockname()[1],flush=True);sys.stdin.read()"
    proc = subprocess.Popen(python(code), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())
        assert harness_process.listens(proc.pid, "127.0.0.1", port)
        assert not harness_process.listens(os.getpid(), "127.0.0.1", port)
        assert not harness_process.listens(proc.pid, "127.0.0.1", port + 1 if port < 65535 else 1)
        with socket.socket() as other:  # a port of ours is not the child's
            other.bind(("127.0.0.1", 0))
            other.listen(1)
            assert not harness_process.listens(proc.pid, "127.0.0.1", other.getsockname()[1])
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
