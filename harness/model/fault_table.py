"""The fault tables of ``docs/scenario-format.md``, rendered from the fault registry.

:func:`render` gives the Markdown between :data:`BEGIN` and :data:`END` in that file: one table
of kinds (what each does, what heals it, what it may hit on each backend, whether it needs root)
and one of parameters (allowed values with their limits, default, meaning). ``scripts/fault_table.py``
writes it there, and a unit test fails when the file and the registry disagree. Pure.
"""

from __future__ import annotations

from typing import Any

from harness.model.fault_kinds import COMPONENT_SETS, FAULT_KINDS, FaultKind
from harness.model.target import BACKENDS

BEGIN = (
    "<!-- fault-kinds: generated from harness/model/fault_kinds.py by scripts/fault_table.py -->"
)
END = "<!-- /fault-kinds -->"


def _targets(kind: FaultKind, backend: str) -> str:
    entry = kind.backends.get(backend)
    return COMPONENT_SETS[entry.targets].doc if entry is not None else "(not on this backend)"


def _default(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f"`{value}`"
    return str(value)


def kinds_table() -> list[str]:
    head = ["kind", "what it does", "heal", *(f"targets ({b})" for b in BACKENDS), "root"]
    rows = [_row(head), _row(["---"] * len(head))]
    for kind in FAULT_KINDS.values():
        targets = [_targets(kind, b) for b in BACKENDS]
        rows.append(
            _row([f"`{kind.name}`", kind.does, kind.heal, *targets, "yes" if kind.root else ""])
        )
    return rows


def params_table() -> list[str]:
    head = ["kind", "parameter", "allowed", "default", "meaning"]
    rows = [_row(head), _row(["---"] * len(head))]
    for kind in FAULT_KINDS.values():
        for name, p in kind.params.items():
            default = "required" if p.required else _default(p.default)
            rows.append(_row([f"`{kind.name}`", f"`{name}`", p.conv.allowed, default, p.doc]))
    return rows


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render() -> str:
    """The generated block, markers included."""
    lines = [BEGIN, *kinds_table(), "", *params_table(), END]
    return "\n".join(lines) + "\n"


def replace_block(text: str) -> str:
    """``text`` (the docs page) with its generated block replaced by :func:`render`'s."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no generated fault table block ({BEGIN!r} ... {END!r}) in the text")
    return text[:start] + render() + text[end + len(END) :].removeprefix("\n")
