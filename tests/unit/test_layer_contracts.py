"""The layer contracts, checked on the source: docs/architecture.md's import table is the rule.

Every ``import`` and ``from ... import`` under harness/, reports/ and system_under_test/ (module
level, inside functions, under ``TYPE_CHECKING``; relative ones resolved) is read with :mod:`ast`,
nothing is imported. Each import is charged to a unit: a harness package (``harness/model``) or
top-level module (``harness/cli.py``), ``reports/`` or ``system_under_test/``. A unit may import
the standard library, itself, and what its row in the table names; the pure units import no
process, network or concurrency module either; the harness units form no import cycle.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLE_DOC = ROOT / "docs" / "architecture.md"
TOPS = ("harness", "reports", "system_under_test")
PURE = ("harness.model", "harness.metrics", "harness.checks")
# Process, network and concurrency modules of the standard library (a module or its children).
SIDE_EFFECT_MODULES = (
    "subprocess",
    "socket",
    "socketserver",
    "ssl",
    "select",
    "selectors",
    "multiprocessing",
    "concurrent",
    "asyncio",
    "threading",
    "signal",
    "pty",
    "http.client",
    "http.server",
    "urllib.request",
    "ftplib",
    "smtplib",
)


def side_effect_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in SIDE_EFFECT_MODULES)


@dataclass(frozen=True)
class Import:
    unit: str  # who imports
    target: str  # the full module (or module.name) imported
    where: str  # path:line

    @property
    def target_unit(self) -> str:
        return unit_of(self.target)


def unit_of(module: str) -> str:
    """``harness.model.faults`` -> ``harness.model``; ``reports.history`` -> ``reports``;
    anything else -> its top-level name (``numpy``, ``subprocess``)."""
    parts = module.split(".")
    if parts[0] == "harness" and len(parts) > 1:
        return f"harness.{parts[1]}"
    return parts[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, source: str | None = None) -> list[Import]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    source_unit = unit_of(module)
    where = str(path.relative_to(ROOT))
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, where)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # ``from harness import cli`` imports harness.cli: charge the names, not the package
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [Import(source_unit, t, f"{where}:{node.lineno}") for t in targets]
    return found


@functools.cache
def all_imports() -> list[Import]:
    """Read when a test first asks (once per process), not at collection: every xdist worker
    collects this module, and parsing the whole tree costs about a second."""
    files = [p for top in TOPS for p in sorted((ROOT / top).rglob("*.py"))]
    return [imp for path in files for imp in imports_of(path)]


def unit_of_cell(cell: str) -> str:
    """The table's package cell: ```harness/model``` -> harness.model, ```reports/``` ->
    reports, ```harness/cli.py``` -> harness.cli."""
    (path,) = re.findall(r"`([^`]+)`", cell)
    return path.removesuffix("/").removesuffix(".py").replace("/", ".")


def read_table(text: str) -> dict[str, frozenset[str]]:
    """docs/architecture.md's table: unit -> the units and libraries it may import."""
    section = text.split("## Layers, and who may import whom", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for line in section.splitlines()
        if line.startswith("| `")
    ]
    units = {unit_of_cell(row[0]) for row in rows}
    table: dict[str, frozenset[str]] = {}
    for package, _what, may in rows:
        names = re.findall(r"`([^`]+)`", may)
        table[unit_of_cell(package)] = frozenset(
            f"harness.{n}" if f"harness.{n}" in units else n for n in names
        )
    return table


TABLE = read_table(TABLE_DOC.read_text())


def allowed(imp: Import, table: dict[str, frozenset[str]] = TABLE) -> bool:
    target = imp.target_unit
    if target == imp.unit or (target in sys.stdlib_module_names and target not in TOPS):
        return not (imp.unit in PURE and side_effect_module(imp.target))
    return target in table.get(imp.unit, frozenset())


def test_the_table_has_a_row_for_every_unit_and_names_only_real_ones():
    units = {imp.unit for imp in all_imports()} - {"harness"}
    assert units - set(TABLE) == set(), (
        f"packages with no row in {TABLE_DOC.relative_to(ROOT)}'s import table: "
        f"{sorted(units - set(TABLE))}; add a row saying what each may import"
    )
    assert set(TABLE) - units == set(), f"rows for no package: {sorted(set(TABLE) - units)}"
    for must in PURE + ("harness.runner", "reports", "system_under_test"):
        assert must in TABLE


def test_every_import_is_allowed_by_the_table():
    bad = [
        f"{imp.where}: {imp.unit} imports {imp.target} ({imp.target_unit})"
        for imp in all_imports()
        if not allowed(imp)
    ]
    assert not bad, (
        f"imports that break the layer table in {TABLE_DOC.relative_to(ROOT)} (move the code to "
        "the layer that may do it; change the table only when the design changes):\n"
        + "\n".join(bad)
    )


def test_the_recommender_never_imports_the_harness_and_torch_stays_in_it():
    assert not {"harness", "reports"} & {
        imp.target_unit.split(".")[0] for imp in all_imports() if imp.unit == "system_under_test"
    }
    torch_users = sorted({imp.unit for imp in all_imports() if imp.target_unit == "torch"})
    assert torch_users == ["system_under_test"], torch_users
    assert all("torch" not in TABLE[u] for u in TABLE if u != "system_under_test")


def test_reports_read_records_only():
    records = {"harness.model", "harness.metrics", "numpy", "hdrh", "prometheus_client"}
    assert TABLE["reports"] <= records, sorted(TABLE["reports"] - records)


def test_the_pure_layers_import_only_pure_layers():
    for unit in PURE:
        harness_deps = {t for t in TABLE[unit] if t.startswith("harness.")}
        assert harness_deps <= set(PURE), f"{unit} may import {sorted(harness_deps)}"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def harness_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    example: dict[tuple[str, str], str] = {}
    for imp in all_imports():
        src, dst = imp.unit, imp.target_unit
        if src.startswith("harness.") and dst.startswith("harness.") and src != dst:
            edges[src].add(dst)
            example.setdefault((src, dst), imp.where)
    return edges, example


def test_no_import_cycle_between_harness_packages():
    edges, example = harness_graph()
    found = cycles(edges)
    detail = [
        f"{a} -> {b} ({example[a, b]})"
        for component in found
        for a in component
        for b in sorted(edges[a] & set(component))
    ]
    assert not found, f"import cycles between harness packages {found}:\n" + "\n".join(detail)


def test_the_table_itself_is_acyclic():
    edges = {u: {t for t in may if t.startswith("harness.")} for u, may in TABLE.items()}
    assert cycles(edges) == []


# ---- the checker catches what it should ------------------------------------------------------


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("unit", "target", "ok"),
    [
        ("harness.runner", "reports.history.append_run", False),
        ("harness.model", "harness.inject.base.Injector", False),
        ("harness.metrics", "subprocess", False),
        ("harness.checks", "socket", False),
        ("harness.sut", "system_under_test.launcher", False),
        ("harness.load", "torch", False),
        ("reports", "harness.runner.run", False),
        ("system_under_test", "harness.process", False),
        ("harness.runner", "subprocess", True),
        ("harness.cli", "reports.junit.write_junit", True),
        ("reports", "harness.model.record.RunRecord", True),
        ("harness.model", "json", True),
        ("harness.model", "urllib.parse.urlsplit", True),
        ("harness.model", "urllib.request.urlopen", False),
        ("harness.metrics", "concurrent.futures", False),
    ],
)
def test_the_check_judges_single_imports(unit, target, ok):
    assert allowed(Import(unit, target, "x.py:1")) is ok


def test_relative_imports_are_resolved():
    source = "from ..model import faults\nfrom . import settings\nfrom .. import cli\n"
    found = imports_of(ROOT / "harness" / "runner" / "run.py", source)
    assert [imp.target for imp in found] == [
        "harness.model.faults",
        "harness.runner.settings",
        "harness.cli",
    ]
    assert {imp.unit for imp in found} == {"harness.runner"}
