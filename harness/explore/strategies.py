"""Hypothesis strategies that draw fault schedules from a :class:`~harness.explore.space.SearchSpace`.

A schedule is ``max_faults`` *slots*, each a fixed tuple of small integers: whether the slot is
used (0: not), then the fault's kind, target, duration, lateness and parameters
(``SearchSpace.choice_bounds``). Zero is always the simplest value, and every schedule is the
same number of choices, so Hypothesis's shrinker, which lowers choices one at a time, removes a
fault by lowering its slot's flag and simplifies the rest without ever shifting what a later
choice means: a failing schedule moves towards fewer faults, the first kind and target listed,
shorter faults, later starts and the low end of each parameter. The simplest schedule of all is
the empty one (no fault: the steady state, which the first example therefore checks). The used
slots are normalised (start order, no clashing faults: :meth:`SearchSpace.normalise`).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from harness.explore.space import SearchSpace
from harness.model.faults import FaultSpec

Slot = tuple[int, ...]


def slots(space: SearchSpace) -> st.SearchStrategy[Slot]:
    """One slot: ``(used, kind, target, duration step, lateness, parameter indices...)``."""
    return st.tuples(st.integers(0, 1), *(st.integers(0, b) for b in space.choice_bounds))


def schedule_of(space: SearchSpace, drawn: Sequence[Slot]) -> tuple[FaultSpec, ...]:
    """The schedule that these slots describe."""
    used = [space.fault(s[1], s[2], s[3], s[4], s[5:]) for s in drawn if s[0]]
    return space.normalise(used)


def schedules(space: SearchSpace) -> st.SearchStrategy[tuple[FaultSpec, ...]]:
    """Fault schedules of up to ``max_faults`` faults within ``space`` (the empty one too)."""
    drawn = st.tuples(*(slots(space) for _ in range(space.max_faults)))
    return drawn.map(lambda d: schedule_of(space, d))
