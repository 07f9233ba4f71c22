"""The history store: every run (and every component-benchmark file) appended to one SQLite file.

Default location: ``history.sqlite`` beside the run directories (the parent of the run
directory), or ``$RECCHAOS_HISTORY``. The schema is versioned with ``PRAGMA user_version``; a file
written by a newer recchaos is refused with a clear message rather than misread. Runs are grouped
in *batches* (``$RECCHAOS_BATCH``, e.g. one nightly job; by default each run is its own batch);
``baselines`` names the batch that comparisons start from.

Selectors (``history:SELECTOR`` on the command line): ``latest`` and ``previous`` (batches, by
when they were added), ``baseline`` (the batch marked as baseline), ``last:N`` (the last N runs of
each scenario), ``run:ID``, or a batch name.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.model.errors import UsageError
from reports.compare.quality import window_quality
from reports.history.benchfiles import Bench, read_benchmarks
from reports.rundir import RunDir, load_run

SCHEMA_VERSION = 2  # 2: window_quality
DB_NAME = "history.sqlite"
ENV_DB = "RECCHAOS_HISTORY"
ENV_BATCH = "RECCHAOS_BATCH"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    run_dir TEXT NOT NULL UNIQUE,
    batch TEXT NOT NULL,
    scenario TEXT NOT NULL,
    profile TEXT,
    seed INTEGER,
    git_commit TEXT,
    started_wall REAL,
    status TEXT,
    verdict TEXT,
    partial INTEGER NOT NULL DEFAULT 0,
    host TEXT,
    added_wall REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_batch ON runs (batch);
CREATE INDEX IF NOT EXISTS runs_scenario ON runs (scenario, added_wall);
CREATE TABLE IF NOT EXISTS windows (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT,
    label TEXT,
    start_s REAL,
    end_s REAL,
    count INTEGER,
    errors INTEGER,
    within_sla REAL,
    p50 REAL, p95 REAL, p99 REAL, p999 REAL, max REAL,
    response_hist TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS window_quality (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    n INTEGER,
    sd REAL,
    PRIMARY KEY (run_id, name, tier, metric)
);
CREATE TABLE IF NOT EXISTS benchmarks (
    id INTEGER PRIMARY KEY,
    batch TEXT NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    median_s REAL, mean_s REAL, min_s REAL, stddev_s REAL,
    rounds INTEGER,
    data TEXT,
    git_commit TEXT,
    added_wall REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS benchmarks_batch ON benchmarks (batch, name);
CREATE TABLE IF NOT EXISTS baselines (
    name TEXT PRIMARY KEY,
    batch TEXT NOT NULL,
    set_wall REAL NOT NULL
);
"""


@dataclass
class WindowEntry:
    name: str
    kind: str
    p50: float
    p95: float
    p99: float
    count: int
    response_hist: str | None
    quality: dict[str, tuple[float, int, float]] = field(default_factory=dict)  # tier all


@dataclass
class RunEntry:
    """One run as the history holds it (enough for compare and trend)."""

    id: int
    run_dir: str
    batch: str
    scenario: str
    profile: str | None
    seed: int | None
    git_commit: str | None
    started_wall: float | None
    status: str
    verdict: str | None
    partial: bool
    added_wall: float
    windows: dict[str, WindowEntry] = field(default_factory=dict)


def default_db(run_dir: str | os.PathLike[str] | None = None) -> Path:
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB])
    if run_dir is None:
        return Path("runs") / DB_NAME
    return Path(run_dir).resolve().parent / DB_NAME


@contextmanager
def connect(path: str | os.PathLike[str], create: bool = True) -> Iterator[sqlite3.Connection]:
    """An open, migrated connection (committed on success, closed always)."""
    p = Path(path)
    if not create and not p.is_file():
        raise UsageError(
            f"{p}: no history store here; runs are appended by `recchaos run` "
            f"(or `recchaos report --append`); set ${ENV_DB} or pass --db"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(p, timeout=10.0)
    except sqlite3.Error as exc:
        raise UsageError(f"{p}: cannot open the history store: {exc}") from None
    try:
        _migrate(conn, p)
        conn.execute("PRAGMA foreign_keys = ON")
        yield conn
        conn.commit()
    except sqlite3.DatabaseError as exc:
        raise UsageError(
            f"{p}: not a usable recchaos history store ({exc}); move it away and "
            "a new one is created"
        ) from None
    finally:
        conn.close()


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise UsageError(
            f"{path}: history schema version {version} is newer than this recchaos "
            f"reads ({SCHEMA_VERSION}); upgrade recchaos or use another --db"
        )
    if version < SCHEMA_VERSION:
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _real(v: Any) -> float | None:
    """A float for SQLite: inf stays (SQLite stores IEEE infinities), "inf" text too, nan -> NULL."""
    if v in ("inf", "-inf"):
        return float(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def append_run(
    run_dir: str | os.PathLike[str],
    db_path: str | os.PathLike[str] | None = None,
    batch: str | None = None,
) -> int:
    """Add (or replace) one run in the history; returns its id. Partial runs are stored too,
    marked ``partial`` (comparisons and trends leave them out)."""
    return append_loaded(load_run(run_dir), db_path, batch)


def append_loaded(
    run: RunDir, db_path: str | os.PathLike[str] | None = None, batch: str | None = None
) -> int:
    """:func:`append_run` for a run directory already read (and so already checked)."""
    r = run.record
    db = Path(db_path) if db_path is not None else default_db(run.path)
    batch = batch or os.environ.get(ENV_BATCH) or run.path.name
    with connect(db) as conn:
        conn.execute("DELETE FROM runs WHERE run_dir = ?", (str(run.path.resolve()),))
        cur = conn.execute(
            "INSERT INTO runs (run_dir, batch, scenario, profile, seed, git_commit, started_wall,"
            " status, verdict, partial, host, added_wall) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                str(run.path.resolve()),
                batch,
                run.scenario_name,
                r.profile,
                r.seed,
                r.git_commit,
                r.started_wall,
                r.status,
                r.verdict,
                int(run.partial),
                json.dumps(r.host),
                time.time(),
            ),
        )
        run_id = int(cur.lastrowid or 0)
        for w in r.windows:
            win, lat = w.get("window", {}), w.get("latency_with_errors_ms", {})
            conn.execute(
                "INSERT OR REPLACE INTO windows VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    win.get("name"),
                    win.get("kind"),
                    win.get("label"),
                    win.get("start_s"),
                    win.get("end_s"),
                    w.get("count"),
                    w.get("errors"),
                    _real(w.get("within_sla")),
                    _real(lat.get("p50")),
                    _real(lat.get("p95")),
                    _real(lat.get("p99")),
                    _real(lat.get("p99.9")),
                    _real(lat.get("max")),
                    (w.get("histograms") or {}).get("response"),
                ),
            )
            _append_quality(conn, run_id, str(win.get("name")), w)
    return run_id


def _append_quality(conn: sqlite3.Connection, run_id: int, name: str, w: dict[str, Any]) -> None:
    """The window's answer quality per tier (``all`` and each tier that served)."""
    by_tier = (w.get("answers") or {}).get("by_tier") or {}
    for tier, q in by_tier.items():
        stats = window_quality({"answers": {"by_tier": {"all": q}}})
        for metric, (value, n, sd) in stats.items():
            conn.execute(
                "INSERT OR REPLACE INTO window_quality VALUES (?,?,?,?,?,?,?)",
                (run_id, name, tier, metric, _real(value), n, _real(sd)),
            )


def append_benchmarks(
    json_path: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    batch: str,
    git_commit: str | None = None,
) -> int:
    """Add a pytest-benchmark ``--benchmark-json`` file; returns how many benchmarks."""
    entries = read_benchmarks(json_path)
    with connect(db_path) as conn:
        for b in entries:
            conn.execute(
                "INSERT INTO benchmarks (batch, source, name, median_s, mean_s, min_s, stddev_s,"
                " rounds, data, git_commit, added_wall) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    batch,
                    str(json_path),
                    b.name,
                    b.median_s,
                    b.mean_s,
                    b.min_s,
                    b.stddev_s,
                    b.rounds,
                    json.dumps(b.data) if b.data else None,
                    git_commit,
                    time.time(),
                ),
            )
    return len(entries)


def set_baseline(db_path: str | os.PathLike[str], batch: str, name: str = "default") -> None:
    with connect(db_path) as conn:
        if not conn.execute(
            "SELECT 1 FROM runs WHERE batch = ? UNION SELECT 1 FROM benchmarks WHERE batch = ?",
            (batch, batch),
        ).fetchone():
            raise UsageError(
                f"{db_path}: no runs or benchmarks in batch {batch!r}; "
                f"batches: {', '.join(batches(conn)[-8:]) or 'none'}"
            )
        conn.execute("INSERT OR REPLACE INTO baselines VALUES (?,?,?)", (name, batch, time.time()))


def baseline_batch(conn: sqlite3.Connection, name: str = "default") -> str | None:
    row = conn.execute("SELECT batch FROM baselines WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def batches(conn: sqlite3.Connection) -> list[str]:
    """Batch names, oldest first (by when their first run or benchmark was added)."""
    rows = conn.execute(
        "SELECT batch, MIN(added_wall) AS t FROM (SELECT batch, added_wall FROM runs UNION ALL "
        "SELECT batch, added_wall FROM benchmarks) GROUP BY batch ORDER BY t"
    ).fetchall()
    return [r[0] for r in rows]


def resolve_batch(conn: sqlite3.Connection, selector: str) -> str:
    names = batches(conn)
    if selector == "baseline":
        b = baseline_batch(conn)
        if b is None:
            raise UsageError(
                "history:baseline: no baseline has been set yet (the nightly job "
                "sets one after a clean night; or `recchaos compare --set-baseline`)"
            )
        return b
    if selector in ("latest", "previous"):
        need = 1 if selector == "latest" else 2
        if len(names) < need:
            raise UsageError(f"history:{selector}: the history has {len(names)} batch(es)")
        return names[-need]
    if selector not in names:
        raise UsageError(
            f"history:{selector}: no such batch; selectors: latest, previous, "
            f"baseline, last:N, run:ID, or a batch ({', '.join(names[-5:]) or 'none'})"
        )
    return selector


def select_runs(
    db_path: str | os.PathLike[str], selector: str, include_partial: bool = False
) -> list[RunEntry]:
    """The runs a ``history:SELECTOR`` names, oldest first, with their windows."""
    with connect(db_path, create=False) as conn:
        where, args = _where(conn, selector)
        if not include_partial:
            where += " AND partial = 0"
        rows = conn.execute(
            f"SELECT * FROM runs WHERE {where} ORDER BY added_wall, id", args
        ).fetchall()
        entries = [_entry(r) for r in rows]
        for e in entries:
            for w in conn.execute(
                "SELECT name, kind, p50, p95, p99, count, response_hist FROM "
                "windows WHERE run_id = ? ORDER BY start_s, name",
                (e.id,),
            ):
                e.windows[w[0]] = WindowEntry(
                    w[0], w[1] or "", _f(w[2]), _f(w[3]), _f(w[4]), int(w[5] or 0), w[6]
                )
            for name, metric, value, n, sd in conn.execute(
                "SELECT name, metric, value, n, sd FROM window_quality WHERE run_id = ? AND "
                "tier = 'all'",
                (e.id,),
            ):
                if name in e.windows:
                    e.windows[name].quality[metric] = (_f(value), int(n or 0), _f(sd))
    return entries


def _where(conn: sqlite3.Connection, selector: str) -> tuple[str, tuple[Any, ...]]:
    if selector.startswith("run:"):
        return "id = ?", (int(selector[4:]),)
    if selector.startswith("last:"):
        try:
            n = int(selector[5:])
        except ValueError:
            raise UsageError(f"history:{selector}: N in last:N must be a number") from None
        return (
            "id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY scenario "
            "ORDER BY added_wall DESC, id DESC) AS k FROM runs WHERE partial = 0) "
            "WHERE k <= ?)"
        ), (n,)
    return "batch = ?", (resolve_batch(conn, selector),)


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def _entry(r: tuple[Any, ...]) -> RunEntry:
    return RunEntry(
        id=r[0],
        run_dir=r[1],
        batch=r[2],
        scenario=r[3],
        profile=r[4],
        seed=r[5],
        git_commit=r[6],
        started_wall=r[7],
        status=r[8] or "",
        verdict=r[9],
        partial=bool(r[10]),
        added_wall=r[12],
    )


def scenario_history(
    db_path: str | os.PathLike[str], scenario: str | None = None
) -> list[RunEntry]:
    """Every complete run (of one scenario, or all), oldest first, with windows: for trends."""
    entries = select_runs(db_path, "last:1000000000")
    entries.sort(key=lambda e: (e.added_wall, e.id))
    return [e for e in entries if scenario is None or e.scenario == scenario]


def benchmark_files(db_path: str | os.PathLike[str], batch: str) -> list[list[Any]]:
    """The batch's benchmark files, oldest first, each a list of :class:`reports.history.benchfiles.Bench`."""
    files: dict[str, list[Any]] = {}
    with connect(db_path, create=False) as conn:
        for source, name, med, mean, low, sd, rounds, data in conn.execute(
            "SELECT source, name, median_s, mean_s, min_s, stddev_s, rounds, data FROM "
            "benchmarks WHERE batch = ? ORDER BY id",
            (batch,),
        ):
            files.setdefault(source, []).append(
                Bench(
                    name,
                    _f(med),
                    _f(mean),
                    _f(low),
                    _f(sd),
                    int(rounds or 0),
                    tuple(json.loads(data)) if data else (),
                )
            )
    return list(files.values())
