"""Pure results of a load run: histograms and summaries from request logs, and their merge.

Used by the load worker (one process's log) and the driver (several workers' results); no
clock, no locust. Response time runs from the intended send (the SLA metric: failures and misses
count as infinitely slow in error-inclusive percentiles), service time from the actual send,
generator lag from intended to actual send, all in microseconds (3 significant figures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from harness.load.spec import LoadJob
from harness.metrics.histogram import LatencyHistogram
from harness.model.requestlog import ANSWER_CODES, ERROR_KINDS, TIERS, error_code

HISTOGRAMS = ("response", "service", "lag")
E_OK = 0
E_MISS = error_code("not_sent")
E_SHED = error_code("shed")


def histograms(rows: np.ndarray) -> dict[str, LatencyHistogram]:
    """Response (from intended send), service (from actual send) and lag histograms of a log."""
    ok = (rows["error_kind"] == E_OK) & (rows["done_ns"] >= 0)
    sent = rows["send_ns"] >= 0
    failed = int((~ok).sum())
    failed_sent = int((~ok & sent).sum())
    us = 1000
    return {
        "response": LatencyHistogram.from_us(
            (rows["done_ns"][ok] - rows["intended_ns"][ok]) // us, failures=failed
        ),
        "service": LatencyHistogram.from_us(
            (rows["done_ns"][ok] - rows["send_ns"][ok]) // us, failures=failed_sent
        ),
        "lag": LatencyHistogram.from_us(
            np.maximum(rows["send_ns"][sent] - rows["intended_ns"][sent], 0) // us
        ),
    }


def summarize(
    job: LoadJob,
    rows: np.ndarray,
    hists: dict[str, LatencyHistogram],
    scheduled: int,
    start_ns: int,
    active_s: float,
    cpu: dict[str, float],
    partial: bool,
    error: str | None,
    priority: str = "",
) -> dict[str, Any]:
    """One worker's summary: counts (every intended request is answered, failed or missed),
    achieved rate over ``active_s``, send lag percentiles, CPU spent while sending."""
    err = rows["error_kind"]
    n = int(rows.shape[0])
    missed = int((err == E_MISS).sum())
    shed = int((err == E_SHED).sum())
    answered = int(((err == E_OK) & (rows["done_ns"] >= 0)).sum())
    sent = int((rows["send_ns"] >= 0).sum())
    lag = hists["lag"]
    cpu_s = cpu["user_s"] + cpu["sys_s"]
    return {
        "worker": job.worker_index,
        "worker_count": job.worker_count,
        "scheduled": scheduled,
        "intended": n,
        "sent": sent,
        "answered": answered,
        "failed": n - answered - missed - shed,
        "missed": missed,
        "shed": shed,
        "errors": {
            k: int((err == i).sum()) for i, k in enumerate(ERROR_KINDS) if i and (err == i).any()
        },
        "tiers": {
            t: int((rows["tier"] == i).sum())
            for i, t in enumerate(TIERS)
            if (rows["tier"] == i).any()
        },
        **answer_counts(rows),
        "start_mono_ns": start_ns,
        "active_s": round(active_s, 6),
        "intended_rate": round(n / active_s, 3) if active_s > 0 else 0.0,
        "achieved_rate": round(sent / active_s, 3) if active_s > 0 else 0.0,
        "lag_p50_ms": finite(lag.percentile(50)) if lag.count else None,
        "lag_p99_ms": finite(lag.percentile(99)) if lag.count else None,
        "lag_p999_ms": finite(lag.percentile(99.9)) if lag.count else None,
        "lag_max_ms": finite(lag.max_ms) if lag.count else None,
        "cpu_user_s": round(cpu["user_s"], 4),
        "cpu_sys_s": round(cpu["sys_s"], 4),
        "cpu_ms_per_request": round(cpu_s * 1000 / sent, 4) if sent else None,
        "wall_s": round(cpu["wall_s"], 4),
        "timer": job.timer,
        "priority": priority,
        "partial": partial,
        "error": error,
    }


def answer_counts(rows: np.ndarray) -> dict[str, Any]:
    """Answers checked, cold starts, and the checked answers by validity code."""
    code = rows["answer"]
    checked = code >= 0
    return {
        "answers_checked": int(checked.sum()),
        "cold_start": int((rows["cold_start"] & checked).sum()),
        "answer_codes": {
            name: int((code == i).sum()) for i, name in enumerate(ANSWER_CODES) if (code == i).any()
        },
    }


def finite(x: float) -> float | None:
    return None if x != x or x in (float("inf"), float("-inf")) else round(x, 4)


def merge_summaries(
    summaries: list[dict[str, Any]], hists: dict[str, LatencyHistogram]
) -> dict[str, Any]:
    """One summary from the workers': counts add, rates and percentiles are recomputed."""
    total = {
        k: sum(int(s.get(k, 0)) for s in summaries)
        for k in ("scheduled", "intended", "sent", "answered", "failed", "missed", "shed")
    }
    errors: dict[str, int] = {}
    tiers: dict[str, int] = {}
    codes: dict[str, int] = {}
    for s in summaries:
        for src, dst in (
            (s["errors"], errors),
            (s["tiers"], tiers),
            (s.get("answer_codes", {}), codes),
        ):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + int(v)
    active = max(float(s["active_s"]) for s in summaries) if summaries else 0.0
    cpu = sum(float(s["cpu_user_s"]) + float(s["cpu_sys_s"]) for s in summaries)
    resp, lag = hists["response"], hists["lag"]

    def pct(h: LatencyHistogram, q: float, errors_in: bool = False) -> float | None:
        if not (h.total if errors_in else h.count):
            return None
        v = h.percentile_with_errors(q) if errors_in else h.percentile(q)
        return None if v != v or v == float("inf") else round(v, 4)

    return {
        "workers": len(summaries),
        **total,
        "errors": {k: errors[k] for k in ERROR_KINDS if k in errors},
        "tiers": tiers,
        "answers_checked": sum(int(s.get("answers_checked", 0)) for s in summaries),
        "cold_start": sum(int(s.get("cold_start", 0)) for s in summaries),
        "answer_codes": {k: codes[k] for k in ANSWER_CODES if k in codes},
        "active_s": active,
        "intended_rate": round(total["intended"] / active, 3) if active else 0.0,
        "achieved_rate": round(total["sent"] / active, 3) if active else 0.0,
        "response_ms": {f"p{q:g}": pct(resp, q) for q in (50, 95, 99, 99.9)},
        "response_with_errors_ms": {f"p{q:g}": pct(resp, q, True) for q in (50, 95, 99, 99.9)},
        "lag_p50_ms": pct(lag, 50),
        "lag_p99_ms": pct(lag, 99),
        "lag_p999_ms": pct(lag, 99.9),
        "cpu_s": round(cpu, 4),
        "cpu_ms_per_request": round(cpu * 1000 / total["sent"], 4) if total["sent"] else None,
    }


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
