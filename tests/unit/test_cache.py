"""The gateway's caches: L1 rows in process, L2 in a real redis-server (and a dead one)."""

from __future__ import annotations

import socket
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from system_under_test.gateway.cache import RedisL2, RowCache, pack_row, unpack_row


def rows_for(ids: np.ndarray, dim: int = 4) -> np.ndarray:
    """A row that encodes its id, so a wrong slot shows up as a wrong value."""
    return (
        np.repeat(np.asarray(ids, np.float32)[:, None], dim, axis=1)
        + np.arange(dim, dtype=np.float32) / 10
    )


def test_l1_hit_miss_and_dedup():
    cache = RowCache(capacity=8, dim=4, n_ids=100)
    hit, rows = cache.get(np.array([1, 2, 3]))
    assert not hit.any() and (rows == 0).all() and cache.misses == 3
    inserted = cache.put(np.array([3, 1, 3, 1, 5]), rows_for([3, 1, 3, 1, 5]))
    assert inserted == 3 and len(cache) == 3  # duplicates inserted once
    assert cache.put(np.array([1, 5]), rows_for([1, 5])) == 0  # already cached
    hit, rows = cache.get(np.array([5, 2, 1, 1]))
    assert hit.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(rows[[0, 2, 3]], rows_for([5, 1, 1]))
    assert (rows[1] == 0).all()
    np.testing.assert_array_equal(cache.get_one(3), rows_for([3])[0])
    assert cache.get_one(4) is None


def test_l1_ignores_out_of_range_ids_and_disabled_cache():
    cache = RowCache(capacity=4, dim=4, n_ids=10)
    assert cache.put(np.array([-1, 10, 99]), rows_for([-1, 10, 99])) == 0
    assert not cache.get(np.array([-1, 10]))[0].any()
    off = RowCache(capacity=0, dim=4, n_ids=10)
    assert off.put(np.array([1]), rows_for([1])) == 0 and off.get_one(1) is None


@settings(max_examples=100, deadline=None)
@given(
    batches=st.lists(st.lists(st.integers(0, 199), max_size=40), max_size=30),
    capacity=st.integers(1, 50),
)
def test_l1_eviction_stays_bounded_and_rows_stay_correct(batches, capacity):
    cache = RowCache(capacity=capacity, dim=4, n_ids=200)
    for batch in batches:
        ids = np.array(batch, dtype=np.int64)
        cache.put(ids, rows_for(ids))
        assert len(cache) <= capacity
        cached = cache.slot_ids[cache.slot_ids >= 0]
        assert len(np.unique(cached)) == len(cached)  # no id in two slots
        assert (cache.slot_of[cached] >= 0).all()
        assert int((cache.slot_of >= 0).sum()) == len(cached)  # index and slots agree
        hit, rows = cache.get(np.arange(200))
        np.testing.assert_array_equal(rows[hit], rows_for(np.arange(200)[hit]))


def test_l1_clock_keeps_referenced_rows():
    cache = RowCache(capacity=100, dim=4, n_ids=10_000)
    cache.put(np.arange(100), rows_for(np.arange(100)))
    hot = np.arange(10)
    for start in range(100, 1000, 10):
        cache.get(hot)  # hot rows are referenced between every put
        cache.put(np.arange(start, start + 10), rows_for(np.arange(start, start + 10)))
    assert cache.get(hot)[0].mean() >= 0.8


def test_row_packing_round_trip():
    row = np.arange(8, dtype=np.float32) / 3
    np.testing.assert_array_equal(unpack_row(pack_row(row), 8), row)
    assert unpack_row(b"short", 8) is None and unpack_row(None, 8) is None


def test_l2_round_trip_with_real_redis(redis_server):
    errors: list[str] = []
    l2 = RedisL2(redis_server.url, on_error=errors.append)
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


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_l2_redis_down_is_a_fast_miss_then_skipped():
    errors: list[str] = []
    l2 = RedisL2(f"redis://127.0.0.1:{_dead_port()}/0", on_error=errors.append, skip_s=1.0)
    try:
        t0 = time.perf_counter()
        assert l2.mget(["a"]) is None
        first = time.perf_counter() - t0
        assert first < 0.005, f"a dead Redis cost {first * 1000:.2f} ms; the budget is 5 ms"
        assert errors == ["get"] and l2.errors == 1 and not l2.available
        t0 = time.perf_counter()
        for _ in range(100):
            assert l2.mget(["a"]) is None
            assert not l2.set_many({"a": b"1"})
        per_call = (time.perf_counter() - t0) / 200
        assert per_call < 0.0001 and l2.errors == 1  # skipped by the breaker, not retried
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
    l2 = RedisL2(redis_server.url, skip_s=1.0, clock=lambda: clock[0])
    try:
        l2._failed("get", RuntimeError("simulated"))
        assert l2.mget(["x"]) is None  # skipped
        clock[0] = 1.5
        assert l2.mget(["x"]) == [None]  # used again
    finally:
        l2.close()
