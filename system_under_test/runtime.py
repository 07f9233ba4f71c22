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

STARTUP_ENV = "RECCHAOS_STARTUP_PRIORITY"
STARTUP_CHOICES = ("idle", "normal")
_CAP_SYS_NICE = 23


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
    return _set_policy(os.SCHED_IDLE)


def serving_priority() -> bool:
    """Back to SCHED_OTHER for every thread of the process: call before the warm-up, so the
    warm-up measures (and the server then serves) at full priority. True when every thread
    runs under SCHED_OTHER afterwards."""
    if not hasattr(os, "SCHED_OTHER"):
        return True
    return _set_policy(os.SCHED_OTHER)


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
