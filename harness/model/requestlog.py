"""The per-request log: one row per intended request, as a numpy structured array.

Times are integer nanoseconds on the monotonic clock, measured from the run's origin (the
monotonic reading at load start, stored in the run record): ``intended_ns`` from the open-loop
schedule, ``send_ns`` when the request actually went out, ``done_ns`` when the answer (or the
error) came back; -1 where it never happened. ``status`` is the HTTP status (0: no response),
``tier`` an index into :data:`TIERS` (-1: none), ``error_kind`` an index into
:data:`ERROR_KINDS` (0: no error; ``not_sent``: never sent because the generator's in-flight
bound was hit, a miss; ``bad_answer``: a 2xx answer that failed validation, a failure like any
other; ``shed``: a 503 with ``Retry-After``, the target's overload control refused it, fast
and on purpose: a miss of its own kind, counted apart from failures). Every intended request has exactly one row. Files are ``.npy``; logs from several load
processes are merged with :func:`merge_logs`.

What the answer said: ``answer`` is the validity code the load worker computed (an index into
:data:`ANSWER_CODES`; 0 valid, :data:`NOT_CHECKED` where no answer was checked),
``cold_start`` marks an answer for a user the target does not know (the recommender's
``"cold_start": true``), and ``agreement`` / ``ndcg`` are the answer's overlap@k with the
reference answer and its NDCG@k against the held-out ground truth (NaN where not measured; the
runner fills them in after the load, :mod:`harness.metrics.quality`). The answered item ids
themselves are a fixed-width ``int32`` array beside the log (``answers.npy``, row for row, -1
padded: :func:`empty_answers`).
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
    "bad_answer",  # answered 2xx, but the answer failed validation (see ANSWER_CODES)
    "shed",  # answered 503 with Retry-After: refused by the target's overload control
)
NEVER = -1

ANSWER_CODES = (
    "valid",
    "not_json",  # the body is not a JSON document
    "not_an_object",  # valid JSON, but not an object
    "no_items",  # ``items`` missing or not a list
    "wrong_length",  # not exactly k items (a cold start may answer a shorter list)
    "bad_item",  # an item id that is not an integer
    "duplicate_items",
    "outside_catalogue",  # an item id outside [0, catalogue)
    "no_scores",  # ``scores`` missing, not numbers, or not one per item
    "non_finite_scores",  # NaN or infinite scores
    "unsorted_scores",  # scores not in descending order
    "no_tier",  # ``tier`` missing or not a known tier
    "no_model_version",  # ``model_version`` missing or empty
    "schema",  # fails the scenario's JSON Schema
    "validator",  # the scenario's validator function returned problems
    "validator_error",  # the scenario's validator function raised
)
NOT_CHECKED = -1  # no answer to check (a failure), or answer checking off

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
        ("answer", np.int8),  # validity code, index into ANSWER_CODES; NOT_CHECKED: none
        ("cold_start", np.bool_),  # the answer says the user was unknown (a cold start)
        ("agreement", np.float32),  # overlap@k with the reference answer; NaN: not measured
        ("ndcg", np.float32),  # NDCG@k against the held-out item; NaN: not measured
    ]
)
V1_DTYPE = np.dtype(REQUEST_DTYPE.descr[:9])  # logs written before answers were recorded


def tier_code(name: str) -> int:
    """Index of a tier name (the X-Recchaos-Tier header value); -1 for an unknown or empty one."""
    return TIERS.index(name) if name in TIERS else -1


def error_code(name: str) -> int:
    if name not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {name!r}; allowed: {', '.join(ERROR_KINDS[1:])}")
    return ERROR_KINDS.index(name)


def answer_code(name: str) -> int:
    if name not in ANSWER_CODES:
        raise ValueError(f"unknown answer code {name!r}; allowed: {', '.join(ANSWER_CODES)}")
    return ANSWER_CODES.index(name)


def empty_log(n: int = 0) -> np.ndarray:
    """``n`` rows of requests that have not been sent yet."""
    rows = np.zeros(n, dtype=REQUEST_DTYPE)
    rows["id"] = np.arange(n)
    rows["send_ns"] = NEVER
    rows["done_ns"] = NEVER
    rows["tier"] = -1
    rows["answer"] = NOT_CHECKED
    rows["agreement"] = np.nan
    rows["ndcg"] = np.nan
    return rows


def empty_answers(n: int, width: int) -> np.ndarray:
    """``n`` rows of ``width`` item ids, none recorded yet (-1)."""
    return np.full((n, width), -1, dtype=np.int32)


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
    return merged[merge_order(merged)]


def merge_order(merged: np.ndarray) -> np.ndarray:
    """The permutation :func:`merge_logs` applies to concatenated logs (for their answers)."""
    return np.lexsort((merged["id"], merged["intended_ns"]))


def merge_answers(logs: list[np.ndarray], answers: list[np.ndarray]) -> np.ndarray:
    """The answer arrays of :func:`merge_logs`'s inputs, in its output's row order (widths are
    padded to the widest with -1)."""
    if not logs:
        return empty_answers(0, 1)
    width = max(a.shape[1] for a in answers)
    padded = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in answers]
    merged = np.concatenate([np.asarray(log, dtype=REQUEST_DTYPE) for log in logs])
    return np.concatenate(padded)[merge_order(merged)]


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
    """A request log; one written before answers were recorded reads as answers not checked."""
    rows = np.load(path, allow_pickle=False)
    if rows.dtype == V1_DTYPE:
        return upgrade_v1(rows)
    if rows.dtype != REQUEST_DTYPE:
        raise ValueError(
            f"{os.fspath(path)}: not a recchaos request log (dtype {rows.dtype}); "
            f"expected {REQUEST_DTYPE}"
        )
    return rows


def upgrade_v1(rows: np.ndarray) -> np.ndarray:
    out = empty_log(rows.shape[0])
    for name in V1_DTYPE.names or ():
        out[name] = rows[name]
    return out


def write_answers(path: str | os.PathLike[str], answers: np.ndarray) -> None:
    """The answers array beside a log, written atomically like the log."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(answers, dtype=np.int32), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_answers(path: str | os.PathLike[str], rows: int) -> np.ndarray:
    """The answers array beside a log of ``rows`` rows; ValueError naming what is wrong."""
    answers = np.load(path, allow_pickle=False)
    if answers.dtype != np.int32 or answers.ndim != 2 or answers.shape[0] != rows:
        raise ValueError(
            f"{os.fspath(path)}: not the answers of a {rows}-row request log (dtype "
            f"{answers.dtype}, shape {answers.shape}); expected int32 of shape ({rows}, k)"
        )
    return answers
