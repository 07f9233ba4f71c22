"""Reading a run directory back for reports: the record, the request log, the extras.

A run directory is what ``harness/runner/run.py`` writes: ``run.json`` (the run record),
``details.json`` (generator summary, tier cross-check), ``load/requests.npy`` (one row per
intended request), ``load/histograms.json`` and ``cluster/logs/``. Only ``run.json`` is
required; anything else missing, or a record whose status is not ``complete``, makes the run
*partial*: it is still reported, with the gaps listed in :attr:`RunDir.notes`. A path that is not
a run directory, or a ``run.json`` that cannot be read, raises :class:`UsageError` saying what
was found and what was expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.model.errors import UsageError
from harness.model.record import RunRecord, read_record
from harness.model.requestlog import read_log

RECORD = "run.json"
REQUESTS = "load/requests.npy"
DETAILS = "details.json"
HISTOGRAMS = "load/histograms.json"
EXPECTED = "a directory written by `recchaos run` (run.json, load/requests.npy, details.json)"


@dataclass
class RunDir:
    """One run directory, read and checked; ``requests`` is None when the log is unusable."""

    path: Path
    record: RunRecord
    requests: np.ndarray | None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.record.status != "complete" or bool(self.notes)

    @property
    def scenario_name(self) -> str:
        return str(self.record.scenario.get("name") or self.path.name)

    @property
    def sla_ms(self) -> float:
        return float(self.record.scenario.get("sla_ms") or 20.0)

    @property
    def end_s(self) -> float:
        """End of the load in seconds since the origin (from the record, else the log)."""
        if self.record.load_end_s is not None:
            return float(self.record.load_end_s)
        if self.requests is not None and self.requests.size:
            return float(self.requests["intended_ns"].max()) / 1e9
        phases = self.record.scenario.get("load") or []
        return float(sum(float(p.get("duration_s", 0)) for p in phases))


def load_run(path: str | os.PathLike[str]) -> RunDir:
    """Read a run directory; raises :class:`UsageError` when it is not one or cannot be read."""
    root = Path(path)
    if not root.exists():
        raise UsageError(f"{root}: no such run directory; expected {EXPECTED}")
    if root.is_file() and root.name == RECORD:
        root = root.parent
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory; expected {EXPECTED}")
    if not (root / RECORD).is_file():
        raise UsageError(
            f"{root}: not a run directory (no {RECORD}); expected {EXPECTED}"
            + (f"; it holds {', '.join(_children(root))}" if _children(root) else "; it is empty")
        )
    record = _read_record(root / RECORD)
    notes: list[str] = []
    if record.status != "complete":
        why = "; ".join(record.errors) or "no error was recorded (the harness may have died)"
        notes.append(f"run status is {record.status!r}, not 'complete': {why}")
    requests = _read_requests(root / REQUESTS, notes)
    details = _read_json(root / DETAILS, notes)
    if not record.windows and record.status == "complete":
        notes.append(f"{RECORD} has no window statistics")
    return RunDir(root, record, requests, details, notes)


def _children(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir())[:8]
    except OSError:
        return []


def _read_record(path: Path) -> RunRecord:
    try:
        return read_record(path)
    except UsageError as exc:
        raise UsageError(
            f"{exc} (a run.json that is cut short or hand-edited is corrupt; re-run the "
            "scenario with the replay command, or delete the directory)"
        ) from None
    except (TypeError, KeyError, ValueError) as exc:
        raise UsageError(
            f"{path}: the run record does not have the expected fields: {exc}"
        ) from None


def _read_requests(path: Path, notes: list[str]) -> np.ndarray | None:
    if not path.is_file():
        notes.append(f"{REQUESTS} is missing: no per-second plots")
        return None
    try:
        return read_log(path)
    except (OSError, ValueError, EOFError) as exc:
        notes.append(f"{REQUESTS} cannot be read ({exc}): no per-second plots")
        return None


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"{path.name} is missing: no generator summary or tier cross-check")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} cannot be read ({exc})")
        return {}
    return data if isinstance(data, dict) else {}


def find_run_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself if it is a run directory, else the run directories directly below it
    (sorted by name, i.e. by start time); raises :class:`UsageError` when there are none."""
    root = Path(path)
    if (root / RECORD).is_file():
        return [root]
    if not root.is_dir():
        raise UsageError(
            f"{root}: no such run directory; expected {EXPECTED}, or a directory "
            "of them, or history:SELECTOR"
        )
    found = sorted(p for p in root.iterdir() if (p / RECORD).is_file())
    if not found:
        raise UsageError(f"{root}: holds no run directories (no */{RECORD}); expected {EXPECTED}")
    return found
