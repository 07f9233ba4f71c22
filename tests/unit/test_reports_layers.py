"""reports/ reads saved run records only: every import in it, at module level or inside a
function, is the standard library, numpy, a record-reading library, reports itself, or the
harness's pure layers (model, metrics). Checked on the source, so nothing is imported here."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPORTS = Path(__file__).resolve().parents[2] / "reports"
ALLOWED_THIRD_PARTY = {"numpy", "hdrh", "prometheus_client"}
ALLOWED_HARNESS = ("harness.model", "harness.metrics")


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top == "reports" or top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names:
        return True
    return module.startswith(ALLOWED_HARNESS)


def test_reports_import_only_records_layers_and_libraries():
    files = sorted(REPORTS.rglob("*.py"))
    assert len(files) > 20
    bad = [
        f"{path.relative_to(REPORTS.parent)}:{line}: {module}"
        for path in files
        for line, module in imports(path)
        if not allowed(module)
    ]
    assert not bad, "reports/ may import only records, metrics and libraries:\n" + "\n".join(bad)


def test_the_check_would_catch_a_runner_import():
    assert not allowed("harness.runner.run")
    assert not allowed("torch")
    assert not allowed("pytest")
    assert allowed("harness.model.record") and allowed("reports.rundir") and allowed("json")
