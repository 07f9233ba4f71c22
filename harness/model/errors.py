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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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


class Described:
    """A found value given by its description, shown without quotes (``21,181,248 bytes``,
    ``a FIFO (named pipe)``): for what the file is or holds rather than a value in it."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Described) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


SHOW_CHARS = 80
SHOW_DEPTH = 6
MAX_LISTED = 50
"""At most this many problems are listed in one message; the count of the rest follows."""


def show_value(value: object, limit: int = SHOW_CHARS) -> str:
    """A short, unambiguous rendering of a value found in a scenario: ``repr`` cut to ``limit``
    characters. Built piece by piece and stopped once past the limit, so the cost does not
    grow with the value (a value from hostile input may be huge, deep, or share itself)."""
    if value is MISSING:
        return "missing"
    parts: list[str] = []
    _render(value, parts, limit + 1, SHOW_DEPTH)
    text = "".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _render(value: object, out: list[str], budget: int, depth: int) -> int:
    """Append a repr of ``value`` to ``out``, about ``budget`` characters at most; returns the
    budget left (<= 0: the text is already too long and will be cut)."""
    if isinstance(value, dict | list | tuple | set | frozenset):
        if depth <= 0:
            out.append("...")
            return budget - 3
        return _render_items(value, out, budget, depth)
    if isinstance(value, str | bytes):
        text = _cut_repr(value, budget)
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        text = f"<an integer of {value.bit_length()} bits>"  # repr of 5,000 digits raises
    else:
        text = repr(value)[:budget]
    out.append(text)
    return budget - len(text)


def _cut_repr(value: str | bytes, budget: int) -> str:
    """``repr`` of the first ``budget`` characters, quoted as ``repr`` quotes the whole value:
    double quotes when it holds a single quote and no double quote (a prefix alone may not)."""
    if len(value) <= budget:
        return repr(value)
    prefix = value[:budget]
    quote = "'" if isinstance(value, str) else b"'"
    dquote = '"' if isinstance(value, str) else b'"'
    if quote in value and dquote not in value:  # type: ignore[operator]  # C-speed scans
        return repr(prefix + quote)[:-2] + '"'  # type: ignore[operator]  # the ' forces "..."
    return repr(prefix)


def _render_items(value: Any, out: list[str], budget: int, depth: int) -> int:
    items: Iterable[Any] = value
    if isinstance(value, dict):
        opening, closing, items = "{", "}", value.items()
    elif isinstance(value, list):
        opening, closing = "[", "]"
    elif isinstance(value, tuple):
        opening, closing = "(", ",)" if len(value) == 1 else ")"
    elif not value:
        out.append(repr(value))  # set() or frozenset()
        return budget - len(out[-1])
    else:
        opening, closing = ("frozenset({", "})") if isinstance(value, frozenset) else ("{", "}")
    out.append(opening)
    budget -= len(opening)
    for i, item in enumerate(items):
        if budget <= 0:
            return budget
        if i:
            out.append(", ")
            budget -= 2
        if isinstance(value, dict):
            budget = _render(item[0], out, budget, depth - 1)
            out.append(": ")
            budget = _render(item[1], out, budget - 2, depth - 1)
        else:
            budget = _render(item, out, budget, depth - 1)
    out.append(closing)
    return budget - len(closing)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a scenario: where (a field path such as ``faults[2].duration_s``),
    what was found, what is allowed, and optionally how to fix it."""

    field: str
    value: object
    allowed: str
    hint: str = ""

    def describe(self) -> str:
        # field paths and hints can quote keys and names from the file: keep them short too
        where = _cut(self.field or "(file)", 200)
        text = f"{where}: got {show_value(self.value)}; allowed: {_cut(self.allowed, 500)}"
        return f"{text}; {_cut(self.hint, 300)}" if self.hint else text


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
        lines += [f"  {p.describe()}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        return "\n".join(lines)
