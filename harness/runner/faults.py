"""Executing a scenario's fault plan against the clock of the load: apply at ``at_s``, heal at
``at_s + duration_s`` (or at the end of the load), every fault on one :class:`FaultStack` so that
whatever happens, everything applied is healed in reverse order.

A guard that trips sets the same ``stop`` event the end of the load does; :meth:`FaultPlanRun.halt`
then heals everything at once and names the planned faults never applied.

Times are offsets from the load's start (the shared CLOCK_MONOTONIC origin the load workers use,
which is the stack's ``origin_ns``), so the recorded inject and heal times line up with the
request log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.inject.base import (
    FaultStack,
    FaultUnsupported,
    InjectContext,
    Injector,
    make_injector,
)
from harness.model.errors import RecchaosError
from harness.model.faults import FaultSpec
from harness.model.record import FaultEvent


@dataclass
class FaultPlanRun:
    """The plan's execution state: applied injectors, problems, and what is active now."""

    plan: tuple[FaultSpec, ...]
    ctx: InjectContext
    stack: FaultStack
    load_end_s: float
    log: Callable[[str], None] = print
    on_change: Callable[[], None] = lambda: None
    problems: list[str] = field(default_factory=list)
    injectors: dict[int, Injector] = field(default_factory=dict)
    tried: set[int] = field(default_factory=set)  # plan indices whose apply was attempted

    def actions(self) -> list[tuple[float, int, str]]:
        """(time_s, fault index, 'apply' | 'heal'), in time order; heals before applies on ties."""
        out = []
        for i, spec in enumerate(self.plan):
            out.append((spec.at_s, i, "apply"))
            out.append((spec.end_s(self.load_end_s), i, "heal"))
        return sorted(out, key=lambda a: (a[0], a[2] != "heal", a[1]))

    @property
    def origin_ns(self) -> int:
        return self.stack.origin_ns

    def active(self) -> list[str]:
        return [e.label for e in list(self.stack.entries) if e.active]

    def run(self, stop: threading.Event) -> None:
        """Run the actions until done or ``stop`` is set (the caller then heals everything)."""
        for at_s, index, what in self.actions():
            delay = self.origin_ns / 1e9 + at_s - time.monotonic()
            if stop.is_set() or (delay > 0 and stop.wait(delay)):
                return
            if what == "apply":
                self._apply(index)
            elif index in self.injectors:
                fault = self.stack.heal(self.injectors[index])
                note = f" (heal failed: {fault.heal_error})" if fault.heal_error else ""
                self.log(f"healed {fault.label} at {at_s:.1f} s{note}")
                if fault.heal_error:
                    self.problems.append(f"{fault.label}: heal failed: {fault.heal_error}")
            self.on_change()

    def _apply(self, index: int) -> None:
        spec = self.plan[index]
        where = spec.origin or f"faults[{index}]"
        self.tried.add(index)
        try:
            injector = make_injector(spec.kind, spec.target, dict(spec.params), self.ctx)
            self.injectors[index] = injector
            fault = self.stack.apply(injector, origin=where)
        except FaultUnsupported as exc:
            self.problems.append(f"{spec.label} ({where}) was not applied: {exc}")
            self.log(f"skipped {spec.label}: {exc}")
            return
        except RecchaosError as exc:
            self.problems.append(f"{spec.label} ({where}) failed to apply: {exc}")
            self.log(f"could not apply {spec.label}: {exc}")
            return
        event = fault.event
        assert event is not None  # apply returned: the fault is in effect
        state = "verified" if event.verified else f"not yet verified ({fault.verify_note})"
        self.log(f"applied {event.label} at {event.inject_s:.1f} s [{state}]")

    def heal_all(self) -> list[str]:
        """Heal everything still applied, in reverse order; the errors of the heals that failed."""
        return self.stack.heal_all()

    def halt(self) -> tuple[tuple[str, ...], int | None, list[str], tuple[str, ...]]:
        """A guard tripped: heal every active fault now. Returns the labels healed, when the
        last of them was (ns since the origin), the heal errors, and the planned faults that
        were never applied (``kill(shard-1-primary) at 12 s``)."""
        active = [e for e in list(self.stack.entries) if e.active]
        errors = self.stack.heal_all()
        heal_times = [e.event.heal_ns for e in active if e.event and e.event.heal_ns is not None]
        for entry in active:
            self.log(f"healed {entry.label} (halt)")
        not_applied = tuple(
            f"{spec.label} at {spec.at_s:g} s"
            for i, spec in enumerate(self.plan)
            if i not in self.tried
        )
        self.on_change()
        healed_ns = max(heal_times) if heal_times else None
        return tuple(e.label for e in active), healed_ns, errors, not_applied

    def timeline(self) -> tuple[FaultEvent, ...]:
        """The run record's timeline: every fault that took effect, in the order applied."""
        return tuple(self.stack.events)
