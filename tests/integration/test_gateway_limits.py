"""The gateway protects itself: each attack on a real gateway process, and what it must cost.

* a 128 MB header on one connection costs a second client at most one SLA (20 ms) of added
  delay, against that client's own latency measured just before without the attack (run this
  module under the exclusive CPU lock: ``flock -x /tmp/recchaos-cpu.lock``);
* 2,000 idle connections against a gateway whose file limit is 1,024 leave new requests
  answered (before: every new client was reset);
* idle connections, slow headers and slow bodies are closed after their timeouts;
* at the connection cap with every connection in the middle of a request, a new connection gets
  a fast 503, and the connections already open are still served.

One cluster (tiny preset, 2 shards) per module; the tests that need other limits start a gateway
of their own on the same shards, with extra options, and always stop it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster import REPO, Cluster, start_cluster

from harness.process import ManagedProcess, StartError, free_port, log_tail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SLA_S = 0.020
HEADER_ATTACK_BYTES = 128 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_artifacts: Path) -> Iterator[Cluster]:
    with start_cluster(tmp_path_factory.mktemp("limits-cluster"), shards=2) as c:
        yield c


@dataclass
class Gateway:
    proc: ManagedProcess
    port: int
    log: Path

    def tail(self) -> str:
        return log_tail(self.log, 30)


@contextlib.contextmanager
def gateway(
    cluster: Cluster, log_dir: Path, *options: str, nofile: int | None = None
) -> Iterator[Gateway]:
    """A second gateway on the cluster's shards, with ``options`` added; always stopped."""
    command = list(cluster.comps["gateway"].command)
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    log = log_dir / f"gateway-{port}.log"
    # prlimit execs the gateway with the file limit set (same PID): no code runs in the forked
    # child of this multi-threaded test process.
    limit = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile is not None else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [*limit, *command, *options]
    with ManagedProcess(argv, log, name="gateway", env=env, cwd=REPO) as proc:
        try:
            proc.wait_ready(lambda: _ready(port), 60.0, "the gateway's /readyz")
        except StartError as exc:
            pytest.fail(str(exc))
        yield Gateway(proc, port, log)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# ---- a small raw HTTP client: exact control over bytes, timing and connections


def connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recommend_bytes(user: int) -> bytes:
    body = b'{"user_id": %d, "k": 10}' % user
    return (
        b"POST /v1/recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


def read_reply(sock: socket.socket) -> tuple[int, bytes]:
    """One reply (status, body) from ``sock``; raises ConnectionError on EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed; {len(data)} bytes of reply received")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside a reply body")
        body += chunk
    return int(head.split()[1]), body


def request(port: int, raw: bytes) -> int:
    """Status of ``raw`` sent on a new connection."""
    with connect(port) as sock:
        sock.sendall(raw)
        return read_reply(sock)[0]


def wait_eof(sock: socket.socket, timeout_s: float) -> float:
    """Seconds until the server closes ``sock`` (reading and dropping any reply)."""
    start = time.monotonic()
    sock.settimeout(timeout_s)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return time.monotonic() - start


def victim(port: int, users: list[int], rate: float) -> list[float]:
    """Recommend requests on one keep-alive connection, due at ``rate`` per second.

    Each latency runs from the request's due time, so a stall also counts against the
    requests that waited behind it.
    """
    latencies = []
    with connect(port, timeout_s=60.0) as sock:
        start = time.perf_counter()
        for i, user in enumerate(users):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sock.sendall(recommend_bytes(user))
            status, body = read_reply(sock)
            assert status == 200, body
            latencies.append(time.perf_counter() - due)
    return latencies


def summary(latencies: list[float]) -> str:
    s = sorted(latencies)
    return (
        f"p50 {s[len(s) // 2] * 1e3:.2f} ms, p99 {s[int(len(s) * 0.99)] * 1e3:.2f} ms, "
        f"max {s[-1] * 1e3:.2f} ms (n={len(s)})"
    )


@dataclass
class AttackResult:
    sent: int = 0
    elapsed_s: float = 0.0
    error: str = ""
    reply: int | None = None


def header_attack(port: int, size: int, result: AttackResult) -> None:
    """One connection that sends a header value of ``size`` bytes as fast as it can."""
    chunk = b"a" * (1024 * 1024)
    start = time.monotonic()
    with connect(port, timeout_s=60.0) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
            while result.sent < size:
                sock.sendall(chunk)
                result.sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
            result.reply = read_reply(sock)[0]
        except OSError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                result.reply = read_reply(sock)[0]
    result.elapsed_s = time.monotonic() - start


# ---- the tests


def test_a_128_mb_header_costs_another_client_at_most_one_sla(cluster):
    port = cluster.gateway_address[1]
    users = list(range(40)) * 5  # the same users in both phases: the same cache state
    with cluster.diagnose():
        victim(port, users[:40], rate=200)  # warm the caches and the connection path
        before = victim(port, users, rate=100)
        attack = AttackResult()
        attacker = threading.Thread(
            target=header_attack, args=(port, HEADER_ATTACK_BYTES, attack), daemon=True
        )
        attacker.start()
        during = victim(port, users, rate=100)
        attacker.join(timeout=120)
        assert not attacker.is_alive(), f"the attacker still sends after 120 s: {attack}"
    report = (
        f"without the attack: {summary(before)}; with it: {summary(during)}; attacker: "
        f"{attack.sent / 2**20:.0f} MiB accepted in {attack.elapsed_s:.2f} s, reply "
        f"{attack.reply}, {attack.error or 'no error'}"
    )
    print(report)
    # The gateway stopped reading after its head limit: the attacker never got far.
    assert attack.sent < 32 * 2**20 and attack.elapsed_s < 5.0, report
    assert attack.reply in (431, None), report
    s_before, s_during = sorted(before), sorted(during)
    p99 = int(len(users) * 0.99)
    assert s_during[p99] <= s_before[p99] + SLA_S, report
    assert s_during[-1] <= s_before[-1] + SLA_S, report


def test_2000_idle_connections_at_a_1024_file_limit_leave_new_requests_answered(cluster, tmp_path):
    idle: list[socket.socket] = []
    with gateway(cluster, tmp_path, nofile=1024) as gw:
        try:
            for _ in range(2000):
                idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
            statuses: list[int | str] = []
            for user in range(5):
                try:
                    statuses.append(request(gw.port, recommend_bytes(user)))
                except OSError as exc:  # before the cap: every one was reset
                    statuses.append(f"{type(exc).__name__}: {exc}")
            assert statuses == [200] * 5, f"{statuses}\n{gw.tail()}"
            # Evictions happened as the connections came in, before the requests were served.
            closed = sum(1 for sock in idle if _at_eof(sock))
        finally:
            for sock in idle:
                sock.close()
        assert gw.proc.alive(), gw.tail()
        log = gw.log.read_text()
    # The cap comes from the file limit, it is stated at start, and the idle connections
    # beyond it were closed to make room rather than exhausting descriptors.
    assert "nofile=1024" in log and "not the 4096 of --max-connections" in log, log
    cap = int(log.split("max_connections=")[1].split()[0])
    assert 700 <= cap < 1024, log
    assert closed >= 2000 - cap, (closed, cap)
    assert "Too many open files" not in log and "Traceback" not in log, log


def _at_eof(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


TIMEOUT_S = 1.0


def test_idle_slow_header_and_slow_body_connections_are_closed_after_their_timeouts(
    cluster, tmp_path
):
    options = ("--idle-timeout-s", str(TIMEOUT_S), "--request-timeout-s", str(TIMEOUT_S))
    with gateway(cluster, tmp_path, *options) as gw:
        # A new connection that never sends, and a keep-alive one after its answer.
        with connect(gw.port) as fresh, connect(gw.port) as kept:
            kept.sendall(recommend_bytes(1))
            assert read_reply(kept)[0] == 200
            assert TIMEOUT_S * 0.9 <= wait_eof(fresh, 10) <= TIMEOUT_S + 2.0, gw.tail()
            assert wait_eof(kept, 10) <= TIMEOUT_S + 2.0, gw.tail()
        # A client active more often than the idle timeout keeps its connection.
        with connect(gw.port) as active:
            for user in range(4):
                active.sendall(recommend_bytes(user))
                assert read_reply(active)[0] == 200
                time.sleep(TIMEOUT_S / 2)
        head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: "
        body = b"POST /v1/recommend HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{"
        for opening in (head, body):
            status, elapsed = dribble(gw.port, opening, interval_s=0.1, limit_s=10.0)
            assert status == 408, (opening, status, gw.tail())
            assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S + 2.0, (opening, elapsed)
        assert gw.proc.alive()


def dribble(port: int, opening: bytes, interval_s: float, limit_s: float) -> tuple[int, float]:
    """Send ``opening``, then one byte every ``interval_s`` until the server answers."""
    with connect(port) as sock:
        start = time.monotonic()
        sock.sendall(opening)
        while time.monotonic() - start < limit_s:
            readable, _, _ = select.select([sock], [], [], interval_s)
            if readable:
                status = read_reply(sock)[0]
                elapsed = time.monotonic() - start
                assert wait_eof(sock, 5.0) < 5.0
                return status, elapsed
            sock.sendall(b"x")
    raise AssertionError(f"no answer within {limit_s} s to a client sending a byte a time")


CAP = 16


def test_at_the_cap_with_every_connection_busy_new_ones_get_a_fast_503(cluster, tmp_path):
    options = ("--max-connections", str(CAP), "--request-timeout-s", "60")
    with gateway(cluster, tmp_path, *options) as gw:
        busy = [connect(gw.port) for _ in range(CAP)]
        try:
            for sock in busy[:-1]:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # head not finished
            # The last one is answered after the server has read the others (it came last).
            busy[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_reply(busy[-1])[0] == 200
            busy[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            refused = []
            for _ in range(50):
                start = time.monotonic()
                with connect(gw.port) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                    status, body = read_reply(sock)
                    refused.append((status, time.monotonic() - start))
                    assert wait_eof(sock, 5.0) < 5.0
            assert {status for status, _ in refused} == {503}, refused
            assert b'"field":"connection"' in body and str(CAP).encode() in body
            slowest = max(elapsed for _, elapsed in refused)
            assert slowest < 0.5, refused
            # The connections already open are still served, in the middle of the refusals.
            busy[0].sendall(b"\r\n")
            assert read_reply(busy[0])[0] == 200
            # Now one connection is idle: a new client takes its place and is served.
            assert request(gw.port, recommend_bytes(3)) == 200
            assert wait_eof(busy[0], 5.0) < 5.0
        finally:
            for sock in busy:
                sock.close()
        assert gw.proc.alive(), gw.tail()
