"""An asyncio event loop on virtual time, for unit tests of timing logic without a wall clock.

The loop's clock moves only when nothing is ready to run: a wait of 5 ms (a timer, a sleep, a
deadline) advances ``loop.time()`` by 5 ms at once and takes no real time, and code between
waits takes no virtual time. So a test of deadlines, hedges and breaker cool-downs is exact and
as fast as the code it runs, however busy the machine is. Sockets are not supported (the
selector never blocks): the tests use in-process fakes for every peer.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _InstantSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without waiting; a wait for ``timeout`` advances the loop's clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual-time loop would wait forever: nothing is scheduled")
        assert self.loop is not None
        self.loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 1000.0) -> None:
        selector = _InstantSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = start

    def time(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T], loop: VirtualTimeLoop | None = None) -> T:
    """Run ``coro`` to completion on a (new) virtual-time loop, then close that loop."""
    own = loop is None
    loop = loop or VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        if own:
            loop.close()
