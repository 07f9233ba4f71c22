"""A scenario's ``capacity`` section: the rate steps that measure the target's capacity in the
same run, before its load.

Capacity is the highest rate whose error-inclusive p99 (a failed or shed request counts as a
miss) stays within the SLA. A floor on goodput written as a share of it (``{metric: goodput,
at_least: 0.9, of: capacity}``) then holds the system to what this machine can do today, not to
a number measured once on a machine that may have run at half the speed since. The steps run
one after another, lowest rate first; each is judged on its last two thirds (the first third
lets the queue of the step before settle). See :mod:`harness.metrics.capacity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.model.errors import Problem
from harness.model.load import LoadPhase, RequestMix
from harness.model.validate import INVALID, Fields, number

MAX_STEPS = 20


@dataclass(frozen=True)
class CapacitySpec:
    """``rates`` (requests/s, strictly increasing), each for ``step_s`` seconds."""

    rates: tuple[float, ...]
    step_s: float

    def phases(self, mix: RequestMix) -> tuple[LoadPhase, ...]:
        return tuple(LoadPhase(f"capacity-{r:g}", r, self.step_s, mix) for r in self.rates)

    @property
    def duration_s(self) -> float:
        return self.step_s * len(self.rates)

    def to_dict(self) -> dict[str, Any]:
        return {"rates": list(self.rates), "step_s": self.step_s}


def read_capacity(data: Any, path: str, problems: list[Problem]) -> CapacitySpec | None:
    f = Fields(data, path, problems)
    step = f.get("step_s", number(1, 120, unit="seconds per rate"), 3.0)
    raw = f.raw("rates")
    allowed = f"a list of 1 to {MAX_STEPS} rates (requests/s, above 0), strictly increasing"
    rates: Any = INVALID
    if raw is None:
        f.add("rates", raw, allowed)
    elif (
        not isinstance(raw, list)
        or not 1 <= len(raw) <= MAX_STEPS
        or not all(isinstance(r, int | float) and not isinstance(r, bool) and r > 0 for r in raw)
        or any(b <= a for a, b in zip(raw, raw[1:], strict=False))
    ):
        f.add("rates", raw, allowed)
    else:
        rates = tuple(float(r) for r in raw)
    f.finish()
    if not f.ok or rates is INVALID or step is INVALID:
        return None
    return CapacitySpec(rates, step)
