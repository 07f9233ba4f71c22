"""Phase windows: before, during and after each fault, aligned to the recorded timestamps.

Times are seconds since the run's origin. The warm-up is excluded; after a heal, ``settle_s``
is excluded too (recovery is measured separately, see :mod:`harness.metrics.failover`). A
*before* window is the quiet stretch leading up to an inject, an *after* window the quiet stretch
from the end of settling to the next inject or the end; neither exists where another fault is
active. A run without faults has one *steady* window. Requests belong to the window that holds
their intended send time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.model.record import FaultEvent


@dataclass(frozen=True)
class Window:
    """A stretch of the run judged on its own; ``fault`` indexes the run's fault timeline."""

    name: str
    start_s: float
    end_s: float
    kind: str
    fault: int | None = None
    label: str = ""
    fault_verified: bool = True
    active: tuple[int, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def describe(self) -> str:
        """``during kill(shard-1-primary) window [12.0 s, 17.0 s]``."""
        return f"{self.name} window [{self.start_s:.1f} s, {self.end_s:.1f} s]"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "kind": self.kind,
            "fault": self.fault,
            "label": self.label,
            "fault_verified": self.fault_verified,
            "active": list(self.active),
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Window:
        return cls(**{**d, "active": tuple(d.get("active", ()))})  # type: ignore[arg-type]


def windows_for(
    timeline: Sequence[FaultEvent],
    run_start: float,
    run_end: float,
    warmup_s: float,
    settle_s: float,
) -> tuple[Window, ...]:
    """Windows for a run from ``run_start`` to ``run_end`` with these faults (in inject order)."""
    measured = run_start + warmup_s
    if not timeline:
        return (Window("steady", measured, run_end, "steady"),) if run_end > measured else ()
    spans = [_span(e, run_end) for e in timeline]
    disturbed = [(a, min(b + settle_s, run_end)) for a, b in spans]
    labels = _unique_labels(timeline)
    out: list[Window] = []
    for i, (event, (a, b)) in enumerate(zip(timeline, spans, strict=True)):
        others = [d for j, d in enumerate(disturbed) if j != i]
        before_start = max([measured] + [e for s, e in others if e <= a])
        if not _active_at(others, a):
            out.append(Window(f"before {labels[i]}", before_start, a, "before", i, event.label))
        out.append(
            Window(
                f"during {labels[i]}", max(a, measured), b, "during", i, event.label, event.verified
            )
        )
        settled = disturbed[i][1]
        if event.heal_ns is not None and not _active_at(others, settled):
            after_end = min([run_end] + [s for s, _ in others if s >= settled])
            out.append(Window(f"after {labels[i]}", settled, after_end, "after", i, event.label))
    return tuple(_with_active(w, spans) for w in out if w.end_s > w.start_s)


def unobserved_recoveries(
    timeline: Sequence[FaultEvent], run_end: float, settle_s: float
) -> tuple[str, ...]:
    """One sentence per fault healed during the load whose *after* window the load's end cut
    off: it healed, but the load stopped before the settling after it ended, so the run holds no
    evidence about the recovery (and a verdict says nothing about it)."""
    out = []
    for event, label in zip(timeline, _unique_labels(timeline), strict=True):
        heal = event.heal_s
        if heal is None or heal >= run_end or heal + settle_s < run_end:
            continue
        out.append(
            f"no after window for {label}: it healed at {heal:.1f} s and the load ended at"
            f" {run_end:.1f} s, before the {settle_s:g} s of settling after the heal were over;"
            " nothing in this run shows the recovery (lengthen the load or move the fault earlier)"
        )
    return tuple(out)


def _span(event: FaultEvent, run_end: float) -> tuple[float, float]:
    heal = event.heal_s if event.heal_s is not None else run_end
    return event.inject_s, min(max(heal, event.inject_s), run_end)


def _active_at(spans: list[tuple[float, float]], t: float) -> bool:
    return any(s < t < e for s, e in spans)


def _unique_labels(timeline: Sequence[FaultEvent]) -> list[str]:
    totals: dict[str, int] = {}
    for e in timeline:
        totals[e.label] = totals.get(e.label, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for e in timeline:
        seen[e.label] = seen.get(e.label, 0) + 1
        out.append(e.label if totals[e.label] == 1 else f"{e.label} #{seen[e.label]}")
    return out


def _with_active(w: Window, spans: list[tuple[float, float]]) -> Window:
    active = tuple(j for j, (s, e) in enumerate(spans) if s < w.end_s and e > w.start_s)
    return Window(w.name, w.start_s, w.end_s, w.kind, w.fault, w.label, w.fault_verified, active)
