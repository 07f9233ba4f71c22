"""An asyncio event loop on a virtual clock, for unit tests of code that waits on timers.

The loop's clock starts at 0 and, whenever nothing is ready to run, jumps straight to the next
timer instead of sleeping until it: ``asyncio.sleep(0.05)`` takes no real time, and what the code
under test sees (``loop.time()``, the order timers fire in) does not depend on how busy the
machine is. Code that reads a clock of its own must be handed ``loop.time``.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        # Ready file descriptors (the loop's own wake-up pipe) first, without waiting; with
        # nothing ready the loop would sleep ``timeout`` until its next timer: jump there.
        ready = super().select(None if timeout is None else 0)
        if not ready and timeout:
            self._loop.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and jumps to the next timer."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualTimeLoop`, then close the loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
