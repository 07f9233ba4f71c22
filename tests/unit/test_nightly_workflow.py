""".github/workflows/nightly.yml against the GitHub workflow schema, and the shape of its matrix.

The schema is SchemaStore's, as vendored (with its SHA-256) by ``check-jsonschema``, a dev
dependency from PyPI; the file is read as YAML 1.2 (``ruamel.yaml``, which check-jsonschema
uses), so ``on:`` stays a key rather than becoming ``true``.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import io
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

jsonschema = pytest.importorskip("jsonschema")
ruamel_yaml = pytest.importorskip("ruamel.yaml")

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
VENDOR = "check_jsonschema.builtin_schemas.vendor"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    raw = resources.files(VENDOR).joinpath("github-workflows.json").read_bytes()
    expected = resources.files(VENDOR).joinpath("sha256/github-workflows.sha256").read_text()
    assert hashlib.sha256(raw).hexdigest() == expected.strip(), "vendored schema changed"
    return json.loads(raw)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    yaml = ruamel_yaml.YAML(typ="safe", pure=True)
    return yaml.load(WORKFLOW.read_text())


def errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_the_workflow_validates_against_the_github_schema(schema, workflow):
    assert errors(schema, workflow) == []


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ("jobs.merge.runs-on", {"labels": 42}, "jobs/merge"),
        ("jobs.chaos.timeout-minutes", "long", "jobs/chaos"),
        ("jobs.chaos.strategy.matrix", "every scenario", "jobs/chaos"),
        ("concurency", {"group": "x"}, ""),
    ],
)
def test_the_schema_check_would_catch_a_broken_workflow(schema, workflow, path, value, where):
    found = errors(schema, _set(workflow, path, value))
    assert found and found[0].startswith(where), found


def test_one_job_per_scenario_and_round_then_a_merge(workflow):
    jobs = workflow["jobs"]
    matrix = jobs["chaos"]["strategy"]["matrix"]
    assert set(matrix) == {"scenario", "round"}
    assert jobs["chaos"]["strategy"]["fail-fast"] is False
    assert jobs["chaos"]["env"]["NIGHTLY_ROUND"] == "${{ matrix.round }}"
    assert jobs["chaos"]["env"]["NIGHTLY_SCENARIOS"] == "${{ matrix.scenario }}"
    uploads = [s for s in jobs["chaos"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert uploads and uploads[0]["if"] == "always()"
    merge = jobs["merge"]
    assert set(merge["needs"]) == {"plan", "chaos", "bench", "explore"}
    assert "always()" in merge["if"]
    runs = " ".join(s.get("run", "") for s in merge["steps"])
    assert "scripts/nightly.sh merge runs/nightly/artifacts" in runs
    assert any("download-artifact" in s.get("uses", "") for s in merge["steps"])
    assert any("cache/restore" in s.get("uses", "") for s in merge["steps"])


def test_the_plan_step_lists_every_scenario_and_round(workflow, monkeypatch):
    """The plan job's Python, run here as the runner would run it (in the repository root)."""
    script = workflow["jobs"]["plan"]["steps"][1]["run"]
    code = re.search(r"<<'EOF'[^\n]*\n(.*)\nEOF", script, re.S).group(1)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ROUNDS", "3")
    monkeypatch.setenv("SCENARIOS", "")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "plan", "exec"), {})  # noqa: S102 - the workflow's own snippet
    got = dict(line.split("=", 1) for line in out.getvalue().splitlines())
    scenarios = json.loads(got["scenarios"])
    assert scenarios == sorted(glob.glob("scenarios/*.yaml")) and len(scenarios) >= 10
    assert json.loads(got["rounds"]) == [1, 2, 3] and got["round_count"] == "3"
    assert got["scenario_list"].split() == scenarios
    assert os.path.basename(scenarios[0]).endswith(".yaml")


def test_an_exploration_job_keeps_its_database_and_uploads_its_findings(workflow):
    job = workflow["jobs"]["explore"]
    runs = " ".join(s.get("run", "") for s in job["steps"])
    assert "scripts/nightly.sh explore" in runs
    cached = [s["with"]["path"] for s in job["steps"] if "actions/cache" in s.get("uses", "")]
    assert cached == ["runs/nightly/explore-db", "runs/nightly/explore-db"]  # restore, save
    upload = next(s for s in job["steps"] if "upload-artifact" in s.get("uses", ""))
    assert upload["if"] == "always()" and "minimal.yaml" in upload["with"]["path"]
    assert "/runs/" not in upload["with"]["path"]  # the example runs stay out of the merge
