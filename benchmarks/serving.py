"""Serving benchmark: capacity of the default recommender on this machine, load generator included.

Starts the cluster (``python -m system_under_test up --gateways 2``: HAProxy in front of two
gateways, no fault proxy; ``--gateways N``), then drives open-loop constant-rate load from a
separate process (the harness's load worker; response time from the intended send time) at each
rate of each request mix in turn, and finally at ``--kill-rate`` while one primary is SIGKILLed
halfway through the step. For every step it prints the achieved rate, p50/p95/p99
(error-inclusive), errors, tier shares, goodput (answers within the 20 ms SLA per second of the
step), the p99 of served answers alone, the requests shed (503 with Retry-After, by the
balancer's queue timeout or the gateway's overload control: not errors) and the p99 of those
rejections with where their time went (the generator's lag, send to answer, and the balancer's
own log of the 503s it answered: how many by HAProxy termination state, ``sQ`` queued then
timed out, ``LR`` answered at once, with the p99 of ``Tw`` and ``Ta``), generator lag p99 and CPU milliseconds per request of each kind of component (user
+ system time from /proc/PID/stat over the step, divided by the requests sent; ``gateway`` sums
every gateway, ``lb`` is the balancer; the load generator's own separately). The mixes it names
(``MIXES``) are printed first: ``zipf`` is the scenarios' mix, ``cold`` the same skew over every
user, so that most requests miss the gateway's caches.

    .venv/bin/python benchmarks/serving.py [--mixes zipf,cold] [--rates 200,300,400] [--step-s 20]
    .venv/bin/python benchmarks/serving.py --baseline ../recchaos-old   # before/after, one run

Rates are interleaved over ``--repeat`` rounds (machines slow down over time: compare inside one
run) and the median with [min .. max] is reported, with each mix's capacity (the highest rate
whose median p99 is at most 20 ms). ``--baseline`` starts a second cluster from another checkout
(its own ``.venv``) and runs each of its steps right before the same step on this tree's,
with ``--gateways`` when that checkout's ``up`` has it (one gateway, no balancer otherwise: the
run says so). ``--gateway-maxconn``, ``--queue-timeout-ms`` and ``--max-queue`` go to this tree's ``up``
only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.load.driver import run_load  # noqa: E402
from harness.load.spec import LoadJob  # noqa: E402
from harness.model.load import LoadPhase, RequestMix  # noqa: E402
from harness.model.requestlog import TIERS, error_code, succeeded  # noqa: E402
from harness.model.target import MAX_GATEWAYS  # noqa: E402
from harness.sut.recommender import RecommenderCluster, RecommenderOptions  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SLA_MS = 20.0
SHED = error_code("shed")

# The request mixes a step can use. "zipf": the scenarios' mix (Zipf 1.1 over 4,000 users, so
# the gateway's caches hold most of what is asked); "cold": the same skew over every user the
# model knows (100,000 in the default preset), so most requests miss the caches.
MIXES: dict[str, Callable[[RecommenderCluster], RequestMix]] = {
    "zipf": lambda cluster: RequestMix(zipf_exponent=1.1, users=4000, k=10),
    "cold": lambda cluster: RequestMix(
        zipf_exponent=1.1, users=int(cluster.manifest().get("n_users") or 100_000), k=10
    ),
}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def role_of(name: str) -> str:
    """The kind a component's CPU is summed under: ``primary``/``replica`` over the shards,
    ``gateway`` over ``gateway-0`` ... ``gateway-N-1``, ``lb`` (the balancer), ``region``."""
    if name.startswith("shard-"):
        return name.split("-")[-1]
    return "gateway" if name.startswith("gateway-") else name


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
    mix: RequestMix,
    seed: int,
    workdir: Path,
    kill: str | None = None,
) -> dict:
    job = LoadJob(
        target=cluster.base_url,
        seed=seed,
        output_dir=str(workdir),
        phases=(LoadPhase("step", rate, step_s, mix),),
    )
    cpu0 = cpu_by_name(cluster)
    lb_log = lb_log_path(cluster)
    lb_from = lb_log.stat().st_size if lb_log is not None and lb_log.exists() else 0
    killer = None
    if kill:
        pid = int(cluster.component(kill)["pid"])
        killer = threading.Timer(2.0 + step_s / 2, lambda: os.kill(pid, signal.SIGKILL))
        killer.start()
    result = run_load(job, timeout_s=step_s + 90)
    if killer is not None:
        killer.join()
    cpu1 = cpu_by_name(cluster)
    lb_lines = read_from(lb_log, lb_from) if lb_log is not None else []
    log = result.log
    ok = succeeded(log)
    took_ms = (log["done_ns"] - log["intended_ns"]) / 1e6
    resp_ms = np.where(ok, took_ms, np.inf)
    shed = log["error_kind"] == SHED
    tiers = Counter(TIERS[t] for t in log["tier"][ok] if 0 <= t < len(TIERS))
    n = len(log)
    cpu_ms, gone = cpu_ms_by_role(cpu0, cpu1, n)
    return {
        "rate": rate,
        "achieved": result.summary.get("achieved_rate", 0.0),
        "p50": float(np.percentile(resp_ms, 50, method="higher")),
        "p95": float(np.percentile(resp_ms, 95, method="higher")),
        "p99": float(np.percentile(resp_ms, 99, method="higher")),
        "errors": int(n - ok.sum() - shed.sum()),
        "shed": int(shed.sum()),
        "shed_p99": _p99(took_ms[shed]),
        # where a rejection's time went: the generator's lateness (intended -> send) and the
        # round trip (send -> done), each p99 over the shed requests
        "shed_lag_p99": _p99((log["send_ns"][shed] - log["intended_ns"][shed]) / 1e6),
        "shed_rtt_p99": _p99((log["done_ns"][shed] - log["send_ns"][shed]) / 1e6),
        "lb": lb_rejections(lb_lines),
        "served_p99": _p99(took_ms[ok]),
        "goodput": float((ok & (took_ms <= SLA_MS)).sum() / step_s),
        "tiers": {t: c / max(ok.sum(), 1) for t, c in tiers.items()},
        "lag_p99": result.summary.get("lag_p99_ms", float("nan")),
        "cpu_ms": cpu_ms,
        "cpu_not_counted": gone,
        "gen_cpu_ms": result.summary.get("cpu_ms_per_request", float("nan")),
    }


def lb_log_path(cluster: RecommenderCluster) -> Path | None:
    """The balancer's log file (HAProxy logs each request it answered with an error there)."""
    for c in cluster.manifest()["components"]:
        if c["name"] == "lb" and c.get("log"):
            return Path(c["log"])
    return None


def read_from(path: Path, offset: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


# HAProxy's httplog: ... TR/Tw/Tc/Tr/Ta status bytes cookie cookie TERMINATION_STATE ...
_HTTPLOG = re.compile(r" (-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/\+?(-?\d+) (\d{3}) \d+ \S+ \S+ (\S{4}) ")


def lb_rejections(lines: list[str]) -> dict:
    """HAProxy's own account of the 503s it answered in a step: how many by termination state
    (``sQ``: queued, then the queue timeout; ``PR``: the fail-fast rule, answered at once) and
    the p99 of Tw (ms queued) and Ta (ms from accepting the request to the answer) of each."""
    states: dict[str, list[tuple[int, int]]] = {}
    for line in lines:
        m = _HTTPLOG.search(line)
        if m is None or m.group(6) != "503":
            continue
        states.setdefault(m.group(7)[:2], []).append((int(m.group(2)), int(m.group(5))))
    return {
        state: {
            "n": len(v),
            "tw_p99": _p99(np.array([t for t, _ in v], dtype=float)),
            "ta_p99": _p99(np.array([a for _, a in v], dtype=float)),
        }
        for state, v in sorted(states.items())
    }


def _p99(ms: np.ndarray) -> float:
    return float(np.percentile(ms, 99)) if len(ms) else float("nan")


def fmt(step: dict) -> str:
    tiers = " ".join(f"{t} {100 * s:.1f}%" for t, s in sorted(step["tiers"].items()))
    cpu = " ".join(f"{r} {v:.2f}" for r, v in sorted(step["cpu_ms"].items()))
    return (
        f"{step['rate']:6.0f}/s achieved {step['achieved']:6.1f}/s  p50 {step['p50']:6.2f}  "
        f"p95 {step['p95']:6.2f}  p99 {step['p99']:7.2f} ms  errors {step['errors']}  "
        f"lag p99 {step['lag_p99']:.2f} ms  tiers {tiers}\n"
        f"        goodput {step['goodput']:6.1f}/s within {SLA_MS:g} ms  served p99 "
        f"{step['served_p99']:.2f} ms  shed {step['shed']} (p99 {step['shed_p99']:.2f} ms: lag "
        f"{step['shed_lag_p99']:.2f}, send to answer {step['shed_rtt_p99']:.2f}; balancer "
        + (
            ", ".join(
                f"{k} {v['n']} Tw p99 {v['tw_p99']:.0f} Ta p99 {v['ta_p99']:.0f} ms"
                for k, v in step["lb"].items()
            )
            or "none"
        )
        + ")\n"
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

    roles = sorted({r for s in steps for r in s["cpu_ms"]})
    cpu = "  ".join(
        f"{r} {statistics.median(s['cpu_ms'].get(r, 0.0) for s in steps):.2f}" for r in roles
    )
    total = [sum(s["cpu_ms"].values()) for s in steps]
    return (
        f"{rate:6.0f}/s  p50 {med('p50')}  p95 {med('p95')}  p99 {med('p99')} ms\n"
        f"        goodput {med('goodput')}/s  served p99 {med('served_p99')} ms  shed "
        f"{med('shed')}  shed p99 {med('shed_p99')} ms\n"
        f"        CPU ms/request (median): {cpu}  all servers "
        f"{statistics.median(total):.2f} [{min(total):.2f} .. {max(total):.2f}]"
    )


class BenchCluster(RecommenderCluster):
    """The recommender of this tree, or of another checkout (``tree``, with its own ``.venv``)
    for a before/after comparison inside one run: ``up`` then runs with that tree's Python from
    that tree's root. ``up_extra``: more options of ``up`` (the balancer's limits);
    ``gateways_option``: False for a checkout whose ``up`` has no ``--gateways`` (it runs its one
    layout, the gateway alone: ``main`` checks once, says so and asks for one gateway)."""

    def __init__(
        self,
        options: RecommenderOptions,
        workdir: Path,
        log=print,
        tree: Path | None = None,
        up_extra: tuple[str, ...] = (),
        gateways_option: bool = True,
    ) -> None:
        super().__init__(options, workdir, log=log)
        self.tree = tree.resolve() if tree is not None else None
        self.up_extra = up_extra
        self.gateways_option = gateways_option

    def _launcher(self, *args: str) -> tuple[list[str], Path | None]:
        if args and args[0] == "up":
            args = (*args, *self.up_extra)
        if self.tree is None:
            return super()._launcher(*args)
        python = str(self.tree / ".venv" / "bin" / "python")
        return [python, "-m", "system_under_test", *args], self.tree

    def _gateway_args(self) -> list[str]:
        return super()._gateway_args() if self.gateways_option else []


def up_accepts(tree: Path, option: str) -> bool:
    """Whether ``up`` of the checkout ``tree`` has ``option`` (an older one may not)."""
    python = str(tree / ".venv" / "bin" / "python")
    try:
        out = subprocess.run(
            [python, "-m", "system_under_test", "up", "--help"],
            cwd=tree,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in out


def balancer_limits(config: str) -> str:
    """The overload settings of a generated HAProxy config, in one line."""
    words = [line.split() for line in config.splitlines()]
    maxconn = {w[w.index("maxconn") + 1] for w in words if w[:1] == ["server"] and "maxconn" in w}
    queue = [w[2] for w in words if w[:2] == ["timeout", "queue"]]
    fast = [w[w.index("ge") + 1] for w in words if "queue(gateways)" in w and "ge" in w]
    if any("be_conn_free(gateways)" in w for w in words):  # a full set of gateways: 503 at once
        fast = ["0 (only a retry waits)"]
    return (
        f"per-gateway maxconn {','.join(sorted(maxconn)) or 'none'}, timeout queue "
        f"{queue[0] if queue else 'none'}, max queue {fast[0] if fast else 'none'}"
    )


def describe_mix(name: str, mix: RequestMix) -> str:
    return f"{name}: Zipf exponent {mix.zipf_exponent} over {mix.users} users, k={mix.k}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="data/model preset of the cluster")
    ap.add_argument("--shards", type=int, default=4, help="number of shards")
    ap.add_argument("--rates", default="200,300,400", help="comma-separated requests/s")
    ap.add_argument("--step-s", type=float, default=20.0, help="seconds of load per step")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--kill-rate", type=float, default=200.0, help="0: skip the kill step")
    ap.add_argument(
        "--mixes",
        default="zipf,cold",
        help=f"comma-separated request mixes, of {sorted(MIXES)} (see MIXES)",
    )
    ap.add_argument(
        "--gateways",
        type=int,
        default=2,
        help="gateway processes; 2 or more: HAProxy (lb) in front of them (default 2)",
    )
    ap.add_argument(
        "--gateway-maxconn",
        type=int,
        default=None,
        help="`up --gateway-maxconn` of this tree's cluster (default: none, no limit)",
    )
    ap.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=None,
        help="`up --queue-timeout-ms` of this tree's cluster (default: the balancer's)",
    )
    ap.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="`up --max-queue` of this tree's cluster (default: the balancer's)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (with its own .venv) measured beside this one, step by step",
    )
    args = ap.parse_args()
    bad = [m for m in args.mixes.split(",") if m not in MIXES]
    if bad:
        ap.error(f"--mixes {args.mixes!r}: {bad} not among {sorted(MIXES)}")
    if args.baseline is not None and not (args.baseline / ".venv" / "bin" / "python").exists():
        ap.error(f"--baseline {args.baseline}: no .venv/bin/python there (run its setup.sh)")
    if not 1 <= args.gateways <= MAX_GATEWAYS:
        ap.error(f"--gateways {args.gateways} is out of range; allowed: 1 to {MAX_GATEWAYS}")
    limits = (args.gateway_maxconn, args.queue_timeout_ms, args.max_queue)
    if args.gateways == 1 and limits != (None, None, None):
        ap.error(
            "--gateway-maxconn, --queue-timeout-ms and --max-queue are the balancer's: they need "
            "--gateways 2 or more"
        )
    return args


def up_extra(args: argparse.Namespace) -> tuple[str, ...]:
    """The balancer's limits given here, as options of ``up``."""
    out: list[str] = []
    for option in ("gateway-maxconn", "queue-timeout-ms", "max-queue"):
        value = getattr(args, option.replace("-", "_"))
        if value is not None:
            out += [f"--{option}", str(value)]
    return tuple(out)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds: the clusters are stopped


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupted)  # e.g. `timeout`: stop the clusters, no orphans
    rates = [float(r) for r in args.rates.split(",") if r]
    mix_names = args.mixes.split(",")
    with tempfile.TemporaryDirectory(prefix="recchaos-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        options = RecommenderOptions(
            shards=args.shards, preset=args.preset, proxy=False, gateways=args.gateways
        )
        clusters: dict[str, RecommenderCluster] = {}
        if args.baseline is not None:
            base_options = options
            has_option = up_accepts(args.baseline, "--gateways")
            if not has_option and args.gateways != 1:
                print(f"baseline {args.baseline}: its `up` has no --gateways; one gateway, no lb")
                base_options = dataclasses.replace(options, gateways=1)
            base = BenchCluster(
                base_options,
                work / "before",
                log=print,
                tree=args.baseline,
                gateways_option=has_option,
            )
            clusters["before"] = stack.enter_context(base)
        t0 = time.monotonic()
        here = BenchCluster(options, work / "after", log=print, up_extra=up_extra(args))
        cluster = clusters["after" if args.baseline else "this"] = stack.enter_context(here)
        print(
            f"`up` took {time.monotonic() - t0:.1f} s (preset {args.preset}, {args.shards} "
            f"shards, {args.gateways} gateway(s){' behind lb' if args.gateways > 1 else ''}; "
            f"{cluster.manifest().get('startup_seconds')} s inside the launcher)"
        )
        lb_config = work / "after" / "logs" / "haproxy.cfg"
        if lb_config.exists():
            print("balancer:", balancer_limits(lb_config.read_text()))
        mixes = {m: MIXES[m](cluster) for m in mix_names}
        for name, mix in mixes.items():
            print("request mix", describe_mix(name, mix))
        for label, c in clusters.items():  # warm caches and first-call paths
            for mix in mixes.values():
                one_step(c, rates[0], 5.0, mix, 0, work / f"warm-{label}")
        results: dict[tuple[str, str, float], list[dict]] = {}
        for rnd in range(args.repeat):
            for mname, mix in mixes.items():
                for rate in rates:
                    for label, c in clusters.items():
                        step = one_step(
                            c, rate, args.step_s, mix, rnd + 1, work / f"r{rnd}-{label}-{rate:g}"
                        )
                        print(f"[{label} {mname}] {fmt(step)}", flush=True)
                        results.setdefault((label, mname, rate), []).append(step)
        print("\nmedian [min .. max] over rounds:")
        for mname in mixes:
            for label in clusters:
                print(f"-- {label}, mix {describe_mix(mname, mixes[mname])}")
                for rate in rates:
                    print(summarise(rate, results[(label, mname, rate)]))
                ok = [
                    r
                    for r in rates
                    if statistics.median(s["p99"] for s in results[(label, mname, r)]) <= 20
                ]
                print(
                    f"capacity ({label}, mix {mname}; highest rate with median p99 <= 20 ms): "
                    f"{max(ok) if ok else 'below ' + str(min(rates))} requests/s"
                )
        if args.kill_rate:
            step = one_step(
                cluster,
                args.kill_rate,
                args.step_s,
                mixes[mix_names[0]],
                99,
                work / "kill",
                kill="shard-1-primary",
            )
            print(f"\nwith shard-1-primary SIGKILLed halfway:\n{fmt(step)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
