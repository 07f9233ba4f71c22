"""The gateway's listening socket: who gets a connection, and for how long.

An accept loop of our own instead of ``loop.create_server``: libuv accepts every pending
connection in one go, and at the process's file limit it resets the new clients (measured with
the limit at 1,024 and 2,000 idle connections: 5 of 5 new requests reset). Here at most
``ACCEPT_BATCH`` connections are accepted per loop iteration, so a flood of connections never
starves the connections already open, and each one is admitted against ``max_connections``:

* below the cap, it is served (``http.HttpProtocol``);
* at the cap, the connection idle the longest (no request in progress) is closed to make room,
  as a keep-alive timeout would have done, so idle connections cannot lock clients out;
* when no connection is idle, the new one gets a fast 503 (written straight to the socket) and
  is closed; it holds its descriptor for ``LINGER_S`` at most, so that the client reads the 503.

A sweep every fraction of the shortest timeout closes the connections idle for longer than
``idle_timeout_s``, answers 408 to those whose request has not arrived in full within
``request_timeout_s``, and drops lingering ones. The states are ordered by age, so a sweep
costs only what it closes.

:func:`plan_files` sizes the process's file limit: the cap plus the descriptors open at start
plus ``FILE_HEADROOM``; the soft limit is raised to that (within the hard limit), and a hard
limit too low for the cap lowers the cap rather than letting accepts fail.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from system_under_test.gateway.http import (
    LINGER_S,
    ConnectionStates,
    Handler,
    HttpProtocol,
    encode_response,
    error_response,
)
from system_under_test.gateway.settings import HttpLimits

log = logging.getLogger("gateway.listener")

# Connections accepted per loop iteration before the other connections get their turn.
ACCEPT_BATCH = 32
# Descriptors kept free beyond the connections: refused connections lingering (at most half of
# it), shard and region reconnects, log files, whatever a library opens later.
FILE_HEADROOM = 128
MAX_REFUSED_LINGERING = FILE_HEADROOM // 2
# After EMFILE or ENOBUFS (something else used the headroom), wait before accepting again: the
# pending connection stays in the kernel's queue, and polling a full table would spin.
ACCEPT_PAUSE_S = 0.1
LISTEN_BACKLOG = 4096


@dataclass(frozen=True)
class FilePlan:
    """The process's file limit before and after start-up, and the connection cap it allows."""

    asked: int  # max_connections as configured
    max_connections: int  # what the file limit allows
    in_use: int  # descriptors open at start (model files, shard connections, logs)
    soft_before: int
    soft: int
    hard: int

    def describe(self) -> str:
        raised = (
            f"raised from {self.soft_before} to {self.soft}"
            if self.soft != self.soft_before
            else f"{self.soft}"
        )
        text = f"file limit {raised} (hard {self.hard}): {self.max_connections} connections"
        if self.max_connections < self.asked:
            text += (
                f", not the {self.asked} of --max-connections: {self.in_use} descriptors are in "
                f"use and {FILE_HEADROOM} kept free; raise the hard limit (ulimit -Hn) to "
                f"{self.asked + self.in_use + FILE_HEADROOM} for all of them"
            )
        return text


def plan_files(asked: int, in_use: int, soft: int, hard: int) -> FilePlan:
    """The soft file limit to set and the connection cap it leaves (pure; see raise_file_limit).

    ``hard`` may be ``resource.RLIM_INFINITY``. Raises ValueError when the hard limit leaves no
    room for a single connection.
    """
    infinite = resource.RLIM_INFINITY
    need = asked + in_use + FILE_HEADROOM
    if soft == infinite or soft >= need:
        new_soft = soft  # never lowered
    elif hard == infinite:
        new_soft = need
    else:
        new_soft = max(soft, min(hard, need))
    room = asked if new_soft == infinite else new_soft - in_use - FILE_HEADROOM
    cap = min(asked, room)
    if cap < 1:
        raise ValueError(
            f"the file limit (soft {soft}, hard {hard}) leaves no room for client connections: "
            f"{in_use} descriptors are in use and {FILE_HEADROOM} are kept free; raise the "
            f"hard limit (ulimit -Hn) to at least {in_use + FILE_HEADROOM + 1}"
        )
    return FilePlan(asked, cap, in_use, soft, new_soft, hard)


def raise_file_limit(asked: int) -> FilePlan:
    """Count the descriptors open now, raise the soft RLIMIT_NOFILE to fit ``asked`` more."""
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = plan_files(asked, in_use, soft, hard)
    if plan.soft != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
    return plan


class HttpServer:
    """Accepts connections on one listening socket and admits them against the cap."""

    def __init__(
        self,
        handler: Handler,
        limits: HttpLimits,
        on_reject: Callable[[int], None] | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.handler, self.limits, self.on_reject = handler, limits, on_reject
        self.max_connections = max_connections or limits.max_connections
        self.states = ConnectionStates()
        self.refused: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self.refused_total = 0
        self.evicted_total = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None
        shortest = min(limits.idle_timeout_s, limits.request_timeout_s, LINGER_S)
        self._interval = min(max(shortest / 4, 0.01), 0.5)
        busy = error_response(
            503,
            f"the gateway has {self.max_connections} connections open, every one with a "
            f"request in progress; retry shortly",
            "connection",
            f"at most {self.max_connections} open connections",
        )
        busy.headers.append(("Retry-After", "1"))
        self._503 = encode_response(busy, keep_alive=False)

    @property
    def sockets(self) -> list[socket.socket]:
        return [self._sock] if self._sock is not None else []

    async def start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_acceptable)
        self._schedule_sweep()

    def close(self) -> None:
        """Stop accepting (connections already open are left to finish) and stop the sweeps."""
        for handle in (self._sweeper, self._resume):
            if handle is not None:
                handle.cancel()
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        while self.refused:
            self.refused.popleft()[1].close()

    # ---- admission

    def _on_acceptable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM
                self._pause_accepting(exc)
                return
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        if len(self.states.open) >= self.max_connections and not self._evict_one():
            self._refuse(conn)
            return
        protocol = HttpProtocol(self.handler, self.limits, self.on_reject, self.states)
        self.states.open.add(protocol)  # counted from now, not from connection_made
        assert self._loop is not None
        task = self._loop.create_task(
            self._loop.connect_accepted_socket(lambda: protocol, conn)  # type: ignore[arg-type]
        )
        task.add_done_callback(lambda t: self._connected(t, protocol, conn))

    def _connected(self, task: asyncio.Task, protocol: HttpProtocol, conn: socket.socket) -> None:
        if task.cancelled() or task.exception() is not None:
            self.states.forget(protocol)
            conn.close()
            if not task.cancelled():
                log.warning("could not serve an accepted connection: %s", task.exception())

    def _evict_one(self) -> bool:
        """Close the connection idle the longest (one lingering after an error first)."""
        for waiting in (self.states.closing, self.states.idle):
            if waiting:
                conn = next(iter(waiting))
                del waiting[conn]
                conn.close_now()  # uncounted at once (HttpProtocol.close_now)
                self.evicted_total += 1
                return True
        return False

    def _refuse(self, conn: socket.socket) -> None:
        """The fast 503: written to the socket at once, FIN, the descriptor kept briefly."""
        self.refused_total += 1
        if self.on_reject is not None:
            self.on_reject(503)
        try:
            conn.setblocking(False)
            # What already arrived (usually the request): unread data would turn close into a
            # reset, which can destroy the 503 before the client reads it.
            with contextlib.suppress(BlockingIOError, InterruptedError):
                conn.recv(65536)
            conn.send(self._503)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        if len(self.refused) >= MAX_REFUSED_LINGERING:
            self.refused.popleft()[1].close()
        self.refused.append((time.monotonic(), conn))

    def _pause_accepting(self, exc: OSError) -> None:
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            log.error("accept failed: %s", exc)
        else:
            log.warning(
                "accept failed (%s) with %d connections open: pausing accepts for %.0f ms",
                os.strerror(exc.errno or 0),
                len(self.states.open),
                ACCEPT_PAUSE_S * 1e3,
            )
        if self._sock is None or self._loop is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._on_acceptable)

    # ---- timeouts

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(self._interval, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        states = self.states
        states.now = now
        # Stamps lag the real time by up to one interval: never close early, at most two
        # intervals late.
        late = now - self._interval
        for conn in _expired(states.reading, late - self.limits.request_timeout_s):
            conn.timed_out()
        for conn in _expired(states.idle, late - self.limits.idle_timeout_s):
            conn.close_now()
        for conn in _expired(states.closing, late - LINGER_S):
            conn.close_now()
        while self.refused and self.refused[0][0] <= now - LINGER_S:
            self.refused.popleft()[1].close()
        self._schedule_sweep()


def _expired(since: dict[HttpProtocol, float], cutoff: float) -> list[HttpProtocol]:
    """Remove and return the entries stamped at or before ``cutoff`` (oldest first)."""
    out = []
    for conn, stamp in since.items():
        if stamp > cutoff:
            break
        out.append(conn)
    for conn in out:
        del since[conn]
    return out


async def start_http_server(
    handler: Handler,
    host: str,
    port: int,
    limits: HttpLimits | None = None,
    on_reject: Callable[[int], None] | None = None,
    max_connections: int | None = None,
) -> HttpServer:
    """Listen on ``host:port`` (0: any free port) and serve ``handler`` within ``limits``."""
    server = HttpServer(handler, limits or HttpLimits(), on_reject, max_connections)
    await server.start(host, port)
    return server
