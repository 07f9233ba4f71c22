"""The gateway's Prometheus text before and after a run (saved into the run directory, where the
report reads its per-stage histograms), and the cross-check of its tier counts against what the
load generator saw.

The text is parsed with ``prometheus_client``'s reference parser; the tier counts come from the
``recchaos_requests_total{tier=...,outcome=...}`` samples.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REQUESTS_TOTAL = "recchaos_requests_total"
# Where a run keeps the texts (relative to its directory); reports/report/stages.py reads them.
METRICS_BEFORE = "cluster/metrics-before.txt"
METRICS_AFTER = "cluster/metrics-after.txt"


def scrape(base_url: str, timeout_s: float = 2.0) -> str | None:
    """The gateway's /metrics text; None when unreadable."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout_s) as resp:
            return resp.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None


def scrape_tiers(base_url: str, save_to: Path | None = None) -> Counter[str] | None:
    """Requests served per tier according to the server; None when /metrics cannot be read or
    is not Prometheus text. Text that parses is saved to ``save_to`` for the report."""
    text = scrape(base_url)
    counts = None if text is None else parse_tiers(text)
    if counts is not None and text is not None and save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        tmp = save_to.with_name(f".{save_to.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, save_to)  # a report never reads half a scrape
    return counts


def parse_tiers(text: str) -> Counter[str] | None:
    """Answered requests per tier (outcomes ``ok`` and ``cold_start``); None when the text is not
    Prometheus exposition format (the cross-check then says /metrics could not be read)."""
    counts: Counter[str] = Counter()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != REQUESTS_TOTAL:
                    continue
                if sample.labels.get("outcome", "ok") in ("ok", "cold_start"):
                    counts[sample.labels.get("tier", "unknown")] += int(sample.value)
    except ValueError:
        return None
    return counts


def cross_check(
    before: Counter[str] | None,
    after: Counter[str] | None,
    client: Counter[str],
    tolerance: int = 0,
) -> dict[str, object]:
    """Server-side tier deltas next to the client's counts; ``agree`` when within tolerance.

    The server may count a few more (requests the client gave up on still finish there), never
    fewer: a tier the client saw but the server did not count is a disagreement.
    """
    if before is None or after is None:
        return {"agree": None, "note": "gateway /metrics could not be read", "client": dict(client)}
    server = Counter({t: after[t] - before.get(t, 0) for t in after})
    diffs = {t: server.get(t, 0) - client.get(t, 0) for t in set(server) | set(client)}
    bad = {t: d for t, d in diffs.items() if d < 0 or d > max(tolerance, 0)}
    return {"agree": not bad, "server": dict(server), "client": dict(client), "differences": bad}
