"""Serving benchmark: capacity of the default recommender on this machine, load generator included.

Starts the cluster (``python -m system_under_test up``, no fault proxy), then drives open-loop
constant-rate load from a separate process (the harness's load worker; response time from the
intended send time) at each rate in turn, and finally at ``--kill-rate`` while one primary is
SIGKILLed halfway through the step. For every step it prints the achieved rate, p50/p95/p99
(error-inclusive), errors, tier shares, generator lag p99 and CPU milliseconds per request of
each kind of component (from /proc/PID/stat). The ``up`` start-up time is printed first.

    .venv/bin/python benchmarks/serving.py [--preset default] [--rates 200,300,400] [--step-s 20]

Rates are interleaved over ``--repeat`` rounds (machines slow down over time: compare inside one
run) and the median with [min .. max] is reported.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.load.driver import run_load  # noqa: E402
from harness.load.spec import LoadJob  # noqa: E402
from harness.model.load import LoadPhase, RequestMix  # noqa: E402
from harness.model.requestlog import TIERS, succeeded  # noqa: E402
from harness.sut.recommender import RecommenderCluster, RecommenderOptions  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def role_of(name: str) -> str:
    return name.split("-")[-1] if name.startswith("shard-") else name


def cpu_by_name(cluster: RecommenderCluster) -> dict[str, float | None]:
    return {c["name"]: cpu_seconds(int(c["pid"])) for c in cluster.manifest()["components"]}


def cpu_ms_by_role(
    before: dict[str, float | None], after: dict[str, float | None], n: int
) -> tuple[dict[str, float], list[str]]:
    """CPU ms per request by role over the components alive at both readings; the names of
    those that died in between (their CPU cannot be read any more, so it is left out)."""
    out: Counter[str] = Counter()
    gone = []
    for name, t0 in before.items():
        t1 = after.get(name)
        if t0 is None or t1 is None:
            gone.append(name)
            continue
        out[role_of(name)] += 1000 * (t1 - t0) / max(n, 1)
    return dict(out), gone


def one_step(
    cluster: RecommenderCluster,
    rate: float,
    step_s: float,
    users: int,
    seed: int,
    workdir: Path,
    kill: str | None = None,
) -> dict:
    job = LoadJob(
        target=cluster.base_url,
        seed=seed,
        output_dir=str(workdir),
        phases=(LoadPhase("step", rate, step_s, RequestMix(users=users)),),
    )
    cpu0 = cpu_by_name(cluster)
    killer = None
    if kill:
        pid = int(cluster.component(kill)["pid"])
        killer = threading.Timer(2.0 + step_s / 2, lambda: os.kill(pid, signal.SIGKILL))
        killer.start()
    result = run_load(job, timeout_s=step_s + 90)
    if killer is not None:
        killer.join()
    cpu1 = cpu_by_name(cluster)
    log = result.log
    ok = succeeded(log)
    resp_ms = np.where(ok, (log["done_ns"] - log["intended_ns"]) / 1e6, np.inf)
    tiers = Counter(TIERS[t] for t in log["tier"][ok] if 0 <= t < len(TIERS))
    n = len(log)
    cpu_ms, gone = cpu_ms_by_role(cpu0, cpu1, n)
    return {
        "rate": rate,
        "achieved": result.summary.get("achieved_rate", 0.0),
        "p50": float(np.percentile(resp_ms, 50)),
        "p95": float(np.percentile(resp_ms, 95)),
        "p99": float(np.percentile(resp_ms, 99)),
        "errors": int(n - ok.sum()),
        "tiers": {t: c / max(ok.sum(), 1) for t, c in tiers.items()},
        "lag_p99": result.summary.get("lag_p99_ms", float("nan")),
        "cpu_ms": cpu_ms,
        "cpu_not_counted": gone,
        "gen_cpu_ms": result.summary.get("cpu_ms_per_request", float("nan")),
    }


def fmt(step: dict) -> str:
    tiers = " ".join(f"{t} {100 * s:.1f}%" for t, s in sorted(step["tiers"].items()))
    cpu = " ".join(f"{r} {v:.2f}" for r, v in sorted(step["cpu_ms"].items()))
    return (
        f"{step['rate']:6.0f}/s achieved {step['achieved']:6.1f}/s  p50 {step['p50']:6.2f}  "
        f"p95 {step['p95']:6.2f}  p99 {step['p99']:7.2f} ms  errors {step['errors']}  "
        f"lag p99 {step['lag_p99']:.2f} ms  tiers {tiers}\n"
        f"        CPU ms/request: {cpu}  load generator {step['gen_cpu_ms']:.2f}"
        + (
            f"  (not counted, died: {', '.join(step['cpu_not_counted'])})"
            if step["cpu_not_counted"]
            else ""
        )
    )


def summarise(rate: float, steps: list[dict]) -> str:
    def med(key: str) -> str:
        vals = [s[key] for s in steps]
        return f"{statistics.median(vals):.2f} [{min(vals):.2f} .. {max(vals):.2f}]"

    return f"{rate:6.0f}/s  p50 {med('p50')}  p95 {med('p95')}  p99 {med('p99')} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rates", default="200,300,400")
    ap.add_argument("--step-s", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--kill-rate", type=float, default=200.0, help="0: skip the kill step")
    ap.add_argument("--users", type=int, default=None)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    with tempfile.TemporaryDirectory(prefix="recchaos-bench-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        options = RecommenderOptions(shards=args.shards, preset=args.preset, proxy=False)
        with RecommenderCluster(options, work / "cluster", log=print) as cluster:
            up_s = time.monotonic() - t0
            print(
                f"`up` took {up_s:.1f} s (preset {args.preset}, {args.shards} shards; "
                f"{cluster.manifest().get('startup_seconds')} s inside the launcher)"
            )
            users = args.users or int(cluster.manifest().get("n_users") or 100_000)
            one_step(cluster, rates[0], 5.0, users, 0, work / "warm")  # warm caches, JIT paths
            results: dict[float, list[dict]] = {r: [] for r in rates}
            for rnd in range(args.repeat):
                for rate in rates:
                    step = one_step(
                        cluster, rate, args.step_s, users, rnd + 1, work / f"r{rnd}-{rate:g}"
                    )
                    print(fmt(step), flush=True)
                    results[rate].append(step)
            print("\nmedian [min .. max] over rounds:")
            for rate in rates:
                print(summarise(rate, results[rate]))
            capable = [r for r in rates if statistics.median(s["p99"] for s in results[r]) <= 20]
            print(
                f"capacity (highest rate with median p99 <= 20 ms): "
                f"{max(capable) if capable else 'below ' + str(min(rates))} requests/s"
            )
            if args.kill_rate:
                step = one_step(
                    cluster,
                    args.kill_rate,
                    args.step_s,
                    users,
                    99,
                    work / "kill",
                    kill="shard-1-primary",
                )
                print(f"\nwith shard-1-primary SIGKILLed halfway:\n{fmt(step)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
