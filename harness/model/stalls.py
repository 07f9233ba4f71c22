"""A host stall: a spell in which a CPU of the machine ran nothing, not even a real-time task.

What the stall probe (:mod:`harness.process.stallprobe`) records and the run record keeps;
which requests a stall may have delayed is :mod:`harness.metrics.stalls`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DETECT_MS = 2.0  # the probe notes a wake-up this much later than due, or more


@dataclass(frozen=True)
class HostStall:
    """CPU ``cpu`` ran nothing from ``start_ns`` to ``end_ns`` (the request log's clock: ns from
    the load's origin)."""

    cpu: int
    start_ns: int
    end_ns: int
    ran_ns: int = 0  # a spell of stalls (harness.metrics.stalls.spells): the moments it ran

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def stalled_ms(self) -> float:
        """The time the CPU ran nothing: the span, less the moments between stalls of a spell."""
        return (self.end_ns - self.start_ns - self.ran_ns) / 1e6

    @property
    def at_s(self) -> float:
        return self.start_ns / 1e9

    def describe(self) -> str:
        if self.ran_ns:
            return (
                f"CPU {self.cpu} ran nothing for {self.stalled_ms:.1f} of {self.ms:.1f} ms at"
                f" {self.at_s:.2f} s"
            )
        return f"CPU {self.cpu} ran nothing for {self.ms:.1f} ms at {self.at_s:.2f} s"

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "at_s": round(self.at_s, 4), "ms": round(self.ms, 2)}
