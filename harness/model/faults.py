"""Fault specs and the seeded random fault schedule spec, and their readers. Pure data.

A :class:`FaultSpec` says when (``at_s`` after load start), for how long (``duration_s``, or
``None`` for healed at the end of the load), what and where. What a kind is (its parameters,
defaults, limits and targets) is the registry's, :data:`harness.model.fault_kinds.FAULT_KINDS`;
the readers here apply it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from harness.model.errors import MISSING, Problem
from harness.model.fault_kinds import (
    FAULT_KINDS,
    MECHANISMS,
    allowed_targets,
    default_target,
    describe_targets,
)
from harness.model.target import COMPONENT_PATTERN, Target
from harness.model.validate import (
    INVALID,
    REQUIRED,
    Fields,
    any_invalid,
    choice,
    integer,
    join_path,
    number,
    string,
)


@dataclass(frozen=True)
class FaultSpec:
    """One fault: ``kind`` on ``target`` from ``at_s`` for ``duration_s`` (None: until the end).

    ``origin`` says where in the scenario it came from (``faults[2]``, or the generated schedule)
    and is left out of comparisons and of ``to_dict``.
    """

    kind: str
    target: str
    at_s: float
    duration_s: float | None
    params: dict[str, Any] = field(default_factory=dict)
    origin: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.kind}({self.target})"

    def end_s(self, load_end_s: float) -> float:
        return load_end_s if self.duration_s is None else self.at_s + self.duration_s

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "target": self.target, "at_s": self.at_s}
        if self.duration_s is None:
            d["heal"] = "end"
        else:
            d["duration_s"] = self.duration_s
        d["params"] = dict(self.params)
        return d


@dataclass(frozen=True)
class RandomFaultSchedule:
    """One random single-component fault every ``every_s`` seconds; same seed, same schedule.

    ``targets`` may hold glob patterns (``shard-*-primary``); ``start_s``/``end_s`` default to
    the warm-up end plus one quiet gap, and the load end minus the settle time; ``seed`` defaults
    to the scenario's seed. ``params`` gives parameters per kind.
    """

    every_s: float
    duration_s: float
    kinds: tuple[str, ...]
    targets: tuple[str, ...]
    start_s: float | None = None
    end_s: float | None = None
    seed: int | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "every_s": self.every_s,
            "duration_s": self.duration_s,
            "kinds": list(self.kinds),
            "targets": list(self.targets),
            "start_s": self.start_s,
            "end_s": self.end_s,
            "seed": self.seed,
            "params": {k: dict(v) for k, v in self.params.items()},
        }


def read_params(
    kind: str, data: Any, path: str, problems: list[Problem], duration_s: float | None = None
) -> Any:
    """The parameters of a ``kind`` fault, complete (defaults filled in) and checked against
    the registry's limits and rules (``duration_s``: the fault's, where known)."""
    spec = FAULT_KINDS[kind]
    f = Fields(data, path, problems)
    out = {name: f.get(name, p.conv, p.default) for name, p in spec.params.items()}
    f.finish()
    if not f.ok or any_invalid(*out.values()):
        return INVALID
    broken = spec.check(out, duration_s)
    if broken is not None:
        name, allowed = broken
        return f.add(name, out[name], allowed)
    return out


def read_fault(
    data: Any, path: str, problems: list[Problem], target: Target | None, origin: str
) -> FaultSpec | None:
    f = Fields(data, path, problems)
    kind = f.get("kind", choice(tuple(FAULT_KINDS)))
    at_s = f.get("at_s", number(0, unit="seconds after load start"))
    duration = _read_duration(f)
    raw_params = f.raw("params", {})
    known_duration = None if duration is INVALID else duration
    params = (
        INVALID
        if kind is INVALID
        else read_params(kind, raw_params, f.at("params"), problems, known_duration)
    )
    name = _read_target_name(f, kind, target)
    f.finish()
    if not f.ok or any_invalid(kind, at_s, duration, params, name):
        return None
    return FaultSpec(kind, name, at_s, duration, params, origin=origin)


def _read_duration(f: Fields) -> Any:
    duration = f.get("duration_s", number(0, lo_open=True, unit="seconds"), None)
    heal = f.get("heal", choice(("end",)), None)
    if duration is None and heal is None:
        return f.add("duration_s", MISSING, "a number > 0 (seconds), or heal: end instead")
    if duration is not None and heal is not None:
        return f.add("heal", heal, "either duration_s or heal: end, not both")
    return duration


def _read_target_name(f: Fields, kind: Any, target: Target | None) -> Any:
    default = default_target(kind) if kind is not INVALID else None
    conv = string(COMPONENT_PATTERN, "a component name")
    name = f.get("target", conv, REQUIRED if default is None else default)
    if kind is INVALID or target is None or name is INVALID:
        return name
    if name not in allowed_targets(kind, target):
        hint = f"{kind} faults go through {MECHANISMS[FAULT_KINDS[kind].mechanism]}"
        return f.add("target", name, describe_targets(kind, target), hint)
    return name


def read_random_schedule(
    data: Any, path: str, problems: list[Problem], target: Target | None
) -> RandomFaultSchedule | None:
    f = Fields(data, path, problems)
    every = f.get("every_s", number(0, lo_open=True, unit="seconds"))
    duration = f.get("duration_s", number(0, lo_open=True, unit="seconds"))
    kinds = _read_names(f, "kinds", tuple(FAULT_KINDS), "a list of fault kinds")
    patterns = _read_patterns(f, kinds, target)
    start = f.get("start_s", number(0, unit="seconds after load start"), None)
    end = f.get("end_s", number(0, lo_open=True, unit="seconds after load start"), None)
    seed = f.get("seed", integer(0, 2**63 - 1), None)
    params = _read_kind_params(f, kinds, None if duration is INVALID else duration)
    f.finish()
    if not f.ok or any_invalid(every, duration, kinds, patterns, start, end, seed, params):
        return None
    if duration >= every:
        f.add(
            "duration_s",
            duration,
            f"a number < every_s ({every:g} s)",
            "faults must leave a quiet gap between them",
        )
        return None
    return RandomFaultSchedule(every, duration, kinds, patterns, start, end, seed, params)


def _read_names(f: Fields, key: str, options: tuple[str, ...], allowed: str) -> Any:
    raw = f.raw(key)
    if not isinstance(raw, list) or not raw:
        return f.add(key, MISSING if raw is None else raw, allowed)
    conv = choice(options)
    items = Fields(dict(enumerate(raw)), f.at(key), f.problems)
    values = tuple(items.get(i, conv) for i in range(len(raw)))  # type: ignore[arg-type]
    return INVALID if any_invalid(*values) else values


def _read_patterns(f: Fields, kinds: Any, target: Target | None) -> Any:
    raw = f.raw("targets")
    allowed = "a list of component names or glob patterns such as shard-*-primary"
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) for p in raw):
        return f.add("targets", MISSING if raw is None else raw, allowed)
    if target is None or kinds is INVALID:
        return tuple(raw)
    names = target.component_names()
    for i, pattern in enumerate(raw):
        if not fnmatch.filter(names, pattern):
            f.problems.append(
                Problem(
                    join_path(f.at("targets"), i),
                    pattern,
                    "a name or pattern matching one of " + ", ".join(names),
                )
            )
            return INVALID
    for kind in kinds:
        if not resolve_targets(raw, kind, target):
            return f.add(
                "kinds",
                kind,
                "fault kinds that can hit at least one of the targets",
                f"{kind} can hit {describe_targets(kind, target)}",
            )
    return tuple(raw)


def _read_kind_params(f: Fields, kinds: Any, duration_s: float | None) -> Any:
    raw = f.raw("params", {})
    if not isinstance(raw, dict):
        return f.add("params", raw, "a mapping of fault kind to its parameters")
    out: dict[str, Any] = {}
    for kind in kinds if kinds is not INVALID else ():
        path = join_path(f.at("params"), kind)
        out[kind] = read_params(kind, raw.get(kind, {}), path, f.problems, duration_s)
    for kind in raw:
        if kinds is not INVALID and kind not in kinds:
            f.problems.append(
                Problem(
                    join_path(f.at("params"), kind),
                    raw[kind],
                    "parameters for one of the listed kinds: " + ", ".join(kinds),
                )
            )
            return INVALID
    return INVALID if any_invalid(*out.values()) else out


def resolve_targets(
    patterns: tuple[str, ...] | list[str], kind: str, target: Target
) -> tuple[str, ...]:
    """Component names matching any of ``patterns`` that ``kind`` may hit, in component order."""
    ok = allowed_targets(kind, target)
    return tuple(
        n
        for n in target.component_names()
        if n in ok and any(fnmatch.fnmatchcase(n, p) for p in patterns)
    )
