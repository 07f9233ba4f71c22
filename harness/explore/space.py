"""The space of fault schedules an exploration searches, built from a scenario. Pure.

A schedule is a tuple of :class:`~harness.model.faults.FaultSpec` inside the limits of the
scenario's ``explore:`` section (:class:`~harness.model.explore.ExploreSpec`). Times sit on a
grid of :data:`QUANTUM_S`. Faults start and end inside the *fault window*: from the end of the
warm-up plus one *evidence stretch* (the time the load needs to send the ``min_samples`` a window
must hold to be judged, with a fifth to spare, on the grid) to the end of the load minus
``settle_s`` and one more evidence stretch, so the windows before the first fault and after the
last one can be judged.

Every choice is a small integer whose zero is the simplest value, which is what Hypothesis
shrinks towards: the first kind listed, the first target, the shortest duration, the *latest*
start, the first value or the low end of a parameter's range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.model.errors import UsageError
from harness.model.explore import Choices, ExploreSpec, ParamDraw, Range
from harness.model.fault_kinds import FAULT_KINDS
from harness.model.faults import FaultSpec
from harness.model.scenario import Scenario

QUANTUM_S = 0.5
STRETCH_SPARE = 1.2  # the last window ends at the last intended send, a request short of the end
RANGE_STEPS = 100  # a range is drawn on a grid of about this many "nice" steps


@dataclass(frozen=True)
class ParamAxis:
    """One drawn parameter: ``values(i)`` for i in 0..``size`` - 1, 0 the simplest."""

    name: str
    draw: ParamDraw
    step: float = 0.0

    @classmethod
    def of(cls, name: str, draw: ParamDraw) -> ParamAxis:
        if isinstance(draw, Range):
            return cls(name, draw, nice_step((draw.hi - draw.lo) / RANGE_STEPS))
        return cls(name, draw)

    @property
    def size(self) -> int:
        if isinstance(self.draw, Choices):
            return len(self.draw.values)
        if self.step == 0:
            return 1
        return int(math.floor((self.draw.hi - self.draw.lo) / self.step + 1e-9)) + 1

    def value(self, i: int) -> Any:
        if isinstance(self.draw, Choices):
            return self.draw.values[i]
        v = min(self.draw.hi, self.draw.lo + i * self.step)
        if isinstance(self.draw.lo, int) and isinstance(self.draw.hi, int):
            return int(round(v))
        return float(f"{v:.6g}")


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``raw`` (0 for 0)."""
    if raw <= 0:
        return 0.0
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        step = m * 10.0**exp
        if step >= raw * (1 - 1e-12):
            return float(f"{step:.12g}")
    return 10.0 ** (exp + 1)


@dataclass(frozen=True)
class KindAxis:
    """A kind, the components it may hit (in component order) and its drawn parameters."""

    kind: str
    targets: tuple[str, ...]
    params: tuple[ParamAxis, ...]


@dataclass(frozen=True)
class SearchSpace:
    kinds: tuple[KindAxis, ...]
    max_faults: int
    min_duration_s: float
    max_duration_s: float
    window: tuple[float, float]
    settle_s: float = 0.0
    stretch_s: float = 0.0
    source: str = field(default="", compare=False)

    @classmethod
    def of(cls, scenario: Scenario) -> SearchSpace:
        """The space of ``scenario`` (its ``explore`` section, or the defaults); UsageError
        when its load leaves no room for even the shortest fault."""
        spec = scenario.explore or ExploreSpec()
        target = scenario.target
        axes = tuple(
            KindAxis(
                kind,
                spec.targets_for(kind, target),
                tuple(ParamAxis.of(n, d) for n, d in spec.draws_for(kind).items()),
            )
            for kind in spec.resolved_kinds(target)
        )
        axes = tuple(a for a in axes if a.targets)
        window = fault_window(scenario)
        longest = min(spec.max_duration_s, window[1] - window[0])
        if not axes:
            raise UsageError(
                f"{scenario.source}: explore: no fault kind can hit any of the targets"
                f" {list(spec.resolved_patterns(target))}; list kinds and targets that fit"
            )
        if longest < spec.min_duration_s:
            raise UsageError(
                f"{scenario.source}: explore.min_duration_s: got {spec.min_duration_s:g}; the"
                f" fault window of this load is [{window[0]:g} s, {window[1]:g} s] (after the"
                " warm-up and one evidence stretch, before the settle time and one more), shorter"
                " than the shortest fault; lengthen the load or lower min_duration_s"
            )
        return cls(
            axes,
            spec.max_faults,
            spec.min_duration_s,
            longest,
            window,
            scenario.settle_s,
            evidence_stretch(scenario),
            scenario.source,
        )

    # -- the grid ---------------------------------------------------------------------------------
    @property
    def duration_steps(self) -> int:
        return int(math.floor((self.max_duration_s - self.min_duration_s) / QUANTUM_S + 1e-9))

    def duration(self, step: int) -> float:
        return round(self.min_duration_s + step * QUANTUM_S, 6)

    def lateness_steps(self, duration_s: float) -> int:
        """How many grid steps earlier than the latest possible start a fault may begin."""
        room = self.window[1] - self.window[0] - duration_s
        return max(0, int(math.floor(room / QUANTUM_S + 1e-9)))

    @property
    def choice_bounds(self) -> tuple[int, ...]:
        """The upper bound of each choice a fault is drawn from: kind, target, duration step,
        lateness, then one per parameter slot. The same for every kind, so that changing a
        fault's kind while shrinking leaves the choices after it meaning what they meant."""
        slots = max(len(a.params) for a in self.kinds)
        params = [
            max((a.params[j].size for a in self.kinds if j < len(a.params)), default=1) - 1
            for j in range(slots)
        ]
        return (
            len(self.kinds) - 1,
            max(len(a.targets) for a in self.kinds) - 1,
            self.duration_steps,
            self.lateness_steps(self.min_duration_s),
            *params,
        )

    def fault(
        self, kind: int, target: int, duration_step: int, lateness: int, params: Sequence[int]
    ) -> FaultSpec:
        """The fault these choices name: an index past its axis wraps around (a target, a
        parameter value) or is clamped (kind, duration, lateness)."""
        axis = self.kinds[min(kind, len(self.kinds) - 1)]
        duration = self.duration(min(duration_step, self.duration_steps))
        late = min(lateness, self.lateness_steps(duration))
        at_s = round(self.window[0] + (self.lateness_steps(duration) - late) * QUANTUM_S, 6)
        values = dict(FAULT_KINDS[axis.kind].defaults())
        for p, i in zip(axis.params, params, strict=False):
            values[p.name] = p.value(i % p.size)
        target_name = axis.targets[target % len(axis.targets)]
        return FaultSpec(axis.kind, target_name, at_s, duration, values)

    def normalise(self, faults: Sequence[FaultSpec]) -> tuple[FaultSpec, ...]:
        """In start order, leaving out a fault that clashes with an earlier kept one; each
        fault's origin is its place in the result. Two faults clash when they hit one component
        at once (they would fight over its state), or when the quiet stretch between them (from
        one's heal plus ``settle_s`` to the other's inject) is shorter than an evidence stretch:
        the window there could never hold enough requests to be judged."""
        kept: list[FaultSpec] = []
        for f in sorted(faults, key=lambda f: f.at_s):
            if any(self._clash(k, f) for k in kept):
                continue
            kept.append(f)
        return tuple(
            FaultSpec(f.kind, f.target, f.at_s, f.duration_s, f.params, origin=f"faults[{i}]")
            for i, f in enumerate(kept)
        )

    def _clash(self, a: FaultSpec, b: FaultSpec) -> bool:
        if a.target == b.target and _overlap(a, b):
            return True
        gap = max(b.at_s - _end(a) - self.settle_s, a.at_s - _end(b) - self.settle_s)
        # a gap at or near 0 clashes too: recorded inject and heal times drift by milliseconds
        return -QUANTUM_S / 2 < gap < self.stretch_s

    def describe(self) -> str:
        kinds = ", ".join(f"{a.kind} ({len(a.targets)})" for a in self.kinds)
        return (
            f"up to {self.max_faults} fault{'s' * (self.max_faults != 1)} of"
            f" {self.min_duration_s:g}-{self.max_duration_s:g} s in"
            f" [{self.window[0]:g} s, {self.window[1]:g} s]; kinds (targets): {kinds}"
        )


def _end(f: FaultSpec) -> float:
    return f.at_s + (f.duration_s if f.duration_s is not None else math.inf)


def _overlap(a: FaultSpec, b: FaultSpec) -> bool:
    return a.at_s < _end(b) and b.at_s < _end(a)


def evidence_stretch(scenario: Scenario) -> float:
    """The time the load needs to send the requests a window must hold, a fifth to spare."""
    rates = [p.rate for p in scenario.load if p.rate > 0]
    needed = max([scenario.evidence.min_samples] + [s.min_samples or 0 for s in scenario.slos])
    return _up(needed * STRETCH_SPARE / min(rates)) if rates else 0.0


def fault_window(scenario: Scenario) -> tuple[float, float]:
    """Where faults may start and end (see the module docstring), on the grid."""
    stretch = evidence_stretch(scenario)
    start = _up(scenario.warmup_s + stretch)
    end = _down(scenario.load_duration_s - scenario.settle_s - stretch)
    return start, max(start, end)


def _up(t: float) -> float:
    return round(math.ceil(t / QUANTUM_S - 1e-9) * QUANTUM_S, 6)


def _down(t: float) -> float:
    return round(math.floor(t / QUANTUM_S + 1e-9) * QUANTUM_S, 6)


def schedule_key(faults: Sequence[FaultSpec]) -> str:
    """A canonical text for a schedule: equal schedules, equal keys."""
    return json.dumps([f.to_dict() for f in faults], sort_keys=True)


def describe_fault(f: FaultSpec) -> str:
    """``latency(shard-1-replica, delay_ms=35) at 6.5 s for 2 s``: parameters that differ from
    the kind's defaults are shown."""
    defaults = FAULT_KINDS[f.kind].defaults()
    shown = [f"{k}={_short(v)}" for k, v in f.params.items() if defaults.get(k, object()) != v]
    inside = ", ".join([f.target, *shown])
    length = "until the end" if f.duration_s is None else f"for {f.duration_s:g} s"
    return f"{f.kind}({inside}) at {f.at_s:g} s {length}"


def describe_schedule(faults: Sequence[FaultSpec]) -> str:
    return "; ".join(describe_fault(f) for f in faults) or "(no fault)"


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
