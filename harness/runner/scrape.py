"""The gateway's Prometheus counters before and after a run, and the cross-check of its tier
counts against what the load generator saw.

Parses only what it needs: ``recchaos_requests_total{tier=...,outcome=...} N`` lines.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^recchaos_requests_total\{([^}]*)\}\s+([0-9.eE+]+)\s*$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(base_url: str, save_to: Path | None = None, timeout_s: float = 2.0) -> str | None:
    """The gateway's /metrics text (saved to ``save_to`` for reports); None when unreadable."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(text)
    return text


def scrape_tiers(base_url: str, save_to: Path | None = None) -> Counter[str] | None:
    """Requests served per tier according to the server; None when /metrics cannot be read."""
    text = scrape(base_url, save_to)
    return None if text is None else parse_tiers(text)


def parse_tiers(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(1)))
        if labels.get("outcome", "ok") in ("ok", "cold_start"):
            counts[labels.get("tier", "unknown")] += int(float(m.group(2)))
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
