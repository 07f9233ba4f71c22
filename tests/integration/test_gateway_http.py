"""The gateway's HTTP server and API over a real socket, with a fake recommend service.

Every bad input must get the right 4xx and name the offending field; no request may stop the
server (an exception in the service is a 500 and the next request is served).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from system_under_test.gateway.api import GatewayApp
from system_under_test.gateway.http import FEED_SLICE, MAX_BODY
from system_under_test.gateway.listener import start_http_server
from system_under_test.gateway.settings import HttpLimits


@dataclass
class FakeResult:
    tier: str
    payload: dict


@dataclass
class FakeService:
    ready: bool = True
    calls: list[tuple[int, int, str]] = field(default_factory=list)
    http_errors: list[int] = field(default_factory=list)

    async def recommend(self, user_id: int, k: int, request_id: str, arrival=None) -> FakeResult:
        assert arrival is not None and arrival <= time.monotonic()
        self.calls.append((user_id, k, request_id))
        if user_id == 666:
            raise RuntimeError("boom (a bug in the service)")
        if user_id == 7:
            await asyncio.sleep(0.05)  # a slow one, to check pipelined answers stay in order
        return FakeResult("replica", {"items": list(range(k)), "user": user_id, "tier": "replica"})

    async def readiness(self):
        if self.ready:
            return True, {"not_ready": {}}
        return False, {"not_ready": {"shard-1-primary": "unavailable: refused"}}

    def metrics_text(self) -> str:
        return "# TYPE recchaos_requests_total counter\nrecchaos_requests_total 1\n"

    def count_http_error(self, status: int) -> None:
        self.http_errors.append(status)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, FakeService]]:
    import uvloop

    service = FakeService()
    loop = uvloop.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def run() -> None:
        srv = await start_http_server(
            GatewayApp(service), "127.0.0.1", 0, on_reject=service.count_http_error
        )
        box["port"] = srv.sockets[0].getsockname()[1]
        box["server"] = srv
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(run(), loop)
    assert started.wait(10), "HTTP server did not start within 10 s"
    try:
        yield box["port"], service
    finally:
        loop.call_soon_threadsafe(box["server"].close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


def read_reply(sock_file) -> Reply:
    status_line = sock_file.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while (line := sock_file.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = sock_file.read(int(headers.get("content-length", 0)))
    return Reply(int(status_line.split()[1]), headers, body)


def exchange(port: int, raw: bytes, n: int = 1) -> list[Reply]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(raw)
        f = sock.makefile("rb")
        return [read_reply(f) for _ in range(n)]


def post(body: bytes | str, path: str = "/v1/recommend", headers: str = "") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def test_recommend_ok_with_tier_and_request_id_headers(server):
    port, service = server
    (r,) = exchange(port, post('{"user_id": 12, "k": 3}', headers="X-Request-Id: abc-123\r\n"))
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["x-recchaos-tier"] == "replica" and r.headers["x-request-id"] == "abc-123"
    assert r.json["items"] == [0, 1, 2]
    assert service.calls[-1] == (12, 3, "abc-123")


def test_k_defaults_to_ten_and_unknown_fields_are_ignored(server):
    port, service = server
    (r,) = exchange(port, post('{"user_id": 5, "tag": "x"}'))
    assert r.status == 200 and len(r.json["items"]) == 10
    assert r.headers["x-request-id"]  # generated when not given


BAD_BODIES = [
    ("{not json", 400, "body"),
    ("", 400, "body"),
    (b"\xff\xfe{}", 400, "body"),
    ("[" * 5000 + "]" * 5000, 400, "body"),  # nesting too deep for the parser
    ("[1, 2]", 422, "body"),
    ('"user_id"', 422, "body"),
    ("{}", 422, "user_id"),
    ('{"k": 5}', 422, "user_id"),
    ('{"user_id": "5"}', 422, "user_id"),
    ('{"user_id": 5.0}', 422, "user_id"),
    ('{"user_id": true}', 422, "user_id"),
    ('{"user_id": null}', 422, "user_id"),
    ('{"user_id": -1}', 422, "user_id"),
    ('{"user_id": 1e3}', 422, "user_id"),
    ('{"user_id": 99999999999999999999999}', 422, "user_id"),
    ('{"user_id": 1, "k": 0}', 422, "k"),
    ('{"user_id": 1, "k": 101}', 422, "k"),
    ('{"user_id": 1, "k": -3}', 422, "k"),
    ('{"user_id": 1, "k": 2.5}', 422, "k"),
    ('{"user_id": 1, "k": false}', 422, "k"),
    ('{"user_id": 1, "k": "10"}', 422, "k"),
    ('{"user_id": 1, "k": null}', 422, "k"),
]


@pytest.mark.parametrize(
    "body,status,field_", BAD_BODIES, ids=[repr(b)[:30] for b, *_ in BAD_BODIES]
)
def test_bad_bodies_get_4xx_naming_the_field(server, body, status, field_):
    port, service = server
    before = len(service.calls)
    (r,) = exchange(port, post(body))
    assert r.status == status, r.body
    assert r.json["field"] == field_ and r.json["error"] and "allowed" in r.json
    assert len(service.calls) == before  # never reached the service


def test_body_over_64_kib_is_413(server):
    port, service = server
    (r,) = exchange(port, post(b'{"user_id": 1, "pad": "' + b"x" * MAX_BODY + b'"}'))
    assert r.status == 413 and r.json["field"] == "body"
    assert r.headers.get("connection") == "close"
    chunk = b"x" * 40_000
    chunked = (
        b"POST /v1/recommend HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 2
        + b"0\r\n\r\n"
    )
    (r,) = exchange(port, chunked)
    assert r.status == 413
    assert 413 in service.http_errors


def test_unknown_path_404_and_wrong_method_405(server):
    port, _ = server
    (r,) = exchange(port, post('{"user_id": 1}', path="/v2/nope"))
    assert r.status == 404 and r.json["field"] == "path" and "/v1/recommend" in r.json["allowed"]
    (r,) = exchange(port, get("/v1/recommend"))
    assert r.status == 405 and r.json["field"] == "method" and r.headers["allow"] == "POST"
    (r,) = exchange(port, post("{}", path="/healthz"))
    assert r.status == 405 and r.json["allowed"] == ["GET"]


def test_garbage_bytes_are_400_and_the_server_lives_on(server):
    port, _ = server
    (r,) = exchange(port, b"HELLO THERE\r\n\r\n")
    assert r.status == 400 and r.json["field"] == "request"
    (r,) = exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n")
    assert r.status == 400
    (r,) = exchange(port, get("/healthz"))
    assert r.status == 200


def test_internal_error_is_a_500_and_the_next_request_is_served(server):
    port, _ = server
    replies = exchange(port, post('{"user_id": 666}') + post('{"user_id": 1, "k": 2}'), n=2)
    assert replies[0].status == 500 and "internal" in replies[0].json["error"]
    assert 500 in server[1].http_errors
    assert replies[1].status == 200 and replies[1].json["items"] == [0, 1]


def test_keep_alive_and_pipelined_answers_in_order(server):
    port, _ = server
    raw = post('{"user_id": 7, "k": 1}') + get("/healthz") + post('{"user_id": 8, "k": 2}')
    replies = exchange(port, raw, n=3)
    assert [r.status for r in replies] == [200, 200, 200]
    assert replies[0].json["user"] == 7 and replies[1].json == {"alive": True}
    assert replies[2].json["user"] == 8
    # HTTP/1.0 without keep-alive: the server closes after the answer.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        f = sock.makefile("rb")
        assert read_reply(f).status == 200
        assert f.read() == b""


def test_health_readiness_and_metrics(server):
    port, service = server
    (r,) = exchange(port, get("/readyz"))
    assert r.status == 200 and r.json["ready"] is True
    service.ready = False
    try:
        (r,) = exchange(port, get("/readyz"))
        assert r.status == 503 and r.json["not_ready"] == {
            "shard-1-primary": "unavailable: refused"
        }
    finally:
        service.ready = True
    (r,) = exchange(port, get("/metrics"))
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    assert b"recchaos_requests_total" in r.body
    (r,) = exchange(port, get("/healthz?verbose=1"))
    assert r.status == 200


# ---- hostile requests: size limits checked as bytes arrive, one answer per request


def replies_until_eof(port: int, raw: bytes, half_close: bool = False) -> list[Reply]:
    """Send ``raw``, then read every reply until the server closes (5 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        f = sock.makefile("rb")
        replies = []
        while f.peek(1):
            replies.append(read_reply(f))
        return replies


LIMITS = HttpLimits()


def test_request_line_over_the_limit_is_414_and_closes(server):
    port, service = server
    target = "/healthz?" + "q" * LIMITS.max_request_line
    (r,) = replies_until_eof(port, get(target) + get("/healthz"))
    assert r.status == 414 and r.json["field"] == "url"
    assert f"limit of {LIMITS.max_request_line} bytes" in r.json["error"]
    assert r.headers["connection"] == "close"
    assert 414 in service.http_errors
    # Just under the limit is served ("GET " + target + " HTTP/1.1" is the request line).
    fits = "/healthz?" + "q" * (LIMITS.max_request_line - len("GET /healthz? HTTP/1.1"))
    (r,) = exchange(port, get(fits))
    assert r.status == 200


def test_header_line_over_the_limit_is_431_and_closes(server):
    port, service = server
    big = "X-Big: " + "v" * LIMITS.max_header_line + "\r\n"
    (r,) = replies_until_eof(port, post('{"user_id": 1}', headers=big) + get("/healthz"))
    assert r.status == 431 and r.json["field"] == "headers"
    assert "'X-Big'" in r.json["error"] and str(LIMITS.max_header_line) in r.json["error"]
    assert r.headers["connection"] == "close"


def test_head_over_the_limit_is_431_and_one_near_it_is_served(server):
    port, service = server
    line = "v" * (LIMITS.max_header_line - 20)
    n_over = LIMITS.max_head // len(line) + 1
    headers = "".join(f"X-H{i}: {line}\r\n" for i in range(n_over))
    before = len(service.calls)
    (r,) = replies_until_eof(port, post('{"user_id": 1}', headers=headers))
    assert r.status == 431 and r.json["field"] == "headers"
    assert f"limit of {LIMITS.max_head} bytes" in r.json["error"]
    assert len(service.calls) == before
    # A head within max_head - FEED_SLICE always passes, however the reads split it.
    n_fit = (LIMITS.max_head - FEED_SLICE) // (len(line) + 10)
    headers = "".join(f"X-H{i}: {line}\r\n" for i in range(n_fit))
    (r,) = exchange(port, post('{"user_id": 3, "k": 1}', headers=headers))
    assert r.status == 200 and r.json["user"] == 3


def test_a_header_sent_in_many_small_reads_is_cut_at_the_limit(server):
    """The head is counted across reads: the server answers 431 before the client is done."""
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: ")
        sent = 0
        try:
            while sent < 64 * LIMITS.max_head:  # far past the limit and the drain allowance
                sock.sendall(b"v" * 1000)
                sent += 1000
        except OSError:
            pass  # reset once the server stopped draining: what matters is what it answered
        f = sock.makefile("rb")
        try:
            r = read_reply(f)
        except OSError:
            pytest.fail(f"no 431 before the reset; {sent} header bytes sent")
    assert r.status == 431 and sent < 64 * LIMITS.max_head


@pytest.mark.parametrize(
    "raw,field_",
    [
        (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n",
            "upgrade",
        ),
        (
            b"POST /v1/recommend HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b'Upgrade: h2c\r\nContent-Length: 14\r\n\r\n{"user_id": 1}',
            "upgrade",
        ),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "method"),
    ],
    ids=["websocket", "h2c-with-body", "connect"],
)
def test_upgrade_and_connect_get_exactly_one_answer(server, raw, field_):
    port, service = server
    before = len(service.calls)
    replies = replies_until_eof(port, raw + get("/healthz"))
    assert [r.status for r in replies] == [400], replies
    assert replies[0].json["field"] == field_
    assert len(service.calls) == before
    # After answered requests, the upgrade still gets one answer of its own, in order.
    replies = replies_until_eof(port, get("/healthz") + raw)
    assert [r.status for r in replies] == [200, 400]


def test_a_client_that_half_closes_gets_its_answers(server):
    port, _ = server
    replies = replies_until_eof(
        port, post('{"user_id": 7, "k": 1}') + get("/healthz"), half_close=True
    )
    assert [r.status for r in replies] == [200, 200]
    assert replies[0].json["user"] == 7


# ---- the command line (``serve-gateway``): a bad value exits 2 naming the option


def test_serve_gateway_cli_exits_2_on_a_bad_value():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "system_under_test",
            "serve-gateway",
            "--port",
            "1",
            "--preset",
            "tiny",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no --shard-primary given" in proc.stderr
