"""What one exploration was asked to do: a frozen settings object the CLI and the pytest fixture
build, and the budgets' defaults.

``budget`` counts the schedules drawn while searching (Hypothesis's ``max_examples``; each is one
real run, plus its re-runs); ``time_budget_s`` instead stops starting runs once that much wall
time has passed (a run in progress finishes). Shrinking a failure has its own cap,
``shrink_budget`` real runs, so a search budget of 5 does not leave a failure half-shrunk; the
time budget, when given, bounds shrinking too. The Hypothesis example database lives under the
runs directory (``<out>/explore-db``) so a failure found in one exploration is replayed first in
the next one of the same scenario.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from harness.explore.verdicts import DEFAULT_RERUNS
from harness.model.errors import UsageError
from harness.runner.settings import DEFAULT_RUNS_DIR

DEFAULT_BUDGET = 20
DEFAULT_SHRINK_BUDGET = 30
DATABASE_DIR = "explore-db"
PROFILE_BUDGETS = {"pr": 2, "nightly": 30}
"""The pytest fixture's search budget per profile: a pr run tries the steady state and one drawn
schedule (each ~20 s of a suite that must stay a few minutes), a night many."""
PROFILE_SHRINK_BUDGETS = {"pr": 6, "nightly": 40}


@dataclass(frozen=True)
class ExploreSettings:
    scenario_path: str
    out_dir: Path = DEFAULT_RUNS_DIR
    seed: int | None = None  # default: the scenario's
    profile: str | None = None
    budget: int | None = None  # default DEFAULT_BUDGET unless a time budget is given
    time_budget_s: float | None = None
    shrink_budget: int = DEFAULT_SHRINK_BUDGET
    reruns: int = DEFAULT_RERUNS
    database: Path | None = None  # default: <out_dir>/explore-db
    progress: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("--budget", self.budget, self.budget is None or self.budget >= 1, "an integer >= 1"),
            (
                "--time-budget",
                self.time_budget_s,
                self.time_budget_s is None
                or (math.isfinite(self.time_budget_s) and self.time_budget_s > 0),
                "a number of seconds above 0",
            ),
            ("--shrink-budget", self.shrink_budget, self.shrink_budget >= 0, "an integer >= 0"),
            ("--reruns", self.reruns, 0 <= self.reruns <= 10, "an integer from 0 to 10"),
        )
        for flag, value, ok, allowed in checks:
            if not ok:
                raise UsageError(f"invalid value {value!r} for {flag}; allowed: {allowed}")

    @property
    def search_budget(self) -> int | None:
        """Schedules to draw; None: as many as the time budget allows."""
        if self.budget is not None:
            return self.budget
        return None if self.time_budget_s is not None else DEFAULT_BUDGET

    @property
    def database_dir(self) -> Path:
        return self.database if self.database is not None else self.out_dir / DATABASE_DIR
