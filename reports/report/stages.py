"""Where the 20 ms go: per-stage latency rows for the budget chart, from what the run saved.

Client-side stages, per window from the record's histograms and for the whole load from
``load/histograms.json``:

* ``generator lag`` (intended -> actual send: the load generator's own delay),
* ``service`` (actual send -> answer: network plus gateway),
* ``response`` (intended send -> answer: what the SLA judges).

Gateway-side stages, for the whole run, from the gateway's ``/metrics`` scraped before and after
the load (``cluster/metrics-before.txt``, ``cluster/metrics-after.txt``; :mod:`reports.prom`):
``gateway total`` (``recchaos_request_seconds``), ``shard call``
(``recchaos_shard_call_seconds``) and one ``gateway STAGE`` row per stage of
``recchaos_stage_seconds`` (queue, features, user, retrieve, rank, ...). Quantiles are
interpolated inside buckets, as Prometheus' ``histogram_quantile`` does. A run may also carry
``details.json["gateway_stages_ms"]``: ``{stage: {"p50": ms, "p95": ms, "p99": ms}}`` for the
whole run, or ``{window name: {stage: {...}}}`` per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.metrics.histogram import LatencyHistogram
from reports.prom import Buckets
from reports.rundir import RunDir

QS = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))
CLIENT_STAGES = (
    ("lag", "generator lag", False),
    ("service", "service (send -> answer)", False),
    ("response", "response (intended -> answer)", True),
)


@dataclass(frozen=True)
class StageRow:
    """One bar of the budget chart: a stage in a scope (a window, or the whole run)."""

    scope: str
    stage: str
    p50: float
    p95: float
    p99: float
    source: str

    def get(self, name: str) -> float:
        return float(getattr(self, name))


def _client(scope: str, hists: dict[str, Any], decode: bool, source: str) -> list[StageRow]:
    rows = []
    for key, stage, with_errors in CLIENT_STAGES:
        if key not in hists:
            continue
        h = LatencyHistogram.decode(hists[key]) if decode else hists[key]
        pick = h.percentile_with_errors if with_errors else h.percentile
        p50, p95, p99 = (pick(q) for _, q in QS)
        rows.append(StageRow(scope, stage, p50, p95, p99, source))
    return rows


def client_rows(run: RunDir) -> list[StageRow]:
    """Generator lag, service and response time per window, then for the whole load."""
    rows = []
    for w in run.record.windows:
        name = str(w.get("window", {}).get("name", "?"))
        rows += _client(name, w.get("histograms") or {}, True, "request log")
    if run.load_histograms:
        rows += _client("whole load", run.load_histograms, False, "load/histograms.json")
    return rows


def detail_rows(details: dict[str, Any]) -> list[StageRow]:
    """Rows from ``details.json["gateway_stages_ms"]``."""
    data = details.get("gateway_stages_ms")
    if not isinstance(data, dict) or not data:
        return []
    flat = all(isinstance(v, dict) and "p99" in v for v in data.values())
    scoped = {"whole run": data} if flat else data
    rows = []
    for scope, stages in scoped.items():
        if not isinstance(stages, dict):
            continue
        for stage, q in stages.items():
            if isinstance(q, dict):
                rows.append(
                    StageRow(
                        str(scope),
                        f"gateway {stage}",
                        _f(q.get("p50")),
                        _f(q.get("p95")),
                        _f(q.get("p99")),
                        "details.json",
                    )
                )
    return rows


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def metrics_rows(run: RunDir) -> list[StageRow]:
    """Rows from the gateway's scraped Prometheus text; [] when none was saved."""
    if run.gateway is None:
        return []
    rows = []
    for (_metric, stage), buckets in sorted(run.gateway.histograms.items()):
        if buckets and buckets[-1][1] > 0:
            p50, p95, p99 = (bucket_quantile(buckets, q / 100) * 1000 for _, q in QS)
            rows.append(StageRow("whole run", stage, p50, p95, p99, run.gateway.source))
    return rows


def bucket_quantile(buckets: Buckets, q: float) -> float:
    """Prometheus ``histogram_quantile``: linear inside the bucket holding rank ``q * total``."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its bound is all we know
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def stage_rows(run: RunDir) -> tuple[list[StageRow], bool]:
    """Every row available, and whether any came from the gateway itself."""
    gateway = detail_rows(run.details) + metrics_rows(run)
    return client_rows(run) + gateway, bool(gateway)
