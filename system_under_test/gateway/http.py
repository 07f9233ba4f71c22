"""The gateway's HTTP/1.1 server: an asyncio Protocol with the httptools (llhttp) parser.

No framework: on this CPU-starved machine the server's own cost per request is part of every
latency figure, and ``benchmarks/http_server_choice.py`` measured this design against the stdlib
``ThreadingHTTPServer`` and aiohttp: similar p50 (client-bound, ~0.4 ms), about half their server
CPU per request (0.07-0.13 ms against 0.12-0.20 ms), and none of the stdlib server's 1 s SYN
retransmit outliers (figures in that file's docstring). Keep-alive and pipelining
are supported (answers go out in request order); bodies over ``max_body`` bytes get 413, bytes
that are not HTTP get 400, and both close the connection. Every socket gets TCP_NODELAY
(a Nagle/delayed-ACK stall cost about 42 ms a request: docs/architecture.md).

The handler is one coroutine function ``Request -> Response``; routing and validation live in
``api.py``. An exception escaping the handler becomes a 500 (logged) and the server carries on.

Hostile clients (the limits are ``settings.HttpLimits``): sizes are checked as bytes arrive, so
no request costs more than its limit. The request line (414) and each header line (431) are
checked exactly in the parser's callbacks; the whole head (431) is counted by feeding the parser
at most ``FEED_SLICE`` bytes at a time, because httptools accumulates a header value by
concatenation and would otherwise spend time quadratic in its length (a 64 MB header cost 3-7 s
of CPU). Every request gets exactly one answer: an Upgrade or CONNECT request gets one 400 and
the connection closes (llhttp hands the bytes after it over as another protocol). A connection
closed for an error drains what the client still sends, for a bounded time and number of bytes,
so that the client reads the error instead of a reset. Each connection reports where it stands
(idle, reading a request, closing) to :class:`ConnectionStates`, which the listener
(``listener.py``) uses for timeouts and for the connection cap.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

from system_under_test.gateway.settings import HttpLimits

log = logging.getLogger("gateway.http")

DEFAULT_LIMITS = HttpLimits()
MAX_BODY = DEFAULT_LIMITS.max_body
# Requests queued on one connection before we stop reading from it (pipelining backpressure).
MAX_PIPELINED = 32
# Bytes handed to the parser at once: the head is counted between feeds, so a head is known to
# within this many bytes (heads up to max_head - FEED_SLICE always pass). Requests are ~200
# bytes, so almost every read is one feed.
FEED_SLICE = 4 * 1024
# After an error answer: how much more a client may send, and for how long, before the
# connection is dropped without waiting for it to finish.
LINGER_BYTES = 1024 * 1024
LINGER_S = 1.0
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; the last value wins
    body: bytes
    # time.monotonic() when the request's first byte was read (the event loop's turn that read
    # it): its arrival, where its queueing delay and its deadline start (overload.py)
    received_at: float = 0.0


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def json_response(
    status: int, payload: object, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(
        status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers or []
    )


def error_response(status: int, error: str, field_: str, allowed: object) -> Response:
    """The gateway's 4xx/5xx body: ``{"error", "field", "allowed"}``."""
    return json_response(status, {"error": error, "field": field_, "allowed": allowed})


def encode_response(resp: Response, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
    ]
    if not keep_alive:
        lines.append("Connection: close")
    lines.extend(f"{name}: {value}" for name, value in resp.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body


Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """A request refused while it arrives (too large); raised inside parser callbacks."""

    def __init__(self, status: int, error: str, field_: str, allowed: object) -> None:
        super().__init__(error)
        self.response = error_response(status, error, field_, allowed)


class ConnectionStates:
    """Every open connection of one server, and since when each is idle, reading or closing.

    Each map is in the order its entries got there (plain dicts keep insertion order), so the
    listener finds the expired ones and the longest-idle one from the front without scanning.
    Entries are stamped with ``now``, a clock the listener's sweep advances: a clock read per
    request would cost more than the whole state keeping, and the sweep allows for the lag.
    """

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.open: set[HttpProtocol] = set()
        # no request in progress (new, or keep-alive between requests)
        self.idle: dict[HttpProtocol, float] = {}
        # a request's first byte arrived, its last has not
        self.reading: dict[HttpProtocol, float] = {}
        # answered with an error, draining what the client still sends
        self.closing: dict[HttpProtocol, float] = {}

    def forget(self, conn: HttpProtocol) -> None:
        self.open.discard(conn)
        self.idle.pop(conn, None)
        self.reading.pop(conn, None)
        self.closing.pop(conn, None)


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(
        self,
        handler: Handler,
        limits: HttpLimits = DEFAULT_LIMITS,
        on_reject: Callable[[int], None] | None = None,
        states: ConnectionStates | None = None,
    ) -> None:
        self.handler, self.limits, self.on_reject = handler, limits, on_reject
        self.states = states if states is not None else ConnectionStates()
        # the two maps every request passes through, held here to save lookups
        self._idle_map, self._reading_map = self.states.idle, self.states.reading
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # A parsed request, or a fixed reply to a request that could not be parsed.
        self.queue: collections.deque[tuple[Request | Response, bool]] = collections.deque()
        self.busy = False
        self.paused_pipeline = False  # too many queued requests
        self.paused_writing = False  # the client does not read its answers
        self.closed = False
        self.rejected = False  # an error answer is queued: parse nothing more, drain, close
        self._drained = 0
        self._eof = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._in_head = False
        self._head_bytes = 0
        self._upgrade = False
        self._read_at = 0.0  # when data_received was called: one clock read per read
        self._first_byte = 0.0
        # The per-request checks against these are the fast path: one comparison each.
        # (a method, llhttp's longest is 15 bytes, two spaces and HTTP/1.1 besides the target)
        self._url_room = limits.max_request_line - 32
        self._header_room = limits.max_header_line - len(": ")

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.states.open.add(self)
        self.states.idle[self] = self.states.now

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.queue.clear()
        self.transport = None
        self.states.forget(self)

    def pause_writing(self) -> None:
        self.paused_writing = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._update_reading()

    def eof_received(self) -> bool | None:
        """The client sent all it will send: answer what it asked first, then close."""
        if self.rejected or not (self.busy or self.queue):
            return None  # asyncio closes the transport once what is written has gone out
        self._eof = True
        self.states.reading.pop(self, None)  # a request cut short by EOF never completes
        return True

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._read_at = time.monotonic()
        if len(data) <= FEED_SLICE:
            if self.rejected:
                self._drain(len(data))
            else:
                self._feed(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), FEED_SLICE):
            if self.closed:
                return
            if self.rejected:
                self._drain(len(data) - start)
                return
            self._feed(view[start : start + FEED_SLICE])

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._reject(exc.__context__.response)
            else:
                log.exception("HTTP parser callback failed")
                self._reject(error_response(400, "request could not be parsed", "request", None))
        except _Refused as exc:
            self._reject(exc.response)
        except httptools.HttpParserUpgrade:
            self._reject(self._upgrade_refusal())
        except httptools.HttpParserError as exc:
            self._reject(
                error_response(400, f"malformed HTTP request: {exc}", "request", "HTTP/1.1")
            )
        else:
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > self.limits.max_head:
                    self._reject(self._head_refusal())

    def _drain(self, n: int) -> None:
        """Discard what a rejected client still sends, up to LINGER_BYTES."""
        self._drained += n
        if self._drained > LINGER_BYTES and self.transport is not None:
            self.transport.abort()

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", {}, [], 0
        self._in_head, self._head_bytes = True, 0
        self._first_byte = self._read_at
        self._idle_map.pop(self, None)
        self._reading_map[self] = self.states.now

    def on_url(self, url: bytes) -> None:
        if len(self._url) + len(url) > self._url_room:
            # the line: method, space, target, space, HTTP/1.1
            line = len(self.parser.get_method()) + len(self._url) + len(url) + 10
            if line > self.limits.max_request_line:
                raise _Refused(
                    414,
                    f"request line of more than {line} bytes exceeds the limit of "
                    f"{self.limits.max_request_line} bytes",
                    "url",
                    f"a request line of at most {self.limits.max_request_line} bytes",
                )
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self._header_room:
            raise _Refused(
                431,
                f"header {name[:40].decode('latin-1')!r} of {len(name) + len(value) + 2} bytes "
                f"exceeds the limit of {self.limits.max_header_line} bytes per header line",
                "headers",
                f"header lines of at most {self.limits.max_header_line} bytes",
            )
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.parser.should_upgrade():
            self._upgrade = True  # HttpParserUpgrade follows: answered there, once
            return
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_body:
            raise self._body_refusal()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.limits.max_body:
            raise self._body_refusal()
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._reading_map.pop(self, None)
        if self._upgrade:
            return
        try:
            url = httptools.parse_url(self._url)
            path = url.path.decode("latin-1")
            query = (url.query or b"").decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            path, query = self._url.decode("latin-1"), ""
        request = Request(
            self.parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            b"".join(self._body),
            self._first_byte,
        )
        self.queue.append((request, self.parser.should_keep_alive()))
        if len(self.queue) >= MAX_PIPELINED and not self.paused_pipeline:
            self.paused_pipeline = True
            self._update_reading()
        if not self.busy:
            self._next()

    # ---- refusals

    def _body_refusal(self) -> _Refused:
        return _Refused(
            413,
            f"request body exceeds the limit of {self.limits.max_body} bytes",
            "body",
            f"at most {self.limits.max_body} bytes",
        )

    def _head_refusal(self) -> Response:
        limit = self.limits.max_head
        return error_response(
            431,
            f"request head (request line and headers together) exceeds the limit of {limit} bytes",
            "headers",
            f"a request line and headers of at most {limit} bytes together",
        )

    def _upgrade_refusal(self) -> Response:
        if self.parser.get_method() == b"CONNECT":
            return error_response(400, "CONNECT is not supported", "method", ["GET", "POST"])
        upgrade = self._headers.get("upgrade", "")[:40]
        return error_response(
            400,
            f"protocol upgrades are not supported (Upgrade: {upgrade})",
            "upgrade",
            "HTTP/1.1 without Upgrade",
        )

    def timed_out(self) -> None:
        """The listener's request timeout: the request has not arrived in full in time."""
        limit = self.limits.request_timeout_s
        self._reject(
            error_response(
                408,
                f"request not received in full within {limit:g} s of its first byte",
                "request",
                f"a whole request within {limit:g} s",
            )
        )

    # ---- answering

    def _next(self) -> None:
        if not self.queue or self.closed:
            self.busy = False
            if self.closed or self.rejected or self in self._reading_map:
                return
            if self._eof:
                self.close_now()
            else:
                self._idle_map[self] = self.states.now
            return
        self.busy = True
        request, keep_alive = self.queue.popleft()
        task = asyncio.get_running_loop().create_task(self._serve(request, keep_alive))
        task.add_done_callback(_log_task_error)

    async def _serve(self, request: Request | Response, keep_alive: bool) -> None:
        if isinstance(request, Response):
            self._write(request, False)
            return
        try:
            resp = await self.handler(request)
        except Exception:  # noqa: BLE001 - no request may kill the server
            rid = request.headers.get("x-request-id", "-")
            log.exception(
                "internal error on %s %s (request id %s)", request.method, request.path, rid
            )
            resp = json_response(
                500, {"error": "internal error; see the gateway log", "request_id": rid}
            )
            if self.on_reject is not None:
                self.on_reject(500)
        self._write(resp, keep_alive and not resp.close)
        if self.paused_pipeline and len(self.queue) < MAX_PIPELINED // 2:
            self.paused_pipeline = False
            self._update_reading()
        self._next()

    def _write(self, resp: Response, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(encode_response(resp, keep_alive))
        if keep_alive:
            return
        if self.rejected:
            self._linger(transport)
        else:
            self._close(transport)

    def _linger(self, transport: asyncio.Transport) -> None:
        """After an error answer: send FIN, read and drop what comes, close on EOF or later."""
        self.states.idle.pop(self, None)
        self.states.reading.pop(self, None)
        self.states.closing[self] = self.states.now
        if self.paused_pipeline or self.paused_writing:
            self.paused_pipeline = self.paused_writing = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        else:
            self._close(transport)

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.paused_pipeline or self.paused_writing:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _reject(self, resp: Response) -> None:
        """Answer a request we will not serve (after any queued ones), then close."""
        if self.rejected:
            return
        if self.on_reject is not None:
            self.on_reject(resp.status)
        self.rejected = True
        self._in_head = False
        self.states.reading.pop(self, None)
        self.states.idle.pop(self, None)
        self.queue.append((resp, False))
        if not self.busy:
            self._next()

    def close_now(self) -> None:
        """Close at once (idle timeout, eviction, end of lingering); drop unsent answers. The
        descriptor goes in this loop turn either way, so the cap stops counting it now."""
        transport = self.transport
        if transport is None:
            return
        self.closed = True
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
        self.states.forget(self)

    def _close(self, transport: asyncio.Transport) -> None:
        """Close, and stop counting the connection against the cap at once where nothing is
        left to send: its descriptor goes at the end of this loop iteration, but
        ``connection_lost`` runs only in the next, after that iteration's accepts. A client
        that read a ``Connection: close`` answer and connected again at once found its old
        connection still counted (a 503 at the cap). With bytes still queued the descriptor
        lives until they are sent, so it counts until ``connection_lost``."""
        self.closed = True
        flushed = not transport.get_write_buffer_size()
        transport.close()
        if flushed:
            self.states.forget(self)


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("HTTP connection task failed", exc_info=task.exception())
