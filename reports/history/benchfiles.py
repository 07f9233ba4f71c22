"""Component-benchmark files (pytest-benchmark ``--benchmark-json``) as the history stores them:
one :class:`Bench` per benchmark and file, times in seconds as pytest-benchmark writes them."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from harness.model.errors import UsageError


@dataclass(frozen=True)
class Bench:
    name: str
    median_s: float
    mean_s: float
    min_s: float
    stddev_s: float
    rounds: int
    data: tuple[float, ...] = ()


def read_benchmarks(path: str | os.PathLike[str]) -> list[Bench]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        items = doc["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"{p}: not a pytest-benchmark JSON file ({exc}); write one with "
            "`pytest benchmarks --benchmark-json=FILE`"
        ) from None
    out = []
    for b in items:
        st = b.get("stats", {})
        out.append(
            Bench(
                str(b.get("name") or b.get("fullname")),
                float(st.get("median", math.nan)),
                float(st.get("mean", math.nan)),
                float(st.get("min", math.nan)),
                float(st.get("stddev", math.nan)),
                int(st.get("rounds", 0)),
                tuple(float(x) for x in st.get("data") or ()),
            )
        )
    return out
