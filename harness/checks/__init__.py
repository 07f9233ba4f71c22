"""Pure judges: (run statistics, SLO) -> PASS | FAIL | INCONCLUSIVE, each with a message that
names the value, the window, the limit and where the SLO is written."""

from harness.checks.guards import ErrorRatioGuard, GuardTrip, HealthGuard, halt_check
from harness.checks.integrity import RunProblems, problem_checks, run_verdict
from harness.checks.judge import evidence_problem, judge, judge_fault
from harness.checks.run import Evaluation, FaultTimes, evaluate, fault_times, judge_run
from harness.checks.verdict import CheckResult, Verdict, combine

__all__ = [
    "CheckResult",
    "ErrorRatioGuard",
    "Evaluation",
    "FaultTimes",
    "GuardTrip",
    "HealthGuard",
    "RunProblems",
    "Verdict",
    "combine",
    "evaluate",
    "evidence_problem",
    "fault_times",
    "halt_check",
    "judge",
    "judge_fault",
    "judge_run",
    "problem_checks",
    "run_verdict",
]
