"""What one example's runs say: PASS, FAIL or INCONCLUSIVE, and whether a FAIL is trusted.

A run of an example is a real run with noise in it, so a FAIL counts only when it is
*confident* or *reproduces*:

- confident: some failing check is a quantile check whose confidence interval (95%, or the SLO's
  own ``confidence``) lies wholly on the failing side of the limit; the other checks (ratios,
  counts, failover times) carry no interval. A confident FAIL needs no re-run while shrinking;
  the first failing schedule of a search is re-run even when confident (the search decides
  that: harness/explore/search.py), since a stall of the machine slows many requests in a row
  and the intervals assume independent ones;
- otherwise the example runs again, :data:`DEFAULT_RERUNS` more times (``--reruns``), and the
  FAIL counts only when every re-run fails one of the same SLOs. One re-run is the default: if a
  noisy run fails an SLO falsely with probability p, two in a row do with p**2, and each re-run
  costs a whole run. A FAIL that does not reproduce is INCONCLUSIVE (noise, or a flaky
  weakness worth a look), never a failure.

An example whose run left the cluster out of its checked steady state (a heal that failed, a
process that did not come back) is INCONCLUSIVE as well: what the next run would measure is no
longer the system the scenario describes. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks.verdict import Verdict

DEFAULT_RERUNS = 1


@dataclass(frozen=True)
class RunResult:
    """One real run of an example, as the exploration needs it."""

    verdict: Verdict | None  # None: the run did not complete
    checks: tuple[dict[str, Any], ...] = ()
    run_dir: Path | None = None
    message: str = ""
    seconds: float = 0.0
    not_restored: str | None = None  # why the steady state was not restored after the run

    @property
    def failing(self) -> tuple[dict[str, Any], ...]:
        return tuple(c for c in self.checks if c.get("verdict") == "FAIL")

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value if self.verdict is not None else None,
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "message": self.message,
            "seconds": round(self.seconds, 3),
            "not_restored": self.not_restored,
            "failing": [c.get("message", "") for c in self.failing],
        }


@dataclass(frozen=True)
class Judgement:
    """An example's verdict after confirmation, and why."""

    verdict: Verdict
    reason: str
    confident: bool = False
    failing: tuple[dict[str, Any], ...] = field(default=())


def confident(check: dict[str, Any]) -> bool:
    """A failing quantile check whose interval lies wholly on the side of the limit that its
    value lies on (so the bound's direction need not be known)."""
    interval, value, limit = check.get("interval"), check.get("value"), check.get("limit")
    if not isinstance(interval, dict) or not _finite_or_inf(value) or not _finite_or_inf(limit):
        return False
    low, high = _num(interval.get("low_ms")), _num(interval.get("high_ms"))
    v, lim = _num(value), _num(limit)
    if v > lim:
        return low > lim
    if v < lim:
        return high < lim
    return False


def _num(v: Any) -> float:
    if isinstance(v, str):  # run.json spells infinities "inf"
        return float(v)
    return float(v) if isinstance(v, int | float) else math.nan


def _finite_or_inf(v: Any) -> bool:
    return not math.isnan(_num(v))


def first_look(run: RunResult) -> Judgement:
    """The verdict of one run: FAIL (confident or not) still needs :func:`confirm`."""
    if run.not_restored is not None:
        return Judgement(
            Verdict.INCONCLUSIVE, f"the steady state was not restored after it: {run.not_restored}"
        )
    if run.verdict is None:
        return Judgement(Verdict.INCONCLUSIVE, f"the run did not complete: {run.message}")
    if run.verdict is Verdict.FAIL:
        failing = run.failing
        sure = any(confident(c) for c in failing)
        why = "a confident FAIL" if sure else "a FAIL without a confidence interval"
        return Judgement(Verdict.FAIL, why, sure, failing)
    if run.verdict is Verdict.INCONCLUSIVE:
        first = next((c for c in run.checks if c.get("verdict") == "INCONCLUSIVE"), {})
        return Judgement(Verdict.INCONCLUSIVE, str(first.get("message", "INCONCLUSIVE")))
    return Judgement(Verdict.PASS, "every check passed")


def reproduces(first: Judgement, again: RunResult) -> bool:
    """The re-run fails one of the SLOs the first run failed (checks compared by their
    ``where``, the SLO's place in the scenario), and left the steady state restored."""
    if again.not_restored is not None or again.verdict is not Verdict.FAIL:
        return False
    wanted = {c.get("where") for c in first.failing}
    return any(c.get("where") in wanted for c in again.failing)


def confirm(first: Judgement, reruns: Sequence[RunResult], needed: int) -> Judgement:
    """The FAIL ``first`` after its re-runs: confirmed when all ``needed`` of them reproduce."""
    for i, again in enumerate(reruns, 1):
        if not reproduces(first, again):
            what = again.verdict.value if again.verdict is not None else "incomplete"
            if again.not_restored is not None:
                what += ", steady state not restored"
            return Judgement(
                Verdict.INCONCLUSIVE,
                f"a FAIL that did not reproduce: re-run {i} of {needed} was {what}; counted as"
                " noise, not as a failure",
                False,
                first.failing,
            )
    if len(reruns) < needed:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"a FAIL not yet confirmed: {len(reruns)} of {needed} re-runs before the budget ran"
            " out",
            False,
            first.failing,
        )
    if needed == 0:
        return Judgement(Verdict.FAIL, "a FAIL (no re-run asked for)", False, first.failing)
    runs = "its re-run" if needed == 1 else f"all {needed} re-runs"
    return Judgement(Verdict.FAIL, f"a FAIL reproduced in {runs}", False, first.failing)
