"""The userspace TCP fault proxy as a real process, in front of a tiny echo server of our own.

One proxy process (started with :func:`start_proxy`, always reaped) serves every test here;
each test clears its faults in ``finally``. Every socket has a timeout, every wait is bounded.
Latency is judged by medians of many round trips taken before and with the fault in one run
(these VMs drift over minutes, so never against a fixed baseline).
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from children import exited_within

from harness.auth import TOKEN_VARIABLE, new_token
from harness.process import ManagedProcess, free_port
from harness.proxy.client import ProxyFaultRejected, ProxyProcess, start_proxy

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROUTE = "echo"
IO_TIMEOUT_S = 5.0


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(30)
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    block_on_close = False


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    server = EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def proxy(echo: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    routes = {
        ROUTE: ("127.0.0.1:0", f"127.0.0.1:{echo}"),
        "dead": ("127.0.0.1:0", f"127.0.0.1:{free_port()}"),
    }
    with start_proxy(routes, log, timeout_s=20, seed=7) as handle:
        try:
            yield handle
        except BaseException:
            print(f"--- proxy log {log}:\n{log.read_text(errors='replace')[-3000:]}")
            raise


@pytest.fixture
def client(proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    try:
        yield proxy
    finally:
        proxy.client.clear()


def connect(proxy: ProxyProcess, route: str = ROUTE, timeout_s: float = IO_TIMEOUT_S):
    host, port = proxy.listen[route].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            raise EOFError(f"EOF after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def round_trips(sock: socket.socket, n: int, size: int = 64) -> list[float]:
    """``n`` echo round trips of ``size`` bytes; milliseconds each."""
    payload = b"r" * size
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sock.sendall(payload)
        recv_exactly(sock, size)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def send_and_receive(sock: socket.socket, payload: bytes) -> tuple[bytes, float]:
    """Send ``payload`` from a thread while reading the echo; returns the echo and seconds."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(payload)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    sender = threading.Thread(target=send)
    t0 = time.perf_counter()
    sender.start()
    try:
        data = recv_exactly(sock, len(payload))
    finally:
        sender.join(timeout=IO_TIMEOUT_S)
    assert not errors, errors
    return data, time.perf_counter() - t0


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- pass-through --------------------------------------------------------------------------------


def test_pass_through_is_byte_exact_both_ways(client: ProxyProcess) -> None:
    before = client.client.counters(ROUTE)
    payload = os.urandom(4 << 20)
    with connect(client) as sock:
        echoed, _ = send_and_receive(sock, payload)
    assert echoed == payload
    after = client.client.counters(ROUTE)
    assert after["bytes_up"] - before["bytes_up"] == len(payload)
    assert after["bytes_down"] - before["bytes_down"] == len(payload)
    assert after["delayed_chunks"] == before["delayed_chunks"]  # the fast path: no queue


def test_many_connections_at_once(client: ProxyProcess) -> None:
    socks = [connect(client) for _ in range(20)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(f"conn-{i:03d}".encode())
        assert [recv_exactly(s, 8).decode() for s in socks] == [f"conn-{i:03d}" for i in range(20)]
    finally:
        for sock in socks:
            sock.close()


# -- latency and jitter --------------------------------------------------------------------------


def test_latency_shifts_the_median_round_trip(client: ProxyProcess) -> None:
    with connect(client) as sock:
        round_trips(sock, 50)  # warm up
        base = statistics.median(round_trips(sock, 300))
        fid = client.client.add_fault(ROUTE, "latency", "downstream", delay_ms=5)
        delayed = statistics.median(round_trips(sock, 300))
        client.client.remove_fault(ROUTE, fid)
        healed = statistics.median(round_trips(sock, 100))
    shift = delayed - base
    assert abs(shift - 5.0) <= 0.5, f"median {base:.3f} -> {delayed:.3f} ms: shift {shift:.3f} ms"
    assert healed < base + 1.0
    assert client.client.counters(ROUTE)["delayed_chunks"] >= 300


def test_latency_both_directions_adds_twice(client: ProxyProcess) -> None:
    with connect(client) as sock:
        base = statistics.median(round_trips(sock, 100))
        client.client.add_fault(ROUTE, "latency", "both", delay_ms=3)
        delayed = statistics.median(round_trips(sock, 100))
    assert abs(delayed - base - 6.0) <= 0.8, (base, delayed)


def test_jitter_spreads_round_trips_but_keeps_byte_order(client: ProxyProcess) -> None:
    with connect(client) as sock:
        client.client.add_fault(ROUTE, "latency", "downstream", delay_ms=4)
        steady = round_trips(sock, 120)
        client.client.clear()
        client.client.add_fault(ROUTE, "latency", "downstream", delay_ms=4, jitter_ms=3)
        jittered = round_trips(sock, 120)
        # Pipelined numbered messages: jitter must never reorder bytes.
        messages = b"".join(f"<{i:05d}>".encode() for i in range(2000))
        echoed, _ = send_and_receive(sock, messages)
    spread = quantile(jittered, 0.9) - quantile(jittered, 0.1)
    steady_spread = quantile(steady, 0.9) - quantile(steady, 0.1)
    assert spread > 2.0 and spread > steady_spread + 1.5, (steady_spread, spread)
    assert abs(statistics.median(jittered) - statistics.median(steady)) < 1.0
    assert echoed == messages


def test_clearing_latency_releases_what_it_holds(client: ProxyProcess) -> None:
    with connect(client) as sock:
        fid = client.client.add_fault(ROUTE, "latency", "downstream", delay_ms=3000)
        t0 = time.monotonic()
        sock.sendall(b"held")
        time.sleep(0.1)
        client.client.remove_fault(ROUTE, fid)
        assert recv_exactly(sock, 4) == b"held"
    assert time.monotonic() - t0 < 1.0


# -- bandwidth and slicer ------------------------------------------------------------------------


def test_bandwidth_limit_holds_the_rate(client: ProxyProcess) -> None:
    rate = 512 * 1024  # bytes/s
    payload = os.urandom(384 * 1024)
    with connect(client) as sock:
        client.client.add_fault(ROUTE, "bandwidth", "downstream", bytes_per_s=rate)
        echoed, seconds = send_and_receive(sock, payload)
    assert echoed == payload
    measured = len(payload) / seconds
    assert abs(measured / rate - 1) <= 0.2, f"{measured:.0f} bytes/s against a limit of {rate}"


def test_bandwidth_in_kib_per_s_on_upstream(client: ProxyProcess) -> None:
    payload = os.urandom(128 * 1024)
    with connect(client) as sock:
        client.client.add_fault(ROUTE, "bandwidth", "upstream", rate_kbps=256)
        echoed, seconds = send_and_receive(sock, payload)
    assert echoed == payload
    assert abs(len(payload) / seconds / (256 * 1024) - 1) <= 0.2, seconds


def test_slicer_delivers_every_byte_in_order(client: ProxyProcess) -> None:
    payload = os.urandom(64 * 1024)
    before = client.client.counters(ROUTE)["delayed_chunks"]
    with connect(client) as sock:
        client.client.add_fault(
            ROUTE, "slicer", "both", average_size=100, size_variation=60, delay_us=50
        )
        echoed, _ = send_and_receive(sock, payload)
    assert echoed == payload
    assert client.client.counters(ROUTE)["delayed_chunks"] > before


# -- blackhole and reset -------------------------------------------------------------------------


def test_blackhole_drops_until_cleared(client: ProxyProcess) -> None:
    with connect(client, timeout_s=0.3) as sock:
        round_trips(sock, 3)
        before = client.client.counters(ROUTE)["dropped_bytes"]
        fid = client.client.add_fault(ROUTE, "blackhole", "downstream")
        sock.sendall(b"x" * 64)
        with pytest.raises(TimeoutError):
            sock.recv(64)
        assert client.client.counters(ROUTE)["dropped_bytes"] - before == 64
        assert client.client.route(ROUTE)["connections"] >= 1  # held open, not closed
        assert client.client.remove_fault(ROUTE, fid)
        sock.settimeout(IO_TIMEOUT_S)
        assert len(round_trips(sock, 3)) == 3  # the same connection works again
    with connect(client) as fresh:
        round_trips(fresh, 3)


def test_blackhole_hold_delivers_after_clear(client: ProxyProcess) -> None:
    with connect(client, timeout_s=0.3) as sock:
        fid = client.client.add_fault(ROUTE, "blackhole", "upstream", mode="hold")
        sock.sendall(b"held-bytes")
        with pytest.raises(TimeoutError):
            sock.recv(64)
        client.client.remove_fault(ROUTE, fid)
        sock.settimeout(IO_TIMEOUT_S)
        assert recv_exactly(sock, 10) == b"held-bytes"


def test_reset_resets_open_and_new_connections(client: ProxyProcess) -> None:
    before = client.client.counters(ROUTE)["resets"]
    with connect(client) as sock:
        round_trips(sock, 2)
        client.client.add_fault(ROUTE, "reset")
        with pytest.raises((ConnectionResetError, EOFError)):
            round_trips(sock, 1)
    # A new connection is accepted, then reset: the RST may already beat connect()'s return.
    with pytest.raises((ConnectionResetError, EOFError, BrokenPipeError)):
        with connect(client) as fresh:
            round_trips(fresh, 1)
    assert client.client.counters(ROUTE)["resets"] - before >= 2
    client.client.clear()
    with connect(client) as healed:
        round_trips(healed, 2)


def test_dead_upstream_looks_like_a_reset(client: ProxyProcess) -> None:
    with pytest.raises((ConnectionResetError, EOFError, BrokenPipeError)):
        with connect(client, "dead") as sock:
            round_trips(sock, 1)
    assert client.client.counters("dead")["upstream_errors"] >= 1


# -- the control API -----------------------------------------------------------------------------


def test_clearing_twice_is_fine(client: ProxyProcess) -> None:
    api = client.client
    fid = api.add_fault(ROUTE, "latency", "downstream", delay_ms=1)
    api.add_fault(ROUTE, "bandwidth", "both", rate_kbps=1000)
    faults = api.route(ROUTE)["faults"]
    assert {f["id"] for f in faults} >= {fid} and len(faults) == 2
    assert api.remove_fault(ROUTE, fid) is True
    assert api.remove_fault(ROUTE, fid) is False
    assert api.clear() == 1
    assert api.clear() == 0
    assert api.route(ROUTE)["faults"] == []


def _post(
    url: str, body: bytes, token: str | None = None, method: str = "POST"
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("body", "field", "value"), [
    (b'{"kind": "latency", "delay_ms": -1}', "delay_ms", -1),
    (b'{"kind": "latenci", "delay_ms": 5}', "kind", "latenci"),
    (b'{"kind": "latency", "delay_ms": 5, "direction": "sideways"}', "direction", "sideways"),
    (b'{"kind": "slicer", "average_size": 0}', "average_size", 0),
    (b'{"kind": "latency", "delay_ms": 5, "delay": 5}', "delay", 5),
    (b"{not json", "(body)", "{not json"),
])  # fmt: skip
def test_bad_control_input_gives_400_naming_the_field(
    client: ProxyProcess, body: bytes, field: str, value: object
) -> None:
    status, answer = _post(f"{client.control_url}/routes/{ROUTE}/faults", body, client.token)
    assert status == 400
    problem = answer["problems"][0]
    assert (problem["field"], problem["value"]) == (field, value)
    assert problem["allowed"] and field in answer["error"]
    assert client.client.route(ROUTE)["faults"] == []


def test_client_raises_usage_error_with_problems(client: ProxyProcess) -> None:
    with pytest.raises(ProxyFaultRejected, match=r"delay_ms: got 0; allowed: a number > 0") as e:
        client.client.add_fault(ROUTE, "latency", "downstream", delay_ms=0)
    assert e.value.problems[0]["field"] == "delay_ms"


def test_unknown_route_and_endpoint(client: ProxyProcess) -> None:
    url = client.control_url
    status, answer = _post(f"{url}/routes/nope/faults", b'{"kind": "reset"}', client.token)
    assert status == 404 and ROUTE in answer["known"]
    status, _ = _post(f"{url}/nothing", b"", client.token)
    assert status == 404


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer wrong", "bearer {token}x",
    "Bearer {short}", "Token {token}",
])  # fmt: skip
def test_control_api_refuses_a_missing_or_wrong_token(
    client: ProxyProcess, authorization: str | None
) -> None:
    """401 on every endpoint but /healthz, nothing changed, one log line naming the client."""
    log_before = client.log_path.read_text()
    header = None
    if authorization is not None:
        header = authorization.format(token=client.token, short=client.token[:-1])
    calls = [
        ("POST", f"/routes/{ROUTE}/faults", b'{"kind": "reset"}'),
        ("DELETE", f"/routes/{ROUTE}/faults", b""),
        ("GET", "/routes", b""),
        ("GET", f"/routes/{ROUTE}", b""),
    ]
    for method, path, body in calls:
        request = urllib.request.Request(
            client.control_url + path, data=body or None, method=method,
            headers={} if header is None else {"Authorization": header},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=IO_TIMEOUT_S)
        assert info.value.code == 401, (method, path)
        assert info.value.headers["WWW-Authenticate"] == "Bearer"
        assert "control token" in json.loads(info.value.read())["error"]
    assert client.client.route(ROUTE)["faults"] == []
    with urllib.request.urlopen(client.control_url + "/healthz", timeout=IO_TIMEOUT_S) as resp:
        assert json.loads(resp.read())["ok"] is True  # liveness stays open
    deadline = time.monotonic() + 5
    while client.log_path.read_text().count("refused ") - log_before.count("refused ") < 4:
        assert time.monotonic() < deadline, client.log_path.read_text()[-2000:]
        time.sleep(0.02)
    new = client.log_path.read_text()[len(log_before) :]
    assert "from 127.0.0.1:" in new and client.token not in new


def test_cli_refuses_to_start_without_a_token(echo: int, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    out = subprocess.run(
        _proxy_cli("--control-port", "0", "--route", f"e=127.0.0.1:0=127.0.0.1:{echo}"),
        capture_output=True, text=True, timeout=20, cwd=REPO, env=env,
    )  # fmt: skip
    assert out.returncode == 2 and f"{TOKEN_VARIABLE} is not set" in out.stderr, out.stderr


def test_sigterm_stops_within_a_second(echo: int, tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    with start_proxy({"e": ("127.0.0.1:0", f"127.0.0.1:{echo}")}, log, timeout_s=20) as handle:
        with connect(handle, "e") as sock:
            round_trips(sock, 2)
            handle.client.add_fault("e", "latency", "both", delay_ms=50)
            sock.sendall(b"in flight")
            t0 = time.monotonic()
            code = handle.stop(timeout_s=2.0)
            elapsed = time.monotonic() - t0
            sock.settimeout(2.0)
            with pytest.raises((ConnectionResetError, EOFError)):
                recv_exactly(sock, 9)
    assert code == 0 and elapsed < 1.0, (code, elapsed, log.read_text())
    text = log.read_text()
    assert "fault applied route=e id=f1 kind=latency direction=both" in text
    assert "stopped" in text


def test_start_failure_shows_the_log(echo: int, tmp_path: Path) -> None:
    from harness.process import StartError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(StartError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            start_proxy(
                {"e": (f"127.0.0.1:{busy}", f"127.0.0.1:{echo}")},
                tmp_path / "proxy.log",
                timeout_s=20,
            )


# -- the command line ----------------------------------------------------------------------------


def _proxy_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.proxy", *args]


def test_cli_rejects_a_bad_route_naming_the_field(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"a": {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:0"}}))
    out = subprocess.run(
        _proxy_cli("--control-port", "0", "--route", "b=127.0.0.1=127.0.0.1:1",
                   "--routes-file", str(routes)),
        capture_output=True, text=True, timeout=20, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "--route[0].listen: got '127.0.0.1'; allowed: HOST:PORT" in out.stderr
    assert f"--routes-file {routes}: a.upstream: got '127.0.0.1:0'" in out.stderr  # all at once


def test_cli_routes_file_and_ready_file(echo: int, tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps({"routes": {"e": {"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo}"}}})
    )
    ready = tmp_path / "ready.json"
    argv = _proxy_cli(
        "--control-port", "0", "--routes-file", str(routes), "--ready-file", str(ready)
    )
    env = {**os.environ, TOKEN_VARIABLE: new_token()}
    with ManagedProcess(argv, tmp_path / "proxy.log", name="proxy", cwd=REPO, env=env) as proc:
        proc.wait_ready(ready.exists, 20, "its ready file")
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and set(info["routes"]) == {"e"}
        host, port = info["routes"]["e"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=IO_TIMEOUT_S) as sock:
            assert len(round_trips(sock, 2)) == 2
    assert proc.returncode == 0


def test_proxy_exits_when_its_parent_dies(echo: int, tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from harness.proxy.client import start_proxy\n"
        f"p = start_proxy({{'e': ('127.0.0.1:0', '127.0.0.1:{echo}')}}, {str(tmp_path)!r} + "
        "'/proxy.log', timeout_s=20)\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())
    if not exited_within(pid, 5.0):
        pytest.fail(f"proxy {pid} outlived its parent:\n{(tmp_path / 'proxy.log').read_text()}")
    assert "parent process" in (tmp_path / "proxy.log").read_text()
