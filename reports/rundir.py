"""Reading a run directory back for reports: the record, the request log, the extras.

A run directory is what ``harness/runner/run.py`` writes: ``run.json`` (the run record),
``details.json`` (generator summary, tier cross-check), ``load/requests.npy`` (one row per
intended request), ``load/histograms.json`` (the whole load's histograms),
``cluster/metrics-before.txt`` and ``cluster/metrics-after.txt`` (the gateway's Prometheus text),
``latency.hlog`` and ``hgrm/`` (the same latencies in HdrHistogram's standard formats, for other
tools) and ``cluster/logs/``. Only ``run.json`` is required; anything else missing, or a record
whose status is not ``complete``, makes the run *partial*: it is still reported, with the gaps
listed in :attr:`RunDir.notes`. Every file that is read is checked first
(:mod:`reports.validate`): a path that is not a run directory, or a file in it that is present
but corrupt, raises :class:`UsageError` (exit 2) naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.metrics.histogram import LatencyHistogram
from harness.model.errors import UsageError
from harness.model.record import SCHEMA_VERSION, RunRecord
from harness.model.requestlog import TIERS, read_log
from reports import prom
from reports.validate import Corrupt, check_details, check_load_histograms, check_record

RECORD = "run.json"
REQUESTS = "load/requests.npy"
DETAILS = "details.json"
HISTOGRAMS = "load/histograms.json"
METRICS_BEFORE = "cluster/metrics-before.txt"
METRICS_AFTER = "cluster/metrics-after.txt"
METRICS_ONE = "cluster/metrics.txt"
EXPECTED = "a directory written by `recchaos run` (run.json, load/requests.npy, details.json)"
FIX = (
    "it was damaged or not written by recchaos; re-run the scenario with the replay command "
    "in run.json, or remove the run directory"
)


@dataclass(frozen=True)
class GatewayScrape:
    """The gateway's histograms over the run (after less before), and where they came from."""

    histograms: prom.Histograms
    source: str


@dataclass
class RunDir:
    """One run directory, read and checked; ``requests`` is None when the log is missing."""

    path: Path
    record: RunRecord
    requests: np.ndarray | None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load_histograms: dict[str, LatencyHistogram] | None = None
    gateway: GatewayScrape | None = None

    @property
    def partial(self) -> bool:
        return self.record.status != "complete" or bool(self.notes)

    @property
    def killed(self) -> bool:
        """The harness died and the watchdog closed the record."""
        return self.record.status == "killed"

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


def corrupt(path: Path, problem: str) -> UsageError:
    return UsageError(f"{path}: corrupt: {problem}; {FIX}")


def load_run(path: str | os.PathLike[str]) -> RunDir:
    """Read a run directory; raises :class:`UsageError` when it is not one, or when a file in
    it is corrupt."""
    root = _run_root(Path(path))
    record = read_run_record(root / RECORD)
    notes = status_notes(record)
    requests = _read_requests(root / REQUESTS, notes)
    details = _read_json(
        root, DETAILS, notes, check_details, "no generator summary or tier cross-check"
    )
    hists = _read_json(
        root, HISTOGRAMS, notes, check_load_histograms, "no whole-load rows in the stage table"
    )
    if not record.windows and record.status == "complete":
        notes.append(f"{RECORD} has no window statistics")
    return RunDir(root, record, requests, details or {}, notes, hists, read_gateway(root))


def _run_root(root: Path) -> Path:
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
    return root


def _children(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir())[:8]
    except OSError:
        return []


def read_run_record(path: Path) -> RunRecord:
    """``run.json``, checked field by field (a newer schema is refused by the model's rule)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{path}: cannot read the run record: {exc} (a run.json that is cut short or "
            "hand-edited is corrupt; re-run the scenario with the replay command, or delete "
            "the directory)"
        ) from None
    if not isinstance(doc, dict):
        raise corrupt(path, f"expected a JSON object, found {type(doc).__name__}")
    version = doc.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        return RunRecord.from_dict(doc, str(path))  # raises the model's schema message
    try:
        check_record(doc)
        return RunRecord.from_dict(doc, str(path))
    except Corrupt as exc:
        raise corrupt(path, str(exc)) from None
    except (TypeError, KeyError, ValueError) as exc:
        raise UsageError(
            f"{path}: the run record does not have the expected fields: {exc}; {FIX}"
        ) from None


def status_notes(record: RunRecord) -> list[str]:
    """Why a run is not complete, as the report's partial-run banner says it."""
    why = "; ".join(record.errors)
    if record.status == "complete":
        return []
    if record.status == "killed":
        at = (
            " at " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.ended_wall))
            if record.ended_wall
            else ""
        )
        return [
            f"run KILLED: the harness died during the run; its watchdog closed the record{at}"
            + (f": {why}" if why else "")
        ]
    why = why or "no error was recorded (the harness may have died)"
    return [f"run status is {record.status!r}, not 'complete': {why}"]


def _read_requests(path: Path, notes: list[str]) -> np.ndarray | None:
    if not path.is_file():
        notes.append(f"{REQUESTS} is missing: no per-second plots")
        return None
    try:
        rows = read_log(path)
    except (OSError, ValueError, EOFError) as exc:
        raise corrupt(path, f"not a recchaos request log ({exc})") from None
    if rows.ndim != 1:
        raise corrupt(path, f"expected one row per request, found shape {rows.shape}")
    if rows.size and int(rows["intended_ns"].min()) < 0:
        raise corrupt(path, "negative intended send times")
    tiers = rows["tier"]
    if rows.size and (int(tiers.min()) < -1 or int(tiers.max()) >= len(TIERS)):
        raise corrupt(path, f"tier codes outside -1..{len(TIERS) - 1}")
    return rows


def _read_json(root: Path, name: str, notes: list[str], check: Any, without: str) -> Any:
    """A JSON extra: None (and a note saying what is lost ``without`` it) when missing; checked
    by ``check`` when present."""
    path = root / name
    if not path.is_file():
        notes.append(f"{name} is missing: {without}")
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise corrupt(path, f"not JSON ({exc})") from None
    try:
        return check(doc)
    except Corrupt as exc:
        raise corrupt(path, str(exc)) from None


def read_gateway(root: Path) -> GatewayScrape | None:
    """The gateway's histograms over the run from the saved scrapes; None when none was saved."""
    after, before, one = root / METRICS_AFTER, root / METRICS_BEFORE, root / METRICS_ONE
    if after.is_file():
        hists = _parse_metrics(after)
        if before.is_file():
            return GatewayScrape(
                prom.subtract(hists, _parse_metrics(before)), "gateway /metrics (after - before)"
            )
        return GatewayScrape(hists, "gateway /metrics (after)")
    if one.is_file():
        return GatewayScrape(_parse_metrics(one), "gateway /metrics")
    return None


def _parse_metrics(path: Path) -> prom.Histograms:
    try:
        return prom.parse_histograms(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise corrupt(path, f"cannot be read as text ({exc})") from None
    except Corrupt as exc:
        raise corrupt(path, str(exc)) from None


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
