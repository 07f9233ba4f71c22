"""Scenario rules that span fields: fault timing against the load, phase names, SLO selections.
A surge phase (``surge: true``) counts as an event like a fault: it gives the scenario before,
during and after windows, and SLO fault selectors may pick it (``fault: {kind: surge}``).

Run on a scenario whose fields are each valid; every broken rule becomes a :class:`Problem` at
the field to change, saying what would be allowed there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.model.errors import Problem
from harness.model.load import surge_events
from harness.model.record import FaultEvent
from harness.model.slo import FAULT_METRICS, SLOSpec

if TYPE_CHECKING:
    from harness.model.faults import FaultSpec
    from harness.model.scenario import Scenario

WARMUP_HINT = "the warm-up is excluded from statistics, so a fault there cannot be judged"


def cross_check(s: Scenario, problems: list[Problem]) -> None:
    _check_phases(s, problems)
    end = s.load_duration_s
    if s.warmup_s >= end:
        problems.append(
            Problem("warmup_s", s.warmup_s, f"a number < the load's duration ({end:g} s)")
        )
        return
    for i, fault in enumerate(s.faults):
        _check_fault_timing(fault, f"faults[{i}]", s.warmup_s, end, problems)
    for surge in surge_events(s.load):
        if surge.inject_s < s.warmup_s:
            problems.append(
                Problem(
                    f"{surge.origin}.surge",
                    True,
                    f"surge only on a phase that starts at or after warmup_s ({s.warmup_s:g} s);"
                    f" this one starts at {surge.inject_s:g} s",
                    WARMUP_HINT.replace("a fault", "a surge"),
                )
            )
    plan = _check_schedule(s, problems)
    if plan is None:
        return
    for i, slo in enumerate(s.slos):
        _check_slo(slo, f"slos[{i}]", s, plan, problems)


def _check_phases(s: Scenario, problems: list[Problem]) -> None:
    seen: set[str] = set()
    for i, phase in enumerate(s.load):
        if phase.name in seen:
            problems.append(
                Problem(f"load[{i}].name", phase.name, "a name not used by another phase")
            )
        seen.add(phase.name)


def _check_fault_timing(
    fault: FaultSpec, path: str, warmup: float, end: float, problems: list[Problem]
) -> None:
    if not warmup <= fault.at_s < end:
        problems.append(
            Problem(
                f"{path}.at_s",
                fault.at_s,
                f"a number from warmup_s ({warmup:g}) to below the load's end ({end:g} s)",
                WARMUP_HINT if fault.at_s < warmup else "",
            )
        )
    elif fault.duration_s is not None and fault.at_s + fault.duration_s > end + 1e-9:
        problems.append(
            Problem(
                f"{path}.duration_s",
                fault.duration_s,
                f"a number <= {end - fault.at_s:g} (the load ends at {end:g} s)",
                "or heal: end to heal when the load ends",
            )
        )


def _check_schedule(s: Scenario, problems: list[Problem]) -> tuple[FaultSpec, ...] | None:
    sched = s.fault_schedule
    if sched is None:
        return s.fault_plan()
    end = s.load_duration_s
    before = len(problems)
    if sched.start_s is not None and not s.warmup_s <= sched.start_s < end:
        problems.append(
            Problem(
                "fault_schedule.start_s",
                sched.start_s,
                f"a number from warmup_s ({s.warmup_s:g}) to below the load's end ({end:g} s)",
                WARMUP_HINT,
            )
        )
    if sched.end_s is not None and sched.end_s > end:
        problems.append(
            Problem("fault_schedule.end_s", sched.end_s, f"a number <= the load's end ({end:g} s)")
        )
    if len(problems) > before:
        return None
    plan = s.fault_plan()
    if len(plan) == len(s.faults):
        problems.append(
            Problem(
                "fault_schedule.every_s",
                sched.every_s,
                "a schedule that fits at least one fault before its end",
                f"with duration_s {sched.duration_s:g} no fault fits; lengthen"
                " the load or move start_s/end_s",
            )
        )
        return None
    return plan


def _check_slo(
    slo: SLOSpec, path: str, s: Scenario, plan: tuple[FaultSpec, ...], problems: list[Problem]
) -> None:
    sel = slo.fault
    if sel is not None and sel.index is not None and sel.index >= len(s.faults):
        allowed = (
            f"an index into faults, from 0 to {len(s.faults) - 1}"
            if s.faults
            else "no index: the scenario lists no faults"
        )
        problems.append(Problem(f"{path}.fault", sel.index, allowed))
        return
    surges = surge_events(s.load)
    chosen_surges: list[FaultEvent] = [e for e in surges if sel is None or sel.matches(e)]
    chosen_faults = [f for f in plan if sel is None or sel.matches(f)]
    chosen = chosen_faults + chosen_surges
    if sel is not None and not chosen:
        labels = ", ".join(sorted({f.label for f in plan} | {e.label for e in surges})) or "none"
        problems.append(
            Problem(
                f"{path}.fault",
                sel.to_dict(),
                f"a selector matching at least one fault (faults: {labels})",
            )
        )
    elif slo.metric in FAULT_METRICS and not chosen:
        problems.append(
            Problem(
                f"{path}.metric",
                slo.metric,
                "a window metric: this scenario has no faults or surge phases to measure",
            )
        )
    elif (
        slo.metric == "time_to_recover"
        and not chosen_surges
        and all(f.duration_s is None for f in chosen_faults)
    ):
        problems.append(
            Problem(
                f"{path}.metric",
                slo.metric,
                "a metric other than time_to_recover: the selected faults heal"
                " only at the end of the load",
            )
        )
    elif not slo.per_fault:
        _check_windows(slo, path, bool(plan) or bool(surges), problems)


def _check_windows(slo: SLOSpec, path: str, has_faults: bool, problems: list[Problem]) -> None:
    if not has_faults and "steady" not in slo.windows:
        problems.append(
            Problem(
                f"{path}.windows",
                list(slo.windows),
                "steady or every: this scenario has no faults and no surge phase, so no"
                " before, during or after windows",
            )
        )
    elif has_faults and slo.windows == ("steady",):
        problems.append(
            Problem(
                f"{path}.windows",
                list(slo.windows),
                "before, during, after or every: a scenario with faults or a surge phase has"
                " no steady window",
            )
        )
