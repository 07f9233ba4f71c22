"""The per-request log: one row per intended request, as a numpy structured array.

Times are integer nanoseconds on the monotonic clock, measured from the run's origin (the
monotonic reading at load start, stored in the run record): ``intended_ns`` from the open-loop
schedule, ``send_ns`` when the request actually went out, ``done_ns`` when the answer (or the
error) came back; -1 where it never happened. ``status`` is the HTTP status (0: no response),
``tier`` an index into :data:`TIERS` (-1: none), ``error_kind`` an index into
:data:`ERROR_KINDS` (0: no error; ``not_sent``: never sent because the generator's in-flight
bound was hit, a miss). Every intended request has exactly one row. Files are ``.npy``; logs from several load processes are
merged with :func:`merge_logs`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

TIERS = ("primary", "retry", "replica", "degraded", "static")
ERROR_KINDS = (
    "",
    "timeout",
    "connect",
    "reset",
    "http_status",
    "bad_response",
    "not_sent",
    "other",
    "aborted",  # sent, but the load worker was stopped (SIGTERM) before the answer came
)
NEVER = -1

REQUEST_DTYPE = np.dtype(
    [
        ("id", np.int64),
        ("intended_ns", np.int64),
        ("send_ns", np.int64),
        ("done_ns", np.int64),
        ("status", np.int16),
        ("tier", np.int8),
        ("error_kind", np.int8),
        ("user_id", np.int64),  # who the request asked for (from the seeded request mix)
        ("worker", np.uint16),  # which load process sent it
    ]
)


def tier_code(name: str) -> int:
    """Index of a tier name (the X-Recchaos-Tier header value); -1 for an unknown or empty one."""
    return TIERS.index(name) if name in TIERS else -1


def error_code(name: str) -> int:
    if name not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {name!r}; allowed: {', '.join(ERROR_KINDS[1:])}")
    return ERROR_KINDS.index(name)


def empty_log(n: int = 0) -> np.ndarray:
    """``n`` rows of requests that have not been sent yet."""
    rows = np.zeros(n, dtype=REQUEST_DTYPE)
    rows["id"] = np.arange(n)
    rows["send_ns"] = NEVER
    rows["done_ns"] = NEVER
    rows["tier"] = -1
    return rows


def succeeded(rows: np.ndarray) -> np.ndarray:
    """Boolean mask: answered with a 2xx status, no error, completion time recorded."""
    return (
        (rows["error_kind"] == 0)
        & (rows["status"] >= 200)
        & (rows["status"] < 300)
        & (rows["done_ns"] >= 0)
    )


def merge_logs(logs: Iterable[np.ndarray]) -> np.ndarray:
    """One log from several processes' logs, ordered by intended time (then id)."""
    parts = [np.asarray(log, dtype=REQUEST_DTYPE) for log in logs]
    if not parts:
        return empty_log()
    merged = np.concatenate(parts)
    return merged[np.lexsort((merged["id"], merged["intended_ns"]))]


def write_log(path: str | os.PathLike[str], rows: np.ndarray) -> None:
    """Write atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(rows, dtype=REQUEST_DTYPE), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_log(path: str | os.PathLike[str]) -> np.ndarray:
    rows = np.load(path, allow_pickle=False)
    if rows.dtype != REQUEST_DTYPE:
        raise ValueError(
            f"{os.fspath(path)}: not a recchaos request log (dtype {rows.dtype}); "
            f"expected {REQUEST_DTYPE}"
        )
    return rows
