"""Limits on scenario input, so a hostile or mistaken file costs little to reject.

A scenario is a few hundred values; every reader (``recchaos run``, ``scenarios validate|show``,
the pytest plugin, :func:`harness.model.scenario.load_scenario` and ``scenario_from_dict``)
refuses anything far beyond that before doing work that grows with it:

* the file: a regular file (not a FIFO, device or directory) of at most :data:`MAX_FILE_BYTES`;
* nesting: at most :data:`MAX_DEPTH` levels of mappings and lists;
* size once aliases (``*name``) and merge keys are expanded: at most :data:`MAX_NODES` values
  and :data:`MAX_TEXT_CHARS` characters of text. A few lines of anchors can stand for billions
  of values ("billion laughs"); counting them expanded is what keeps validation, messages and
  ``scenarios show`` bounded.

:func:`check_data` applies the depth and size limits to data built in Python (it may share or
even contain itself, which YAML cannot express without aliases).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain, islice
from typing import Any

from harness.model.errors import Described, Problem

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_TEXT_CHARS = 4 * 1024 * 1024

ALIAS_HINT = "counted with every alias (*name) and merge key (<<) expanded"


def too_big_file(size: int) -> Problem:
    return Problem(
        "(file)",
        Described(f"{size:,} bytes"),
        f"at most {MAX_FILE_BYTES:,} bytes (1 MiB)",
        "a scenario is a few kilobytes; is this the right file?",
    )


def too_deep(where: str) -> Problem:
    return Problem(
        where,
        Described(f"more than {MAX_DEPTH} nested levels"),
        f"at most {MAX_DEPTH} levels of mappings and lists",
    )


def too_many_nodes(where: str) -> Problem:
    return Problem(
        where,
        Described(f"more than {MAX_NODES:,} values"),
        f"at most {MAX_NODES:,} values (mappings, lists and scalars)",
        ALIAS_HINT,
    )


def too_much_text(where: str) -> Problem:
    return Problem(
        where,
        Described(f"more than {MAX_TEXT_CHARS:,} characters of text"),
        f"at most {MAX_TEXT_CHARS:,} characters (4 MiB)",
        ALIAS_HINT,
    )


def recursive(where: str) -> Problem:
    return Problem(where, Described("a value that contains itself"), "data without cycles")


def check_data(data: Any, where: str = "(scenario)") -> Problem | None:
    """The first limit ``data`` breaks (depth, values, text, or a cycle), or None.

    Walks iteratively, visiting a shared value once per place it appears (as its text would),
    and stops as soon as a limit is passed, so the cost is bounded by the limits, not the data.
    """
    nodes = chars = 0
    stack: list[tuple[Any, int, tuple[int, ...]]] = [(data, 1, ())]
    while stack:
        value, depth, ancestors = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return too_many_nodes(where)
        if isinstance(value, str | bytes):
            chars += len(value)
            if chars > MAX_TEXT_CHARS:
                return too_much_text(where)
            continue
        if isinstance(value, Mapping):
            children: Iterable[Any] = chain.from_iterable(value.items())
        elif isinstance(value, list | tuple | set | frozenset):
            children = value
        else:
            continue
        if id(value) in ancestors:
            return recursive(where)
        if depth > MAX_DEPTH:
            return too_deep(where)
        inner = (*ancestors, id(value))
        room = MAX_NODES - nodes - len(stack) + 1  # never copy more than the limit allows
        stack.extend((child, depth + 1, inner) for child in islice(children, max(room, 1)))
    return None
