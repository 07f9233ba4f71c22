"""Real-time priority for the harness's own instruments, with a bound on what it may take.

The load worker, the fault proxy and the test stubs run as ``SCHED_FIFO`` where permitted: on
a busy 2-core machine a normal-priority instrument waits in the run queue and adds that wait
to what it measures. All three are event-driven and block between events, so they take only
the CPU they need. A real-time task that stops blocking (a bug, an edge case nobody foresaw)
is another matter: it holds its CPU at 95% (the kernel's real-time throttling leaves the rest
to normal tasks), a second one holds the other CPU, and a real-time task at the same priority
started later never runs at all, not even to die of SIGKILL. That is a machine where every
test times out.

:func:`enter_realtime` therefore sets ``RLIMIT_RTTIME`` before it switches: the CPU time a
real-time thread may use without once blocking. At the soft limit the kernel sends SIGXCPU and
the handler installed here takes every thread of the process back to ``SCHED_OTHER`` and says
so on stderr (the process goes on, at normal priority, and :func:`left_realtime` tells what
happened); at the hard limit, for a process whose handler cannot run, the kernel kills it.
A healthy instrument blocks many times a second: the limits are far above any of its bursts.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time

RT_PRIORITY = 10
"""SCHED_FIFO 1-99: low among real-time tasks, above every normal one."""
RTTIME_SOFT_S = 1.0
"""CPU seconds a real-time thread may run without blocking before SIGXCPU moves it to normal."""
RTTIME_HARD_S = 3.0
"""... and before the kernel kills it, where the SIGXCPU handler could not run."""

_left: dict[str, float | str] = {}
_soft_s = RTTIME_SOFT_S


def enter_realtime(
    priority: int = RT_PRIORITY,
    *,
    soft_s: float = RTTIME_SOFT_S,
    hard_s: float = RTTIME_HARD_S,
) -> str | None:
    """Make this process ``SCHED_FIFO`` at ``priority`` with the run-away bound set first.

    Returns None when it is real-time now, else why not (the process stays as it was)."""
    if not hasattr(os, "SCHED_FIFO") or not hasattr(resource, "RLIMIT_RTTIME"):
        return "no SCHED_FIFO or RLIMIT_RTTIME on this platform"
    if not 0 < soft_s <= hard_s:
        raise ValueError(
            f"RLIMIT_RTTIME bounds soft={soft_s!r} s, hard={hard_s!r} s: need 0 < soft <= hard"
        )
    global _soft_s
    _soft_s = soft_s
    previous = signal.signal(signal.SIGXCPU, _leave_realtime)
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, (int(soft_s * 1e6), int(hard_s * 1e6)))
    except (OSError, ValueError) as exc:
        signal.signal(signal.SIGXCPU, previous)
        return f"RLIMIT_RTTIME refused ({exc}): staying at normal priority"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        signal.signal(signal.SIGXCPU, previous)
        return f"SCHED_FIFO refused ({exc})"
    return None


def left_realtime() -> dict[str, float | str]:
    """Empty while the process is as :func:`enter_realtime` left it; else when (monotonic
    seconds) and why it went back to normal priority."""
    return dict(_left)


def _leave_realtime(signum: int, frame: object) -> None:
    """SIGXCPU: a real-time thread ran past the soft bound without blocking."""
    if _left:
        return
    _left.update(at=time.monotonic(), why="RLIMIT_RTTIME: ran without blocking past the bound")
    normal = os.sched_param(0)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, normal)
        except OSError:
            pass
    message = (
        f"recchaos: PID {os.getpid()} ran real-time for {_soft_s:g} s of CPU without "
        "blocking (a busy loop?): back to normal priority so that it cannot starve the machine\n"
    )
    try:
        os.write(sys.stderr.fileno(), message.encode())
    except (OSError, ValueError, AttributeError):
        pass
