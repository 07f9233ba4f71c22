"""The gateways' Prometheus text before and after a run (saved into the run directory, where the
report reads its per-stage histograms), and the cross-check of their tier counts against what
the load generator saw.

Behind the balancer (the recommender's default layout) ``/metrics`` through ``gateway_url``
would be one gateway's, whichever HAProxy picked, so each gateway is scraped at its own address
(:func:`metrics_urls`) and the texts are saved one after the other: every reader sums samples
over their labels, so the counts and histograms are the gateways' together.

The text is parsed with ``prometheus_client``'s reference parser; the tier counts come from the
``recchaos_requests_total{tier=...,outcome=...}`` samples.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

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


def metrics_urls(base_url: str, manifest: dict[str, Any]) -> tuple[str, ...]:
    """Where to read ``/metrics``: each gateway at its own address when the manifest names
    several (role ``gateway``), else ``base_url`` (one gateway, or a generic target)."""
    gateways = [
        c.get("address")
        for c in manifest.get("components", [])
        if isinstance(c, dict) and c.get("role") == "gateway"
    ]
    if len(gateways) > 1 and all(isinstance(a, str) and a for a in gateways):
        return tuple(f"http://{address}" for address in gateways)
    return (base_url,)


def scrape_tiers(urls: tuple[str, ...], save_to: Path | None = None) -> Counter[str] | None:
    """Requests served per tier according to the servers at ``urls`` together; None when one's
    /metrics cannot be read or is not Prometheus text. Text that parses is saved to ``save_to``
    for the report (the texts one after the other)."""
    texts = [scrape(url) for url in urls]
    text = None if any(t is None for t in texts) else "".join(t or "" for t in texts)
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
