"""Whether a run can be judged at all: its own problems, next to the SUT's SLO checks.

A planned fault that never took effect proves nothing, nor does a load with requests unaccounted
for: each becomes an INCONCLUSIVE check of its own, so the verdict says why. A fault that could
not be healed at the end of the load leaves the run's last moments in doubt: a run that would
PASS is INCONCLUSIVE instead (the heal error itself is in the run record's errors). Never does a
problem turn a FAIL into anything else: what the SUT did wrong stays wrong.

Pure: the inputs are texts the runner collected (fault problems, the load's unaccounted reasons,
heal errors), the output check results and a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.checks.verdict import CheckResult, Verdict, combine


@dataclass(frozen=True)
class RunProblems:
    """What went wrong with the run itself, as the runner found it."""

    faults: tuple[str, ...] = ()  # a planned fault not applied, a scheduled heal that failed
    unaccounted: tuple[str, ...] = ()  # why some intended request is not accounted for
    heal_errors: tuple[str, ...] = ()  # heals that failed after the load, recorded as errors

    def __bool__(self) -> bool:
        return bool(self.faults or self.unaccounted or self.heal_errors)


def problem_checks(problems: RunProblems) -> tuple[CheckResult, ...]:
    """One INCONCLUSIVE check per fault problem and per unaccounted reason."""
    faults = [
        CheckResult(Verdict.INCONCLUSIVE, problem, None, None, None, "faults", "fault")
        for problem in problems.faults
    ]
    accounting = [
        CheckResult(
            Verdict.INCONCLUSIVE,
            f"requests not accounted for: {why}",
            None,
            None,
            None,
            "load",
            "accounting",
        )
        for why in problems.unaccounted
    ]
    return tuple(faults + accounting)


def run_verdict(checks: Sequence[CheckResult], problems: RunProblems) -> Verdict:
    """The verdict of all ``checks`` (the problem checks among them), never PASS when a heal
    failed."""
    verdict = combine(checks)
    if verdict is Verdict.PASS and problems.heal_errors:
        return Verdict.INCONCLUSIVE
    return verdict
