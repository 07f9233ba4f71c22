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

from system_under_test.gateway.api import GatewayApp, parse_recommend
from system_under_test.gateway.http import MAX_BODY, start_http_server


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


def test_allowed_values_are_stated():
    for body, field_, allowed in (
        ('{"user_id": 1, "k": 0}', "k", [1, 100]),
        ('{"user_id": -4}', "user_id", "integer >= 0"),
    ):
        with pytest.raises(Exception) as info:
            parse_recommend(body.encode())
        assert info.value.field == field_ and info.value.allowed == allowed
    assert parse_recommend(b'{"user_id": 9223372036854775807, "k": 100}') == (2**63 - 1, 100)


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


# ---- the command line (``serve-gateway``): bad values exit 2 naming the option


GOOD_ARGS = [
    "--port",
    "0",
    "--preset",
    "tiny",
    "--shard-primary",
    "127.0.0.1:7001",
    "--shard-primary",
    "127.0.0.1:7002",
]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--shard-replica", "127.0.0.1:7003"], "1 --shard-replica for 2 --shard-primary"),
        (["--shard-primary", "localhost"], "--shard-primary 'localhost' is not HOST:PORT"),
        (["--region", "127.0.0.1:99999"], "--region '127.0.0.1:99999' is not HOST:PORT"),
        (["--redis", "127.0.0.1:6379"], "must be a URL like redis://"),
        (["--sla-ms", "0"], "--sla-ms 0.0 must be positive"),
        (["--deadline-margin-ms", "25"], "--deadline-margin-ms 25.0 must be in [0, --sla-ms 20.0)"),
        (["--l1-rows", "-1"], "--l1-rows -1 must be >= 0"),
        (["--preset", "huge"], "--preset 'huge' is unknown; allowed: default, tiny"),
    ],
)
def test_bad_command_line_values_exit_2_with_the_option_named(extra, message, capsys):
    from system_under_test.gateway.settings import parse_settings

    with pytest.raises(SystemExit) as info:
        parse_settings(GOOD_ARGS + extra)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_good_command_line_and_missing_primaries():
    from system_under_test.gateway.settings import build_parser, parse_settings, settings_from_args

    s = parse_settings(GOOD_ARGS + ["--shard-replica", "h:1", "--shard-replica", "h:2"])
    assert s.n_shards == 2 and str(s.replicas[1]) == "h:2" and s.region is None
    assert s.budget_s == pytest.approx(0.017)
    with pytest.raises(ValueError, match="no --shard-primary given"):
        settings_from_args(build_parser().parse_args(["--port", "1", "--preset", "tiny"]))


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
