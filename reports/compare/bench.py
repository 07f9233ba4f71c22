"""Component benchmarks compared: per benchmark, the baseline files against the current ones.

Each nightly round writes one file; a side of a comparison is a list of files (or a history
batch). Per benchmark the values compared are the per-file medians when both sides have at least
``min_runs`` files, else the raw round times when the files carry them
(``--benchmark-save-data``). Timings are in microseconds here; the minimum effect is relative
only (default 10%), since the components run from microseconds to milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from reports.compare.stats import NOT_TESTED, Judgement, judge
from reports.effect import MinEffect
from reports.history.benchfiles import Bench

BENCH_MIN_EFFECT = MinEffect(rel=0.10, abs_ms=0.0)


@dataclass(frozen=True)
class BenchRow:
    name: str
    judgement: Judgement


def compare_benchmarks(
    base: Sequence[Sequence[Bench]],
    cur: Sequence[Sequence[Bench]],
    min_effect: MinEffect = BENCH_MIN_EFFECT,
    alpha: float = 0.05,
    min_runs: int = 3,
) -> list[BenchRow]:
    """``base``/``cur``: one list of benchmarks per file (per round)."""

    def by_name(files: Sequence[Sequence[Bench]]) -> dict[str, list[Bench]]:
        out: dict[str, list[Bench]] = {}
        for f in files:
            for b in f:
                out.setdefault(b.name, []).append(b)
        return out

    a, b = by_name(base), by_name(cur)
    rows = []
    for name in sorted(set(a) | set(b)):
        xa, xb = a.get(name, []), b.get(name, [])
        files = min(len(xa), len(xb))
        if files >= max(min_runs, 3) or not _has_data(xa, xb):
            va, vb = [x.median_s * 1e6 for x in xa], [x.median_s * 1e6 for x in xb]
            j = judge(va, vb, min_effect=min_effect, alpha=alpha, min_runs=min_runs)
        else:
            va = [v * 1e6 for x in xa for v in x.data]
            vb = [v * 1e6 for x in xb for v in x.data]
            j = judge(va, vb, min_effect=min_effect, alpha=alpha, min_runs=3)
            method = f"Mann-Whitney U on raw rounds ({len(xa)} vs {len(xb)} files"
            if files < min_runs:
                # rounds of one file share one machine state: informative, not a verdict
                j = replace(j, status=NOT_TESTED)
                method += f"; for information: a call needs {min_runs} files a side"
            j = replace(j, method=method + ")")
        rows.append(BenchRow(name, j))
    return rows


def _has_data(xa: list[Bench], xb: list[Bench]) -> bool:
    return bool(xa and xb and all(x.data for x in xa) and all(x.data for x in xb))
