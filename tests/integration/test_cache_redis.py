"""The gateway's L2 cache against a real redis-server, a dead port and a listener that never
answers: round trips, fast misses, the breaker's skip and the 2 ms timeouts."""

from __future__ import annotations

import socket
import time

import numpy as np

from system_under_test.gateway.cache import RedisL2, pack_row, unpack_row


def test_l2_round_trip_with_real_redis(redis_server):
    errors: list[str] = []
    l2 = RedisL2(redis_server.url, on_error=errors.append, password=redis_server.password)
    try:
        assert l2.ping()
        row = np.linspace(0, 1, 16, dtype=np.float32)
        assert l2.set_many({"t:user:1": pack_row(row), "t:user:2": pack_row(row * 2)})
        got = l2.mget(["t:user:1", "t:user:2", "t:user:3"])
        assert got is not None
        np.testing.assert_array_equal(unpack_row(got[0], 16), row)
        np.testing.assert_array_equal(unpack_row(got[1], 16), row * 2)
        assert got[2] is None
        assert errors == [] and l2.errors == 0
    finally:
        l2.close()


class Untouchable:
    """Stands in for the Redis client while the breaker skips it: any use is a failure."""

    def __getattr__(self, name: str):
        raise AssertionError(f"Redis client used ({name}) while the breaker skips Redis")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_miss_on_a_dead_redis() -> tuple[RedisL2, list[str], float]:
    """A fresh L2 on a dead port, its first (refused) lookup, and what that lookup cost."""
    errors: list[str] = []
    clock = [0.0]  # held still: every later call falls inside the skip
    l2 = RedisL2(
        f"redis://127.0.0.1:{_dead_port()}/0",
        on_error=errors.append,
        skip_s=1.0,
        clock=lambda: clock[0],
    )
    t0 = time.perf_counter()
    assert l2.mget(["a"]) is None
    return l2, errors, time.perf_counter() - t0


def test_l2_redis_down_is_a_fast_miss_then_skipped():
    # The cost of a refused connection, the least of five fresh clients: what the code path
    # costs, not the machine's worst moment (one lookup took 103 ms while a cluster started
    # beside the test run; the test's other calls took microseconds).
    l2, errors, first = _first_miss_on_a_dead_redis()
    costs = [first]
    for _ in range(4):
        other, _, cost = _first_miss_on_a_dead_redis()
        other.close()
        costs.append(cost)
    try:
        shown = ", ".join(f"{c * 1000:.2f}" for c in costs)
        assert min(costs) < 0.005, f"a dead Redis cost {shown} ms; the budget is 5 ms"
        assert errors == ["get"] and l2.errors == 1 and not l2.available
        dead_client, l2.client = l2.client, Untouchable()
        for _ in range(100):  # skipped by the breaker: Redis is not even asked
            assert l2.mget(["a"]) is None
            assert not l2.set_many({"a": b"1"})
        assert l2.errors == 1, l2.last_error
        l2.client = dead_client
    finally:
        l2.close()


def test_l2_frozen_redis_times_out_in_milliseconds():
    """A listener that never answers (like a SIGSTOPped Redis): the 2 ms timeouts bound it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        l2 = RedisL2(f"redis://127.0.0.1:{port}/0", skip_s=0.0)
        try:
            costs = []
            for _ in range(5):
                t0 = time.perf_counter()
                assert l2.mget(["a"]) is None
                costs.append(time.perf_counter() - t0)
            assert "Timeout" in l2.last_error
            # 2 ms timeout plus Python overhead; the max allows for a scheduling hiccup.
            assert min(costs) < 0.005 and max(costs) < 0.02, f"costs {costs}"
        finally:
            l2.close()


def test_l2_restarted_redis_is_used_again_after_skip(redis_server):
    clock = [0.0]
    l2 = RedisL2(
        redis_server.url, skip_s=1.0, clock=lambda: clock[0], password=redis_server.password
    )
    try:
        l2._failed("get", RuntimeError("simulated"))
        assert l2.mget(["x"]) is None  # skipped
        clock[0] = 1.5
        assert l2.mget(["x"]) == [None]  # used again
    finally:
        l2.close()
