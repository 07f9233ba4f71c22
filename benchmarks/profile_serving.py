"""Sampling profiles of the serving path: py-spy flame graphs of the gateway and one shard under load.

Starts the default cluster with one gateway (``up --gateways 1``: the gateway alone, no
balancer, so the one profiled gateway serves every request, as in the profiles already in
``docs/profiles``) and no fault proxy, warms it, then drives open-loop constant-rate load
(the harness's load worker) while ``py-spy record`` samples the gateway and ``shard-0-primary``
without stopping them (``--nonblocking``). Writes one SVG per component and prints the CPU
milliseconds per request of each kind of component over the same window (the profiler's own CPU
is its own process and is not counted).

    .venv/bin/python benchmarks/profile_serving.py [--rate 300] [--duration-s 20] [--out docs/profiles]

py-spy needs ptrace rights on the servers (root, or ``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.serving import CLK_TCK, MIXES, cpu_by_name, cpu_ms_by_role  # noqa: E402
from harness.load.driver import run_load  # noqa: E402
from harness.load.spec import LoadJob  # noqa: E402
from harness.model.load import LoadPhase  # noqa: E402
from harness.sut.recommender import RecommenderCluster, RecommenderOptions  # noqa: E402

PROFILED = ("gateway", "shard-0-primary")


def system_seconds(cluster: RecommenderCluster) -> dict[str, float | None]:
    """Kernel-mode CPU seconds of each component (the syscalls: socket reads, writes, polls)."""
    out: dict[str, float | None] = {}
    for c in cluster.manifest()["components"]:
        try:
            stat = Path(f"/proc/{c['pid']}/stat").read_text().rsplit(")", 1)[1].split()
            out[c["name"]] = int(stat[12]) / CLK_TCK
        except OSError:
            out[c["name"]] = None
    return out


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        sys.exit("py-spy not found: install the dev extras (bash scripts/setup.sh)")
    return found


def record(cluster: RecommenderCluster, name: str, out: Path, seconds: float, rate: int):
    pid = str(cluster.component(name)["pid"])
    cmd = [py_spy(), "record", "--pid", pid, "--duration", str(int(seconds)), "--rate", str(rate)]
    cmd += ["--nonblocking", "--format", "flamegraph", "--output", str(out)]
    print("$", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=300.0, help="requests/s, open loop")
    ap.add_argument("--duration-s", type=float, default=20.0, help="profiled load step, seconds")
    ap.add_argument("--mix", choices=sorted(MIXES), default="zipf", help="request mix")
    ap.add_argument("--sample-rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--out", type=Path, default=Path("docs/profiles"), help="SVG directory")
    ap.add_argument("--tag", default="", help="suffix of the SVG names (e.g. 'before')")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recchaos-profile-") as tmp:
        work = Path(tmp)
        options = RecommenderOptions(proxy=False, gateways=1)  # every request on one gateway
        with RecommenderCluster(options, work / "cluster", log=print) as cluster:
            mix = MIXES[args.mix](cluster)
            warm = LoadJob(
                target=cluster.base_url,
                phases=(LoadPhase("warm", 200, 5, mix),),
                seed=0,
                output_dir=str(work / "warm"),
            )
            run_load(warm, timeout_s=90)
            job = LoadJob(
                target=cluster.base_url,
                phases=(LoadPhase("step", args.rate, args.duration_s + 4, mix),),
                seed=1,
                output_dir=str(work / "load"),
            )
            suffix = f"-{args.tag}" if args.tag else ""
            cpu0, sys0 = cpu_by_name(cluster), system_seconds(cluster)
            spies = [
                record(cluster, n, args.out / f"{n}{suffix}.svg", args.duration_s, args.sample_rate)
                for n in PROFILED
            ]
            result = run_load(job, timeout_s=args.duration_s + 90)
            cpu1, sys1 = cpu_by_name(cluster), system_seconds(cluster)
            for spy in spies:
                _, err = spy.communicate(timeout=60)
                if spy.returncode:
                    print(f"py-spy failed ({spy.returncode}): {err.strip()[-400:]}")
            n = len(result.log)
            cpu_ms, _ = cpu_ms_by_role(cpu0, cpu1, n)
            sys_ms, _ = cpu_ms_by_role(sys0, sys1, n)
            print(f"{n} requests, achieved {result.summary.get('achieved_rate', 0):.1f}/s")
            print("CPU ms/request while profiled (of which in the kernel):")
            for role in sorted(cpu_ms):
                print(f"  {role:8s} {cpu_ms[role]:.2f} ({sys_ms.get(role, 0.0):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
