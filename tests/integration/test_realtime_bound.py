"""The harness's real-time instruments are bounded: one that stops blocking cannot hold a CPU.

Real processes, real SCHED_FIFO, the kernel's RLIMIT_RTTIME: a child enters real time through
:func:`harness.process.realtime.enter_realtime` with a short bound and then spins.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root (or CAP_SYS_NICE)")

SPIN_LIMIT_S = 10.0  # the child gives up spinning by itself after this: the test never hangs


def _run(body: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        from harness.process.realtime import enter_realtime, left_realtime
        refused = enter_realtime(soft_s=0.2, hard_s=0.6)
        assert refused is None, refused
        print("policy", os.sched_getscheduler(0), flush=True)
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_a_spinning_instrument_goes_back_to_normal_priority_and_goes_on() -> None:
    done = _run(
        f"""
        t0 = time.monotonic()
        while not left_realtime() and time.monotonic() - t0 < {SPIN_LIMIT_S}:
            pass
        print("left", bool(left_realtime()), "policy", os.sched_getscheduler(0), flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert f"policy {os.SCHED_FIFO}" in done.stdout
    assert f"left True policy {os.SCHED_OTHER}" in done.stdout, done.stdout
    assert "back to normal priority" in done.stderr


def test_one_whose_handler_cannot_run_is_killed_by_the_kernel() -> None:
    done = _run(
        f"""
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGXCPU}})
        t0 = time.monotonic()
        while time.monotonic() - t0 < {SPIN_LIMIT_S}:
            pass
        print("still alive", flush=True)
        """
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)
    assert "still alive" not in done.stdout


def test_a_blocking_instrument_keeps_real_time() -> None:
    # 2 s of 1 ms sleeps: ten times the soft bound of wall time, never near it without blocking
    done = _run(
        """
        for _ in range(2000):
            time.sleep(0.001)
        print("left", bool(left_realtime()), "policy", os.sched_getscheduler(0), flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert f"left False policy {os.SCHED_FIFO}" in done.stdout, done.stdout


def test_bad_bounds_are_refused_with_both_values() -> None:
    from harness.process.realtime import enter_realtime

    with pytest.raises(ValueError, match=r"soft=2.0 s, hard=1.0 s"):
        enter_realtime(soft_s=2.0, hard_s=1.0)


def test_a_process_that_survives_sigkill_is_reported_with_the_real_time_hogs() -> None:
    from harness.process.identity import stuck_report

    hog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from harness.process.realtime import enter_realtime\n"
            "assert enter_realtime(soft_s=2.0, hard_s=3.0) is None\n"
            "print('spinning', flush=True)\n"
            "t0 = time.monotonic()\n"
            "while time.monotonic() - t0 < 1.0:\n"
            "    pass\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline() == "spinning\n"
        report = stuck_report(os.getpid())
    finally:
        hog.wait(timeout=30)
    assert report.startswith("state R, SCHED_OTHER, last on CPU"), report
    assert f"PID {hog.pid} (" in report and "SCHED_FIFO 10" in report, report
