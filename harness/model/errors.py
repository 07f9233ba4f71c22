"""Exceptions sorted by blame, each with the CLI exit code it maps to.

A bad scenario or bad options is the user's to fix (:class:`UsageError`, exit 2); the system under
test misbehaving is a :class:`SutFailure` (exit 1); the harness or the machine failing is a
:class:`HarnessError` (exit 4); too little evidence to judge is :class:`Inconclusive` (exit 3).
Ctrl-C is no one's fault: a run stopped by it exits 130 (the shell's code for SIGINT) wherever it
lands, after healing its faults and stopping its target.
:class:`ScenarioError` names the file, the field path, the value found and what is allowed, for
every problem found in one validation pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_HARNESS = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class RecchaosError(Exception):
    """Base of every error recchaos raises on purpose."""

    exit_code = EXIT_HARNESS


class UsageError(RecchaosError):
    """The scenario, the options or the command line are wrong: the user can fix it."""

    exit_code = EXIT_USAGE


class SutFailure(RecchaosError):
    """The system under test misbehaved (crashed, answered wrongly, broke an SLO)."""

    exit_code = EXIT_FAIL


class HarnessError(RecchaosError):
    """The harness or the machine failed (a heal that did not work, a port in use, a full disk)."""

    exit_code = EXIT_HARNESS


class Inconclusive(RecchaosError):
    """There is too little evidence to say PASS or FAIL."""

    exit_code = EXIT_INCONCLUSIVE


MISSING = object()
"""Marks a required field that is absent (printed as ``missing``)."""


def show_value(value: object) -> str:
    """A short, unambiguous rendering of a value found in a scenario."""
    if value is MISSING:
        return "missing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a scenario: where (a field path such as ``faults[2].duration_s``),
    what was found, what is allowed, and optionally how to fix it."""

    field: str
    value: object
    allowed: str
    hint: str = ""

    def describe(self) -> str:
        where = self.field or "(file)"
        text = f"{where}: got {show_value(self.value)}; allowed: {self.allowed}"
        return f"{text}; {self.hint}" if self.hint else text


class ScenarioError(UsageError):
    """A scenario failed validation. Carries every problem found, not just the first."""

    def __init__(self, file: str, problems: Sequence[Problem]):
        if not problems:
            raise ValueError("ScenarioError needs at least one problem")
        self.file = file
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(self._format())

    @property
    def field(self) -> str:
        return self.problems[0].field

    @property
    def value(self) -> object:
        return self.problems[0].value

    @property
    def allowed(self) -> str:
        return self.problems[0].allowed

    def _format(self) -> str:
        if len(self.problems) == 1:
            return f"{self.file}: {self.problems[0].describe()}"
        lines = [f"{self.file}: {len(self.problems)} problems"]
        lines += [f"  {p.describe()}" for p in self.problems]
        return "\n".join(lines)
