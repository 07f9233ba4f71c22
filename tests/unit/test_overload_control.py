"""The gateway's overload control without a server: the CoDel-style rule on a fake clock, the
X-Request-Start reading, the gate in front of the API, and the options that set it
(tests/integration/test_gateway_overload.py floods a real gateway)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from system_under_test.balancer import parse_request_start
from system_under_test.gateway.api import GatewayApp
from system_under_test.gateway.http import Request
from system_under_test.gateway.overload import OverloadGate, OverloadSettings, QueueDelayController

MS = 0.001
S = OverloadSettings(target_s=5 * MS, interval_s=100 * MS)


def feed(c: QueueDelayController, start: float, end: float, every: float, delay: float) -> list:
    """Requests every ``every`` seconds in [start, end), each queued ``delay``: admitted?"""
    out, t = [], start
    while t < end - 1e-12:
        out.append(c.admit(delay, t))
        t += every
    return out


def test_a_burst_is_served_however_long_below_the_interval():
    c = QueueDelayController(S, now=0.0)
    # a burst queued 50 ms, then the queue drained: the minimum of each interval stays low
    assert all(feed(c, 0.0, 0.05, 0.001, 0.050))
    assert all(feed(c, 0.05, 0.3, 0.001, 0.0005))
    assert not c.overloaded and c.shed_total == 0


def test_any_request_queued_longer_than_the_interval_is_shed():
    c = QueueDelayController(S, now=0.0)
    assert c.admit(0.099, 0.01) and not c.admit(0.101, 0.02)
    assert not c.overloaded and c.shed_total == 1


def test_a_standing_queue_sheds_at_the_target_from_the_next_interval():
    c = QueueDelayController(S, now=0.0)
    # 6 ms of queue all through the first interval: still served in it (a burst, so far)
    assert all(feed(c, 0.0, 0.1, 0.001, 0.006))
    assert not c.overloaded
    # from the next interval on, requests over the target are shed, those under it served
    assert not c.admit(0.006, 0.1) and c.overloaded
    assert c.admit(0.004, 0.101)


def test_one_request_under_target_in_an_interval_ends_the_standing_queue():
    c = QueueDelayController(S, now=0.0)
    feed(c, 0.0, 0.1, 0.001, 0.006)
    assert not c.admit(0.006, 0.1)
    c.admit(0.001, 0.15)  # the queue drained once in [0.1, 0.2)
    assert c.admit(0.006, 0.2) and not c.overloaded


def test_an_idle_gap_is_no_queue():
    c = QueueDelayController(S, now=0.0)
    feed(c, 0.0, 0.1, 0.001, 0.006)
    assert not c.admit(0.006, 0.1)
    # nothing for a whole interval and more: the next request starts with no standing queue
    assert c.admit(0.006, 0.35) and not c.overloaded
    # an interval with no request at all, right after one with a queue, had no queue either
    c2 = QueueDelayController(S, now=0.0)
    feed(c2, 0.0, 0.1, 0.001, 0.006)
    c2.admit(0.006, 0.1)
    assert c2.overloaded


def test_disabled_measures_but_never_sheds():
    c = QueueDelayController(OverloadSettings(enabled=False), now=0.0)
    assert all(feed(c, 0.0, 0.3, 0.001, 0.5))
    assert c.overloaded and c.shed_total == 0


@given(
    delays=st.lists(st.floats(0, 0.3), min_size=1, max_size=300),
    gaps=st.lists(st.floats(0, 0.05), min_size=1, max_size=300),
)
def test_the_rule_holds_for_any_sequence(delays, gaps):
    """Never sheds at or under the target; always sheds over the interval; in between, sheds
    exactly when the last full interval's minimum delay was over the target."""
    c = QueueDelayController(S, now=0.0)
    t = 0.0
    for delay, gap in zip(delays, gaps, strict=False):
        t += gap
        admitted = c.admit(delay, t)
        if delay <= S.target_s:
            assert admitted
        elif delay > S.interval_s:
            assert not admitted
        else:
            assert admitted == (not c.overloaded)


@pytest.mark.parametrize(
    ("value", "epoch"),
    [
        ("t=1000000000250000", 1_000_000_000.25),  # microseconds (HAProxy's date(0,us))
        ("t=1000000000.25", 1_000_000_000.25),  # seconds with a fraction (nginx's ${msec})
        ("t=1000000000.250000", 1_000_000_000.25),
    ],
)
def test_request_start_units(value, epoch):
    assert parse_request_start(value) == pytest.approx(epoch, abs=1e-6)


@pytest.mark.parametrize(
    "value", [None, "", "t=", "t=abc", "t=-5", "t=1.", "t=.5", "t=1.2.3", "t=1e9", "t=\u00b2", "1"]
)
def test_request_start_garbage_is_ignored(value):
    assert parse_request_start(value) is None


class _FakeService:
    def __init__(self) -> None:
        self.calls: list[float | None] = []

    async def recommend(self, user_id, k, request_id, arrival=None):
        self.calls.append(arrival)

        class R:
            tier = "primary"
            payload = {"items": [], "tier": "primary"}

        return R()

    async def readiness(self):
        return True, {}

    def metrics_text(self) -> str:
        return ""

    def count_http_error(self, status: int) -> None:
        pass


def _request(received_at: float, **headers: str) -> Request:
    return Request("POST", "/v1/recommend", "", headers, b'{"user_id": 1}', received_at)


def test_the_gate_sheds_before_the_service_and_starts_the_deadline_at_arrival():
    seen: list[tuple[float, bool, str]] = []
    gate = OverloadGate(S, observe=lambda d, a, s: seen.append((d, a, s)))
    service = _FakeService()
    app = GatewayApp(service, gate)
    # queued 3 ms in the loop: served, and its deadline counts from its first byte
    first_byte = time.monotonic() - 0.003
    resp = asyncio.run(app(_request(first_byte)))
    assert resp.status == 200 and service.calls == [first_byte]
    assert seen[-1][2] == "gateway" and seen[-1][0] >= 0.003
    # the balancer stamped it 8 ms before the gateway read it: the earlier arrival counts
    read = time.monotonic()
    stamp = time.time() - 0.008
    asyncio.run(app(_request(read, **{"x-request-start": f"t={int(stamp * 1e6)}"})))
    assert service.calls[-1] == pytest.approx(read - 0.008, abs=0.002)
    assert seen[-1][2] == "balancer" and seen[-1][0] >= 0.007
    # queued 150 ms: shed with a 503 and Retry-After, the service never asked
    resp = asyncio.run(app(_request(time.monotonic() - 0.150)))
    assert resp.status == 503 and ("Retry-After", "1") in resp.headers
    body = json.loads(resp.body)
    assert body["field"] == "load" and "5 ms" in body["allowed"]
    assert len(service.calls) == 2 and seen[-1][1] is False
    # other paths are never shed
    health = Request("GET", "/healthz", "", {}, b"", time.monotonic() - 1.0)
    assert asyncio.run(app(health)).status == 200


GOOD_ARGS = ["--port", "0", "--preset", "tiny", "--shard-primary", "127.0.0.1:7001"]


def test_overload_options_default_and_are_validated(capsys):
    from system_under_test.gateway.settings import parse_settings

    # measured, not shed, unless asked: a retried request's stamp carries its wait elsewhere
    assert parse_settings(GOOD_ARGS).overload == OverloadSettings(enabled=False)
    assert parse_settings(GOOD_ARGS + ["--shed"]).overload == OverloadSettings()
    s = parse_settings(GOOD_ARGS + ["--overload-target-ms", "3", "--no-shed"]).overload
    assert s.target_s == pytest.approx(0.003) and not s.enabled
    with pytest.raises(SystemExit) as info:
        parse_settings(GOOD_ARGS + ["--shed", "--no-shed"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    for extra, message in (
        (["--overload-target-ms", "0"], "--overload-target-ms 0.0 must be in (0, --sla-ms 20)"),
        (["--overload-target-ms", "25"], "--overload-target-ms 25.0 must be in (0, --sla-ms 20)"),
        (
            ["--overload-interval-ms", "4"],
            "--overload-interval-ms 4.0 must be above --overload-target-ms 5",
        ),
        (["--overload-retry-after-s", "0"], "--overload-retry-after-s 0 must be in 1..3600"),
    ):
        with pytest.raises(SystemExit) as info:
            parse_settings(GOOD_ARGS + extra)
        assert info.value.code == 2
        assert message in capsys.readouterr().err
