"""Open-loop load phases and the seeded request mix. Pure data plus their YAML readers.

A phase sends ``rate`` requests per second at evenly spaced intended times for ``duration_s``
seconds; the request mix draws user ids from a population of ``users`` with a Zipf-like skew
(``zipf_exponent``; 0 is uniform) and asks for ``k`` items. The schedule itself is built by
:func:`harness.model.schedule.request_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.model.errors import Problem
from harness.model.validate import Fields, any_invalid, integer, number, string

PHASE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_RATE = 100_000.0
MAX_DURATION_S = 7 * 24 * 3600.0


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
    """``rate`` requests/s (open loop) for ``duration_s`` seconds; rate 0 is a pause."""

    name: str
    rate: float
    duration_s: float
    mix: RequestMix = field(default_factory=RequestMix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "mix": self.mix.to_dict(),
        }


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
    f.finish()
    if not f.ok or mix is None or any_invalid(name, rate, duration):
        return None
    return LoadPhase(name=name, rate=rate, duration_s=duration, mix=mix)


def total_duration_s(phases: tuple[LoadPhase, ...] | list[LoadPhase]) -> float:
    return float(sum(p.duration_s for p in phases))
