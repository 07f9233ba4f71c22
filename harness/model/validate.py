"""Small declarative readers that turn parsed YAML into typed values, collecting every problem.

A :class:`Fields` walks one mapping at a field path (``faults[2]``); each ``get`` names the key
and a :class:`Conv` that says what is allowed. Problems are appended to a shared list instead of
raised, so one validation pass reports all of them. Unknown keys get a did-you-mean.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.model.errors import MISSING, Problem

INVALID: Any = object()
"""Returned by a read that failed; the problem is already recorded."""

REQUIRED: Any = object()


class Bad(ValueError):
    """Raised by a converter: the value is not allowed (optionally with a hint)."""

    def __init__(self, hint: str = ""):
        super().__init__(hint)
        self.hint = hint


@dataclass(frozen=True)
class Conv:
    """A converter: ``allowed`` describes the accepted values, ``check`` converts or raises Bad."""

    allowed: str
    check: Callable[[Any], Any]


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def number(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, unit: str = ""
) -> Conv:
    parts = ["a number"]
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'and ' if lo is not None else ''}<= {hi:g}")
    allowed = " ".join(parts) + (f" ({unit})" if unit else "")

    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise Bad()
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise Bad()
        if hi is not None and v > hi:
            raise Bad()
        return float(v)

    return Conv(allowed, check)


def integer(lo: int | None = None, hi: int | None = None) -> Conv:
    if lo is not None and hi is not None:
        allowed = f"an integer from {lo} to {hi}"
    elif lo is not None:
        allowed = f"an integer >= {lo}"
    else:
        allowed = "an integer"

    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise Bad()
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise Bad()
        return v

    return Conv(allowed, check)


def string(pattern: str | None = None, what: str = "a non-empty string") -> Conv:
    regex = re.compile(pattern) if pattern else None

    def check(v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise Bad()
        if regex is not None and not regex.fullmatch(v):
            raise Bad()
        return v

    return Conv(what, check)


def text() -> Conv:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise Bad()
        return v

    return Conv("a string", check)


def boolean() -> Conv:
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise Bad()
        return v

    return Conv("true or false", check)


def choice(options: tuple[str, ...] | list[str]) -> Conv:
    allowed = "one of " + ", ".join(options)

    def check(v: Any) -> str:
        if v not in options:
            raise Bad(did_you_mean(v, options) if isinstance(v, str) else "")
        return v

    return Conv(allowed, check)


def anything(allowed: str = "any value") -> Conv:
    return Conv(allowed, lambda v: v)


class Fields:
    """Reads one mapping at ``path``; records problems in the shared ``problems`` list."""

    def __init__(self, data: Any, path: str, problems: list[Problem]):
        self.path = path
        self.problems = problems
        self.ok = isinstance(data, Mapping)
        self.data: Mapping[str, Any] = data if self.ok else {}
        self.known: list[str] = []
        if not self.ok:
            problems.append(Problem(path, data, "a mapping (key: value pairs)"))

    def at(self, key: str | int) -> str:
        return join_path(self.path, key)

    def add(self, key: str | int, value: Any, allowed: str, hint: str = "") -> Any:
        self.problems.append(Problem(self.at(key), value, allowed, hint))
        return INVALID

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self.known.append(key)
        value = self.data.get(key)
        return default if value is None else value

    def get(self, key: str, conv: Conv, default: Any = REQUIRED) -> Any:
        self.known.append(key)
        if key not in self.data or (self.data[key] is None and default is not REQUIRED):
            if default is REQUIRED:
                return self.add(key, MISSING, conv.allowed) if self.ok else INVALID
            return default
        value = self.data[key]
        try:
            return conv.check(value)
        except Bad as bad:
            return self.add(key, value, conv.allowed, bad.hint)

    def finish(self, extra_known: tuple[str, ...] = ()) -> None:
        """Report every key that no ``get``/``raw`` asked for."""
        known = sorted(set(self.known) | set(extra_known))
        for key in self.data:
            if key not in known:
                hint = " ".join(filter(None, ["unknown key;", did_you_mean(key, known)]))
                self.add(str(key), self.data[key], "the keys " + ", ".join(known), hint.rstrip(";"))


def list_at(value: Any, path: str, problems: list[Problem], allowed: str) -> list[Any]:
    """``value`` as a list, or record a problem and return an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(Problem(path, value, allowed))
        return []
    return value


def any_invalid(*values: Any) -> bool:
    return any(v is INVALID for v in values)
