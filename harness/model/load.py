"""Open-loop load phases and the seeded request mix. Pure data plus their YAML readers.

A phase sends ``rate`` requests per second at evenly spaced intended times for ``duration_s``
seconds; the request mix draws user ids from a population of ``users`` with a Zipf-like skew
(``zipf_exponent``; 0 is uniform) and asks for ``k`` items. The schedule itself is built by
:func:`harness.model.schedule.request_schedule`.

A phase flagged ``surge: true`` (a load surge, e.g. twice the target's capacity) is judged as an
event of its own, like a fault: :func:`surge_events` turns it into a timeline entry (kind
``surge``, target the phase's name, from the phase's start to its end), so the windows before,
during and after it and the recovery after it are measured as for any fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.model.errors import Problem
from harness.model.record import FaultEvent
from harness.model.validate import Fields, any_invalid, boolean, integer, number, string

PHASE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_RATE = 100_000.0
MAX_DURATION_S = 7 * 24 * 3600.0
SURGE = "surge"  # the timeline kind of a surge phase


@dataclass(frozen=True)
class RequestMix:
    """Who asks for what: user ids from a Zipf-like skewed population, ``k`` items each."""

    zipf_exponent: float = 1.1
    users: int = 100_000
    k: int = 10

    def to_dict(self) -> dict[str, Any]:
        return {"zipf_exponent": self.zipf_exponent, "users": self.users, "k": self.k}


@dataclass(frozen=True)
class LoadPhase:
    """``rate`` requests/s (open loop) for ``duration_s`` seconds; rate 0 is a pause.
    ``surge``: judged as an event of its own (:func:`surge_events`)."""

    name: str
    rate: float
    duration_s: float
    mix: RequestMix = field(default_factory=RequestMix)
    surge: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "mix": self.mix.to_dict(),
        }
        if self.surge:
            d["surge"] = True
        return d


def read_mix(
    data: Any, path: str, problems: list[Problem], default: RequestMix | None = None
) -> RequestMix | None:
    base = default or RequestMix()
    f = Fields(data, path, problems)
    zipf = f.get("zipf_exponent", number(0, 10), base.zipf_exponent)
    users = f.get("users", integer(1, 10_000_000), base.users)
    k = f.get("k", integer(1, 10_000), base.k)
    f.finish()
    if not f.ok or any_invalid(zipf, users, k):
        return None
    return RequestMix(zipf_exponent=zipf, users=users, k=k)


def read_phase(
    data: Any, path: str, problems: list[Problem], default_mix: RequestMix | None
) -> LoadPhase | None:
    f = Fields(data, path, problems)
    name = f.get("name", string(PHASE_NAME, f"a phase name matching {PHASE_NAME}"))
    rate = f.get("rate", number(0, MAX_RATE, unit="requests/s"))
    duration = f.get("duration_s", number(0, MAX_DURATION_S, lo_open=True, unit="seconds"))
    mix = read_mix(f.raw("mix", {}), f.at("mix"), problems, default_mix)
    surge = f.get("surge", boolean(), False)
    if surge is True and rate == 0:
        surge = f.add(
            "surge",
            surge,
            "surge only on a phase with a rate above 0",
            "a pause is not a surge: give this phase a rate, or drop surge",
        )
    f.finish()
    if not f.ok or mix is None or any_invalid(name, rate, duration, surge):
        return None
    return LoadPhase(name=name, rate=rate, duration_s=duration, mix=mix, surge=surge)


def total_duration_s(phases: tuple[LoadPhase, ...] | list[LoadPhase]) -> float:
    return float(sum(p.duration_s for p in phases))


def surge_events(phases: tuple[LoadPhase, ...] | list[LoadPhase]) -> tuple[FaultEvent, ...]:
    """One timeline event per surge phase: kind ``surge``, target the phase's name, from the
    phase's first intended send to its end (seconds since the load's origin, the clock of the
    request log), ``origin`` the phase's place in ``load``. The schedule is pure data, so the
    event is exact and in effect by construction (``verified``); whether the generator kept
    the surge's rate is the windows' evidence rule (sent share, send lag)."""
    out = []
    start = 0.0
    for i, p in enumerate(phases):
        end = start + p.duration_s
        if p.surge:
            out.append(
                FaultEvent(
                    kind=SURGE,
                    target=p.name,
                    params={"rate": p.rate, "duration_s": p.duration_s},
                    origin=f"load[{i}]",
                    inject_ns=round(start * 1e9),
                    inject_wall=0.0,
                    heal_ns=round(end * 1e9),
                    heal_wall=0.0,
                    verified=True,
                    note=f"load phase {p.name!r} at {p.rate:g} requests/s",
                )
            )
        start = end
    return tuple(out)


def with_surges(
    timeline: tuple[FaultEvent, ...] | list[FaultEvent], phases: tuple[LoadPhase, ...]
) -> tuple[FaultEvent, ...]:
    """The run's fault timeline with its surge phases added, in time order (stable: a fault
    injected at a surge's start comes after it)."""
    merged = list(surge_events(phases)) + list(timeline)
    return tuple(sorted(merged, key=lambda e: e.inject_ns))
