"""Process set-up shared by every server of the recommender.

The measured rules (docs/architecture.md) live here once: one torch thread per process (two
threads next to another busy process pushed p99.9 to 104 ms), ``gc.freeze()`` after start-up
(full collections in a process that imported torch took 65-80 ms), uvloop for the event loop,
logs to stderr (the launcher sends each component's stderr to its own log file), and SIGTERM as
a clean stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time


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
