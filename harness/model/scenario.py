"""The scenario: target, seed, load phases, faults, SLOs, profiles and the limits of a schedule
search (``explore:``), as frozen validated data.

A scenario comes from a YAML file (:func:`load_scenario`), from a parsed mapping
(:func:`scenario_from_dict`) or is built in Python from the dataclasses and then checked with
:func:`validate_scenario`. Validation is complete before anything starts: every problem, in the
base scenario and in every profile, is collected into one :class:`ScenarioError` that names the
file, the field path, the value and what is allowed. ``to_dict`` round-trips.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.model.answers import AnswerSpec, cross_check_answers, read_answers
from harness.model.bounds import check_data
from harness.model.capacity import CapacitySpec, read_capacity
from harness.model.consistency import cross_check
from harness.model.errors import MISSING, Problem, ScenarioError
from harness.model.explore import ExploreSpec, read_explore
from harness.model.faults import (
    FaultSpec,
    RandomFaultSchedule,
    allowed_targets,
    read_fault,
    read_random_schedule,
    resolve_targets,
)
from harness.model.guards import GuardSpec, read_guard
from harness.model.load import LoadPhase, read_mix, read_phase, total_duration_s
from harness.model.profiles import apply_profile, read_profiles, relocate
from harness.model.schedule import RequestSchedule, random_fault_schedule, request_schedule
from harness.model.slo import (
    QUALITY_METRICS,
    REFERENCE_METRICS,
    Evidence,
    SLOSpec,
    read_evidence,
    read_slo,
)
from harness.model.target import Target, read_target
from harness.model.validate import Fields, integer, list_at, number, string, text
from harness.model.yamlio import YamlProblem, read_yaml

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Scenario:
    """Everything a run needs, and nothing read from a clock."""

    name: str
    target: Target
    seed: int
    load: tuple[LoadPhase, ...]
    faults: tuple[FaultSpec, ...] = ()
    fault_schedule: RandomFaultSchedule | None = None
    slos: tuple[SLOSpec, ...] = ()
    warmup_s: float = 5.0
    settle_s: float = 2.0
    sla_ms: float = 20.0
    evidence: Evidence = Evidence()
    description: str = ""
    explore: ExploreSpec | None = None  # the limits of `recchaos explore` (harness/explore)
    answers: AnswerSpec = AnswerSpec()
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: str | None = None
    guards: tuple[GuardSpec, ...] = ()
    capacity: CapacitySpec | None = None  # rate steps measuring the capacity before the load
    source: str = field(default="<python>", compare=False)

    @property
    def load_duration_s(self) -> float:
        return total_duration_s(self.load)

    @property
    def skip_reason(self) -> str | None:
        """Why the applied profile is not meant to run (its ``skip:``), or None."""
        reason = self.profiles.get(self.profile or "", {}).get("skip")
        return reason if isinstance(reason, str) else None

    def where(self, origin: str) -> str:
        """``scenarios/primary_kill.yaml, slos[0]``: where a part of this scenario is written."""
        return f"{self.source}, {origin}" if origin else self.source

    def fault_plan(self) -> tuple[FaultSpec, ...]:
        """Listed faults plus the generated schedule, ordered by start time."""
        generated = expand_schedule(self) if self.fault_schedule else ()
        return tuple(sorted(self.faults + generated, key=lambda f: f.at_s))

    def request_schedule(self) -> RequestSchedule:
        return request_schedule(self.load, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "target": self.target.to_dict(),
            "warmup_s": self.warmup_s,
            "settle_s": self.settle_s,
            "sla_ms": self.sla_ms,
            "load": [p.to_dict() for p in self.load],
            "faults": [f.to_dict() for f in self.faults],
            "fault_schedule": self.fault_schedule.to_dict() if self.fault_schedule else None,
            "slos": [s.to_dict() for s in self.slos],
            "guards": [g.to_dict() for g in self.guards],
            "evidence": self.evidence.to_dict(),
            "explore": self.explore.to_dict() if self.explore is not None else None,
            "answers": self.answers.to_dict(),
            "profiles": {k: dict(v) for k, v in self.profiles.items()},
            "profile": self.profile,
            "capacity": self.capacity.to_dict() if self.capacity is not None else None,
        }


def expand_schedule(s: Scenario) -> tuple[FaultSpec, ...]:
    """The faults the random schedule generates for this scenario (same seed, same faults)."""
    sched = s.fault_schedule
    if sched is None:
        return ()
    names = tuple(
        n
        for n in s.target.component_names()
        if any(fnmatch.fnmatchcase(n, p) for p in sched.targets)
    )
    start = (
        sched.start_s
        if sched.start_s is not None
        else (s.warmup_s + sched.every_s - sched.duration_s)
    )
    end = sched.end_s if sched.end_s is not None else s.load_duration_s - s.settle_s
    return random_fault_schedule(
        sched.seed if sched.seed is not None else s.seed,
        names,
        sched.every_s,
        sched.duration_s,
        sched.kinds,
        start_s=start,
        end_s=end,
        params=sched.params,
        compatible=lambda kind, name: name in allowed_targets(kind, s.target),
    )


def load_scenario(path: str | os.PathLike[str], profile: str | None = None) -> Scenario:
    """Read and fully validate a scenario file; raises :class:`ScenarioError` (a UsageError)."""
    source = os.fspath(path)
    data = read_yaml(Path(source))
    if isinstance(data, YamlProblem):
        raise ScenarioError(source, [data.problem])
    return scenario_from_dict(data, source, profile=profile)


def validate_scenario(scenario: Scenario) -> Scenario:
    """Check a scenario built in Python with the same rules as a file; returns it validated."""
    return scenario_from_dict(scenario.to_dict(), scenario.source, profile=scenario.profile)


def scenario_from_dict(data: Any, source: str = "<python>", profile: str | None = None) -> Scenario:
    """Validate a parsed scenario (base and every profile) and apply ``profile`` if given.

    ``profile`` defaults to the scenario's own ``profile`` key. Data past the limits of
    :mod:`harness.model.bounds` (too deep, too large, or containing itself) is refused first.
    """
    beyond = check_data(data)
    if beyond is not None:
        raise ScenarioError(source, [beyond])
    problems: list[Problem] = []
    base = _read(data, source, problems)
    profiles = read_profiles(data.get("profiles") if isinstance(data, dict) else None, problems)
    chosen = (
        profile
        if profile is not None
        else (data.get("profile") if isinstance(data, dict) else None)
    )
    if isinstance(chosen, str) and chosen not in profiles:
        where = "profile" if profile is None else "profile (from the command line)"
        allowed = "one of " + ", ".join(profiles) if profiles else "none: no profiles defined"
        problems.append(Problem(where, chosen, allowed))
    result = base
    seen = list(problems)
    for name, overrides in profiles.items():
        local: list[Problem] = []
        merged, origins = apply_profile(data, name, overrides, local)
        scenario = _read(merged, source, local)
        for p in local:
            moved = relocate(p, name, origins) if p not in seen else None
            if moved is not None and moved not in problems:
                problems.append(moved)
        if name == chosen and scenario is not None:
            result = scenario
    if problems or result is None:
        raise ScenarioError(source, problems or [Problem("", data, "a valid scenario")])
    return replace(result, profiles=profiles, profile=chosen)


def _read(data: Any, source: str, problems: list[Problem]) -> Scenario | None:
    """One pass over a (merged) scenario mapping: the scenario, or None with problems recorded."""
    before = len(problems)
    f = Fields(data, "", problems)
    if not f.ok:
        return None
    stem = "scenario" if source.startswith("<") else Path(source).stem
    name = f.get("name", string(NAME_PATTERN, f"a name matching {NAME_PATTERN}"), stem)
    description = f.get("description", text(), "")
    seed = f.get("seed", integer(0, MAX_SEED))
    warmup = f.get("warmup_s", number(0, unit="seconds"), 5.0)
    settle = f.get("settle_s", number(0, unit="seconds"), 2.0)
    sla = f.get("sla_ms", number(0, lo_open=True, unit="ms"), 20.0)
    if not f.has("target"):
        f.add("target", MISSING, "a mapping with kind: recommender or kind: generic")
    target = read_target(f.raw("target", {}), "target", problems) if f.has("target") else None
    mix = read_mix(f.raw("mix", {}), "mix", problems)
    load = _read_list(f, "load", lambda d, p: read_phase(d, p, problems, mix), required=True)
    faults = _read_list(f, "faults", lambda d, p: read_fault(d, p, problems, target, p))
    sched = f.raw("fault_schedule")
    sched = read_random_schedule(sched, "fault_schedule", problems, target) if sched else None
    slos = _read_list(f, "slos", lambda d, p: read_slo(d, p, problems, p))
    guards = _read_list(f, "guards", lambda d, p: read_guard(d, p, problems, p))
    evidence = read_evidence(f.raw("evidence", {}), "evidence", problems)
    explore = f.raw("explore")
    explore = read_explore(explore, "explore", problems, target) if explore is not None else None
    answers = read_answers(f.raw("answers", {}), "answers", problems, source)
    capacity = f.raw("capacity")
    capacity = read_capacity(capacity, "capacity", problems) if capacity is not None else None
    f.raw("profiles")
    f.get("profile", string(), None)
    f.finish()
    parts = (name, description, seed, warmup, settle, sla, load, faults, slos, guards)
    if len(problems) > before or target is None or None in (evidence, answers) or None in parts:
        return None
    assert evidence is not None and answers is not None
    s = Scenario(
        name,
        target,
        seed,
        load,
        faults,
        sched,
        slos,
        warmup,
        settle,
        sla,
        evidence,
        description,
        explore,
        answers,
        guards=guards or (),
        capacity=capacity,
        source=source,
    )
    cross_check(s, problems)
    cross_check_answers(answers, target.kind, problems)
    _check_quality_slos(s, problems)
    _check_capacity_slos(s, problems)
    return s if len(problems) == before else None


def _check_capacity_slos(s: Scenario, problems: list[Problem]) -> None:
    """A floor written as a share of the capacity needs the steps that measure it."""
    if s.capacity is not None:
        return
    for slo in s.slos:
        if slo.of == "capacity":
            problems.append(
                Problem(
                    f"{slo.origin}.of",
                    "capacity",
                    "of: capacity only in a scenario with a capacity section (rates, step_s)",
                    "add capacity: {rates: [...], step_s: 3}, or give goodput in answers/s",
                )
            )


def _check_quality_slos(s: Scenario, problems: list[Problem]) -> None:
    """Answer-quality SLOs need checked answers, and agreement and NDCG need a reference."""
    kind = s.target.kind
    checked = s.answers.checked(kind)
    has_reference = s.answers.resolved_reference(kind) != "none"
    for i, slo in enumerate(s.slos):
        if slo.metric in QUALITY_METRICS and not checked:
            problems.append(
                Problem(
                    f"slos[{i}].metric",
                    slo.metric,
                    "a metric that does not need answers checked",
                    "answers are not checked for this target: give answers.format, "
                    "answers.schema or answers.validator",
                )
            )
        elif slo.metric in REFERENCE_METRICS and not has_reference:
            problems.append(
                Problem(
                    f"slos[{i}].metric",
                    slo.metric,
                    "a metric that does not need a reference answer",
                    "give answers.reference (auto for the bundled recommender, or a file "
                    "written by `recchaos sut reference`)",
                )
            )


def _read_list(f: Fields, key: str, reader: Any, required: bool = False) -> Any:
    raw = f.raw(key)
    allowed = f"a list of {key} entries" + (" (at least one)" if required else "")
    if required and not raw:
        f.add(key, MISSING if raw is None else raw, allowed)
        return None
    items = list_at(raw, key, f.problems, allowed)
    if raw is not None and not isinstance(raw, list):
        return None
    out = [reader(item, f"{key}[{i}]") for i, item in enumerate(items)]
    return None if any(x is None for x in out) else tuple(out)


__all__ = [
    "Scenario",
    "expand_schedule",
    "load_scenario",
    "scenario_from_dict",
    "validate_scenario",
    "resolve_targets",
]
