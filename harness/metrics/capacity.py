"""The capacity measured in a run: from the request log of its rate steps
(:mod:`harness.model.capacity`), the highest rate whose error-inclusive p99 stays within the SLA.

Each step is judged on its last two thirds. A step holds when its p99, a failed or shed request
counting as infinitely slow, is at most the SLA. The capacity is the highest rate of the steps
that held up to the first that did not (a step above a failed one that holds again is noise, not
capacity); None when the first step failed already.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.metrics.stats import window_stats
from harness.metrics.windows import Window
from harness.model.capacity import CapacitySpec


@dataclass(frozen=True)
class CapacityStep:
    rate: float
    count: int  # requests judged (the step's last two thirds)
    p99_ms: float  # error-inclusive: inf when more than 1% failed or were shed
    shed: int
    failed: int  # failures other than a shed request
    held: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "count": self.count,
            "p99_ms": self.p99_ms if math.isfinite(self.p99_ms) else "inf",
            "shed": self.shed,
            "failed": self.failed,
            "held": self.held,
        }


@dataclass(frozen=True)
class Capacity:
    spec: CapacitySpec
    sla_ms: float
    steps: tuple[CapacityStep, ...]

    @property
    def rate(self) -> float | None:
        best = None
        for step in self.steps:
            if not step.held:
                break
            best = step.rate
        return best

    def describe(self) -> str:
        """One line: the capacity and each step's p99."""
        rates = self.spec.rates
        parts = ", ".join(
            f"{s.rate:g}/s p99 {s.p99_ms:.1f} ms"
            if math.isfinite(s.p99_ms)
            else f"{s.rate:g}/s p99 inf ({s.shed} shed, {s.failed} failed of {s.count})"
            for s in self.steps
        )
        head = (
            f"capacity {self.rate:g} requests/s"
            if self.rate is not None
            else f"capacity below the lowest step ({rates[0]:g} requests/s)"
        )
        return (
            f"{head}, measured in this run: the highest rate with p99 within the"
            f" {self.sla_ms:g} ms SLA, steps of {self.spec.step_s:g} s ({parts})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "sla_ms": self.sla_ms,
            "rate": self.rate,
            "steps": [s.to_dict() for s in self.steps],
        }


def measure_capacity(requests: np.ndarray, spec: CapacitySpec, sla_ms: float) -> Capacity:
    """``requests``: the steps' request log, intended times from the first step's start. Each
    step's last two thirds is a window judged as any other (:func:`window_stats`)."""
    steps = []
    for i, rate in enumerate(spec.rates):
        name = f"capacity-{rate:g}"
        step = Window(name, (i + 1 / 3) * spec.step_s, (i + 1) * spec.step_s, "steady")
        stats = window_stats(requests, step, sla_ms)
        p99 = stats.latency_all.p99 if stats.count else math.inf
        held = bool(stats.count) and p99 <= sla_ms
        failed = stats.errors - stats.shed
        steps.append(CapacityStep(rate, stats.count, p99, stats.shed, failed, held))
    return Capacity(spec, sla_ms, tuple(steps))
