"""The scenario's ``explore:`` section: the limits a fault-schedule search stays within.

``recchaos explore`` (:mod:`harness.explore`) draws fault schedules of at most ``max_faults``
faults, each a kind of ``kinds`` on a component matching ``targets``, lasting ``min_duration_s``
to ``max_duration_s``, with parameters from ``params``. Every key is optional:

- ``kinds``: default every kind the target's backend runs that needs no root;
- ``targets``: names or glob patterns, in the order a search prefers them (the first match is
  the simplest target); default every component but the entry point: the balancer ``lb``
  and the gateways behind it (``gateway-0`` ...), or the lone ``gateway`` (nothing in front of
  the gateways falls back when they all fail, so a search that hits them breaks any SLO and
  teaches nothing; name them in ``targets`` to search them);
- ``max_faults``: default 3; ``max_duration_s``: default 5; ``min_duration_s``: default 1;
- ``params``: per kind, per parameter: a value (fixed), a list of values (one is drawn) or
  ``{min: A, max: B}`` (a number in between). A parameter the registry requires and ``params``
  does not give is drawn from :data:`DEFAULT_RANGES`; every other one keeps its default.

Pure data, validated like the rest of a scenario: problems name the field path, the value and
what is allowed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from harness.model.errors import Problem
from harness.model.fault_kinds import FAULT_KINDS, allowed_targets, backend_of, describe_targets
from harness.model.target import Target
from harness.model.validate import (
    INVALID,
    Bad,
    Fields,
    any_invalid,
    choice,
    integer,
    join_path,
    number,
)

DEFAULT_MAX_FAULTS = 3
DEFAULT_MAX_DURATION_S = 5.0
DEFAULT_MIN_DURATION_S = 1.0
MAX_FAULTS_LIMIT = 20
EXCLUDED_BY_DEFAULT = ("gateway", "gateway-*", "lb")  # glob patterns: the entry point


@dataclass(frozen=True)
class Range:
    """A number drawn between ``lo`` and ``hi`` (shrinking towards ``lo``)."""

    lo: float
    hi: float

    def to_dict(self) -> dict[str, float]:
        return {"min": self.lo, "max": self.hi}


@dataclass(frozen=True)
class Choices:
    """One of ``values`` (shrinking towards the first); a single value is fixed."""

    values: tuple[Any, ...]

    def to_dict(self) -> Any:
        return self.values[0] if len(self.values) == 1 else list(self.values)


ParamDraw = Range | Choices

DEFAULT_RANGES: dict[str, dict[str, ParamDraw]] = {
    "latency": {"delay_ms": Range(1.0, 100.0)},
    "app_delay": {"delay_ms": Range(1.0, 100.0)},
    "bandwidth": {"rate_kbps": Range(8.0, 1024.0)},
    "packet_loss": {"probability": Range(0.01, 0.5)},
    "cpu_throttle": {"cpu_fraction": Range(0.05, 0.5)},
}
"""How required parameters are drawn when ``params`` does not say."""


@dataclass(frozen=True)
class ExploreSpec:
    """The limits of a schedule search; None means the documented default."""

    kinds: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    max_faults: int = DEFAULT_MAX_FAULTS
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    min_duration_s: float = DEFAULT_MIN_DURATION_S
    params: dict[str, dict[str, ParamDraw]] = field(default_factory=dict)

    def resolved_kinds(self, target: Target) -> tuple[str, ...]:
        """The kinds to draw: the listed ones, or every kind the backend runs without root."""
        if self.kinds is not None:
            return self.kinds
        patterns = self.resolved_patterns(target)
        return tuple(
            name
            for name, kind in FAULT_KINDS.items()
            if not kind.root
            and backend_of(target) in kind.backends
            and _matching(patterns, name, target)
        )

    def resolved_patterns(self, target: Target) -> tuple[str, ...]:
        if self.targets is not None:
            return self.targets
        return tuple(
            n
            for n in target.component_names()
            if not any(fnmatch.fnmatchcase(n, p) for p in EXCLUDED_BY_DEFAULT)
        )

    def targets_for(self, kind: str, target: Target) -> tuple[str, ...]:
        """Components a ``kind`` fault may hit within the patterns, in the patterns' order."""
        return _matching(self.resolved_patterns(target), kind, target)

    def draws_for(self, kind: str) -> dict[str, ParamDraw]:
        """How each parameter of ``kind`` that is drawn or fixed gets its value."""
        spec = FAULT_KINDS[kind]
        given = self.params.get(kind, {})
        out: dict[str, ParamDraw] = {}
        for name, param in spec.params.items():
            if name in given:
                out[name] = given[name]
            elif param.required:
                out[name] = DEFAULT_RANGES.get(kind, {})[name]
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.kinds is not None:
            d["kinds"] = list(self.kinds)
        if self.targets is not None:
            d["targets"] = list(self.targets)
        d["max_faults"] = self.max_faults
        d["max_duration_s"] = self.max_duration_s
        d["min_duration_s"] = self.min_duration_s
        if self.params:
            d["params"] = {
                kind: {name: draw.to_dict() for name, draw in p.items()}
                for kind, p in self.params.items()
            }
        return d


def _matching(patterns: tuple[str, ...], kind: str, target: Target) -> tuple[str, ...]:
    """The components ``kind`` may hit, in the order of the patterns that match them (and in
    component order within a pattern): the first is the simplest a search shrinks towards."""
    ok = allowed_targets(kind, target)
    out: dict[str, None] = {}
    for pattern in patterns:
        for n in target.component_names():
            if n in ok and fnmatch.fnmatchcase(n, pattern):
                out.setdefault(n)
    return tuple(out)


def read_explore(
    data: Any, path: str, problems: list[Problem], target: Target | None
) -> ExploreSpec | None:
    """The ``explore`` section, or None with every problem recorded."""
    before = len(problems)
    f = Fields(data, path, problems)
    kinds = _read_kinds(f, target)
    patterns = _read_patterns(f, target)
    max_faults = f.get("max_faults", integer(1, MAX_FAULTS_LIMIT), DEFAULT_MAX_FAULTS)
    longest = f.get("max_duration_s", number(0, 3600, lo_open=True, unit="seconds"), None)
    shortest = f.get("min_duration_s", number(0, 3600, lo_open=True, unit="seconds"), None)
    longest, shortest = _durations(f, longest, shortest)
    raw_params = f.raw("params", {})
    f.finish()
    if not f.ok or any_invalid(kinds, patterns, max_faults, longest, shortest):
        return None
    spec = ExploreSpec(kinds, patterns, max_faults, longest, shortest)
    params = _read_params(f, raw_params, spec, target)
    if params is INVALID or len(problems) > before:
        return None
    spec = ExploreSpec(kinds, patterns, max_faults, longest, shortest, params)
    if target is not None:
        _check_reachable(f, spec, target)
    return spec if len(problems) == before else None


def _durations(f: Fields, longest: Any, shortest: Any) -> tuple[Any, Any]:
    if longest is INVALID or shortest is INVALID:
        return longest, shortest
    hi = DEFAULT_MAX_DURATION_S if longest is None else longest
    lo = min(DEFAULT_MIN_DURATION_S, hi) if shortest is None else shortest
    if lo > hi:
        raw = f.data.get("min_duration_s", shortest)
        return hi, f.add("min_duration_s", raw, f"a number <= max_duration_s ({hi:g} s)")
    return hi, lo


def _read_kinds(f: Fields, target: Target | None) -> Any:
    raw = f.raw("kinds")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        return f.add("kinds", raw, "a non-empty list of fault kinds")
    conv = choice(tuple(FAULT_KINDS))
    items = Fields(dict(enumerate(raw)), f.at("kinds"), f.problems)
    kinds = tuple(items.get(i, conv) for i in range(len(raw)))  # type: ignore[arg-type]
    if any_invalid(*kinds):
        return INVALID
    return tuple(dict.fromkeys(kinds))


def _read_patterns(f: Fields, target: Target | None) -> Any:
    raw = f.raw("targets")
    if raw is None:
        return None
    allowed = "a non-empty list of component names or glob patterns such as shard-*-primary"
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p for p in raw):
        return f.add("targets", raw, allowed)
    if target is not None:
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
    return tuple(raw)


def _check_reachable(f: Fields, spec: ExploreSpec, target: Target) -> None:
    """Every listed kind can hit at least one of the targets (and some kind is left)."""
    kinds = spec.resolved_kinds(target)
    if not kinds:
        f.add(
            "targets",
            list(spec.resolved_patterns(target)),
            "targets that some fault kind can hit",
            "no kind that needs no root can hit them; list kinds explicitly",
        )
        return
    for kind in kinds:
        if not spec.targets_for(kind, target):
            f.add(
                "kinds",
                kind,
                "fault kinds that can hit at least one of the targets",
                f"{kind} can hit {describe_targets(kind, target)}",
            )
            return


def _read_params(f: Fields, raw: Any, spec: ExploreSpec, target: Target | None) -> Any:
    if not isinstance(raw, dict):
        return f.add("params", raw, "a mapping of fault kind to its parameters")
    kinds = spec.resolved_kinds(target) if target is not None else spec.kinds
    out: dict[str, dict[str, ParamDraw]] = {}
    for kind, given in raw.items():
        path = join_path(f.at("params"), str(kind))
        if kind not in FAULT_KINDS or (kinds is not None and kind not in kinds):
            listed = ", ".join(kinds) if kinds is not None else ", ".join(FAULT_KINDS)
            f.problems.append(Problem(path, given, "parameters for one of the kinds " + listed))
            return INVALID
        draws = _read_kind_params(kind, given, path, f.problems)
        if draws is INVALID:
            return INVALID
        out[kind] = draws
    for kind in kinds or ():
        missing = [
            name
            for name, p in FAULT_KINDS[kind].params.items()
            if p.required
            and name not in out.get(kind, {})
            and name not in DEFAULT_RANGES.get(kind, {})
        ]
        if missing:
            f.problems.append(
                Problem(
                    join_path(join_path(f.at("params"), kind), missing[0]),
                    None,
                    FAULT_KINDS[kind].params[missing[0]].conv.allowed,
                    f"{kind} faults need {missing[0]}",
                )
            )
            return INVALID
    return out


def _read_kind_params(kind: str, given: Any, path: str, problems: list[Problem]) -> Any:
    spec = FAULT_KINDS[kind]
    g = Fields(given, path, problems)
    out: dict[str, ParamDraw] = {}
    for name, param in spec.params.items():
        if not g.has(name):
            continue
        raw = g.raw(name)
        allowed = (
            f"{param.conv.allowed}; or a list of such values, or {{min: A, max: B}} for a number"
        )
        try:
            out[name] = _draw(raw, param.conv.check)
        except Bad as bad:
            g.add(name, raw, allowed, bad.hint)
    g.finish(extra_known=tuple(spec.params))
    if not g.ok or len(out) < len([k for k in g.data if k in spec.params]):
        return INVALID
    return out


def _draw(raw: Any, check: Any) -> ParamDraw:
    if isinstance(raw, dict):
        if set(raw) != {"min", "max"}:
            raise Bad("a range is {min: A, max: B}")
        lo, hi = check(raw["min"]), check(raw["max"])
        if not isinstance(lo, int | float) or isinstance(lo, bool) or lo > hi:
            raise Bad("a range needs numbers with min <= max")
        return Range(lo, hi)
    if isinstance(raw, list):
        if not raw:
            raise Bad("an empty list allows nothing")
        return Choices(tuple(check(v) for v in raw))
    return Choices((check(raw),))
