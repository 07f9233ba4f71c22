"""``recchaos compare BASELINE CURRENT``: per scenario and window, p50/p95/p99 deltas judged with
:mod:`reports.compare.stats`, answer quality (valid share, agreement@k, NDCG@k: a drop is a
regression) judged with :mod:`reports.compare.quality`, plus component-benchmark deltas;
rendered as HTML and markdown.

A side is a run directory, a directory of run directories, or ``history:SELECTOR`` (see
:mod:`reports.history.store`). Partial runs are left out (and listed). Values per run are the
window's error-inclusive percentiles from the run record; the merged window histograms feed the
request-level bootstrap when a side has fewer runs than ``min_runs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.metrics.histogram import LatencyHistogram
from harness.model.errors import UsageError
from reports.compare.bench import BenchRow
from reports.compare.quality import QUALITY_METRICS, Stat, judge_quality, window_quality
from reports.compare.stats import REGRESSION, Judgement, judge
from reports.effect import MinEffect
from reports.history import store
from reports.rundir import find_run_dirs, load_run
from reports.validate import Corrupt, histogram

METRICS = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))


@dataclass
class Sample:
    """One run's windows: name -> ({metric: ms}, encoded response histogram or None)."""

    label: str
    scenario: str
    verdict: str | None
    windows: dict[str, tuple[dict[str, float], str | None]]
    quality: dict[str, dict[str, Stat]] = field(default_factory=dict)  # window -> metric -> stat


@dataclass
class Side:
    label: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    batch: str | None = None


def _ms(v: object) -> float:
    if v in ("inf", "-inf"):
        return float(v)  # type: ignore[arg-type]
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def load_side(spec: str, db: Path | None) -> Side:
    """Read one side of a comparison."""
    if spec.startswith("history:"):
        if db is None:
            raise UsageError(f"{spec}: no history store given; pass --db or set ${store.ENV_DB}")
        selector = spec.split(":", 1)[1]
        entries = store.select_runs(db, selector)
        if not entries:
            raise UsageError(f"{spec}: selects no complete runs in {db}")
        side = Side(spec, batch=entries[0].batch if len({e.batch for e in entries}) == 1 else None)
        for e in entries:
            side.samples.append(
                Sample(
                    f"history run {e.id} ({Path(e.run_dir).name})",
                    e.scenario,
                    e.verdict,
                    {n: _history_window(db, e.id, n, w) for n, w in e.windows.items()},
                    {n: dict(w.quality) for n, w in e.windows.items() if w.quality},
                )
            )
        return side
    side = Side(spec)
    for path in find_run_dirs(spec):
        run = load_run(path)
        if run.partial:
            side.skipped.append(f"{path.name}: partial ({'; '.join(run.notes)})")
            continue
        wins, quality = {}, {}
        for w in run.record.windows:
            lat = w.get("latency_with_errors_ms", {})
            name = str(w.get("window", {}).get("name"))
            wins[name] = (
                {m: _ms(lat.get(m)) for m, _ in METRICS},
                (w.get("histograms") or {}).get("response"),
            )
            if window_quality(w):
                quality[name] = window_quality(w)
        side.samples.append(Sample(path.name, run.scenario_name, run.record.verdict, wins, quality))
    if not side.samples:
        raise UsageError(f"{spec}: no complete runs to compare ({'; '.join(side.skipped)})")
    return side


def _history_window(
    db: Path, run_id: int, name: str, w: store.WindowEntry
) -> tuple[dict[str, float], str | None]:
    if w.response_hist is not None:
        try:
            histogram(w.response_hist, f"run {run_id}, window {name!r}, response histogram")
        except Corrupt as exc:
            raise UsageError(
                f"{db}: corrupt history store: {exc}; re-import the run with "
                "`recchaos history import RUN_DIR`, or move the store away"
            ) from None
    return {"p50": w.p50, "p95": w.p95, "p99": w.p99}, w.response_hist


@dataclass(frozen=True)
class Row:
    scenario: str
    window: str
    metric: str
    judgement: Judgement
    base_values: tuple[float, ...]
    cur_values: tuple[float, ...]


@dataclass
class Comparison:
    base: Side
    cur: Side
    rows: list[Row]
    bench: list[BenchRow]
    min_effect: MinEffect
    alpha: float
    notes: list[str] = field(default_factory=list)
    quality: list[Row] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.judgement.status == REGRESSION]

    @property
    def quality_regressions(self) -> list[Row]:
        return [r for r in self.quality if r.judgement.status == REGRESSION]

    @property
    def bench_regressions(self) -> list[BenchRow]:
        return [b for b in self.bench if b.judgement.status == REGRESSION]

    @property
    def failed_runs(self) -> list[Sample]:
        return [s for s in self.cur.samples if s.verdict == "FAIL"]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions or self.quality_regressions or self.bench_regressions)


def _merged(encoded: Sequence[str | None]) -> LatencyHistogram | None:
    if not encoded or any(e is None for e in encoded):
        return None
    return LatencyHistogram.merge_all(LatencyHistogram.decode(e) for e in encoded if e)


def compare_sides(
    base: Side,
    cur: Side,
    min_effect: MinEffect,
    alpha: float = 0.05,
    min_runs: int = 3,
    bench: list[BenchRow] | None = None,
) -> Comparison:
    rows: list[Row] = []
    quality: list[Row] = []
    notes: list[str] = []
    scen_b = {s.scenario for s in base.samples}
    scen_c = {s.scenario for s in cur.samples}
    for name in sorted(scen_b ^ scen_c):
        notes.append(
            f"scenario {name} is only in the {'baseline' if name in scen_b else 'current'} set"
        )
    for scen in sorted(scen_b & scen_c):
        sb = [s for s in base.samples if s.scenario == scen]
        sc = [s for s in cur.samples if s.scenario == scen]
        names = list(dict.fromkeys([n for s in sb + sc for n in s.windows]))
        for wname in names:
            wb = [s.windows[wname] for s in sb if wname in s.windows]
            wc = [s.windows[wname] for s in sc if wname in s.windows]
            if not wb or not wc:
                notes.append(
                    f"{scen}: window {wname!r} is only in the "
                    f"{'baseline' if wb else 'current'} runs"
                )
                continue
            hb, hc = _merged([h for _, h in wb]), _merged([h for _, h in wc])
            hists = (hb, hc) if hb is not None and hc is not None else None
            for metric, q in METRICS:
                vb = [v[metric] for v, _ in wb]
                vc = [v[metric] for v, _ in wc]
                j = judge(
                    vb, vc, min_effect=min_effect, alpha=alpha, min_runs=min_runs, hists=hists, q=q
                )
                rows.append(Row(scen, wname, metric, j, tuple(vb), tuple(vc)))
            quality += _quality_rows(scen, wname, sb, sc, alpha, min_runs)
    return Comparison(
        base,
        cur,
        rows,
        bench or [],
        min_effect,
        alpha,
        notes
        + [f"skipped (baseline) {s}" for s in base.skipped]
        + [f"skipped (current) {s}" for s in cur.skipped],
        quality,
    )


def _quality_rows(
    scen: str, wname: str, sb: list[Sample], sc: list[Sample], alpha: float, min_runs: int
) -> list[Row]:
    out = []
    for metric in QUALITY_METRICS:
        qb = [s.quality[wname][metric] for s in sb if metric in s.quality.get(wname, {})]
        qc = [s.quality[wname][metric] for s in sc if metric in s.quality.get(wname, {})]
        if not qb or not qc:
            continue
        j = judge_quality(metric, qb, qc, alpha=alpha, min_runs=min_runs)
        out.append(Row(scen, wname, metric, j, tuple(q[0] for q in qb), tuple(q[0] for q in qc)))
    return out
