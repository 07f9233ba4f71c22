"""When a guard trips, and what its trip means for the verdict: pure, fed with samples.

:class:`Sustained` is the rule every guard shares: a condition must hold, sample after sample,
for ``for_s`` seconds; a sample that does not hold resets it, a sample without evidence (an
interval in which nothing completed) leaves it as it is. :class:`ErrorRatioGuard` reads the load
workers' progress lines (cumulative counts per worker), :class:`HealthGuard` the results of
health probes; both return a :class:`GuardTrip` the first time their guard trips.

A tripped guard makes the run FAIL (:func:`halt_check`): a guard states what the system under
test must never do, even under the scenario's faults, and the evidence is the system's own
answers. The checks of the SLOs are still judged on what ran, so the report shows both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.checks.verdict import CheckResult, Verdict
from harness.model.guards import GuardSpec
from harness.model.record import Halt


@dataclass(frozen=True)
class GuardTrip:
    """A guard's condition held for its ``for_s``: from ``since_s`` to ``at_s`` (seconds from
    the load's start), with the measured ``value`` (None for a health probe) and what was seen."""

    guard: GuardSpec
    since_s: float
    at_s: float
    value: float | None
    evidence: str


@dataclass
class Sustained:
    """A condition that trips once it has held without a break for ``for_s`` seconds."""

    for_s: float
    since: float | None = None

    def update(self, start_s: float, end_s: float, holds: bool | None) -> bool:
        """A sample covering ``[start_s, end_s]``: True when the condition has now held for
        ``for_s`` (``holds`` None: no evidence, nothing changes)."""
        if holds is None:
            return False
        if not holds:
            self.since = None
            return False
        if self.since is None:
            self.since = start_s
        return end_s - self.since >= self.for_s - 1e-9


@dataclass
class ErrorRatioGuard:
    """``error_ratio`` from progress lines: each worker's line carries its cumulative
    ``answered``, ``failed`` and ``missed`` counts and its ``elapsed_s``; the interval since
    that worker's previous line is one sample. Failed, missed (never sent) and shed (refused
    by the target's overload control) requests are errors, as in the ``error_ratio`` SLO
    metric: none of them was answered."""

    spec: GuardSpec
    rule: Sustained = field(init=False)
    _last: dict[Any, tuple[float, int, int]] = field(default_factory=dict)  # worker: t, done, bad
    _span: tuple[int, int] = (0, 0)  # errors, completed since the condition began to hold

    def __post_init__(self) -> None:
        self.rule = Sustained(self.spec.for_s)

    def observe(self, line: dict[str, Any]) -> GuardTrip | None:
        try:
            worker = line.get("worker", 0)
            end = float(line["elapsed_s"])
            bad = int(line.get("failed", 0)) + int(line.get("missed", 0)) + int(line.get("shed", 0))
            done = int(line.get("answered", 0)) + bad
        except (KeyError, TypeError, ValueError):
            return None  # not a progress line this guard can read
        start, done0, bad0 = self._last.get(worker, (0.0, 0, 0))
        self._last[worker] = (end, done, bad)
        n, errors = done - done0, bad - bad0
        limit = self.spec.above if self.spec.above is not None else 1.0
        holds = None if n < self.spec.min_requests else errors / n > limit
        tripped = self.rule.update(start, end, holds)
        if holds is False:
            self._span = (0, 0)
        elif holds:
            self._span = (self._span[0] + errors, self._span[1] + n)
        if not tripped:
            return None
        errs, total = self._span
        since = self.rule.since if self.rule.since is not None else start
        return GuardTrip(
            self.spec,
            since,
            end,
            errs / total,
            f"error ratio {errs / total:.2f} ({errs:,} of {total:,} completed requests failed)"
            f" from {since:.1f} s to {end:.1f} s",
        )


@dataclass
class HealthGuard:
    """``health`` from probe results: a probe sent at ``start_s`` whose outcome was known at
    ``end_s``; ``ok`` is a 2xx answer within the timeout, ``detail`` what came back instead."""

    spec: GuardSpec
    rule: Sustained = field(init=False)
    failures: int = 0

    def __post_init__(self) -> None:
        self.rule = Sustained(self.spec.for_s)

    def observe(self, start_s: float, end_s: float, ok: bool, detail: str) -> GuardTrip | None:
        self.failures = 0 if ok else self.failures + 1
        if not self.rule.update(start_s, end_s, not ok):
            return None
        since = self.rule.since if self.rule.since is not None else start_s
        return GuardTrip(
            self.spec,
            since,
            end_s,
            None,
            f"GET {self.spec.path} failed {self.failures} time{'s' * (self.failures != 1)} in a "
            f"row from {since:.1f} s to {end_s:.1f} s (last: {detail})",
        )


def halt_check(halt: Halt, where: str) -> CheckResult:
    """The run's verdict on a halt: FAIL, with the guard, the evidence and what was healed."""
    return CheckResult(
        Verdict.FAIL,
        halt.message(),
        halt.value,
        halt.limit,
        None,
        where,
        "guard",
    )


__all__ = ["ErrorRatioGuard", "GuardTrip", "HealthGuard", "Sustained", "halt_check"]
