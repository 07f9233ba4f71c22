"""The gateway's caches: L1 rows in process, the L2 row codec (L2 against a real Redis:
tests/integration/test_cache_redis.py)."""

from __future__ import annotations

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


def test_features_refill_a_restarted_redis_in_chunks_between_other_work():
    """After Redis comes back empty, the features go back in chunks with the event loop free
    in between (one big pipeline would stall every request in flight)."""
    import asyncio

    import virtual_loop
    from sim_cluster import SimRedis

    from system_under_test.gateway.features import FeatureStore

    store = FeatureStore(np.arange(30).reshape(10, 3), np.ones((10, 2), np.float32), "v9")
    redis = SimRedis()

    async def scenario():
        loop = asyncio.get_running_loop()
        l2 = RedisL2("redis://sim", clock=loop.time)
        l2.client = redis  # type: ignore[assignment]
        ticks = []
        ticker = loop.create_task(tick(ticks))
        written = await store.refill(l2, chunk=3, pause_s=0.001)
        ticker.cancel()
        again = await store.refill(l2, chunk=3)  # present now: nothing to do
        return written, again, ticks

    async def tick(ticks):
        while True:
            ticks.append(len(redis.store))
            await asyncio.sleep(0.0005)

    written, again, ticks = virtual_loop.run(scenario())
    assert (written, again) == (10, 0)
    assert {3, 6, 9} <= set(ticks)  # other work ran between the chunks
    assert store.decode(redis.store[store.key(7)])[0].tolist() == [21, 22, 23]
    assert redis.store[store.loaded_key] == b"1"


def test_start_up_work_gets_a_patient_connection_to_the_same_redis():
    from system_under_test.gateway.cache import START_UP_TIMEOUT_S, RedisL2

    l2 = RedisL2("redis://127.0.0.1:6399/0", password="s3cret")  # redis-py connects lazily
    patient = l2.patient()
    kw = patient.client.connection_pool.connection_kwargs
    assert kw["socket_timeout"] == START_UP_TIMEOUT_S and kw["socket_connect_timeout"] == 2.0
    assert kw["password"] == "s3cret" and kw["port"] == 6399
    assert l2.client.connection_pool.connection_kwargs["socket_timeout"] == 0.002
    assert patient.available and patient.skip_s == 0.0
    patient.close()
