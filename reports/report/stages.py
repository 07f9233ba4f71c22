"""Where the 20 ms go: per-stage latency rows for the budget chart, from what the run saved.

The request log has no per-stage times (the gateway's ``timings_ms`` stay in its responses), and
the gateway's ``/metrics`` exports no per-stage histograms, so the stages a run record can show
are the client-side ones, per window, from the stored histograms:

* ``generator lag`` (intended -> actual send: the load generator's own delay),
* ``service`` (actual send -> answer: network plus gateway),
* ``response`` (intended send -> answer: what the SLA judges).

Hooks for gateway-side stages, used when present (nothing in the recommender has to change):

1. ``details.json`` key ``gateway_stages_ms``: ``{stage: {"p50": ms, "p95": ms, "p99": ms}}``
   for the whole run, or ``{window name: {stage: {...}}}`` per window (e.g. the gateway's
   ``timings_ms`` aggregated by a future load-side recorder);
2. ``cluster/metrics.txt`` (or ``cluster/metrics-after.txt`` less ``cluster/metrics-before.txt``):
   the gateway's Prometheus text scraped around the load. ``recchaos_request_seconds`` becomes
   ``gateway total``, ``recchaos_shard_call_seconds`` ``shard call``, and any
   ``recchaos_stage_seconds{stage="..."}`` histogram one row per stage. Quantiles are
   interpolated inside buckets, as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.metrics.histogram import LatencyHistogram

QS = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))
METRIC_STAGES = {
    "recchaos_request_seconds": "gateway total",
    "recchaos_shard_call_seconds": "shard call",
}
STAGE_METRIC = "recchaos_stage_seconds"
_BUCKET = re.compile(r"^(\w+)_bucket\{([^}]*)\}\s+(\S+)\s*$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


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


def client_rows(windows: tuple[dict[str, Any], ...]) -> list[StageRow]:
    """Generator lag, service and response time per window, from the stored histograms."""
    rows = []
    for w in windows:
        name = str(w.get("window", {}).get("name", "?"))
        hists = w.get("histograms") or {}
        for key, stage, with_errors in (
            ("lag", "generator lag", False),
            ("service", "service (send -> answer)", False),
            ("response", "response (intended -> answer)", True),
        ):
            if key not in hists:
                continue
            h = LatencyHistogram.decode(hists[key])
            pick = h.percentile_with_errors if with_errors else h.percentile
            p50, p95, p99 = (pick(q) for _, q in QS)
            rows.append(StageRow(name, stage, p50, p95, p99, "request log"))
    return rows


def detail_rows(details: dict[str, Any]) -> list[StageRow]:
    """Rows from ``details.json["gateway_stages_ms"]`` (hook 1)."""
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


def metrics_rows(run_dir: Path) -> list[StageRow]:
    """Rows from the gateway's scraped Prometheus text (hook 2); [] when none was saved."""
    cluster = run_dir / "cluster"
    after = cluster / "metrics-after.txt"
    single = cluster / "metrics.txt"
    if after.is_file():
        hists = parse_histograms(after.read_text(errors="replace"))
        before = cluster / "metrics-before.txt"
        if before.is_file():
            hists = subtract(hists, parse_histograms(before.read_text(errors="replace")))
        source = "gateway /metrics (after - before)"
    elif single.is_file():
        hists = parse_histograms(single.read_text(errors="replace"))
        source = "gateway /metrics"
    else:
        return []
    rows = []
    for (_metric, stage), buckets in sorted(hists.items()):
        if buckets and buckets[-1][1] > 0:
            p50, p95, p99 = (bucket_quantile(buckets, q / 100) * 1000 for _, q in QS)
            rows.append(StageRow("whole run", stage, p50, p95, p99, source))
    return rows


Buckets = list[tuple[float, float]]  # (upper bound in s, cumulative count), ascending


def parse_histograms(text: str) -> dict[tuple[str, str], Buckets]:
    """Cumulative buckets per (metric, stage), summed over every other label."""
    acc: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        m = _BUCKET.match(line.strip())
        if not m:
            continue
        metric, labels_text, value = m.groups()
        labels = dict(_LABEL.findall(labels_text))
        if metric == STAGE_METRIC:
            stage = f"gateway {labels.get('stage', '?')}"
        elif metric in METRIC_STAGES:
            stage = METRIC_STAGES[metric]
        else:
            continue
        le = labels.get("le", "+Inf")
        bound = math.inf if le in ("+Inf", "Inf", "inf") else float(le)
        acc[(metric, stage)][bound] += float(value)
    return {k: _monotone(sorted(v.items())) for k, v in acc.items()}


def _monotone(buckets: Buckets) -> Buckets:
    """Cumulative counts never fall (a series missing a bucket line must not make them)."""
    out, top = [], 0.0
    for le, c in buckets:
        top = max(top, c)
        out.append((le, top))
    return out


def subtract(
    after: dict[tuple[str, str], Buckets], before: dict[tuple[str, str], Buckets]
) -> dict[tuple[str, str], Buckets]:
    out = {}
    for key, buckets in after.items():
        prior = dict(before.get(key, []))
        out[key] = [(le, max(c - prior.get(le, 0.0), 0.0)) for le, c in buckets]
    return out


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


def stage_rows(
    run_dir: Path, windows: tuple[dict[str, Any], ...], details: dict[str, Any]
) -> tuple[list[StageRow], bool]:
    """Every row available, and whether any came from the gateway itself."""
    gateway = detail_rows(details) + metrics_rows(run_dir)
    return client_rows(windows) + gateway, bool(gateway)
