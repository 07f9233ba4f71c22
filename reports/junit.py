"""Per-scenario JUnit properties from a run record, for the pytest plugin.

The plugin calls :func:`properties` with the run record (``RunRecord.to_dict()`` or the parsed
``run.json``) and appends each pair to the test item's ``user_properties``
(``item.user_properties.extend(properties(record))`` or ``record_property(name, value)`` per pair);
``pytest --junitxml=FILE`` then writes them as ``<property name=... value=...>`` of that test case.
Names are stable, prefixed ``recchaos.``; values are text. Appending to ``user_properties``
directly writes them whatever ``junit_family`` is (the ``record_property`` fixture warns under the
default ``xunit2``, whose schema has no test-case properties; ``junit_family = "xunit1"`` keeps
the file schema-valid).
"""

from __future__ import annotations

import math
from typing import Any

PREFIX = "recchaos."


def _text(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    return "" if v is None else str(v)


def properties(record: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(name, value), ...]``: scenario, seed, verdict, replay, then per window and check."""
    scenario = record.get("scenario") or {}
    out = [
        ("scenario", scenario.get("name", "")),
        ("scenario_path", record.get("scenario_path", "")),
        ("profile", record.get("profile") or ""),
        ("seed", record.get("seed")),
        ("verdict", record.get("verdict") or ""),
        ("status", record.get("status", "")),
        ("replay", record.get("replay", "")),
        ("git_commit", record.get("git_commit") or ""),
        ("sla_ms", scenario.get("sla_ms")),
        ("faults", len(record.get("timeline") or [])),
        ("errors", " | ".join(record.get("errors") or [])),
    ]
    for w in record.get("windows") or []:
        name = (w.get("window") or {}).get("name", "?")
        lat = w.get("latency_with_errors_ms") or {}
        for metric in ("p50", "p95", "p99"):
            out.append((f"window[{name}].{metric}_ms", lat.get(metric)))
        out.append((f"window[{name}].requests", w.get("count")))
        out.append((f"window[{name}].error_ratio", w.get("error_ratio")))
    for i, c in enumerate(record.get("checks") or []):
        out.append(
            (f"check[{i}].{c.get('metric', '')}", f"{c.get('verdict')}: {c.get('message', '')}")
        )
    for i, e in enumerate(record.get("timeline") or []):
        heal = e.get("heal_ns")
        span = f"{e.get('inject_ns', 0) / 1e9:.3f}-" + (
            "never" if heal is None else f"{heal / 1e9:.3f}"
        )
        out.append(
            (
                f"fault[{i}]",
                f"{e.get('kind')}({e.get('target')}) {span} s verified={e.get('verified')}",
            )
        )
    return [(PREFIX + k, _text(v)) for k, v in out]
