"""Time to failover and time to recover, measured from the request log around one fault.

*Time to failover*: from the kill (inject) to the first answer served by the replica tier, and to
the completion of the last request that missed the SLA. *Time to recover*: from the heal to the
first answer served entirely by the primary tier, and to the last answer that was not. Times are
seconds since the run's origin in, milliseconds out; ``None`` where the event never happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.model.requestlog import TIERS, succeeded

_REPLICA = TIERS.index("replica")
_PRIMARY = TIERS.index("primary")


@dataclass(frozen=True)
class Failover:
    first_replica_ms: float | None
    last_miss_ms: float
    misses: int
    requests: int


@dataclass(frozen=True)
class Recovery:
    first_primary_ms: float | None
    last_non_primary_ms: float
    requests: int
    # When the clock started (s): the heal, or the later heal that ended the outage it was part
    # of (see harness.checks.run.outage_end); None: the heal itself.
    from_s: float | None = None


def _bounds(kill_s: float, until_s: float | None) -> tuple[int, float]:
    return round(kill_s * 1e9), math.inf if until_s is None else until_s * 1e9


def time_to_failover(
    requests: np.ndarray, kill_time: float, until: float | None = None, sla_ms: float = 20.0
) -> Failover:
    """From ``kill_time`` (s) to the first replica answer and to the last SLA miss.

    A miss counts when its request was intended from one SLA before the kill (it may have been
    in flight on the killed node) up to ``until``; an unanswered miss ends at intended + SLA.
    """
    kill_ns, until_ns = _bounds(kill_time, until)
    sla_ns = sla_ms * 1e6
    t = requests["intended_ns"]
    ok = succeeded(requests)
    replica = (
        ok & (requests["tier"] == _REPLICA) & (requests["done_ns"] >= kill_ns) & (t < until_ns)
    )
    first = (int(requests["done_ns"][replica].min()) - kill_ns) / 1e6 if replica.any() else None
    near = (t >= kill_ns - sla_ns) & (t < until_ns)
    response = requests["done_ns"] - t
    missed = near & ~(ok & (response <= sla_ns))
    ends = np.where(requests["done_ns"] >= 0, requests["done_ns"], t + int(sla_ns))[missed]
    last = max(0.0, (int(ends.max()) - kill_ns) / 1e6) if ends.size else 0.0
    return Failover(first, last, int(missed.sum()), int(((t >= kill_ns) & (t < until_ns)).sum()))


def time_to_recover(requests: np.ndarray, heal_time: float, until: float | None = None) -> Recovery:
    """From ``heal_time`` (s) to the first all-primary answer and to the last answer that was not.

    Only requests sent after the heal count (earlier ones could not have reached the healed node).
    """
    heal_ns, until_ns = _bounds(heal_time, until)
    after = (requests["send_ns"] >= heal_ns) & (requests["intended_ns"] < until_ns)
    primary = succeeded(requests) & (requests["tier"] == _PRIMARY)
    done = requests["done_ns"]
    good = after & primary
    first = (int(done[good].min()) - heal_ns) / 1e6 if good.any() else None
    bad = after & ~primary
    ends = np.where(done >= 0, done, requests["send_ns"])[bad]
    last = max(0.0, (int(ends.max()) - heal_ns) / 1e6) if ends.size else 0.0
    return Recovery(first, last, int(after.sum()))
