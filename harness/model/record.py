"""The run record (``run.json``): what ran, with which seed, what was injected, what was measured.

Written incrementally during a run (``status: running``), always by atomic replace, and
finished as ``complete`` or ``incomplete``; when the harness dies before finishing it, its
watchdog marks it ``killed`` (``ended_wall`` is when it noticed; ``errors`` say what it did).
Reports read it back with :func:`read_record`.
Fault timeline times are monotonic nanoseconds since the run's origin (the same clock and origin
as the request log, see :mod:`harness.model.requestlog`) plus wall-clock epoch seconds, and so is
the trip time of a :class:`Halt` (a guard that tripped), so a heal's delay is a subtraction.
Window statistics and check results are stored as the plain mappings their own layers produce.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.model.errors import UsageError

SCHEMA_VERSION = 1
STATUSES = ("running", "complete", "incomplete", "killed")


@dataclass(frozen=True)
class FaultEvent:
    """One injected fault as it happened; ``verified`` says its effect was observed."""

    kind: str
    target: str
    params: dict[str, Any]
    origin: str
    inject_ns: int
    inject_wall: float
    heal_ns: int | None = None
    heal_wall: float | None = None
    verified: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind}({self.target})"

    @property
    def inject_s(self) -> float:
        return self.inject_ns / 1e9

    @property
    def heal_s(self) -> float | None:
        return None if self.heal_ns is None else self.heal_ns / 1e9

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaultEvent:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class Halt:
    """A guard tripped and the harness halted the experiment: which guard, on what evidence,
    when (``trip_ns``: monotonic ns since the run's origin, the clock of the timeline, taken
    when the harness decided), what it healed at once and which planned faults it never
    applied."""

    guard: str  # where the guard is written: "guards[0]"
    rule: str  # "error ratio above 0.5 for 3 s"
    kind: str
    value: float | None  # the measured value over the breach (error ratio), if any
    limit: float | None
    evidence: str  # what was seen, e.g. "error ratio 0.97 (1,203 of 1,240) from 6.0 s to 9.0 s"
    since_s: float  # when the condition began to hold
    trip_ns: int
    trip_wall: float
    healed: tuple[str, ...] = ()  # labels of the faults active at the trip, healed at once
    healed_ns: int | None = None  # when the last of them was healed
    heal_errors: tuple[str, ...] = ()
    not_applied: tuple[str, ...] = ()  # planned, never applied: "kill(shard-1-primary) at 12 s"

    @property
    def trip_s(self) -> float:
        return self.trip_ns / 1e9

    def message(self) -> str:
        """One line for logs and the verdict: the guard, when, why, and what the halt did."""
        took = (
            f" (all healed {(self.healed_ns - self.trip_ns) / 1e6:.0f} ms after the trip)"
            if self.healed_ns is not None
            else ""
        )
        healed = f"healed {', '.join(self.healed)}{took}" if self.healed else "no fault was active"
        skipped = (
            f"; {len(self.not_applied)} planned fault{'s' * (len(self.not_applied) != 1)} not "
            f"applied: {', '.join(self.not_applied)}"
            if self.not_applied
            else ""
        )
        failed = f"; heal failed: {'; '.join(self.heal_errors)}" if self.heal_errors else ""
        return (
            f"guard {self.rule} ({self.guard}) tripped at {self.trip_s:.1f} s: {self.evidence};"
            f" the run was halted: {healed}{skipped}{failed}"
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Halt:
        kw = _known(cls, d)
        for key in ("healed", "heal_errors", "not_applied"):
            kw[key] = tuple(d.get(key, ()))
        return cls(**kw)


@dataclass(frozen=True)
class RunRecord:
    """Everything about one run that a report or a replay needs."""

    scenario: dict[str, Any]
    seed: int
    scenario_path: str = ""
    profile: str | None = None
    replay: str = ""
    status: str = "running"
    git_commit: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    started_wall: float = 0.0
    ended_wall: float | None = None
    origin_mono_ns: int = 0
    load_end_s: float | None = None
    timeline: tuple[FaultEvent, ...] = ()
    windows: tuple[dict[str, Any], ...] = ()
    checks: tuple[dict[str, Any], ...] = ()
    verdict: str | None = None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # what the run could not test as asked (e.g. its mix)
    files: dict[str, str] = field(default_factory=dict)
    halt: Halt | None = None  # set when a guard tripped (the run was halted)
    # what the stall probes saw during the load: trusted, cpus, notes, stalls (cpu, at_s, ms)
    host_stalls: dict[str, Any] | None = None
    # the capacity the scenario's rate steps measured before the load (its capacity section)
    capacity: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timeline"] = [asdict(e) for e in self.timeline]
        d["halt"] = None if self.halt is None else asdict(self.halt)
        for key in ("windows", "checks", "errors", "warnings"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "run.json") -> RunRecord:
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise UsageError(
                f"{source}: schema_version {version!r} is not supported; this"
                f" recchaos reads schema versions 1 to {SCHEMA_VERSION}"
            )
        kw = _known(cls, d)
        kw["timeline"] = tuple(FaultEvent.from_dict(e) for e in d.get("timeline", ()))
        halt = d.get("halt")
        kw["halt"] = Halt.from_dict(halt) if isinstance(halt, dict) else None
        for key in ("windows", "checks", "errors", "warnings"):
            kw[key] = tuple(d.get(key, ()))
        return cls(**kw)


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Only the keys ``cls`` has: a newer writer of the same schema may add fields."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def json_safe(value: Any) -> Any:
    """Strict JSON: infinities become "inf"/"-inf", NaN becomes null, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_record(path: str | os.PathLike[str], record: RunRecord) -> None:
    """Write ``run.json`` by atomic replace, so a reader never sees half a record."""
    if record.status not in STATUSES:
        raise ValueError(f"status {record.status!r}; allowed: {', '.join(STATUSES)}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(json_safe(record.to_dict()), indent=2, allow_nan=False)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_record(path: str | os.PathLike[str]) -> RunRecord:
    source = os.fspath(path)
    try:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{source}: cannot read the run record: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{source}: not a run record (a JSON object is expected)")
    return RunRecord.from_dict(data, source)


class RecordFile:
    """A run record on disk, rewritten (atomically) after every change during a run."""

    def __init__(self, path: str | os.PathLike[str], record: RunRecord):
        self.path = Path(path)
        self.record = record
        write_record(self.path, record)

    def update(self, **changes: Any) -> RunRecord:
        self.record = replace(self.record, **changes)
        write_record(self.path, self.record)
        return self.record

    def add_fault(self, event: FaultEvent) -> int:
        """Append a timeline entry; returns its index (to update it when healed)."""
        self.update(timeline=self.record.timeline + (event,))
        return len(self.record.timeline) - 1

    def replace_fault(self, index: int, **changes: Any) -> FaultEvent:
        timeline = list(self.record.timeline)
        timeline[index] = replace(timeline[index], **changes)
        self.update(timeline=tuple(timeline))
        return timeline[index]

    def add_error(self, message: str) -> None:
        self.update(errors=self.record.errors + (message,))

    def finish(self, status: str = "complete", **changes: Any) -> RunRecord:
        return self.update(status=status, **changes)
