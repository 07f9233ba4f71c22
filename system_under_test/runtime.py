"""Process set-up shared by every server of the recommender.

The measured rules (docs/architecture.md) live here once: one torch thread per process (two
threads next to another busy process pushed p99.9 to 104 ms), ``gc.freeze()`` after start-up
(full collections in a process that imported torch took 65-80 ms), uvloop for the event loop,
logs to stderr (the launcher sends each component's stderr to its own log file), and SIGTERM as
a clean stop.

Start-up runs in the background of the machine (:func:`start_up_in_background`, then
:func:`serving_priority` before the warm-up): a restarted shard spent about 2.5 s of CPU
importing torch and loading its tables, a whole core, while its peers served; on two cores that
pushed p95 from 4-5 ms to 9-10 ms for the seconds a restart took, and single requests past 20 ms.

``SCHED_IDLE`` alone does not do that here: every component leads a session of its own (the
launcher and the harness start each with ``setsid``), and with the kernel's autogroups
(``/proc/sys/kernel/sched_autogroup_enabled``) each session is a scheduling group of its own
that competes with the others at its group weight, whatever the policy of the tasks inside. So
the start-up also lowers its session's autogroup to nice 19 (:func:`_set_autogroup_nice`), and
:func:`serving_priority` restores it with the normal policy, before the warm-up. Not later:
a warm-up under the normal policy in a nice-19 autogroup keeps the core it runs on from
counting as idle when a serving process wakes (only ``SCHED_IDLE`` tasks leave a core looking
idle to the kernel's wake-up placement), so the serving processes queued on the other core
while it ran: in ``rolling_restart`` (run after two other scenarios on one cluster) 6 of 10
runs failed their p99 that way, the restarting shard holding one core while the gateway waited
4-13 ms per 10 ms on the other.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import sys
import time
from typing import NoReturn

STARTUP_ENV = "RECCHAOS_STARTUP_PRIORITY"
STARTUP_CHOICES = ("idle", "normal")
_CAP_SYS_NICE = 23
AUTOGROUP = "/proc/self/autogroup"
# The autogroup nice of a session that is starting up: weight 15 against a serving session's
# 1024 (the kernel's nice-to-weight table), the closest the autogroup has to SCHED_IDLE.
STARTUP_AUTOGROUP_NICE = 19
AUTOGROUP_RETRY_S = 1.0  # how long a change refused with EAGAIN (rate limit) is tried again


# How long a server may go without a request before it runs its serving path once by itself
# (``keep_warm``). On the virtual machines these latency figures come from, memory a process has
# not touched for a while is slow to touch again, code pages included (benchmarks/idle_memory.py
# measures it): a tiny-preset replica's retrieve took 0.5 ms right after another and 5.4 ms
# (4.8-12.3) after 3 s without a call, so a replica or the region, idle until a primary fails,
# answered its first calls late. Kept warm every second, the same call took 1.95 ms (1.09-3.42);
# a round costs 0.9-2.2 ms of CPU (the server logs its rounds when it stops).
KEEP_WARM_S = 1.0


def keep_warm_problem(ms: float) -> str | None:
    """What is wrong with a ``--keep-warm-ms`` value (``serve-shard``, ``serve-region``, ``up``),
    or None: 0 (never) or 10 to 60,000 ms."""
    if ms == 0 or 10 <= ms <= 60_000:
        return None
    return f"--keep-warm-ms {ms:g} is out of range; allowed: 0 (never) or 10 to 60000"


def can_restore_priority() -> bool:
    """Whether this process may go back from SCHED_IDLE to SCHED_OTHER at its nice value: root
    or CAP_SYS_NICE, or an RLIMIT_NICE that allows it (Linux's rule for unprivileged threads).
    In a container without CAP_SYS_NICE it may not, and then start-up is not moved at all."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:") and int(line.split()[1], 16) >> _CAP_SYS_NICE & 1:
                    return True
        soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        return soft == resource.RLIM_INFINITY or 20 - soft <= nice
    except (OSError, ValueError, AttributeError):
        return False


def start_up_in_background(environ=os.environ) -> bool:
    """Run this process's start-up (imports, loading) under SCHED_IDLE: it gets the CPU the
    serving processes leave, instead of an equal share of it. True when that took effect.

    ``RECCHAOS_STARTUP_PRIORITY=normal`` turns it off; so does a process that could not return
    to normal priority afterwards (:func:`can_restore_priority`).
    """
    choice = environ.get(STARTUP_ENV, "idle") or "idle"
    if choice not in STARTUP_CHOICES:
        print(
            f"{STARTUP_ENV}={choice!r} is not allowed (allowed: {', '.join(STARTUP_CHOICES)}); "
            "starting at normal priority",
            file=sys.stderr,
        )
        return False
    if choice == "normal" or not hasattr(os, "SCHED_IDLE") or not can_restore_priority():
        return False
    if autogroup_nice() == 0:
        _set_autogroup_nice(STARTUP_AUTOGROUP_NICE)
    return _set_policy(os.SCHED_IDLE)


def serving_priority() -> bool:
    """Back to SCHED_OTHER for every thread of the process, and the session's autogroup back to
    nice 0 (:func:`serving_share`): call before the warm-up, so the warm-up's threads (and the
    server's afterwards) run at the normal policy and share. True when both took effect."""
    shared = serving_share()
    if not hasattr(os, "SCHED_OTHER"):
        return shared
    return _set_policy(os.SCHED_OTHER) and shared


def serving_share() -> bool:
    """The session's autogroup back to nice 0 where the start-up lowered it (done by
    :func:`serving_priority`). True when the autogroup is back (or was never lowered)."""
    if _leads_session() and autogroup_nice() == STARTUP_AUTOGROUP_NICE:
        return _set_autogroup_nice(0)
    return True


def leave_quietly(code: int) -> NoReturn:
    """Exit a stopped server in the background of the machine: idle priority and the low
    autogroup share first, then ``os._exit`` once the logs are flushed, without the
    interpreter's finalization.

    A shard that stopped on SIGTERM spent about 200 ms of CPU at full share tearing down its
    interpreter (torch, its tables, the module graph) after its last answer: in
    ``rolling_restart`` the gateway then waited 6-9 ms on the run queue per 10 ms, and the
    requests of those 300 ms took up to 42 ms. Nothing is left to do by then (the server has
    answered what it took, its sockets are closed), so nothing is lost by skipping it."""
    if hasattr(os, "SCHED_IDLE"):
        _set_policy(os.SCHED_IDLE)
    if autogroup_nice() == 0:
        _set_autogroup_nice(STARTUP_AUTOGROUP_NICE, retry_s=0.0)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing more can be said there
            pass
    os._exit(code)


def autogroup_nice(path: str = AUTOGROUP) -> int | None:
    """The nice value of this process's autogroup (``/autogroup-N nice V``); None where the
    kernel has no autogroups or the file cannot be read."""
    try:
        with open(path) as f:
            return parse_autogroup(f.read())
    except OSError:
        return None


def parse_autogroup(text: str) -> int | None:
    """``/autogroup-123 nice 19`` -> 19; None for anything else."""
    parts = text.split()
    if len(parts) == 3 and parts[1] == "nice":
        try:
            return int(parts[2])
        except ValueError:
            return None
    return None


def raise_session_share(nice: int) -> bool:
    """Give this process's session the autogroup ``nice`` (negative: a larger share than the
    nice-0 sessions of the other components), where it leads its session and may (root or
    CAP_SYS_NICE). True when it took effect. The balancer's, before it becomes HAProxy
    (``balancer.BALANCER_AUTOGROUP_NICE`` says why)."""
    return _set_autogroup_nice(nice)


def _leads_session() -> bool:
    return os.getsid(0) == os.getpid()


def _set_autogroup_nice(
    nice: int, path: str = AUTOGROUP, retry_s: float = AUTOGROUP_RETRY_S
) -> bool:
    """Give this process's autogroup ``nice``, only where the process leads its session (the
    autogroup is the whole session's: a server started inside someone else's session, a
    terminal's, must not lower it). True when it took effect."""
    if not _leads_session():
        return False
    # Without CAP_SYS_ADMIN the kernel takes one autogroup change a tenth of a second, host
    # wide, and answers EAGAIN to the others: a server that could not return to nice 0 would
    # serve at a sixty-eighth of the CPU share, so the way back waits its turn.
    deadline = time.monotonic() + retry_s
    while True:
        try:
            _write(path, str(nice))
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        except OSError:
            return False


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _set_policy(policy: int) -> bool:
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    ok = True
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) != policy:
                os.sched_setscheduler(tid, policy, os.sched_param(0))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        except OSError:
            ok = False
    return ok


def configure_process(component: str, level: str = "INFO") -> logging.Logger:
    """Call first in every server process, before building models."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (only allowed once per process)
        pass
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format=f"%(asctime)s {component} %(levelname)s %(message)s",
    )
    return logging.getLogger(component)


def freeze_heap() -> None:
    """After start-up: collect once, then move everything to the permanent generation.

    From then on, a collection that pauses the process for ``GC_PAUSE_LOG_S`` or more is
    logged (generation, milliseconds, objects collected): a pause is a latency spike for every
    request in flight.
    """
    gc.collect()
    gc.freeze()
    gc.callbacks.append(_time_collections)


GC_PAUSE_LOG_S = 0.005
_gc_started = [0.0]


def _time_collections(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - _gc_started[0]
    if pause >= GC_PAUSE_LOG_S:
        logging.getLogger("gc").warning(
            "garbage collection of generation %s paused the process %.1f ms (%s collected)",
            info.get("generation"),
            pause * 1e3,
            info.get("collected"),
        )


def run_until_signalled(main_coro_factory, log: logging.Logger) -> int:
    """Run ``await main_coro_factory(stop_event)`` on uvloop until SIGTERM or SIGINT."""
    import uvloop

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        result = await main_coro_factory(stop)
        return int(result or 0)

    try:
        return uvloop.run(runner())
    finally:
        log.info("stopped")
