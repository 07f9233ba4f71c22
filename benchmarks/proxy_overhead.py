"""What the userspace TCP fault proxy costs with no fault on: round-trip time and CPU.

An echo server (its own process: uvloop, asyncio Protocol, TCP_NODELAY, like a shard server)
answers every request with the same bytes. The client sends ``--size`` bytes and waits for the
echo (closed loop, one connection, TCP_NODELAY), either directly (``direct``) or through one
proxy process (``proxy``: :func:`harness.proxy.client.start_proxy`, no fault). A third
mode (``proxy+Nms``) turns on an N ms downstream latency fault to show how close the median
shift comes to N. Blocks of ``--n`` round trips run interleaved for ``--rounds`` rounds (these
VMs drift), each mode on a fresh connection. CPU per round trip: the proxy's and the echo
server's from /proc/PID/schedstat (run time in ns; /proc/PID/stat ticks where that is missing),
the client's from ``time.process_time``. One warm-up round is run first and not recorded.

    .venv/bin/python benchmarks/proxy_overhead.py [--n 4000] [--rounds 5] [--size 512]

Results on the 2-core dev VM are at the bottom of this file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.proxy.client import ProxyProcess, start_proxy  # noqa: E402

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def serve_echo(port: int) -> None:
    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Echo, "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``: scheduler run time in ns (precise), else utime+stime in ticks."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recv_exactly(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise EOFError(f"EOF after {got} of {n} bytes")
        got += len(chunk)


def block(port: int, n: int, size: int, pids: dict[str, int]) -> dict[str, float]:
    """``n`` round trips on a fresh connection; latency percentiles and CPU µs per round trip."""
    payload = os.urandom(size)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(50):  # warm-up
            sock.sendall(payload)
            recv_exactly(sock, size)
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client0 = time.process_time()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            sock.sendall(payload)
            recv_exactly(sock, size)
            times.append(time.perf_counter() - t0)
        client_cpu = time.process_time() - client0
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    times.sort()
    return {
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[int(len(times) * 0.99)] * 1e6,
        "proxy_cpu_us": cpu.get("proxy", 0.0) / n * 1e6,
        "total_cpu_us": (client_cpu + sum(cpu.values())) / n * 1e6,
    }


def measure(mode: str, echo_port: int, proxy: ProxyProcess, args, echo_pid: int):
    proxy_port = int(proxy.listen["echo"].rsplit(":", 1)[1])
    pids = {"echo": echo_pid, "proxy": proxy.pid}
    if mode == "direct":
        return block(echo_port, args.n, args.size, pids)
    if mode == "proxy":
        return block(proxy_port, args.n, args.size, pids)
    fid = proxy.client.add_fault("echo", "latency", "downstream", delay_ms=args.latency_ms)
    try:  # fewer round trips: each now takes the fault's delay
        return block(proxy_port, max(200, args.n // 10), args.size, pids)
    finally:
        proxy.client.remove_fault("echo", fid)


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:8.1f} [{min(values):7.1f} .. {max(values):7.1f}]"


def report(results: dict[str, list[dict[str, float]]], latency_ms: float) -> None:
    print("\nmedian over rounds [min .. max]:")
    for key in ("p50_us", "p99_us", "proxy_cpu_us", "total_cpu_us"):
        for mode, rows in results.items():
            print(f"  {key:<13} {mode:<12} {spread([r[key] for r in rows])}")
    direct, proxied = results["direct"], results["proxy"]
    added = [p["p50_us"] - d["p50_us"] for d, p in zip(direct, proxied, strict=True)]
    added99 = [p["p99_us"] - d["p99_us"] for d, p in zip(direct, proxied, strict=True)]
    print(f"  proxy adds p50 {spread(added)} µs, p99 {spread(added99)} µs per round trip")
    fault_rows = results.get(f"proxy+{latency_ms:g}ms", [])
    if fault_rows:
        shift = [
            (f["p50_us"] - p["p50_us"]) / 1e3 for p, f in zip(proxied, fault_rows, strict=True)
        ]
        print(f"  a {latency_ms:g} ms latency fault shifts p50 by {spread(shift)} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="round trips per block")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--size", type=int, default=512, help="bytes per request and echo")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="0: skip the fault mode")
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo", str(echo_port)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if not echo.stdout or echo.stdout.readline().strip() != "ready":
            raise RuntimeError(f"echo server did not start (exit {echo.poll()})")
        with tempfile.TemporaryDirectory() as tmp:
            routes = {"echo": ("127.0.0.1:0", f"127.0.0.1:{echo_port}")}
            with start_proxy(routes, Path(tmp) / "proxy.log", timeout_s=20) as proxy:
                run_rounds(args, echo_port, proxy, echo.pid)
    finally:
        echo.terminate()
        try:
            echo.wait(timeout=5)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait(timeout=5)
    return 0


def run_rounds(args, echo_port: int, proxy: ProxyProcess, echo_pid: int) -> None:
    modes = ["direct", "proxy"] + ([f"proxy+{args.latency_ms:g}ms"] if args.latency_ms else [])
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    print(f"{args.n} round trips of {args.size} bytes per block, {args.rounds} rounds")
    print(
        f"{'mode':<12} {'round':>5} {'p50 µs':>9} {'p99 µs':>9} {'proxy CPU µs':>13} "
        f"{'total CPU µs':>13}"
    )
    for mode in modes:  # warm-up round, not recorded (a fresh proxy is slower at first)
        measure(mode, echo_port, proxy, args, echo_pid)
    for rnd in range(args.rounds):
        for mode in modes:
            r = measure(mode, echo_port, proxy, args, echo_pid)
            results[mode].append(r)
            print(
                f"{mode:<12} {rnd + 1:>5} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} "
                f"{r['proxy_cpu_us']:>13.1f} {r['total_cpu_us']:>13.1f}",
                flush=True,
            )
    report(results, args.latency_ms)


if __name__ == "__main__":
    sys.exit(main())

# Results, 2-core dev VM, 2026-11-28, 20000 round trips of 512 bytes per block, 5 interleaved
# rounds, other sessions busy on the same VM (load average 3-5); median over rounds [min .. max]:
#
#   p50 round trip     direct 8.0 [7.6 .. 8.6] µs    proxy 18.3 [18.0 .. 18.5] µs
#   proxy adds         p50 10.1 [9.7 .. 10.8] µs; p99 152 [30 .. 479] µs (p99 follows the VM's
#                      load: direct p99 itself ranged 18 .. 1839 µs in the same run)
#   proxy CPU          9.9 [9.5 .. 11.7] µs per round trip (two chunks forwarded)
#   total CPU          direct 8.9 µs, proxy 20.6 µs per round trip (client + echo + proxy)
#   5 ms latency fault p50 shift 5.3 [5.2 .. 5.3] ms; proxy CPU ~100-140 µs per round trip,
#                      most of it waking from idle (a bare 5 ms sleep costs 37-56 µs of CPU
#                      per wake-up on this VM)
#
# An earlier run on a quieter VM: proxy adds p50 10.5 [9.8 .. 16.7] µs, p99 16 [5 .. 299] µs,
# proxy CPU 9.3 µs per round trip.
