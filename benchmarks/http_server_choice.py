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


def serve_httptools(port: int) -> None:
    import uvloop

    sys.path.insert(0, str(ROOT))
    from system_under_test.gateway.http import Response, start_http_server

    async def handler(request):
        return Response(200, answer_bytes(request.body))

    async def main():
        await start_http_server(handler, "127.0.0.1", port)
        print("ready", flush=True)
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


def measure(kind: str, rate: float, seconds: float) -> dict[str, float]:
    import uvloop

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "ready" not in line:
            raise RuntimeError(f"{kind} server did not start (exit {proc.poll()})")
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
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        SERVERS[args.serve](args.port)
        return 0
    kinds = ["httptools", "stdlib"]
    try:
        import aiohttp  # noqa: F401

        kinds.append("aiohttp")
    except ImportError:
        print("aiohttp is not importable: skipped (see the module docstring)")
    print(
        f"open-loop {args.rate:.0f} requests/s for {args.seconds:.0f} s, "
        f"{args.rounds} interleaved rounds"
    )
    print(
        f"{'server':<10} {'round':>5} {'n':>6} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'CPU ms/req':>11}"
    )
    for rnd in range(args.rounds):
        for kind in kinds:
            r = measure(kind, args.rate, args.seconds)
            print(
                f"{kind:<10} {rnd + 1:>5} {r['n']:>6} {r['errors']:>4} {r['p50_ms']:>8.3f} "
                f"{r['p99_ms']:>8.3f} {r['max_ms']:>8.2f} {r['cpu_ms_per_req']:>11.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
