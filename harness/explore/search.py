"""The search loop: Hypothesis draws fault schedules, each one runs for real, a failure shrinks.

:class:`Exploration` hands Hypothesis (:func:`seeded_find`, ``find`` with a seed) the schedule
strategy of the scenario's search space and a condition that runs a schedule as an *example*:
the scenario with that schedule as its faults, written to ``examples/eNNN.yaml`` and run through
an :class:`ExampleRunner` (one cluster reused across examples, restored to a checked steady
state between them). The condition is true only for a FAIL that is confident or reproduces
(:mod:`harness.explore.verdicts`). Once one is found Hypothesis shrinks it, running smaller
candidates the same way; every failing schedule it adopts (it saves each to its example
database, watched here) is a step of the *shrink path* from the first failing schedule to the
minimal one. The database lives under the runs directory, so the failures of one exploration
are replayed first by the next one of the same scenario.

Each schedule's verdict is remembered: Hypothesis asks again for a schedule it has seen (when it
re-checks a failure before shrinking and at the end), and a real system would not answer the
same twice. Budgets (:mod:`harness.explore.settings`) are checked before every run; once one is
spent no run starts and the search ends (:class:`BudgetSpent`): shrinking stops at the smallest
failure found so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from harness.checks.verdict import Verdict
from harness.explore.settings import ExploreSettings
from harness.explore.space import SearchSpace, describe_schedule, schedule_key
from harness.explore.verdicts import Judgement, RunResult, confirm, first_look
from harness.model.errors import HarnessError, RecchaosError, ScenarioError
from harness.model.faults import FaultSpec
from harness.model.scenario import Scenario, scenario_from_dict
from harness.runner.settings import RunSettings

LARGE_BUDGET = 100_000  # max_examples when only time bounds the search
MAX_INCOMPLETE_IN_A_ROW = 3


class BudgetSpent(KeyboardInterrupt):
    """Ends the search once a budget is spent. Hypothesis offers no other way to stop a search
    from inside, and it passes an interrupt through without recording the schedule it was
    trying as a failure (its example database keeps only real failures)."""


class ExampleRunner(Protocol):
    """Runs example scenarios against the target (:mod:`harness.explore.cluster`)."""

    def run(self, scenario: Scenario, settings: RunSettings) -> RunResult: ...

    def close(self) -> None: ...


@dataclass
class Example:
    """One schedule tried: its runs, verdict and where it sits in the search."""

    index: int
    phase: str  # "search" or "shrink"
    faults: tuple[FaultSpec, ...]
    scenario_file: Path
    judgement: Judgement
    runs: list[RunResult] = field(default_factory=list)
    started_s: float = 0.0
    finished_s: float = 0.0
    runs_so_far: int = 0  # runs of the whole exploration once this example was judged
    shrink_step: int | None = None  # its place in the shrink path (0: the first failure)

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict

    @property
    def label(self) -> str:
        return describe_schedule(self.faults)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "phase": self.phase,
            "schedule": [f.to_dict() for f in self.faults],
            "label": self.label,
            "faults": len(self.faults),
            "scenario_file": str(self.scenario_file),
            "verdict": self.verdict.value,
            "reason": self.judgement.reason,
            "confident": self.judgement.confident,
            "failing": [c.get("message", "") for c in self.judgement.failing],
            "runs": [r.to_dict() for r in self.runs],
            "started_s": round(self.started_s, 3),
            "finished_s": round(self.finished_s, 3),
            "runs_so_far": self.runs_so_far,
            "shrink_step": self.shrink_step,
        }


class Exploration:
    """One exploration of ``scenario`` in ``workdir``. ``on_change`` is called after every
    example (the record writer); ``clock`` is injectable for tests."""

    def __init__(
        self,
        scenario: Scenario,
        settings: ExploreSettings,
        runner: ExampleRunner,
        workdir: Path,
        log: Callable[[str], None] = print,
        on_change: Callable[[Exploration], None] = lambda e: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scenario = scenario
        self.settings = settings
        self.space = SearchSpace.of(scenario)
        self.runner = runner
        self.workdir = workdir
        self.log = log
        self.on_change = on_change
        self.clock = clock
        self.examples: list[Example] = []
        self.path: list[Example] = []  # the shrink path: first failing ... minimal
        self.minimal: Example | None = None
        self.runs = 0
        self.shrink_runs = 0
        self.stopped: str | None = None
        self.aborted: str | None = None
        self.saved_failures = 0
        self._cache: dict[str, Example] = {}
        self._incomplete_in_a_row = 0
        self._last_key = ""  # the schedule Hypothesis asked about last
        self._t0 = clock()

    # -- the search ---------------------------------------------------------------------------
    def explore(self) -> Exploration:
        """Search, shrink, and return self (examples, shrink path, minimal example)."""
        from hypothesis.errors import Unsatisfiable

        from harness.explore.strategies import schedules

        db, key = self._database()
        self.saved_failures = sum(1 for _ in db.fetch(key))
        try:
            with _unbounded_shrinking():
                seeded_find(
                    schedules(self.space),
                    self._fails,
                    self._hypothesis_settings(db),
                    self.scenario.seed,
                    key,
                )
        except (Unsatisfiable, BudgetSpent):
            pass
        self.minimal = self.path[-1] if self.path else None
        if self.aborted:
            raise HarnessError(f"exploration stopped: {self.aborted}")
        return self

    def _database(self) -> tuple[Any, bytes]:
        """The example database, watched: Hypothesis saves a failing example under the primary
        key exactly when it adopts it (the first failure, then every smaller one it shrinks
        to), which is how the shrink path is known."""
        from hypothesis.database import DirectoryBasedExampleDatabase

        key = f"recchaos-explore:{self.scenario.name}".encode()
        inner = DirectoryBasedExampleDatabase(str(self.settings.database_dir))

        def saved(saved_key: bytes) -> None:
            last = self._cache.get(self._last_key)
            # two choice sequences can draw the same schedule: a path holds each one once
            if saved_key == key and last is not None and last.verdict is Verdict.FAIL:
                if last not in self.path:
                    self._adopt(last)

        return watched_database(inner, saved), key

    def _hypothesis_settings(self, db: Any) -> Any:
        from hypothesis import HealthCheck, Phase, Verbosity, settings

        return settings(
            max_examples=self.settings.search_budget or LARGE_BUDGET,
            deadline=None,
            database=db,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
            report_multiple_bugs=False,
        )

    @property
    def phase(self) -> str:
        return "shrink" if self.path else "search"

    def _fails(self, faults: tuple[FaultSpec, ...]) -> bool:
        """Hypothesis's condition: does this schedule (confidently, or reproducibly) fail?"""
        key = self._last_key = schedule_key(faults)
        if key in self._cache:
            return self._cache[key].verdict is Verdict.FAIL
        if not self._may_run():
            raise BudgetSpent(self.stopped)
        example = self._try(faults)
        self._cache[key] = example
        self.on_change(self)
        self.log(self._progress(example))
        return example.verdict is Verdict.FAIL

    def _adopt(self, example: Example) -> None:
        example.shrink_step = len(self.path)
        self.path.append(example)
        self.on_change(self)
        if example.shrink_step == 0:
            self.log(f"  first failing schedule (example {example.index}); shrinking")
        else:
            self.log(
                f"  shrink step {example.shrink_step}: example {example.index} is smaller and"
                f" fails too ({len(example.faults)} fault(s))"
            )

    # -- one example ----------------------------------------------------------------------------
    def _try(self, faults: tuple[FaultSpec, ...]) -> Example:
        index = len(self.examples) + 1
        path = self.workdir / "examples" / f"e{index:03d}.yaml"
        started = self.clock() - self._t0
        example = Example(index, self.phase, faults, path, Judgement(Verdict.INCONCLUSIVE, ""))
        example.started_s = started
        self.examples.append(example)
        try:
            scenario = write_example(self.scenario, faults, index, path)
        except ScenarioError as exc:  # a draw the scenario rules refuse: never a failure
            example.judgement = Judgement(Verdict.INCONCLUSIVE, f"not a valid scenario: {exc}")
        else:
            example.judgement = self._judge(example, scenario)
        example.finished_s = self.clock() - self._t0
        example.runs_so_far = self.runs
        return example

    def _judge(self, example: Example, scenario: Scenario) -> Judgement:
        first = self._run(example, scenario)
        judgement = first_look(first)
        # While shrinking, a confident FAIL counts at once (a smaller schedule of one already
        # confirmed). The first failing schedule must reproduce even when confident: the
        # intervals assume independent requests, and a 30-40 ms stall of the machine slows ten
        # requests in a row, enough for an interval wholly past 20 ms in a window of 600.
        if judgement.verdict is not Verdict.FAIL or (judgement.confident and self.path):
            return judgement
        needed = self.settings.reruns
        reruns: list[RunResult] = []
        while len(reruns) < needed and self._may_run(confirming=True):
            reruns.append(self._run(example, scenario))
            if confirm(judgement, reruns, len(reruns)).verdict is not Verdict.FAIL:
                break
        return confirm(judgement, reruns, needed)

    def _run(self, example: Example, scenario: Scenario) -> RunResult:
        settings = RunSettings(
            scenario_path=str(example.scenario_file),
            out_dir=self.workdir / "runs",
            progress=False,
            replay=f"recchaos run {example.scenario_file}",
        )
        self.runs += 1
        if self.path:
            self.shrink_runs += 1
        try:
            result = self.runner.run(scenario, settings)
        except RecchaosError as exc:
            result = RunResult(None, message=f"{type(exc).__name__}: {exc}")
        example.runs.append(result)
        self._count_incomplete(result)
        return result

    def _count_incomplete(self, result: RunResult) -> None:
        if result.verdict is not None:
            self._incomplete_in_a_row = 0
            return
        self._incomplete_in_a_row += 1
        if self._incomplete_in_a_row >= MAX_INCOMPLETE_IN_A_ROW:
            self.aborted = (
                f"{MAX_INCOMPLETE_IN_A_ROW} runs in a row did not complete; the last:"
                f" {result.message}"
            )

    # -- budgets --------------------------------------------------------------------------------
    def _may_run(self, confirming: bool = False) -> bool:
        reason = self._spent(confirming)
        if reason is not None and self.stopped is None:
            self.stopped = reason
            self.log(
                f"explore: {reason}: no further runs"
                + ("; shrinking stops at the smallest failing schedule so far" if self.path else "")
            )
        return reason is None

    def _spent(self, confirming: bool) -> str | None:
        if self.aborted:
            return self.aborted
        limit = self.settings.time_budget_s
        if limit is not None and self.clock() - self._t0 >= limit:
            return f"time budget of {limit:g} s spent"
        if self.path and self.shrink_runs >= self.settings.shrink_budget:
            return f"shrink budget of {self.settings.shrink_budget} runs spent"
        budget = self.settings.search_budget
        searched = sum(1 for e in self.examples if e.phase == "search")
        if not self.path and not confirming and budget is not None and searched >= budget:
            return f"search budget of {budget} schedules spent"
        return None

    # -- what to show -----------------------------------------------------------------------------
    def _progress(self, e: Example) -> str:
        step = f"search {e.index}" if e.phase == "search" else f"shrink {e.index}"
        runs = f"{len(e.runs)} run{'s' * (len(e.runs) != 1)}"
        took = f"{e.finished_s - e.started_s:.0f} s"
        why = _short(e.judgement.reason)
        return f"[{step}] {e.label} -> {e.verdict.value} ({why}; {runs}, {took})"

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self._t0

    @property
    def verdict(self) -> Verdict:
        """FAIL: a failing schedule was found; PASS: none, and judged examples passed at least
        as often as they were inconclusive; INCONCLUSIVE otherwise."""
        if self.path:
            return Verdict.FAIL
        passed = sum(1 for e in self.examples if e.verdict is Verdict.PASS)
        unsure = sum(1 for e in self.examples if e.verdict is Verdict.INCONCLUSIVE)
        return Verdict.PASS if passed and unsure <= passed else Verdict.INCONCLUSIVE


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Found(Exception):
    pass


def seeded_find(
    strategy: Any, condition: Callable[[Any], bool], settings: Any, seed: int, key: bytes
) -> Any:
    """``hypothesis.find`` with a seed that keeps the example database: ``@seed`` (and so
    ``find(random=...)``) turns the database off, but a seeded exploration must still replay
    saved failures first. Sets the two attributes ``@seed`` and ``find`` set on the test they
    build (hypothesis is pinned; the database-replay unit test fails if they change meaning).
    Returns the minimal value satisfying ``condition``, or None."""
    from hypothesis import given

    found: list[Any] = []

    @settings
    @given(strategy)
    def search(value: Any) -> None:
        if condition(value):
            found[:] = [value]
            raise _Found

    search._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    search._hypothesis_internal_database_key = key  # type: ignore[attr-defined]
    try:
        search()
    except _Found:
        return found[0]
    return None


def watched_database(inner: Any, on_save: Callable[[bytes], None]) -> Any:
    """``inner`` (an ExampleDatabase) that calls ``on_save(key)`` after every save."""
    from hypothesis.database import ExampleDatabase

    class Watched(ExampleDatabase):
        def save(self, key: bytes, value: bytes) -> None:
            inner.save(key, value)
            on_save(key)

        def fetch(self, key: bytes) -> Any:
            return inner.fetch(key)

        def delete(self, key: bytes, value: bytes) -> None:
            inner.delete(key, value)

        def move(self, src: bytes, dest: bytes, value: bytes) -> None:
            inner.move(src, dest, value)

    return Watched()


def example_scenario(base: Scenario, faults: tuple[FaultSpec, ...], name: str) -> dict[str, Any]:
    """The scenario mapping of one example: ``base`` as resolved (profile applied), the drawn
    schedule as its faults; no profiles, no generated schedule, no explore section."""
    data = base.to_dict()
    for key in ("profiles", "profile", "explore", "fault_schedule"):
        data.pop(key, None)
    data["name"] = name
    data["faults"] = [f.to_dict() for f in faults]
    return data


def write_example(
    base: Scenario, faults: tuple[FaultSpec, ...], index: int, path: Path
) -> Scenario:
    """Validate the example scenario and write it to ``path``; ScenarioError if invalid."""
    data = example_scenario(base, faults, f"{base.name}-e{index:03d}")
    scenario = scenario_from_dict(data, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Example {index} of `recchaos explore {base.source}`: the scenario with this fault"
        f" schedule.\n# Replay: recchaos run {path}\n"
    )
    path.write_text(header + scenario_yaml(data))
    return replace(scenario, source=str(path))


def scenario_yaml(data: dict[str, Any]) -> str:
    """A scenario mapping as YAML: keys in scenario order, short lists and mappings inline."""
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100))


@contextmanager
def _unbounded_shrinking() -> Any:
    """Hypothesis stops shrinking after 5 minutes (``MAX_SHRINKING_SECONDS``, documented as
    patchable for this); each of our candidates is a real run of ~15 s, so the shrink budget
    bounds shrinking instead, and the limit is lifted for the duration of the search."""
    from hypothesis.internal.conjecture import engine

    saved = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = 10**9
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = saved
