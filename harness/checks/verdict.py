"""Verdicts, check results, and how many results combine into one verdict.

Any FAIL makes the run FAIL; otherwise any INCONCLUSIVE makes it INCONCLUSIVE; a run with no
checks at all is INCONCLUSIVE too, never PASS.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from harness.model.errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS


class Verdict(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"

    @property
    def exit_code(self) -> int:
        return {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "INCONCLUSIVE": EXIT_INCONCLUSIVE}[self.value]


@dataclass(frozen=True)
class CheckResult:
    """One judgement: the verdict, a message a human can act on, and its parts."""

    verdict: Verdict
    message: str
    value: float | None
    limit: float | None
    window: str | None
    where: str
    metric: str = ""
    expected_violation: bool = False  # PASS because the SLO was violated, as the scenario expects
    interval: dict[str, Any] | None = None  # a quantile's confidence interval (QuantileInterval)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        return cls(**{**d, "verdict": Verdict(d["verdict"])})


def combine(results: Iterable[CheckResult | Verdict]) -> Verdict:
    verdicts = [r.verdict if isinstance(r, CheckResult) else r for r in results]
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in verdicts or not verdicts:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS
