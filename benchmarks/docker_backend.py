"""Where the docker backend's extra latency comes from: one scenario, local processes against
containers, interleaved.

Each round runs every scenario once per variant, one after the other. ``local`` is the
recommender as processes (``backend: process``, the fault proxy in front of the shard copies);
the others are containers, named ``REACH/CGROUP``:

* REACH ``published``: the load reaches the gateway through the port published on 127.0.0.1
  (docker-proxy, a userland TCP proxy, in between); ``network``: at the gateway's address on
  the cluster's bridge, no docker-proxy (``RECCHAOS_DOCKER_REACH``);
* CGROUP ``docker``: the engine's default cgroup parent (cgroup v1, cgroupfs: every container
  under ``/docker``, which competes with each process at the root as one entity); ``root``:
  ``dockerd --cgroup-parent=/``, each container's cgroup at the root like a local process.

Containers run on private engines (``tests/integration/dockerd.py``, one per CGROUP: its own
dockerd and containerd, no default bridge, no iptables rules), removed with everything they
made at the end; they run this host's interpreter and artifacts
(``RECCHAOS_DOCKER_HOST_MOUNTS=1``). Per run it prints the verdict, each window's p99/p95 and
fallbacks, the per-second p99 of the worst window, the gateway's own mean time per request
against the load generator's mean service time (the difference lies outside the gateway: HTTP
hops, docker-proxy), the CPU the container runtime (dockerd, containerd, its shims,
docker-proxy) spent during the load and per second, the servers' thread counts, and how late
each fault was applied and healed against its schedule (the engine's API round trip). Needs
root and Debian's ``docker.io``.

    flock -x /tmp/recchaos-cpu.lock timeout 900 .venv/bin/python benchmarks/docker_backend.py \\
        [--scenarios primary_kill primary_freeze] [--rounds 1] \\
        [--variants local published/docker network/docker network/root]

Measured figures are in docs/docker.md ("What the containers cost").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from dockerd import PrivateDockerd  # noqa: E402

from harness.model.requestlog import read_log  # noqa: E402
from harness.runner.run import run  # noqa: E402
from harness.runner.settings import RunSettings  # noqa: E402

VARIANTS = ("local", "published/docker", "network/docker", "published/root", "network/root")
DEFAULT_VARIANTS = ["local", "published/docker", "network/docker", "network/root"]
CGROUP_PARENTS = {"docker": None, "root": "/"}
# Process names (comm, 15 characters at most: containerd-shim-runc-v2 shows as containerd-shim).
RUNTIME = ("dockerd", "containerd", "containerd-shim", "docker-proxy")
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.2


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, ppid, CPU seconds) of a process, from /proc/PID/stat; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) * TICK_S


class RuntimeCpu:
    """Samples the CPU seconds of the engine's processes (those named in RUNTIME whose command
    line names the engine's directory, and docker-proxy children of its dockerd)."""

    def __init__(self, engine_dir: str | None) -> None:
        self.engine_dir = engine_dir
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.servers: dict[str, str] = {}  # the servers' threads, seen last during a run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _ours(self, pid: int, comm: str, ppid: int, dockerd: set[int]) -> bool:
        if comm not in RUNTIME or self.engine_dir is None:
            return False
        if comm == "docker-proxy":
            return ppid in dockerd
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            return False
        return any(d in cmdline for d in self.engine_dir.split("|"))

    def sample(self) -> dict[str, float]:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (s := _stat(int(entry))) is not None:
                stats[int(entry)] = s
        dockerd = {p for p, (comm, _, _) in stats.items() if comm == "dockerd"}
        out: dict[str, float] = {}
        for pid, (comm, ppid, cpu) in stats.items():
            if self._ours(pid, comm, ppid, dockerd):
                out[comm] = out.get(comm, 0.0) + cpu
        return out

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(SAMPLE_S):
            self.samples.append((time.time(), self.sample()))
            n += 1
            if n % 10 == 0 and (seen := server_threads()):
                self.servers = seen

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per process kind between two wall-clock times (nearest samples)."""
        if not self.samples:
            return {}
        a = min(self.samples, key=lambda s: abs(s[0] - t0))[1]
        b = min(self.samples, key=lambda s: abs(s[0] - t1))[1]
        return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in RUNTIME if k in a or k in b}

    def __enter__(self) -> RuntimeCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def server_threads() -> dict[str, str]:
    """Threads of each running recommender server (by command), and whether it is in a
    container (its PID namespace differs from ours)."""
    out: dict[str, str] = {}
    own_ns = os.readlink("/proc/self/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            command = next((c.decode() for c in cmd if c.startswith(b"serve-")), None)
            if command is None or b"system_under_test" not in cmd:
                continue
            threads = len(os.listdir(f"/proc/{entry}/task"))
            where = "container" if os.readlink(f"/proc/{entry}/ns/pid") != own_ns else "host"
        except OSError:
            continue
        out[command] = f"{max(threads, int(out.get(command, '0').split()[0]))} threads ({where})"
    return out


@contextmanager
def busy_processes(n: int):
    """``n`` processes spinning at normal priority for the duration: the machine's other load
    (another job, another engineer's tests), for the cluster to compete with."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def environment(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gateway_mean_ms(run_dir: Path) -> float | None:
    """The gateway's own mean time per recommend request over the load (after - before)."""
    totals = []
    for name in ("metrics-before.txt", "metrics-after.txt"):
        path = run_dir / "cluster" / name
        if not path.is_file():
            return None
        text = path.read_text()
        s = sum(
            float(v) for v in re.findall(r"^recchaos_request_seconds_sum\S* (\S+)$", text, re.M)
        )
        n = sum(
            float(v) for v in re.findall(r"^recchaos_request_seconds_count\S* (\S+)$", text, re.M)
        )
        totals.append((s, n))
    (s0, n0), (s1, n1) = totals
    return (s1 - s0) / (n1 - n0) * 1e3 if n1 > n0 else None


def per_second_p99(rows: np.ndarray, start_s: float, end_s: float) -> list[float]:
    t = rows["intended_ns"] / 1e9
    ms = (rows["done_ns"] - rows["intended_ns"]) / 1e6
    out = []
    for s in np.arange(start_s, end_s, 1.0):
        sel = ms[(t >= s) & (t < s + 1.0) & (rows["error_kind"] == 0)]
        out.append(float(np.percentile(sel, 99)) if len(sel) else float("nan"))
    return out


def one_run(scenario: str, variant: str, out: Path, engines: dict[str, PrivateDockerd]):
    env = {}
    if variant != "local":
        reach, cgroup = variant.split("/")
        env = {
            "RECCHAOS_DOCKER_REACH": reach,
            "DOCKER_HOST": engines[cgroup].host,
            "RECCHAOS_DOCKER_HOST_MOUNTS": "1",
        }
    settings = RunSettings(
        str(ROOT / "scenarios" / f"{scenario}.yaml"),
        out_dir=out,
        profile="pr",
        backend="process" if variant == "local" else "docker",
        progress=False,
    )
    lines: list[tuple[float, str]] = []
    with environment(env):
        outcome = run(settings, log=lambda line: lines.append((time.monotonic(), str(line))))
    return outcome, lines


def report(
    scenario: str, variant: str, outcome: Any, lines: list[tuple[float, str]], cpu: RuntimeCpu
):
    rd = outcome.run_dir
    record = json.loads((rd / "run.json").read_text())
    rows = read_log(rd / "load" / "requests.npy")
    verdict = outcome.verdict.value if outcome.verdict else f"none ({outcome.message})"
    print(f"\n== {scenario} / {variant}: verdict {verdict}  ({rd.name})")
    worst = None
    for w in record["windows"]:
        lat, tiers = w["latency_ms"], w["tier_counts"]
        fallback = tiers.get("degraded", 0) + tiers.get("static", 0)
        print(
            f"  {w['window']['name']:<30} n={w['count']:<5} p99={lat['p99']:>6} p95={lat['p95']:>6}"
            f" ms  replica={tiers.get('replica', 0)} degraded+static={fallback} errors={w['errors']}"
        )
        if worst is None or (lat["p99"] or 0) > (worst["latency_ms"]["p99"] or 0):
            worst = w
    if worst is not None:
        win = worst["window"]
        secs = per_second_p99(rows, win["start_s"], win["end_s"])
        print(f"  per-second p99 of {win['name']}: " + " ".join(f"{v:.1f}" for v in secs))
    ok = (rows["error_kind"] == 0) & (rows["done_ns"] >= 0)
    service = (rows["done_ns"][ok] - rows["send_ns"][ok]) / 1e6
    gw = gateway_mean_ms(rd)
    if gw is not None:
        print(
            f"  mean service time {service.mean():.2f} ms, gateway's own mean {gw:.2f} ms: "
            f"{service.mean() - gw:.2f} ms outside the gateway"
        )
    if record["timeline"] and variant != "local":
        first = record["timeline"][0]  # the load's start on the wall clock, from the fault's
        t0 = first["inject_wall"] - first["inject_ns"] / 1e9
        span = max(w["window"]["end_s"] for w in record["windows"])
        used = cpu.between(t0, t0 + span)
        n = int(len(rows))
        total = sum(used.values())
        print(
            f"  container runtime CPU during the load ({span:.0f} s, {n} requests): {total:.2f} s "
            f"({total / span * 100:.1f}% of a core, {total / max(n, 1) * 1e3:.3f} ms/request): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in used.items())
        )
        per_s = [sum(cpu.between(t0 + i, t0 + i + 1).values()) * 1e3 for i in range(int(span))]
        print("  its CPU per second of the load (ms): " + " ".join(f"{v:.0f}" for v in per_s))
    if cpu.servers:
        print("  most threads per server: " + ", ".join(f"{k} {v}" for k, v in cpu.servers.items()))
        cpu.servers = {}
    faults = record["scenario"].get("faults", [])
    for i, e in enumerate(record["timeline"]):
        plan = faults[i] if i < len(faults) else {}
        inject_s = e["inject_ns"] / 1e9
        line = f"  fault {e['kind']}({e['target']}): applied at {inject_s:.3f} s"
        if "at_s" in plan:  # the record's time is taken once apply returned
            line += (
                f", {(inject_s - plan['at_s']) * 1e3:.0f} ms after its scheduled {plan['at_s']} s"
            )
            late = rows[
                (rows["intended_ns"] / 1e9 >= plan["at_s"]) & (rows["intended_ns"] / 1e9 < inject_s)
            ]
            if len(late):
                ms = (late["done_ns"] - late["intended_ns"]) / 1e6
                line += f" ({len(late)} requests sent meanwhile, max {ms.max():.1f} ms)"
        if e.get("heal_ns") is not None and plan.get("duration_s"):
            heal_s, due = e["heal_ns"] / 1e9, plan["at_s"] + plan["duration_s"]
            line += f"; healed {(heal_s - due) * 1e3:.0f} ms after its scheduled {due} s"
        print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--scenarios",
        nargs="+",
        default=["primary_kill", "primary_freeze"],
        help="scenario names under scenarios/ (pr profile)",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        choices=VARIANTS,
        help="local processes, or containers as REACH/CGROUP (see the module's docstring)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds")
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        help="processes spinning at normal priority during each run (the machine's other load)",
    )
    ap.add_argument("--out", default=None, help="run directories (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="recchaos-docker-bench-"))
    engines: dict[str, PrivateDockerd] = {}
    try:
        for cgroup in sorted({v.split("/")[1] for v in args.variants if v != "local"}):
            engine = engines[cgroup] = PrivateDockerd(cgroup_parent=CGROUP_PARENTS[cgroup])
            if engine.start().failure:
                print(f"no Docker engine ({cgroup}): {engine.failure}", file=sys.stderr)
                return 2
        dirs = "|".join(str(e.dir) for e in engines.values()) or None
        with RuntimeCpu(dirs) as cpu:
            for rnd in range(args.rounds):
                for scenario in args.scenarios:
                    for variant in args.variants:
                        busy = f" ({args.busy} busy processes beside it)" if args.busy else ""
                        print(f"\n-- round {rnd + 1}: {scenario} / {variant}{busy}", flush=True)
                        with busy_processes(args.busy):
                            outcome, lines = one_run(scenario, variant, out, engines)
                        report(scenario, variant, outcome, lines, cpu)
                        sys.stdout.flush()
    finally:
        for engine in engines.values():
            left = engine.stop()
            if left:
                print(f"the private engine left: {left}", file=sys.stderr)
    print(f"\nrun directories: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
