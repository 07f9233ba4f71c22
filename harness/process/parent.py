"""Stop when whoever started this process is gone: for the harness's own servers (the fault
proxy, the calibration stub), so that a harness or test that dies without its teardown cannot
leave them serving."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


async def watch_parent(
    pid: int, stop: asyncio.Event, say: Callable[[str], None], interval_s: float = 0.5
) -> None:
    """Set ``stop`` once process ``pid`` is no longer our parent (it died: we were re-parented),
    after telling ``say`` why."""
    while not stop.is_set():
        if os.getppid() != pid:
            say(f"parent process {pid} is gone: stopping")
            stop.set()
            return
        await asyncio.sleep(interval_s)
