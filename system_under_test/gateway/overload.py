"""Overload control: how long a request queued before the gateway started on it, and when to shed.

Past capacity, requests queue before the gateway starts work on them (in the kernel's socket
buffers, in the event loop's ready queue, at a balancer in front). An answer computed after such
a wait is late whatever tier serves it, so serving fallbacks faster does not help: the gateway
must do less work. The rule is the CoDel-style one of Facebook's "Fail at Scale":

* the *queueing delay* of a request is the time from its arrival to the start of its handler.
  Arrival is the earliest of the read of its first byte (``Request.received_at``) and the time
  a balancer stamped in ``X-Request-Start`` (:func:`request_start_age`);
* the controller keeps the minimum queueing delay over each ``interval`` (100 ms). A minimum
  above ``target`` (5 ms) means the queue never drained in that interval: a standing queue, not
  a burst. While the last full interval had a standing queue, a request that queued longer than
  ``target`` is shed; otherwise only one that queued longer than ``interval`` is (a burst is
  served, however long);
* shed is a fast 503 with ``Retry-After``, before any feature, model or shard work: it costs
  the gateway tens of microseconds instead of milliseconds, and the requests that are served
  queue less.

Pure: :class:`QueueDelayController` takes the time as an argument (unit tests use a fake
clock); :class:`OverloadGate` binds it to a clock and the gateway's metrics.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

# X-Request-Start values (HAProxy: ``t=%Ts%ms`` gives milliseconds, ``t=%[date(0,us)]``
# microseconds; nginx: ``t=${msec}`` seconds with a fraction): a value with a '.' is seconds,
# an integer is read by its size: 10 digits seconds, 13 milliseconds, 16 microseconds.
_EPOCH_SCALES = ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3), (1e8, 1.0))
_EPOCH = re.compile(r"[0-9]{1,20}(\.[0-9]{1,9})?")
# An X-Request-Start further in the past than this is a wrong clock or a wrong unit, not a queue.
MAX_REQUEST_START_AGE_S = 60.0


def request_start_age(value: str, now_epoch: float) -> float | None:
    """Seconds since the ``X-Request-Start`` stamp ``value`` (``t=<epoch>`` or ``<epoch>``).

    The epoch is seconds when it has a fraction (``t=1733561234.123456``), else read by size:
    seconds, milliseconds, microseconds (HAProxy's ``t=<epoch microseconds>``) or nanoseconds.
    None for a value that is not such a stamp or is more than MAX_REQUEST_START_AGE_S away from
    now (a wrong unit or clock); a stamp a little in the future (two hosts' clocks) is age 0.
    """
    text = value.strip()
    if text.startswith("t="):
        text = text[2:]
    if not _EPOCH.fullmatch(text):
        return None
    stamp = float(text)
    if "." not in text:
        for floor, scale in _EPOCH_SCALES:
            if stamp >= floor:
                stamp *= scale
                break
        else:
            return None
    age = now_epoch - stamp
    if abs(age) > MAX_REQUEST_START_AGE_S:
        return None
    return max(age, 0.0)


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
        epoch: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock, self.epoch, self.observe = clock, epoch, observe
        self.controller = QueueDelayController(settings, clock())

    def arrival(self, received_at: float, request_start: str | None, now: float) -> float:
        """The request's arrival on the ``clock``: its first byte's read, or the balancer's
        ``X-Request-Start`` where that is earlier."""
        arrival = received_at if 0 < received_at <= now else now
        if request_start:
            age = request_start_age(request_start, self.epoch())
            if age is not None and now - age < arrival:
                arrival = now - age
        return arrival

    def check(self, received_at: float, request_start: str | None) -> tuple[float, float, bool]:
        """``(arrival, queueing delay, admitted)`` of a request whose handler starts now."""
        now = self.clock()
        arrival = self.arrival(received_at, request_start, now)
        delay = now - arrival
        admitted = self.controller.admit(delay, now)
        if self.observe is not None:
            self.observe(delay, admitted, "balancer" if request_start else "gateway")
        return arrival, delay, admitted

    @property
    def overloaded(self) -> bool:
        return self.controller.overloaded
