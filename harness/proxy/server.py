"""The userspace TCP fault proxy: one process, one listener per route, faults set at run time.

``tc netem`` is not in these kernels, so latency, bandwidth, blackhole, reset and slicer faults
sit in this proxy between the gateway and each shard copy (and the region)::

    python -m harness.proxy --control-port 0 --ready-file ready.json \\
        --route shard-0-primary=127.0.0.1:9001=127.0.0.1:7001 --route region=...

Each accepted connection gets its own upstream connection; each direction of it is a
:class:`Pipe`. With no fault on a route a pipe writes every chunk through at once (no timers,
no queue); with faults it queues ``(due time, bytes)`` in arrival order and a timer writes each
piece when due, so byte order per direction always holds. Reads pause while a pipe holds more
than :data:`HIGH_WATER` bytes or its destination is full (TCP back-pressure, bounded memory).
A ``reset`` answers with RST (``SO_LINGER`` 0, then close). The control API lives in
:mod:`harness.proxy.control`; specs are parsed by :mod:`harness.proxy.config`. The proxy takes
its control token from ``RECCHAOS_CONTROL_TOKEN`` (:mod:`harness.auth`) and refuses to start
without one: an open control API would let any local user inject faults into a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.auth import TOKEN_VARIABLE, token_from_env
from harness.process.parent import watch_parent
from harness.process.realtime import enter_realtime
from harness.proxy.config import (
    Address,
    ProxyConfigError,
    ProxyFault,
    Route,
    Shaping,
    check_routes,
    parse_route_arg,
    parse_routes_json,
    shaping_for,
)

HIGH_WATER = 1 << 20
"""Bytes a pipe may hold (queued by a fault) before it stops reading its source."""
LOW_WATER = 256 << 10
EARLY_S = 0.0006
"""A piece due this soon is written now. uvloop timers count whole milliseconds on a clock
that is itself up to a millisecond off, so a timer can fire up to ~1 ms early; re-arming for
less than half a millisecond rounds to a zero delay and would spin the loop until due."""
BANDWIDTH_TICK_S = 0.005
"""A rate-limited chunk is cut into pieces of at most this much transmit time."""
CONNECT_TIMEOUT_S = 5.0
_RST_LINGER = struct.pack("ii", 1, 0)

log = logging.getLogger("recchaos.proxy")


def _socket_of(transport: asyncio.BaseTransport) -> Any:
    return transport.get_extra_info("socket")


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = _socket_of(transport)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def reset_transport(transport: asyncio.BaseTransport | None) -> None:
    """Close with RST instead of FIN: ``SO_LINGER`` on with a zero timeout, then abort."""
    if transport is None or transport.is_closing():
        return
    sock = _socket_of(transport)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    transport.abort()  # type: ignore[attr-defined]


class Counters:
    """Per-route counters; ``GET /routes`` shows them so an injector can prove a fault worked."""

    __slots__ = (
        "bytes_up",
        "bytes_down",
        "delayed_chunks",
        "dropped_bytes",
        "resets",
        "upstream_errors",
        "connections_total",
    )

    def __init__(self) -> None:
        self.bytes_up = 0
        self.bytes_down = 0
        self.delayed_chunks = 0
        self.dropped_bytes = 0
        self.resets = 0
        self.upstream_errors = 0
        self.connections_total = 0

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Pipe:
    """One direction of one connection: bytes read from ``src`` go to ``dst``, maybe shaped."""

    __slots__ = (
        "conn",
        "up",
        "src",
        "dst",
        "shaping",
        "queue",
        "queued",
        "timer",
        "last_due",
        "link_free",
        "eof",
        "eof_sent",
        "dst_paused",
        "src_paused",
    )

    def __init__(self, conn: Connection, up: bool, shaping: Shaping | None) -> None:
        self.conn = conn
        self.up = up
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.shaping = shaping
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.last_due = 0.0
        self.link_free = 0.0
        self.eof = False
        self.eof_sent = False
        self.dst_paused = False
        self.src_paused = False

    # -- ingress ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        dst = self.dst
        if dst is not None and self.shaping is None and not self.queue:  # zero-fault fast path
            dst.write(data)
            self._count(len(data))
            return
        shaping = self.shaping
        if shaping is not None and shaping.blackhole == "drop":
            self.conn.route.counters.dropped_bytes += len(data)
            return
        armed = self.timer is not None  # then the head is unchanged: its timer stands
        self._enqueue(data, shaping)
        if not armed:
            self._drain()
        elif self.queued > HIGH_WATER:
            self._update_flow()

    def _enqueue(self, data: bytes, s: Shaping | None) -> None:
        now = time.monotonic()
        ready = now
        if s is not None and (s.delay_s or s.jitter_s):
            # Uniform in delay +- jitter; a jitter above the delay is cut off at zero delay.
            ready += max(0.0, s.delay_s + self.conn.route.rng.uniform(-s.jitter_s, s.jitter_s))
        ready = max(ready, self.last_due)
        for i, piece in enumerate(_pieces(data, s, self.conn.route.rng)):
            if s is not None and s.slice_size and i:
                ready += s.slice_delay_s
            if s is not None and s.rate_bps:
                ready = max(ready, self.link_free) + len(piece) / s.rate_bps
                self.link_free = ready
            self.queue.append((ready, piece))
            self.queued += len(piece)
        self.last_due = ready
        if s is not None:  # (bytes that came before the upstream connected are not delayed)
            self.conn.route.counters.delayed_chunks += 1

    def end_of_input(self) -> None:
        """The source sent FIN: pass it on once everything before it is written."""
        self.eof = True
        self._drain()

    # -- egress ----------------------------------------------------------------------------
    def _drain(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.dst is None or (self.shaping is not None and self.shaping.blackhole):
            self._update_flow()
            return
        now = time.monotonic()
        queue = self.queue
        while queue and queue[0][0] <= now + EARLY_S:
            _, piece = queue.popleft()
            self.queued -= len(piece)
            self.dst.write(piece)
            self._count(len(piece))
        if queue:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(queue[0][0] - now, self._drain)
        elif self.eof and not self.eof_sent:
            self._send_eof()
        self._update_flow()

    def _send_eof(self) -> None:
        self.eof_sent = True
        if self.dst is not None and not self.dst.is_closing() and self.dst.can_write_eof():
            self.dst.write_eof()
        self.conn.maybe_close()

    def _count(self, n: int) -> None:
        counters = self.conn.route.counters
        if self.up:
            counters.bytes_up += n
        else:
            counters.bytes_down += n

    # -- flow control and fault changes ------------------------------------------------------
    def set_dst_paused(self, paused: bool) -> None:
        self.dst_paused = paused
        self._update_flow()

    def _update_flow(self) -> None:
        src = self.src
        if src is None or src.is_closing():
            return
        if not self.src_paused and (self.dst_paused or self.queued > HIGH_WATER):
            self.src_paused = True
            src.pause_reading()
        elif self.src_paused and not self.dst_paused and self.queued <= LOW_WATER:
            self.src_paused = False
            src.resume_reading()

    def set_shaping(self, shaping: Shaping | None) -> None:
        """A fault was added or cleared. A healed pipe releases what it still holds at once
        (a cleared 2 s latency does not keep delivering late for 2 s)."""
        self.shaping = shaping
        if shaping is not None and shaping.blackhole == "drop" and self.queue:
            self.conn.route.counters.dropped_bytes += self.queued
            self.queue.clear()
            self.queued = 0
        if shaping is None or not shaping.shapes:
            self.queue = deque((0.0, piece) for _, piece in self.queue)
            self.last_due = self.link_free = 0.0
        self._drain()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued = 0


def _pieces(data: bytes, s: Shaping | None, rng: random.Random) -> list[bytes]:
    """``data`` cut into slicer slices, or into rate-limit ticks, or left whole."""
    if s is None:
        return [data]
    if s.slice_size:
        sizes = _slice_sizes(len(data), s.slice_size, s.slice_variation, rng)
    elif s.rate_bps:
        tick = max(64, int(s.rate_bps * BANDWIDTH_TICK_S))
        sizes = [tick] * (len(data) // tick) + ([len(data) % tick] if len(data) % tick else [])
    else:
        return [data]
    view, out, at = memoryview(data), [], 0
    for size in sizes:
        out.append(bytes(view[at : at + size]))
        at += size
    return out


def _slice_sizes(total: int, average: int, variation: int, rng: random.Random) -> list[int]:
    sizes: list[int] = []
    left = total
    while left > 0:
        size = average + (rng.randint(-variation, variation) if variation else 0)
        size = min(left, max(1, size))
        sizes.append(size)
        left -= size
    return sizes


class _Side(asyncio.Protocol):
    """The protocol of one socket of a connection (client side or upstream side)."""

    def __init__(self, conn: Connection, client: bool) -> None:
        self.conn = conn
        self.client = client
        self.outgoing = conn.up if client else conn.down  # the pipe this socket's bytes feed
        self.incoming = conn.down if client else conn.up  # the pipe that writes to this socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_nodelay(transport)
        if self.client:
            self.conn.client_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if not self.conn.closed:
            self.outgoing.feed(data)

    def eof_received(self) -> bool:
        self.outgoing.end_of_input()
        return True  # keep the other half open until both directions are done

    def pause_writing(self) -> None:
        self.incoming.set_dst_paused(True)

    def resume_writing(self) -> None:
        self.incoming.set_dst_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self.client, exc)


class Connection:
    """One proxied connection: the client's socket, the upstream socket and two pipes."""

    def __init__(self, route: RouteRuntime) -> None:
        self.route = route
        self.up = Pipe(self, True, route.shaping["upstream"])
        self.down = Pipe(self, False, route.shaping["downstream"])
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.closed = False

    def client_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        self.route.counters.connections_total += 1
        if self.route.resetting:
            self.route.counters.resets += 1
            reset_transport(transport)
            return
        self.route.conns.add(self)
        transport.pause_reading()
        self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        target = self.route.route.upstream
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Side(self, False), target.host, target.port),
                CONNECT_TIMEOUT_S,
            )
        except (TimeoutError, OSError) as exc:
            self.route.counters.upstream_errors += 1
            log.debug("route %s: upstream %s unreachable: %s", self.route.name, target, exc)
            self._finish(reset_transport)  # the client sees a reset, as from a dead node
            return
        finally:
            self.connecting = None
        if self.closed:
            reset_transport(transport)
            return
        self.upstream = transport
        self.up.src, self.up.dst = self.client, transport
        self.down.src, self.down.dst = transport, self.client
        self.client.resume_reading()  # type: ignore[union-attr]
        self.up._drain()  # a FIN that came in while connecting
        self.down._drain()

    def maybe_close(self) -> None:
        """Both directions have passed on their FIN: close both sockets."""
        if self.up.eof_sent and self.down.eof_sent:
            self._finish(lambda t: t.close())

    def reset(self) -> None:
        """Reset both sockets (RST), as a ``reset`` fault or a lost peer asks."""
        if not self.closed:
            self.route.counters.resets += 1
        self._finish(reset_transport)

    def abort(self) -> None:
        self._finish(lambda t: t.abort())

    def side_lost(self, client: bool, exc: Exception | None) -> None:
        if self.closed:
            return
        # A peer that reset (or vanished) is passed on as a reset; a clean close as a close.
        self._finish(reset_transport if exc is not None else (lambda t: t.close()))

    def _finish(self, how: Callable[[Any], None]) -> None:
        if self.closed:
            return
        self.closed = True
        self.route.conns.discard(self)
        if self.connecting is not None:
            self.connecting.cancel()
        self.up.close()
        self.down.close()
        for transport in (self.client, self.upstream):
            if transport is not None and not transport.is_closing():
                how(transport)

    def set_shaping(self) -> None:
        self.up.set_shaping(self.route.shaping["upstream"])
        self.down.set_shaping(self.route.shaping["downstream"])


class RouteRuntime:
    """A route while the proxy runs: its listener, connections, active faults and counters."""

    def __init__(self, route: Route, rng: random.Random) -> None:
        self.route = route
        self.name = route.name
        self.rng = rng
        self.listen = route.listen
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[Connection] = set()
        self.faults: dict[str, tuple[ProxyFault, float]] = {}
        self.counters = Counters()
        self.shaping: dict[str, Shaping | None] = {"upstream": None, "downstream": None}
        self.resetting = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.route.listen.host, self.route.listen.port
        self.server = await loop.create_server(
            lambda: _Side(Connection(self), True), host, port, reuse_address=True, backlog=512
        )
        sock = self.server.sockets[0]
        self.listen = Address(host, sock.getsockname()[1])

    def faults_changed(self) -> None:
        active = [fault for fault, _ in self.faults.values()]
        self.shaping = {d: shaping_for(active, d) for d in ("upstream", "downstream")}
        self.resetting = any(f.kind == "reset" for f in active)
        if self.resetting:
            for conn in list(self.conns):
                conn.reset()
        for conn in list(self.conns):
            conn.set_shaping()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns):
            conn.abort()

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            **self.route.to_dict(),
            "listen": str(self.listen),
            "faults": [
                {"id": fid, **fault.to_dict(), "active_s": round(now - since, 3)}
                for fid, (fault, since) in self.faults.items()
            ],
            "connections": len(self.conns),
            "counters": self.counters.to_dict(),
        }


class UnknownRoute(KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known


class Proxy:
    """Every route of this process, and the fault operations the control API calls."""

    def __init__(self, routes: list[Route], seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.routes = {r.name: RouteRuntime(r, self.rng) for r in routes}
        self.next_id = 1
        self.started = time.monotonic()

    async def start(self) -> None:
        for rt in self.routes.values():
            try:
                await rt.start()
            except OSError as exc:
                raise ProxyStartError(
                    f"route {rt.name}: cannot listen on {rt.route.listen}: {exc.strerror or exc}"
                ) from exc
            log.info("route %s listening on %s -> %s", rt.name, rt.listen, rt.route.upstream)

    def route(self, name: str) -> RouteRuntime:
        try:
            return self.routes[name]
        except KeyError:
            raise UnknownRoute(name, sorted(self.routes)) from None

    def add_fault(self, name: str, fault: ProxyFault) -> str:
        rt = self.route(name)
        fid = f"f{self.next_id}"
        self.next_id += 1
        rt.faults[fid] = (fault, time.monotonic())
        rt.faults_changed()
        log.info("fault applied route=%s id=%s %s", name, fid, fault.describe())
        return fid

    def remove_fault(self, name: str, fid: str) -> bool:
        rt = self.route(name)
        entry = rt.faults.pop(fid, None)
        if entry is None:
            return False
        rt.faults_changed()
        fault, since = entry
        log.info(
            "fault cleared route=%s id=%s kind=%s direction=%s after %.3f s",
            name,
            fid,
            fault.kind,
            fault.direction,
            time.monotonic() - since,
        )
        return True

    def clear(self, name: str | None = None) -> int:
        names = [name] if name is not None else list(self.routes)
        return sum(self.remove_fault(n, fid) for n in names for fid in list(self.route(n).faults))

    def snapshot(self) -> dict[str, Any]:
        return {"routes": [rt.snapshot() for rt in self.routes.values()]}

    def close(self) -> None:
        for rt in self.routes.values():
            rt.close()


class ProxyStartError(Exception):
    """A listener could not be opened; the proxy exits with code 2."""


# -- the process -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m harness.proxy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="NAME=LISTEN=UPSTREAM",
        help="NAME=LISTEN_HOST:LISTEN_PORT=UPSTREAM_HOST:UPSTREAM_PORT (repeatable)",
    )
    p.add_argument("--routes-file", type=Path, help='JSON {"NAME": {"listen": .., "upstream": ..}}')
    p.add_argument("--control-host", default="127.0.0.1", help="default: 127.0.0.1 (loopback)")
    p.add_argument("--control-port", type=int, required=True, help="0: any free port")
    p.add_argument(
        "--ready-file",
        type=Path,
        help="written (JSON: pid, control_url, routes) once every listener is open",
    )
    p.add_argument(
        "--parent-pid", type=int, help="stop when this parent process is gone (start_proxy sets it)"
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the jitter and slicer draws")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument(
        "--priority",
        choices=("realtime", "normal"),
        default="realtime",
        help="realtime (default): SCHED_FIFO where permitted, so that a busy machine does not "
        "add its run-queue wait to the delays the proxy injects; normal: as started",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    return p.parse_args(argv)


def load_routes(args: argparse.Namespace) -> list[Route]:
    """Every ``--route`` and the ``--routes-file``; all problems are reported together."""
    routes: list[Route] = []
    errors: list[ProxyConfigError] = []
    for i, text in enumerate(args.route):
        try:
            routes.append(parse_route_arg(text, f"--route[{i}]"))
        except ProxyConfigError as exc:
            errors.append(exc)
    if args.routes_file is not None:
        try:
            data = json.loads(args.routes_file.read_text())
        except (OSError, ValueError) as exc:
            raise ProxyStartError(f"--routes-file {args.routes_file}: {exc}") from exc
        try:
            routes += parse_routes_json(data, f"--routes-file {args.routes_file}")
        except ProxyConfigError as exc:
            errors.append(exc)
    if errors:
        raise ProxyStartError("bad routes: " + "; ".join(str(e) for e in errors))
    check_routes(routes)
    return routes


def write_ready_file(path: Path, proxy: Proxy, control_url: str) -> None:
    info = {
        "pid": os.getpid(),
        "control_url": control_url,
        "routes": {name: str(rt.listen) for name, rt in proxy.routes.items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


async def serve(args: argparse.Namespace, routes: list[Route], token: str) -> None:
    from harness.proxy.control import start_control

    proxy = Proxy(routes, args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    control = None
    try:
        await proxy.start()
        control, control_url = await start_control(
            proxy, args.control_host, args.control_port, token
        )
        log.info("control API on %s (pid %d)", control_url, os.getpid())
        if args.ready_file is not None:
            write_ready_file(args.ready_file, proxy, control_url)
        gc.collect()
        gc.freeze()  # start-up objects never need collecting again
        if args.priority == "realtime":
            # An instrument, not part of the system under test: it should add exactly the
            # delay it is asked for. Event-driven and a few microseconds per chunk, so it takes
            # little CPU from what it preempts. A +5 ms fault shifted the median by 5.55 ms at
            # normal priority on a busy 2-core machine (5.2-5.3 ms when quiet). Only now, with
            # the start-up done: as SCHED_FIFO from the start, its imports and set-up held a
            # core from the recommender it was started next to.
            # Bounded: a second of CPU without blocking takes it back to normal priority.
            refused = enter_realtime()
            if refused is not None:
                log.info("running at normal priority: %s", refused)
        if args.parent_pid is not None:
            loop.create_task(watch_parent(args.parent_pid, stop, log.warning))
        await stop.wait()
        log.info(
            "stopping: closing %d listeners and %d connections",
            len(proxy.routes),
            sum(len(rt.conns) for rt in proxy.routes.values()),
        )
    finally:
        if control is not None:
            control.close()
        proxy.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d proxy %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        routes = load_routes(args)
    except (ProxyConfigError, ProxyStartError) as exc:
        log.error("%s", exc)
        return 2
    token = token_from_env()
    if token is None:
        log.error(
            "%s is not set: the control API needs the run's token (start the proxy with "
            "harness.proxy.client.start_proxy, which sets it)",
            TOKEN_VARIABLE,
        )
        return 2
    try:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(serve(args, routes, token))
        else:
            asyncio.run(serve(args, routes, token))
    except ProxyStartError as exc:
        log.error("%s", exc)
        return 2
    log.info("stopped")
    return 0
