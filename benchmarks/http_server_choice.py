"""Which HTTP server for the gateway: latency and CPU per request at a fixed request rate.

Candidates, each in its own process with a handler shaped like ``POST /v1/recommend`` (parse a
small JSON body, answer ~300 bytes of JSON, keep-alive):

* ``httptools``: the gateway's own server (``gateway/http.py``: asyncio Protocol + httptools on
  uvloop, no framework);
* ``stdlib``: ``http.server.ThreadingHTTPServer`` (HTTP/1.1, keep-alive);
* ``aiohttp``: aiohttp's web server on uvloop, if aiohttp is importable (it is not a project
  dependency: ``pip install --target /tmp/bench-aiohttp aiohttp`` and run with
  ``PYTHONPATH=/tmp/bench-aiohttp``).

The client is open-loop: requests are due at a fixed rate and latency is measured from the due
time (coordinated omission corrected), over a pool of keep-alive connections. Server CPU per
request comes from /proc/PID/stat. Runs are interleaved and repeated (these VMs drift).

    .venv/bin/python benchmarks/http_server_choice.py [--rate 500] [--seconds 4] [--rounds 2]
        [--servers httptools,stdlib,aiohttp] [--baseline GIT-REF]

``--baseline REF`` adds the gateway's server as it was at a git revision (``httptools@REF``,
extracted with ``git archive`` into a temporary directory), interleaved with the current one:
the before/after comparison of a change to ``gateway/http.py`` in one run. It also times the
protocol alone, in process (``HttpProtocol`` fed a request and answering it through a stub
transport, no sockets), for both revisions: the server's own cost per request to a tenth of a
microsecond, which the socket runs (CPU time in 10 ms ticks, next to the kernel's share) cannot
resolve.

Measured on the 2-core dev VM (2 rounds x 4 s, client in the same VM, other jobs running: load
average 3-4, so compare only within a round). p50 / p99 ms, server CPU ms per request:

    rate 500/s   httptools 0.42-0.44 / 3.0-3.5 / 0.10-0.13   stdlib 0.39-0.41 / 1009-1454 / 0.14-0.17
                 aiohttp   0.41-0.59 / 3.2-53  / 0.16-0.20
    rate 1500/s  httptools 0.36-0.43 / 4.0-4.5 / 0.07-0.08   stdlib 0.44-0.46 / 3.9 (max 1 s) / 0.13-0.15
                 aiohttp   0.47-0.49 / 4.0-4.6 / 0.12

The httptools server costs about half the CPU of the others per request, which is what matters
next to the shards on two cores. The stdlib server's 1 s outliers are SYN retransmits: its listen
backlog is 5 (``request_queue_size``), overflowed whenever the client opens connections in a burst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"user_id": 1234, "k": 10}).encode()
ANSWER = {
    "items": list(range(1000, 1010)),
    "scores": [0.5] * 10,
    "tier": "primary",
    "model_version": "tiny-0123456789",
    "timings_ms": {"total": 1.0},
}


def answer_bytes(body: bytes) -> bytes:
    req = json.loads(body)
    return json.dumps({**ANSWER, "user": req["user_id"]}).encode()


# ---- servers (each runs in a child process: ``--serve KIND --port P``)


def serve_httptools(port: int, root: Path = ROOT) -> None:
    import uvloop

    sys.path.insert(0, str(root))
    from system_under_test.gateway.http import Response

    try:
        from system_under_test.gateway.listener import start_http_server
    except ImportError:  # a revision from before the listener had its own module
        from system_under_test.gateway.http import start_http_server  # type: ignore[no-redef]

    async def handler(request):
        return Response(200, answer_bytes(request.body))

    async def main():
        await start_http_server(handler, "127.0.0.1", port)
        print(f"ready {sys.modules[start_http_server.__module__].__file__}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_stdlib(port: int) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            out = answer_bytes(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def serve_aiohttp(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def handler(request):
        return web.Response(
            body=answer_bytes(await request.read()), content_type="application/json"
        )

    async def main():
        app = web.Application()
        app.router.add_post("/v1/recommend", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


SERVERS = {"httptools": serve_httptools, "stdlib": serve_stdlib, "aiohttp": serve_aiohttp}


# ---- the protocol alone (child process: ``--time-protocol --root R``)


class _StubTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> None:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def time_protocol(root: Path, n: int = 20_000) -> None:
    """Print the microseconds per request of HttpProtocol at ``root``: parse, queue, answer."""
    import uvloop

    sys.path.insert(0, str(root))
    from system_under_test.gateway import http

    answer = http.Response(200, answer_bytes(BODY))

    async def handler(request):
        return answer

    async def run() -> float:
        protocol = http.HttpProtocol(handler)
        transport = _StubTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        start = time.perf_counter()
        for _ in range(n):
            protocol.data_received(REQUEST)
            await asyncio.sleep(0)  # the task that answers
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - start
        assert transport.writes == n, f"{transport.writes} answers to {n} requests"
        return elapsed / n * 1e6

    print(f"{uvloop.run(run()):.3f} {http.__file__}", flush=True)


# ---- the open-loop client


REQUEST = (
    b"POST /v1/recommend HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


async def one(pool: list, port: int) -> None:
    if pool:
        reader, writer = pool.pop()
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    pool.append((reader, writer))


async def drive(port: int, rate: float, seconds: float) -> tuple[list[float], int]:
    loop = asyncio.get_running_loop()
    pool: list = []
    for _ in range(20):  # warm-up, and a few connections for the pool
        await one(pool, port)
    latencies: list[float] = []
    errors = 0
    tasks = []

    async def timed(due: float) -> None:
        nonlocal errors
        try:
            await one(pool, port)
            latencies.append(time.perf_counter() - due)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1

    start = time.perf_counter() + 0.05
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(timed(due)))
    await asyncio.gather(*tasks)
    for _, writer in pool:
        writer.close()
    return latencies, errors


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def extract_revision(ref: str, into: Path) -> Path:
    """``system_under_test/`` as it was at git revision ``ref``, under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "system_under_test"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if archive.returncode != 0:
        raise SystemExit(
            f"--baseline {ref!r}: git archive failed: {archive.stderr.decode().strip()}"
        )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60)
    return into


def measure(kind: str, rate: float, seconds: float, root: Path | None = None) -> dict[str, float]:
    import uvloop

    port = free_port()
    command = [sys.executable, __file__, "--serve", kind.split("@")[0], "--port", str(port)]
    if root is not None:
        command += ["--root", str(root)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "ready" not in line:
            raise RuntimeError(f"{kind} server did not start (exit {proc.poll()})")
        if root is not None and str(root) not in line:
            raise RuntimeError(f"{kind} did not serve the code under {root}: {line.strip()}")
        cpu0 = cpu_seconds(proc.pid)
        latencies, errors = uvloop.run(drive(port, rate, seconds))
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return {
        "n": n,
        "errors": errors,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if n else float("nan"),
        "cpu_ms_per_req": cpu * 1000 / max(n, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=4.0, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, of {', '.join(SERVERS)} (default: all that import)",
    )
    parser.add_argument(
        "--baseline", metavar="GIT-REF", help="also the gateway's server at this revision"
    )
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--time-protocol", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_protocol:
        time_protocol(args.root)
        return 0
    if args.serve:
        if args.serve == "httptools":
            serve_httptools(args.port, args.root)
        else:
            SERVERS[args.serve](args.port)
        return 0
    kinds = [k for k in args.servers.split(",") if k]
    unknown = sorted(set(kinds) - set(SERVERS))
    if unknown:
        parser.error(f"--servers {args.servers!r}: unknown {unknown}; allowed: {sorted(SERVERS)}")
    if "aiohttp" in kinds:
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            kinds.remove("aiohttp")
            print("aiohttp is not importable: skipped (see the module docstring)")
    with tempfile.TemporaryDirectory(prefix="http-baseline-") as tmp:
        roots: dict[str, Path | None] = dict.fromkeys(kinds)
        if args.baseline:
            baseline = extract_revision(args.baseline, Path(tmp))
            roots[f"httptools@{args.baseline}"] = baseline
        run_rounds(roots, args.rate, args.seconds, args.rounds)
        if args.baseline:
            compare_protocols({"httptools": ROOT, f"httptools@{args.baseline}": baseline}, 7)
    return 0


def compare_protocols(roots: dict[str, Path], rounds: int) -> None:
    """The protocol alone, in process, interleaved: median [min .. max] microseconds."""
    times: dict[str, list[float]] = {kind: [] for kind in roots}
    for _ in range(rounds):
        for kind, root in roots.items():
            out = subprocess.run(
                [sys.executable, __file__, "--time-protocol", "--root", str(root)],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout.split()
            if str(root) not in out[1]:
                raise RuntimeError(f"{kind} did not time the code under {root}: {out}")
            times[kind].append(float(out[0]))
    print(f"the protocol alone (no sockets), {rounds} interleaved rounds of 20,000 requests:")
    for kind, values in times.items():
        values.sort()
        print(
            f"  {kind:<24} {values[len(values) // 2]:.2f} us/request "
            f"[{values[0]:.2f} .. {values[-1]:.2f}]"
        )


def run_rounds(roots: dict[str, Path | None], rate: float, seconds: float, rounds: int) -> None:
    width = max(10, *(len(k) for k in roots))
    print(f"open-loop {rate:.0f} requests/s for {seconds:.0f} s, {rounds} interleaved rounds")
    print(
        f"{'server':<{width}} {'round':>5} {'n':>6} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'CPU ms/req':>11}"
    )
    for rnd in range(rounds):
        for kind, root in roots.items():
            r = measure(kind, rate, seconds, root)
            print(
                f"{kind:<{width}} {rnd + 1:>5} {r['n']:>6} {r['errors']:>4} {r['p50_ms']:>8.3f} "
                f"{r['p99_ms']:>8.3f} {r['max_ms']:>8.2f} {r['cpu_ms_per_req']:>11.3f}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
