"""What an exploration leaves behind: ``explore.json``, ``minimal.yaml`` and the closing note.

``explore.json`` is rewritten (atomically) after every example, so an interrupted exploration
still says what it tried; the HTML summary (:mod:`reports.explore`) reads it and nothing else.
``minimal.yaml`` is the scenario with the minimal failing schedule as its faults, its seed, and
the failing checks in a comment: ready to copy into ``scenarios/`` as a regression case.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from harness.explore.search import Example, Exploration, example_scenario, scenario_yaml
from harness.model.record import json_safe

SCHEMA_VERSION = 1
RECORD = "explore.json"
MINIMAL = "minimal.yaml"


def replay_explore(exp: Exploration) -> str:
    """The command that runs this exploration again (the database replays its failures)."""
    s = exp.settings
    parts = ["recchaos", "explore", s.scenario_path, "--seed", str(exp.scenario.seed)]
    if s.profile:
        parts += ["--profile", s.profile]
    if s.budget is not None or s.time_budget_s is None:
        parts += ["--budget", str(s.search_budget)]
    else:
        parts += ["--time-budget", f"{s.time_budget_s:g}"]
    parts += ["--out", str(s.out_dir)]
    if s.database is not None:
        parts += ["--database", str(s.database)]
    return shlex.join(parts)


def _brief(e: Example | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {
        "index": e.index,
        "label": e.label,
        "faults": len(e.faults),
        "runs_so_far": e.runs_so_far,
        "seconds": round(e.finished_s, 3),
        "scenario_file": str(e.scenario_file),
    }


def record_dict(
    exp: Exploration, status: str, started_wall: float, note: list[str] | None = None
) -> dict[str, Any]:
    s = exp.settings
    first = exp.path[0] if exp.path else None
    minimal = exp.path[-1] if exp.path else None
    return {
        "kind": "recchaos-exploration",
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "scenario_path": s.scenario_path,
        "scenario_name": exp.scenario.name,
        "profile": s.profile,
        "seed": exp.scenario.seed,
        "sla_ms": exp.scenario.sla_ms,
        "load_duration_s": exp.scenario.load_duration_s,
        "space": exp.space.describe(),
        "limits": (exp.scenario.explore.to_dict() if exp.scenario.explore else {}),
        "settings": {
            "budget": s.search_budget,
            "time_budget_s": s.time_budget_s,
            "shrink_budget": s.shrink_budget,
            "reruns": s.reruns,
        },
        "database": {"path": str(s.database_dir), "saved_failures": exp.saved_failures},
        "started_wall": started_wall,
        "ended_wall": time.time() if status != "running" else None,
        "elapsed_s": round(exp.elapsed_s, 3),
        "verdict": exp.verdict.value if status != "running" else None,
        "stopped": exp.stopped,
        "runs": exp.runs,
        "shrink_runs": exp.shrink_runs,
        "examples": [e.to_dict() for e in exp.examples],
        "shrink_path": [e.index for e in exp.path],
        "first_failing": _brief(first),
        "minimal": _brief(minimal),
        "minimal_scenario": str(exp.workdir / MINIMAL) if minimal is not None else None,
        "closing_note": list(note or []),
        "replay": {
            "explore": replay_explore(exp),
            "minimal": f"recchaos run {exp.workdir / MINIMAL}" if minimal is not None else None,
        },
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace: a reader never sees half a record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_minimal(exp: Exploration) -> Path | None:
    """``minimal.yaml``: the minimal failing schedule as a scenario (None when none failed)."""
    if not exp.path:
        return None
    e = exp.path[-1]
    base = exp.scenario
    data = example_scenario(base, e.faults, f"{base.name}-minimal")
    broken = sorted({_slo_of(c) for c in e.judgement.failing})
    data["description"] = (
        f"The minimal failing fault schedule that `recchaos explore {exp.settings.scenario_path}`"
        f" (seed {base.seed}) found: {e.label}. It breaks {', '.join(broken)}"
        f" ({e.judgement.reason})."
    )
    checks = "\n".join(f"#   {c.get('message', '')}" for c in e.judgement.failing)
    header = (
        f"# Minimal failing schedule found by: {replay_explore(exp)}\n"
        f"# (example {e.index}, shrunk from example {exp.path[0].index} in"
        f" {len(exp.path) - 1} step(s)).\n"
        f"# Failing checks:\n{checks}\n"
        f"# Replay: recchaos run {exp.workdir / MINIMAL}\n"
        "# Copy this file into scenarios/ to keep it as a regression case.\n"
    )
    path = exp.workdir / MINIMAL
    path.write_text(header + scenario_yaml(data))
    return path


def _slo_of(check: dict[str, Any]) -> str:
    """``slos[0] (tier_share)``: the SLO a check judged, without the example file's path."""
    where = str(check.get("where", "")).rsplit(", ", 1)[-1]
    return f"{where} ({check.get('metric', '')})"


def closing_note(exp: Exploration) -> list[str]:
    """The lines that end an exploration: what was found, what it cost, how to replay it."""
    runs = f"{exp.runs} run{'s' * (exp.runs != 1)}"
    lines = [
        f"exploration {exp.verdict.value}: {len(exp.examples)} schedules tried in {runs},"
        f" {exp.elapsed_s:.0f} s" + (f" ({exp.stopped})" if exp.stopped else "")
    ]
    if exp.path:
        first, minimal = exp.path[0], exp.path[-1]
        for what, e in (("first failing schedule", first), ("minimal failing schedule", minimal)):
            lines.append(
                f"  {what} (example {e.index}, {len(e.faults)} fault(s); found after"
                f" {e.runs_so_far} runs, {e.finished_s:.0f} s): {e.label}"
            )
        steps = " -> ".join(f"e{e.index} ({len(e.faults)})" for e in exp.path)
        lines.append(f"  shrink path (example, faults): {steps}")
        lines.append(f"  why it counts: {minimal.judgement.reason}")
        lines += [f"    FAIL {c.get('message', '')}" for c in minimal.judgement.failing]
        lines.append(f"  minimal scenario: {exp.workdir / MINIMAL} (copy it into scenarios/)")
        lines.append(f"Replay the minimal schedule: recchaos run {exp.workdir / MINIMAL}")
    else:
        counts = {
            v: sum(1 for e in exp.examples if e.verdict.value == v)
            for v in ("PASS", "INCONCLUSIVE")
        }
        lines.append(
            f"  no failing schedule: {counts['PASS']} PASS, {counts['INCONCLUSIVE']} INCONCLUSIVE"
            f" within {exp.space.describe()}"
        )
    lines.append(f"Replay the exploration: {replay_explore(exp)}")
    lines.append(f"summary: {exp.workdir / 'explore.html'}")
    return lines
