"""Overload control: how long a request queued before the gateway started on it, and when to shed.

Past capacity, requests queue before the gateway starts work on them (in the kernel's socket
buffers, in the event loop's ready queue, at a balancer in front). An answer computed after such
a wait is late whatever tier serves it, so serving fallbacks faster does not help: the gateway
must do less work. The rule is the CoDel-style one of Facebook's "Fail at Scale":

* the *queueing delay* of a request is the time from its arrival to the start of its handler.
  Arrival is the read of its first byte (``Request.received_at``), or the time a balancer
  stamped in ``X-Request-Start`` (``api.arrival_of``, ``balancer.parse_request_start``);
* the controller keeps the minimum queueing delay over each ``interval`` (100 ms). A minimum
  above ``target`` (5 ms) means the queue never drained in that interval: a standing queue, not
  a burst. While the last full interval had a standing queue, a request that queued longer than
  ``target`` is shed; otherwise only one that queued longer than ``interval`` is (a burst is
  served, however long);
* shed is a fast 503 with ``Retry-After`` and a body fixed at start, before any feature, model
  or shard work, so that the requests that are served queue less.

Pure: :class:`QueueDelayController` takes the time as an argument (unit tests use a fake
clock); :class:`OverloadGate` binds it to a clock and the gateway's metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class OverloadSettings:
    """The controller's two numbers; ``enabled=False`` measures the delay but never sheds."""

    target_s: float = 0.005
    interval_s: float = 0.100
    retry_after_s: int = 1
    enabled: bool = True


class QueueDelayController:
    """Decides per request from its queueing delay; call :meth:`admit` at the handler's start."""

    def __init__(self, settings: OverloadSettings, now: float) -> None:
        self.target, self.interval = settings.target_s, settings.interval_s
        self.enabled = settings.enabled
        self.window_end = now + self.interval
        self.window_min = math.inf
        # The last full interval's minimum was above target: a standing queue.
        self.overloaded = False
        self.shed_total = 0

    def admit(self, delay: float, now: float) -> bool:
        """Whether to serve a request that queued ``delay`` seconds before ``now``."""
        if now >= self.window_end:
            if now >= self.window_end + self.interval:
                # A whole interval without a request had no queue; restart the intervals.
                self.overloaded = False
                self.window_end = now + self.interval
            else:
                self.overloaded = self.target < self.window_min < math.inf
                self.window_end += self.interval
            self.window_min = math.inf
        if delay < self.window_min:
            self.window_min = delay
        if not self.enabled:
            return True
        limit = self.target if self.overloaded else self.interval
        if delay > limit:
            self.shed_total += 1
            return False
        return True


class OverloadGate:
    """The controller with the gateway's clock and metrics; :meth:`check` is the API's call."""

    def __init__(
        self,
        settings: OverloadSettings,
        observe: Callable[[float, bool, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock, self.observe = clock, observe
        self.controller = QueueDelayController(settings, clock())

    def check(self, arrival: float | None, source: str) -> tuple[float, float, bool]:
        """``(arrival, queueing delay, admitted)`` of a request whose handler starts now;
        ``arrival`` on the ``clock`` (None or later than now: now), ``source`` what it is
        (``gateway``: its first byte's read; ``balancer``: its ``X-Request-Start``)."""
        now = self.clock()
        if arrival is None or arrival > now:
            arrival = now
        delay = now - arrival
        admitted = self.controller.admit(delay, now)
        if self.observe is not None:
            self.observe(delay, admitted, source)
        return arrival, delay, admitted

    @property
    def overloaded(self) -> bool:
        return self.controller.overloaded
