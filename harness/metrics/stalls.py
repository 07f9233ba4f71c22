"""Host stalls: spells in which a CPU of the machine ran nothing, not even a real-time task.

The stall probe (:mod:`harness.process.stallprobe`) is one ``SCHED_FIFO`` process per CPU,
pinned to it, that wakes every 2 ms and notes each wake-up that came late by
:data:`~harness.model.stalls.DETECT_MS` or more. Nothing the system under test does at normal
priority can delay it: a real-time task takes its CPU from every normal task at once. What can
delay it is the machine itself: the hypervisor not running the virtual CPU, or the kernel busy
with interrupts or with work that cannot be preempted. On a 2-core virtual machine such stalls
of 5-20 ms were measured a few times a minute, most of them while processes start or exit, and
a request in flight through one of them is late whatever the recommender does.

:func:`in_flight_during` marks the requests a stall may have delayed: those in flight at some
time from the stall's start to one SLA after its end (the backlog a stall leaves is served in
the moments after it). The judges use it to tell a check that failed on the system from one
that failed on the machine (:mod:`harness.checks.run`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.model.stalls import HostStall


def spells(stalls: Sequence[HostStall], gap_ns: int) -> tuple[HostStall, ...]:
    """Stalls of one CPU less than ``gap_ns`` apart joined into one spell (its ``ran_ns`` the
    time between them; what it lost, ``stalled_ms``, is the stalls' sum). 3.8 ms without
    running, 0.4 ms of running and 2.6 ms without again is a CPU that lost 6.4 of 6.8 ms, not
    two stalls too short to matter. Stalls of different CPUs are never joined: a request's
    processes need not have run on the other CPU then."""
    out: list[HostStall] = []
    last: dict[int, int] = {}  # cpu -> index in out of its latest spell
    for s in sorted(stalls, key=lambda x: x.start_ns):
        i = last.get(s.cpu)
        if i is not None and s.start_ns - out[i].end_ns < gap_ns:
            prev = out[i]
            gap = max(s.start_ns - prev.end_ns, 0)
            out[i] = HostStall(s.cpu, prev.start_ns, max(prev.end_ns, s.end_ns), prev.ran_ns + gap)
            continue
        last[s.cpu] = len(out)
        out.append(s)
    return tuple(out)


def at_least(stalls: Sequence[HostStall], ms: float) -> tuple[HostStall, ...]:
    """The stalls (or spells) in which the CPU ran nothing for ``ms`` or more in all."""
    return tuple(s for s in stalls if s.stalled_ms >= ms)


def in_flight_during(
    requests: np.ndarray, stalls: Sequence[HostStall], margin_ns: int
) -> np.ndarray:
    """Which requests were in flight at some time in [stall start, stall end + ``margin_ns``]
    of some stall: sent (intended) before that span ended and not answered before it began.
    A request never answered is in flight until the end of time."""
    hit = np.zeros(requests.shape[0], dtype=bool)
    if not stalls or not requests.shape[0]:
        return hit
    start = requests["intended_ns"]
    done = requests["done_ns"]
    end = np.where(done >= 0, done, np.iinfo(np.int64).max)
    for s in stalls:
        hit |= (start <= s.end_ns + margin_ns) & (end >= s.start_ns)
    return hit
