"""What a quiet spell costs the next call, and what keeping the serving processes warm saves.

On the virtual machines the latency figures come from, memory a process has not touched for a
while is slow to touch again: not a page fault the guest sees (no fault, no steal time is
counted), but user time spent on the first touch of each small (4 KB) page. Two measurements:

1. In this process: the time to read 4 MB that was last touched ``gap`` seconds ago, in small
   pages and in transparent huge pages (``madvise(MADV_HUGEPAGE)``), and a pure-CPU loop of the
   same length for comparison (the CPU itself is not slower after a quiet spell).
2. A tiny-preset recommender (no balancer, no fault proxy), started twice: with the shard copies'
   and the region's keep-warm off (``--keep-warm-ms 0``) and at its default; a ``retrieve`` sent
   straight to ``shard-0-replica`` after ``gap`` seconds without a call (wall time and the shard's
   CPU time, from ``/proc/PID/task/*/schedstat``), and the CPU the idle shard copies and the region
   use over 5 s (what the keep-warm rounds cost).

    .venv/bin/python benchmarks/idle_memory.py [--repeats 5] [--gaps 0.005,0.25,1,3]

Prints medians with the range over the repeats. Takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import mmap
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.sut.recommender import RecommenderCluster, RecommenderOptions  # noqa: E402
from system_under_test import protocol  # noqa: E402

MB = 1 << 20
HUGE = 2 * MB
MADV_HUGEPAGE = 14


def huge_array(nbytes: int) -> tuple[np.ndarray, mmap.mmap]:
    """``nbytes`` of float32 in an anonymous mapping advised to use huge pages, 2 MB aligned."""
    mm = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    aligned = (addr + HUGE - 1) & ~(HUGE - 1)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(nbytes), MADV_HUGEPAGE) != 0:
        raise OSError(ctypes.get_errno(), "madvise(MADV_HUGEPAGE) failed")
    arr = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=aligned - addr).view(np.float32)
    arr[:] = 1.0
    return arr, mm


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} [{min(values):.2f}, {max(values):.2f}]"


def in_process(gaps: list[float], repeats: int) -> None:
    small = np.random.default_rng(0).standard_normal(MB).astype(np.float32)  # 4 MB, small pages
    huge, _keep = huge_array(4 * MB)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000

    def loop() -> None:
        x = 0
        for i in range(20_000):
            x += i * i

    print("1. this process: ms to read 4 MB last touched GAP s ago; median [min, max]")
    print(f"{'gap s':>7}  {'small pages':>22}  {'huge pages':>22}  {'CPU loop':>22}")
    for gap in gaps:
        rows: list[list[float]] = [[], [], []]
        for _ in range(repeats):
            for i, fn in enumerate((lambda: small.sum(), lambda: huge.sum(), loop)):
                time.sleep(gap)
                rows[i].append(timed(fn))
        print(f"{gap:7g}  {spread(rows[0]):>22}  {spread(rows[1]):>22}  {spread(rows[2]):>22}")


def cpu_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


async def first_calls(comp: dict, gaps: list[float], repeats: int) -> dict[float, tuple]:
    host, port = comp["address"].rsplit(":", 1)
    pid = int(comp["pid"])
    client = protocol.Client(host, int(port))
    dim = int((await client.call("ping", 2.0)).header["dim"])
    query = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    out: dict[float, tuple[list[float], list[float]]] = {}
    for gap in gaps:
        wall: list[float] = []
        cpu: list[float] = []
        for _ in range(repeats):
            await asyncio.sleep(gap)
            c0, t0 = cpu_ns(pid), time.perf_counter()
            await client.call("retrieve", 2.0, {"top_n": 50}, {"query": query})
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((cpu_ns(pid) - c0) / 1e6)
        out[gap] = (wall, cpu)
    await client.close()
    return out


def idle_cpu(comps: list[dict], seconds: float = 5.0) -> float:
    """Share of one core the shard copies and the region use together while nothing calls."""
    pids = [int(c["pid"]) for c in comps if c["role"] in ("primary", "replica", "region")]
    before = sum(cpu_ns(p) for p in pids)
    time.sleep(seconds)
    return (sum(cpu_ns(p) for p in pids) - before) / (seconds * 1e9)


def cluster_run(keep_warm_ms: str | None, gaps: list[float], repeats: int) -> None:
    up_args = ("--keep-warm-ms", keep_warm_ms) if keep_warm_ms is not None else ()
    label = f"--keep-warm-ms {keep_warm_ms}" if keep_warm_ms is not None else "default keep-warm"
    opts = RecommenderOptions(preset="tiny", gateways=1, proxy=False, up_args=up_args)
    with tempfile.TemporaryDirectory(prefix="idle-memory-") as tmp:
        with RecommenderCluster(opts, Path(tmp), log=lambda *a: None) as cluster:
            comps = cluster.manifest()["components"]
            replica = next(c for c in comps if c["name"] == "shard-0-replica")
            time.sleep(2.0)  # past the start-up
            share = idle_cpu(comps)
            res = asyncio.run(first_calls(replica, gaps, repeats))
    print(f"   {label}: idle shard copies and region together use {share:.1%} of a core")
    print(f"   {'gap s':>7}  {'retrieve wall ms':>22}  {'shard CPU ms':>22}")
    for gap, (wall, cpu) in res.items():
        print(f"   {gap:7g}  {spread(wall):>22}  {spread(cpu):>22}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="calls per gap (default 5)")
    parser.add_argument(
        "--gaps", default="0.005,0.25,1,3", help="quiet spells in seconds (default 0.005,0.25,1,3)"
    )
    args = parser.parse_args()
    try:
        gaps = [float(g) for g in args.gaps.split(",")]
    except ValueError:
        parser.error(f"--gaps {args.gaps!r} must be comma-separated seconds, e.g. 0.005,1,3")
    if args.repeats < 1 or any(not 0 <= g <= 60 for g in gaps):
        parser.error("--repeats must be at least 1 and every gap within 0..60 s")
    in_process(gaps, args.repeats)
    print("2. a retrieve sent to shard-0-replica after GAP s without a call; median [min, max]")
    cluster_run("0", gaps, args.repeats)
    cluster_run(None, gaps, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
