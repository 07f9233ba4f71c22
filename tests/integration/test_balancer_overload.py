"""The balancer's overload control with a real HAProxy (``serve-lb``) in front of two stand-in
gateways that each take 100 ms per request (``slow_gateway.py``): a flood far past what they
can hold gets fast ``503`` answers with ``Retry-After`` and the shed JSON body, each gateway
never holds more than its ``--gateway-maxconn``, nothing hangs, and the next request after the
flood is served. With no gateway up, HAProxy's 503 carries no ``Retry-After``: an outage is a
failure, not a shed request."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from pathlib import Path

import pytest
from children import children

from system_under_test.launcher import free_ports

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not __import__("shutil").which("haproxy"),
        reason="haproxy is not installed (scripts/setup.sh)",
    ),
]

HERE = Path(__file__).resolve().parent
DELAY_MS = 100.0
MAXCONN, QUEUE_TIMEOUT_MS = 2, 5
FLOOD = 40
# A rejection is answered by the balancer (at most the queue timeout) and never waits for a
# gateway (100 ms); the bound leaves room for a busy shared machine.
FAST_S = 0.05


def ask(port: int, path: str = "/v1/recommend", timeout_s: float = 5.0) -> tuple:
    """(status, Retry-After or None, body, seconds) of one request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    t0 = time.perf_counter()
    try:
        conn.request(
            "POST", path, body=b'{"user_id": 1}', headers={"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.getheader("Retry-After"), body, time.perf_counter() - t0
    finally:
        conn.close()


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def answers(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@pytest.mark.parametrize("max_queue", [0, 2])  # 0: none waits (the default); 2: a short queue
def test_a_flood_past_the_limit_gets_fast_503s_with_retry_after_and_nothing_hangs(
    tmp_path, max_queue
):
    lb_port, *gw_ports = free_ports(3)
    with children() as procs:
        gateways = []
        for i, port in enumerate(gw_ports):
            argv = [sys.executable, str(HERE / "slow_gateway.py"), "--port", str(port),
                    "--delay-ms", str(DELAY_MS)]  # fmt: skip
            gw = procs.spawn(argv, tmp_path / f"gateway-{i}.log", name=f"gateway-{i}")
            gw.wait_ready(lambda p=port: answers(p, "/healthz"), 20, "stand-in gateway listens")
            gateways.append(gw)
        argv = [sys.executable, "-m", "system_under_test", "serve-lb", "--port", str(lb_port),
                "--config", str(tmp_path / "haproxy.cfg"), "--gateway-maxconn", str(MAXCONN),
                "--queue-timeout-ms", str(QUEUE_TIMEOUT_MS), "--max-queue", str(max_queue),
                # a stand-in answers in 100 ms: not frozen, so no retry elsewhere
                "--server-timeout-ms", "2000"]  # fmt: skip
        argv += [f"--gateway=127.0.0.1:{p}" for p in gw_ports]
        lb = procs.spawn(argv, tmp_path / "lb.log", name="lb")
        # Through the balancer: both gateways checked up (each is needed for a full limit).
        lb.wait_ready(lambda: answers(lb_port, "/healthz"), 20, "balancer forwards")
        time.sleep(0.5)  # two good checks each (rise 2, 100 ms apart)

        results: list[tuple] = []
        gate = threading.Barrier(FLOOD)

        def one() -> None:
            gate.wait(timeout=10)
            try:
                results.append(ask(lb_port))
            except OSError as e:
                results.append((0, None, repr(e).encode(), float("inf")))

        threads = [threading.Thread(target=one, daemon=True) for _ in range(FLOOD)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
        took = time.monotonic() - t0
        log = (tmp_path / "lb.log").read_text()

        assert not any(t.is_alive() for t in threads), f"requests still open after 15 s\n{log}"
        assert len(results) == FLOOD and took < 10, (took, results)
        ok = [r for r in results if r[0] == 200]
        shed = [r for r in results if r[0] == 503 and r[1] == "1"]
        assert len(ok) + len(shed) == FLOOD, [r[:3] for r in results if r not in ok + shed]
        # At most MAXCONN per gateway at a time, each served in DELAY_MS: all served at once.
        assert 1 <= len(ok) <= MAXCONN * len(gw_ports), [r[0] for r in results]
        slow = sorted(r[3] for r in shed if r[3] > FAST_S)
        assert not slow, (
            f"{len(slow)} of {len(shed)} rejections took over {FAST_S * 1000} ms: {slow}"
        )
        body = json.loads(shed[0][2])
        assert body["field"] == "load" and f"at most {MAXCONN}" in body["allowed"], body
        for port in gw_ports:
            assert get_json(port, "/stats")["max_in_flight"] <= MAXCONN
        # HAProxy logs each 503 it answered: with no queue, none waited (sQ: queue timeout).
        if max_queue == 0:
            assert "sQ--" not in log and "LR--" in log, log
        assert "balancer autogroup nice -10: " in log, log  # "set", or why it was refused

        # The flood is over: the next request is served.
        status, retry, _, _ = ask(lb_port)
        assert (status, retry) == (200, None), log

        # No gateway up: HAProxy's own 503, without Retry-After (an outage, not shed).
        for gw in gateways:
            gw.stop(grace_s=0.0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and answers(lb_port, "/healthz"):
            time.sleep(0.05)
        status, retry, _, seconds = ask(lb_port)
        assert (status, retry) == (503, None), (status, retry, log)
        assert seconds < 1.0
