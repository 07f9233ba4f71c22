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

log = logging.getLogger("gateway.http")

MAX_BODY = 64 * 1024
# Requests queued on one connection before we stop reading from it (pipelining backpressure).
MAX_PIPELINED = 32
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; the last value wins
    body: bytes
    # time.monotonic() when the request was complete: the start of its deadline
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


class _BodyTooLarge(Exception):
    pass


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(
        self,
        handler: Handler,
        max_body: int = MAX_BODY,
        on_reject: Callable[[int], None] | None = None,
    ) -> None:
        self.handler, self.max_body, self.on_reject = handler, max_body, on_reject
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # A parsed request, or a fixed reply to a request that could not be parsed.
        self.queue: collections.deque[tuple[Request | Response, bool]] = collections.deque()
        self.busy = False
        self.paused = False
        self.closing = False
        self.closing_after = False  # a rejected request: stop parsing, close after the reply
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.queue.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing or self.closing_after:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _BodyTooLarge):
                self._reject(
                    413,
                    f"request body exceeds the limit of {self.max_body} bytes",
                    "body",
                    f"at most {self.max_body} bytes",
                )
            else:
                log.exception("HTTP parser callback failed")
                self._reject(400, "request could not be parsed", "request", None)
        except _BodyTooLarge:
            self._reject(
                413,
                f"request body exceeds the limit of {self.max_body} bytes",
                "body",
                f"at most {self.max_body} bytes",
            )
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported", "upgrade", None)
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}", "request", "HTTP/1.1")

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", {}, [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise _BodyTooLarge

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            raise _BodyTooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
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
            time.monotonic(),
        )
        self.queue.append((request, self.parser.should_keep_alive()))
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if not self.busy:
            self._next()

    # ---- answering

    def _next(self) -> None:
        if not self.queue or self.closing:
            self.busy = False
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
        if (
            self.paused
            and not self.closing_after
            and len(self.queue) < MAX_PIPELINED // 2
            and self.transport is not None
        ):
            self.paused = False
            self.transport.resume_reading()
        self._next()

    def _write(self, resp: Response, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(encode_response(resp, keep_alive))
        if not keep_alive:
            self.closing = True
            self.transport.close()

    def _reject(self, status: int, error: str, field_: str, allowed: object) -> None:
        """Answer a request we could not parse (after any queued ones), then close."""
        if self.on_reject is not None:
            self.on_reject(status)
        self.queue.append(
            (json_response(status, {"error": error, "field": field_, "allowed": allowed}), False)
        )
        self.closing_after = True
        if self.transport is not None:
            self.transport.pause_reading()
        if not self.busy:
            self._next()


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("HTTP connection task failed", exc_info=task.exception())


async def start_http_server(
    handler: Handler,
    host: str,
    port: int,
    max_body: int = MAX_BODY,
    on_reject: Callable[[int], None] | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HttpProtocol(handler, max_body, on_reject),
        host,
        port,
        reuse_address=True,
        backlog=1024,
    )
