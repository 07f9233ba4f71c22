"""A synthetic but valid run directory, for report tests, demos and docs (no cluster needed).

Writes ``run.json`` through :func:`harness.model.record.write_record`, ``load/requests.npy`` through
:func:`harness.model.requestlog.write_log`, ``load/histograms.json`` and the HdrHistogram files
(with ``hdr_files``), with windows computed by :mod:`harness.metrics` exactly as a real run computes
them: seeded lognormal latencies, one kill fault whose window is slower and served by the replica,
optional failures, and checked answers whose agreement with the reference is 1.0 for a share
``agreement`` of them and 0.5 for the rest (NDCG from seeded hits). ``slow`` scales every latency
and a lower ``agreement`` lowers the quality (to fake regressions). ``python -m reports.synthetic
OUT_DIR`` writes one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.metrics.histogram import LatencyHistogram
from harness.metrics.intervals import hdr_files
from harness.metrics.stats import window_stats
from harness.metrics.windows import Window, windows_for
from harness.model.record import FaultEvent, RunRecord, write_record
from harness.model.requestlog import TIERS, empty_log, error_code, succeeded, write_log


@dataclass(frozen=True)
class Synth:
    name: str = "synthetic_kill"
    seed: int = 7
    rate: float = 100.0
    duration_s: float = 20.0
    fault_at_s: float = 8.0
    fault_s: float = 5.0
    slow: float = 1.0
    failures: int = 0  # failed requests inside the fault window
    status: str = "complete"
    sla_ms: float = 20.0
    hdr_files: bool = False  # latency.hlog and hgrm/ too (about 2 s: the .hgrm writer is slow)
    agreement: float = 1.0  # share of answers that agree fully with the reference (else 0.5)


def scenario_dict(s: Synth) -> dict:
    return {
        "name": s.name,
        "description": "synthetic run for report tests",
        "seed": s.seed,
        "target": {"kind": "recommender", "shards": 2, "preset": "tiny"},
        "warmup_s": 2.0,
        "settle_s": 1.0,
        "sla_ms": s.sla_ms,
        "load": [{"name": "main", "rate": s.rate, "duration_s": s.duration_s}],
        "faults": [
            {
                "kind": "kill",
                "target": "shard-0-primary",
                "at_s": s.fault_at_s,
                "duration_s": s.fault_s,
                "params": {},
            }
        ],
        "slos": [{"metric": "p99", "at_most": s.sla_ms}],
        "profiles": {},
        "profile": None,
    }


def request_log(s: Synth) -> np.ndarray:
    rng = np.random.default_rng(s.seed)
    n = int(s.rate * s.duration_s)
    rows = empty_log(n)
    intended = (np.arange(n) * (1e9 / s.rate)).astype(np.int64)
    lag = rng.exponential(150_000, n).astype(np.int64)
    in_fault = (intended >= s.fault_at_s * 1e9) & (intended < (s.fault_at_s + s.fault_s) * 1e9)
    service_ms = rng.lognormal(np.log(2.5), 0.45, n) * s.slow
    service_ms[in_fault] *= 1.8
    rows["intended_ns"] = intended
    rows["send_ns"] = intended + lag
    rows["done_ns"] = rows["send_ns"] + (service_ms * 1e6).astype(np.int64)
    rows["status"] = 200
    rows["tier"] = np.where(in_fault, TIERS.index("replica"), TIERS.index("primary"))
    rows["user_id"] = rng.integers(0, 4000, n)
    rows["answer"] = 0
    rows["agreement"] = np.where(rng.random(n) < s.agreement, 1.0, 0.5)
    rows["ndcg"] = np.where(rng.random(n) < 0.25, 1.0 / np.log2(rng.integers(1, 11, n) + 1), 0.0)
    if s.failures:
        bad = rng.choice(
            np.nonzero(in_fault)[0], size=min(s.failures, int(in_fault.sum())), replace=False
        )
        rows["status"][bad] = 0
        rows["tier"][bad] = -1
        rows["error_kind"][bad] = error_code("timeout")
        rows["done_ns"][bad] = -1
        rows["answer"][bad] = -1
        rows["agreement"][bad] = np.nan
        rows["ndcg"][bad] = np.nan
    return rows


def write_run(out: str | Path, s: Synth = Synth()) -> Path:
    """Write one run directory under ``out``; returns its path."""
    run_dir = Path(out)
    (run_dir / "load").mkdir(parents=True, exist_ok=True)
    log = request_log(s)
    write_log(run_dir / "load" / "requests.npy", log)
    event = FaultEvent(
        "kill",
        "shard-0-primary",
        {},
        "faults[0]",
        int(s.fault_at_s * 1e9),
        1.8e9 + s.fault_at_s,
        int((s.fault_at_s + s.fault_s) * 1e9),
        1.8e9 + s.fault_at_s + s.fault_s,
        True,
        "synthetic",
    )
    end_s = float(log["intended_ns"].max()) / 1e9
    windows = windows_for([event], 0.0, end_s, 2.0, 1.0)
    stats = [window_stats(log, w, s.sla_ms) for w in windows]
    checks = []
    for st in stats:
        p99 = st.latency_all.p99
        verdict = "PASS" if p99 <= s.sla_ms else "FAIL"
        checks.append(
            {
                "verdict": verdict,
                "metric": "p99",
                "window": st.window.name,
                "value": p99,
                "limit": s.sla_ms,
                "where": "synthetic, slos[0]",
                "interval": (iv.to_dict() if (iv := st.interval("p99")) is not None else None),
                "message": f"p99 {p99:.1f} ms {st.window.describe()} "
                f"{'is within' if verdict == 'PASS' else 'exceeds'} the SLO of "
                f"{s.sla_ms:g} ms; {st.count} requests in the window",
            }
        )
    verdict = "FAIL" if any(c["verdict"] == "FAIL" for c in checks) else "PASS"
    record = RunRecord(
        scenario=scenario_dict(s),
        seed=s.seed,
        scenario_path="synthetic.yaml",
        replay=f"recchaos run synthetic.yaml --seed {s.seed}",
        status=s.status,
        git_commit="0" * 40,
        versions={"python": sys.version.split()[0]},
        host={"hostname": "synthetic", "cpus": 2},
        started_wall=1.8e9,
        ended_wall=1.8e9 + 30,
        origin_mono_ns=1,
        load_end_s=end_s,
        timeline=(event,),
        windows=tuple(st.to_dict() for st in stats),
        checks=tuple(checks),
        verdict=verdict if s.status == "complete" else None,
    )
    write_record(run_dir / "run.json", record)
    summary = {
        "generator": {
            "workers": 1,
            "scheduled": len(log),
            "intended": len(log),
            "sent": len(log),
            "answered": int((log["status"] == 200).sum()),
            "failed": int((log["status"] != 200).sum()),
            "missed": 0,
            "intended_rate": s.rate,
            "achieved_rate": s.rate,
            "lag_p99_ms": 0.7,
            "partial": False,
        },
        "tier_cross_check": {"agree": True},
        "fault_problems": [],
        "unaccounted": [],
        "load_errors": [],
    }
    (run_dir / "details.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_histograms(run_dir, log, [st.window for st in stats], s.hdr_files)
    return run_dir


def _write_histograms(run_dir: Path, log: np.ndarray, windows: list[Window], hdr: bool) -> None:
    """``load/histograms.json`` as the load driver writes it, and the HdrHistogram files."""
    ok = succeeded(log)
    sent = log["send_ns"] >= 0
    us = {
        "response": ((log["done_ns"] - log["intended_ns"])[ok] + 500) // 1000,
        "service": ((log["done_ns"] - log["send_ns"])[ok] + 500) // 1000,
        "lag": ((log["send_ns"] - log["intended_ns"])[sent] + 500) // 1000,
    }
    hists = {
        name: LatencyHistogram.from_us(v, failures=int((~ok).sum()) if name == "response" else 0)
        for name, v in us.items()
    }
    doc = {"unit": "us", "significant_figures": 3, **{n: h.to_dict() for n, h in hists.items()}}
    (run_dir / "load" / "histograms.json").write_text(json.dumps(doc, indent=1))
    if not hdr:
        return
    for name, text in hdr_files(log, windows, 1.8e9).items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(text)


if __name__ == "__main__":
    print(write_run(sys.argv[1] if len(sys.argv) > 1 else "synthetic-run", Synth(hdr_files=True)))
