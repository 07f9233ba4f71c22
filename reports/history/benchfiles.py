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
    how = "write one with `pytest benchmarks --benchmark-json=FILE`"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        items = doc["benchmarks"]
        if not isinstance(items, list):
            raise TypeError(f"benchmarks is a {type(items).__name__}, not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{p}: not a pytest-benchmark JSON file ({exc}); {how}") from None
    out = []
    for i, b in enumerate(items):
        try:
            out.append(_bench(b))
        except (AttributeError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{p}: benchmarks[{i}] is not a benchmark result ({exc}); {how}"
            ) from None
    return out


def _bench(b: dict) -> Bench:
    st = b.get("stats", {})
    return Bench(
        str(b.get("name") or b.get("fullname")),
        float(st.get("median", math.nan)),
        float(st.get("mean", math.nan)),
        float(st.get("min", math.nan)),
        float(st.get("stddev", math.nan)),
        int(st.get("rounds", 0)),
        tuple(float(x) for x in st.get("data") or ()),
    )
