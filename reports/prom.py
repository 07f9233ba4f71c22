"""The gateway's Prometheus text as a run saves it (``cluster/metrics-before.txt`` and
``cluster/metrics-after.txt``, or one ``cluster/metrics.txt``), parsed with ``prometheus_client``'s
reference parser into cumulative histogram buckets per stage.

``recchaos_request_seconds`` becomes the stage ``gateway total``, ``recchaos_shard_call_seconds``
``shard call``, and ``recchaos_stage_seconds{stage="..."}`` one stage per label value; every other
label is summed over. Text that does not parse, or a bucket without a numeric ``le``, raises
:class:`~reports.validate.Corrupt`.
"""

from __future__ import annotations

import math
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from reports.validate import Corrupt

METRIC_STAGES = {
    "recchaos_request_seconds": "gateway total",
    "recchaos_shard_call_seconds": "shard call",
}
STAGE_METRIC = "recchaos_stage_seconds"
Buckets = list[tuple[float, float]]  # (upper bound in s, cumulative count), ascending
Histograms = dict[tuple[str, str], Buckets]  # (metric, stage) -> buckets


def _stage(metric: str, labels: dict[str, str]) -> str | None:
    if metric == STAGE_METRIC:
        return f"gateway {labels.get('stage', '?')}"
    return METRIC_STAGES.get(metric)


def parse_histograms(text: str) -> Histograms:
    """Cumulative buckets per (metric, stage), summed over every other label."""
    acc: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as exc:
        raise Corrupt(f"not Prometheus text: {exc}") from None
    for sample in samples:
        if not sample.name.endswith("_bucket"):
            continue
        metric = sample.name.removesuffix("_bucket")
        stage = _stage(metric, sample.labels)
        if stage is None:
            continue
        where = f"{sample.name}{sample.labels}"
        try:
            bound = float(sample.labels["le"])
        except (KeyError, ValueError):
            raise Corrupt(f"{where}: a bucket needs a numeric le label") from None
        if not (math.isfinite(sample.value) and sample.value >= 0):
            raise Corrupt(f"{where}: a bucket count must be >= 0, found {sample.value}")
        acc[(metric, stage)][bound] += float(sample.value)
    return {k: _monotone(sorted(v.items())) for k, v in acc.items()}


def _monotone(buckets: Buckets) -> Buckets:
    """Cumulative counts never fall (a series missing a bucket line must not make them)."""
    out, top = [], 0.0
    for le, c in buckets:
        top = max(top, c)
        out.append((le, top))
    return out


def subtract(after: Histograms, before: Histograms) -> Histograms:
    """What happened between two scrapes (counters only grow; a restart shows as 0, not < 0)."""
    out = {}
    for key, buckets in after.items():
        prior = dict(before.get(key, []))
        out[key] = [(le, max(c - prior.get(le, 0.0), 0.0)) for le, c in buckets]
    return out
