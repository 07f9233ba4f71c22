"""A stub HTTP server with known behaviour, for calibrating the load generator.

    python -m harness.load.stub --port 0 --service-ms 2 [--tier primary] [--status 200]
        [--realtime] [--parent-pid PID] [--answer recommender [--items 10] [--catalogue 1000]
        [--wrong-share 0.1 --wrong-kind nan --seed 7]]

Every request (any method, any path outside ``/_stub/``) is answered ``service_ms`` after it
arrived, with a small JSON body and, when ``--tier`` is given, an ``X-Recchaos-Tier`` header.
With ``--answer recommender`` the body has the bundled recommender's shape (``--items``
distinct ids below ``--catalogue`` that depend on the ``X-Request-Id``, descending scores,
``tier``, ``model_version``, timings), and a known, seeded share of the answers is wrong
(``--wrong-share``): a request is answered wrongly exactly when :func:`answers_wrongly` says so
for the run's seed and its ``X-Request-Id``, in the way ``--wrong-kind`` names (``nan``
scores, a ``duplicate`` item, ``missing_version``, or a ``constant`` list, which is well formed).
The delay is a pure wait, not CPU work, so answers overlap freely and the stub's own latency
stays small: asyncio on uvloop with httptools, TCP_NODELAY, and a Linux timerfd for the delays
(event-loop timers are millisecond-granular; a timerfd wakes to the microsecond).

Control endpoints, answered at once, even while frozen:

* ``POST /_stub/freeze`` ``{"ms": 1000}``: freeze for that long, starting now, like a SIGSTOPped
  server whose kernel still accepts connections: nothing is answered until the freeze ends;
  a request that arrived during it is answered ``service_ms`` after the end, one that was due
  during it at the end. Answers ``{"start_ns": ..., "end_ns": ...}`` (time.monotonic_ns()).
* ``POST /_stub/config`` ``{"service_ms": 2, "tier": "replica", "status": 503}``: change them.
* ``GET /_stub/stats``: ``{"requests": n, "answered": n, "connections": n, "late_us": {...}}``;
  ``late_us`` is how late the stub itself sent its delayed answers (``p25``, ``p50``, ``p75`` in
  microseconds past their due time, over the last 100,000, reset by ``/_stub/config``): the
  stub's own part of a measured service time, for calibrations that compare against it.

Once listening it prints one line, ``{"event": "ready", "port": P, "pid": PID}``, on stdout.
With ``--parent-pid PID`` it stops by itself within a second once that process is gone (it was
re-parented), as the fault proxy does: a test process that dies without its teardown (a tier
stopped at its budget, a SIGKILL) must not leave its stub serving, at real-time priority with
``--realtime``, for every tier after it.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import signal
import socket
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import httptools

from harness.load._timerfd import TimerFd
from harness.process.parent import watch_parent
from harness.process.realtime import enter_realtime

REASONS = {
    200: "OK",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


WRONG_KINDS = ("nan", "duplicate", "missing_version", "constant")


def answers_wrongly(seed: int, request_id: str, share: float) -> bool:
    """Is the answer to ``request_id`` (its X-Request-Id) one of the seeded wrong ones?"""
    if share <= 0:
        return False
    return zlib.crc32(f"{seed}:{request_id}".encode()) < share * 2**32


@dataclass
class StubConfig:
    service_ns: int = 2_000_000
    tier: str = ""
    status: int = 200
    answer_format: str = ""  # "recommender": recommender-shaped bodies
    items: int = 10
    catalogue: int = 1000
    wrong_share: float = 0.0
    wrong_kind: str = "nan"
    seed: int = 0
    # Close a keep-alive connection idle (nothing unanswered on it) this long, as a server's idle
    # timeout does; 0: never. Set through /_stub/config.
    idle_close_ms: float = 0.0

    def answer(self, keep_alive: bool, request_id: str = "") -> bytes:
        if self.answer_format == "recommender":
            body = self.recommendation(request_id)
        else:
            body = b'{"ok": true, "items": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}'
        return _response(
            self.status, body, keep_alive, (("X-Recchaos-Tier", self.tier),) if self.tier else ()
        )

    def recommendation(self, request_id: str) -> bytes:
        n = self.items
        base = zlib.crc32(request_id.encode()) % self.catalogue
        items = [(base + i) % self.catalogue for i in range(n)]
        doc: dict[str, Any] = {
            "items": items,
            "scores": [1.0 - i / n for i in range(n)],
            "tier": self.tier or "primary",
            "model_version": "stub-1",
            "cold_start": False,
            "timings_ms": {"total": self.service_ns / 1e6},
        }
        if answers_wrongly(self.seed, request_id, self.wrong_share):
            if self.wrong_kind == "nan":
                doc["scores"] = [float("nan")] * n
            elif self.wrong_kind == "duplicate" and n > 1:
                items[1] = items[0]
            elif self.wrong_kind == "missing_version":
                del doc["model_version"]
            else:
                doc["items"] = list(range(n))
        return json.dumps(doc, separators=(",", ":")).encode()


def _response(
    status: int, body: bytes, keep_alive: bool, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in headers]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Stub:
    """The server's state: configuration, freeze window, and answers waiting for their time."""

    def __init__(self, config: StubConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.frozen_until = 0
        self.requests = self.answered = self.connections = self.idle_closed = 0
        self._heap: list[tuple[int, int, Conn, bytes, bool]] = []
        self._seq = 0
        self._timer = TimerFd()
        self._armed_at = 0
        self.late_ns: deque[int] = deque(maxlen=100_000)
        loop.add_reader(self._timer.fd, self._fire)

    def close(self) -> None:
        self.loop.remove_reader(self._timer.fd)
        self._timer.close()

    def serve(self, conn: Conn, keep_alive: bool, request_id: str = "") -> None:
        now = time.monotonic_ns()
        self.requests += 1
        conn.pending += 1
        due = max(now, self.frozen_until) + self.config.service_ns
        data = self.config.answer(keep_alive, request_id)
        if due <= now:
            self._send(conn, data, keep_alive)
            return
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, conn, data, keep_alive))
        if self._heap[0][0] == due:
            self._arm()

    def freeze(self, ms: float) -> dict[str, int]:
        start = time.monotonic_ns()
        self.frozen_until = max(self.frozen_until, start + int(ms * 1e6))
        self._arm()
        return {"start_ns": start, "end_ns": self.frozen_until}

    def _arm(self) -> None:
        if self._heap:
            at = max(self._heap[0][0], self.frozen_until)
            if at != self._armed_at:
                self._timer.arm_at(at)
                self._armed_at = at

    def _fire(self) -> None:
        self._timer.consume()
        self._armed_at = 0
        now = time.monotonic_ns()
        if now >= self.frozen_until:
            heap = self._heap
            while heap and heap[0][0] <= now:
                due, _, conn, data, keep_alive = heapq.heappop(heap)
                self._send(conn, data, keep_alive)
                self.late_ns.append(now - max(due, self.frozen_until))
        self._arm()

    def lateness_us(self) -> dict[str, float | None]:
        late = sorted(self.late_ns)
        return {
            f"p{q}": (late[min(len(late) - 1, len(late) * q // 100)] / 1e3 if late else None)
            for q in (25, 50, 75)
        }

    def _send(self, conn: Conn, data: bytes, keep_alive: bool) -> None:
        conn.pending -= 1
        if conn.transport.is_closing():
            return
        conn.transport.write(data)
        self.answered += 1
        if not keep_alive:
            conn.transport.close()
        elif not conn.pending:
            conn.arm_idle()

    def control(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            args = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": f"body is not JSON: {body[:60]!r}"}
        if path == "/_stub/freeze" and method == "POST":
            return 200, self.freeze(float(args.get("ms", 0)))
        if path == "/_stub/config" and method == "POST":
            if "service_ms" in args:
                self.config.service_ns = int(float(args["service_ms"]) * 1e6)
            self.late_ns.clear()
            self.config.tier = str(args.get("tier", self.config.tier))
            self.config.status = int(args.get("status", self.config.status))
            self.config.idle_close_ms = float(args.get("idle_close_ms", self.config.idle_close_ms))
            return 200, {
                "service_ms": self.config.service_ns / 1e6,
                "tier": self.config.tier,
                "status": self.config.status,
                "idle_close_ms": self.config.idle_close_ms,
            }
        if path == "/_stub/stats":
            return 200, {
                "requests": self.requests,
                "answered": self.answered,
                "connections": self.connections,
                "idle_closed": self.idle_closed,
                "late_us": self.lateness_us(),
            }
        return 404, {"error": f"unknown control endpoint {method} {path}"}


class Conn(asyncio.Protocol):
    """One client connection: httptools parses, the stub answers."""

    def __init__(self, stub: Stub) -> None:
        self.stub = stub
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._url = b""
        self._body: list[bytes] = []
        self._request_id = ""
        self.pending = 0  # requests received and not yet answered
        self._idle: asyncio.TimerHandle | None = None

    def arm_idle(self) -> None:
        """Start the idle timeout (when configured): nothing is unanswered on this connection."""
        if self._idle is not None:
            self._idle.cancel()
        ms = self.stub.config.idle_close_ms
        self._idle = self.stub.loop.call_later(ms / 1e3, self._close_idle) if ms > 0 else None

    def _close_idle(self) -> None:
        self._idle = None
        if not self.pending and not self.transport.is_closing():
            self.stub.idle_closed += 1
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stub.connections += 1
        self.arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(_response(400, b'{"error": "bad request"}', False))
            self.transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._request_id = ""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-request-id":
            self._request_id = value.decode("latin-1")

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        if path.startswith("/_stub/"):
            method = self.parser.get_method().decode("latin-1")
            status, answer = self.stub.control(method, path, b"".join(self._body))
            self.transport.write(_response(status, json.dumps(answer).encode(), keep_alive))
            if not keep_alive:
                self.transport.close()
            return
        self.stub.serve(self, keep_alive, self._request_id)


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    config = StubConfig(
        int(args.service_ms * 1e6),
        args.tier,
        args.status,
        args.answer,
        args.items,
        args.catalogue,
        args.wrong_share,
        args.wrong_kind,
        args.seed,
    )
    stub = Stub(config, loop)
    server = await loop.create_server(lambda: Conn(stub), args.host, args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = {"event": "ready", "port": port, "pid": os.getpid(), "priority": args.priority}
    print(json.dumps(ready), flush=True)
    watch = None
    if args.parent_pid is not None:
        watch = loop.create_task(
            watch_parent(
                args.parent_pid,
                stop,
                lambda line: print(f"stub: {line}", file=sys.stderr, flush=True),
            )
        )
    try:
        await stop.wait()
    finally:
        if watch is not None:
            watch.cancel()
        server.close()
        stub.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.load.stub", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed when ready)")
    p.add_argument("--service-ms", type=float, default=2.0)
    p.add_argument("--tier", default="", help="X-Recchaos-Tier header value (none when empty)")
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    p.add_argument(
        "--parent-pid",
        type=int,
        help="stop when this process is gone (pass the starter's own PID: a stub must not "
        "outlive the test or harness that started it)",
    )
    p.add_argument(
        "--answer",
        choices=("", "recommender"),
        default="",
        help="recommender: bodies shaped like the bundled recommender's answers",
    )
    p.add_argument("--items", type=int, default=10, help="items per recommender answer")
    p.add_argument("--catalogue", type=int, default=1000, help="item ids lie below this")
    p.add_argument(
        "--wrong-share",
        type=float,
        default=0.0,
        help="share of recommender answers that are wrong, chosen by a hash of (seed, "
        "X-Request-Id)",
    )
    p.add_argument("--wrong-kind", choices=WRONG_KINDS, default="nan")
    p.add_argument("--seed", type=int, default=0, help="seed of the wrong answers' hash")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="run as SCHED_FIFO (where permitted) so that other load on the machine does not "
        "bend the stub's known behaviour (it never spins: waits are a timerfd)",
    )
    args = p.parse_args(argv)
    args.priority = "normal"
    if args.realtime:
        refused = enter_realtime()
        args.priority = "realtime" if refused is None else f"normal (realtime refused: {refused})"
    if args.no_uvloop:
        asyncio.run(_main(args))
    else:
        import uvloop

        uvloop.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
