"""Embedding-row caches of the gateway: L1 in process (numpy) and L2 in Redis (optional).

L1 (:class:`RowCache`) absorbs hot rows so that a request needs fewer and smaller shard calls
(per-call overhead dominates their cost). L2 (:class:`RedisL2`) is a shared read-through cache
and feature store behind tight timeouts, no retries and a breaker: Redis is a cache, so a slow or
dead Redis must cost a request about nothing (a miss on a dead Redis stalled 3.76 s with
redis-py's defaults and cost 0.2 ms with 2 ms timeouts and no retries: docs/architecture.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger("gateway.cache")

_MIN, _MAX = np.minimum.reduce, np.maximum.reduce


class RowCache:
    """A fixed number of embedding rows with vectorised get/put and approximate clock eviction.

    Rows live in one ``[capacity, dim]`` float32 array; a dense ``id -> slot`` index (``n_ids``
    int32 entries, e.g. 400 KB for 100k ids) makes a batch lookup a single gather. Eviction is
    an approximate CLOCK: a hit sets the slot's reference bit, and a put that needs ``m`` victims
    scans a window of at least ``4 m`` slots from the hand, taking unreferenced slots first and
    clearing the window's bits. Hot rows therefore survive a scan, but the policy is not exact LRU,
    and that is fine for a cache of immutable rows. ``capacity`` 0 disables the cache.
    """

    def __init__(self, capacity: int, dim: int, n_ids: int) -> None:
        if capacity < 0 or dim < 1 or n_ids < 1:
            raise ValueError(
                f"RowCache needs capacity >= 0, dim >= 1, n_ids >= 1; "
                f"got {capacity}, {dim}, {n_ids}"
            )
        self.capacity, self.dim, self.n_ids = capacity, dim, n_ids
        self.rows = np.zeros((capacity, dim), dtype=np.float32)
        self.slot_ids = np.full(capacity, -1, dtype=np.int64)
        self.ref = np.zeros(capacity, dtype=bool)
        self.slot_of = np.full(n_ids, -1, dtype=np.int32)
        self.used = 0
        self.hand = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self.used

    def _valid(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= 0) & (ids < self.n_ids)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(hit mask, slots)`` for a batch of ids; slots are -1 where missed. Counts hits."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.capacity and ids.size and _MIN(ids) >= 0 and _MAX(ids) < self.n_ids:
            slots = self.slot_of[ids]  # every id valid: one gather (the common case)
        else:
            slots = np.full(ids.shape, -1, dtype=np.int32)
            if self.capacity:
                ok = self._valid(ids)
                slots[ok] = self.slot_of[ids[ok]]
        hit = slots >= 0
        n_hit = int(np.count_nonzero(hit))
        self.hits += n_hit
        self.misses += ids.size - n_hit
        if n_hit == ids.size:
            if n_hit:
                self.ref[slots] = True
        elif n_hit:
            self.ref[slots[hit]] = True
        return hit, slots

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(hit mask, rows)``; rows of misses are zero."""
        hit, slots = self.lookup(ids)
        if not self.capacity or not len(hit):
            return hit, np.zeros((len(hit), self.dim), dtype=np.float32)
        out = self.rows[slots]  # a miss (slot -1) gathers the last row: zeroed below
        if not hit.all():
            out[~hit] = 0.0
        return hit, out

    def get_one(self, row_id: int) -> np.ndarray | None:
        """One row (a copy) or None; the cheap path for the user row."""
        slot = int(self.slot_of[row_id]) if self.capacity and 0 <= row_id < self.n_ids else -1
        if slot < 0:
            self.misses += 1
            return None
        self.hits += 1
        self.ref[slot] = True
        return self.rows[slot].copy()

    def put(self, ids: np.ndarray, rows: np.ndarray) -> int:
        """Insert rows for ids not cached yet (duplicates and known ids are skipped); returns
        how many were inserted."""
        if not self.capacity:
            return 0
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.float32).reshape(len(ids), self.dim)
        if not (ids.size and _MIN(ids) >= 0 and _MAX(ids) < self.n_ids):
            keep = self._valid(ids)
            ids, rows = ids[keep], rows[keep]
        fresh = self.slot_of[ids] < 0
        if not fresh.any():
            return 0  # all cached already (the common case for hot candidates)
        if not fresh.all():
            ids, rows = ids[fresh], rows[fresh]
        ids, first = np.unique(ids, return_index=True)  # duplicates: the first occurrence
        rows = rows[first]
        if len(ids) > self.capacity:
            ids, rows = ids[-self.capacity :], rows[-self.capacity :]
        if not len(ids):
            return 0
        slots = self._victims(len(ids))
        old = self.slot_ids[slots]
        self.slot_of[old[old >= 0]] = -1
        self.slot_ids[slots] = ids
        self.rows[slots] = rows
        self.ref[slots] = False
        self.slot_of[ids] = slots
        return len(ids)

    def _victims(self, m: int) -> np.ndarray:
        free = min(m, self.capacity - self.used)
        taken = np.arange(self.used, self.used + free, dtype=np.int64)
        self.used += free
        need = m - free
        if not need:
            return taken
        width = min(self.capacity, max(4 * need, 64))
        window = (self.hand + np.arange(width)) % self.capacity
        window = window[self.slot_ids[window] >= 0]  # not the free slots just taken
        if len(window) < need:
            window = np.flatnonzero(self.slot_ids >= 0)
            width = self.capacity
        referenced = self.ref[window]
        order = np.concatenate([window[~referenced], window[referenced]])
        self.ref[window] = False
        self.hand = int((self.hand + width) % self.capacity)
        return np.concatenate([taken, order[:need]])

    def put_one(self, row_id: int, row: np.ndarray) -> None:
        self.put(np.array([row_id], dtype=np.int64), row[None, :])


START_UP_TIMEOUT_S = 2.0


class RedisL2:
    """A Redis connection used as the shared L2 cache and feature store, behind a breaker.

    2 ms socket and connect timeouts and no retries; after any failure Redis is skipped for
    ``skip_s`` (1 s) so a dead Redis costs one failed call per second, not one per request.
    redis-py is synchronous: a hit on loopback costs about 0.1-0.2 ms of the event loop, which is
    cheaper than the task hops of ``redis.asyncio`` for one round trip per request.
    Every method returns None (or False) instead of raising; ``errors`` counts failures.
    ``password``: sent with AUTH on every new connection (the gateway passes
    ``RECCHAOS_REDIS_PASSWORD``, never a command-line URL); a password in the URL wins.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 0.002,
        skip_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[str], None] | None = None,
        password: str | None = None,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url, self.skip_s, self.clock = url, skip_s, clock
        self._password = password
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            health_check_interval=0,
            password=password,
        )
        self.errors = 0
        self._skip_until = 0.0
        self._on_error = on_error
        self.last_error = ""

    def patient(self, timeout_s: float = START_UP_TIMEOUT_S) -> RedisL2:
        """A connection to the same Redis with ``timeout_s`` timeouts, for start-up work (the
        bulk write of every user's features): 2 ms is a serving budget, and a start-up on a
        busy machine (or a container's first DNS lookup of its Redis) timed out at it, so the
        gateway served its features from the process for the whole run. Close it after use."""
        return RedisL2(self.url, timeout_s=timeout_s, skip_s=0.0, password=self._password)

    @property
    def available(self) -> bool:
        return self.clock() >= self._skip_until

    def _failed(self, use: str, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._skip_until = self.clock() + self.skip_s
        if self._on_error is not None:
            self._on_error(use)
        log.debug("redis %s failed (%s); skipping Redis for %.1f s", use, exc, self.skip_s)

    def mget(self, keys: Sequence[str], use: str = "get") -> list[bytes | None] | None:
        if not self.available:
            return None
        try:
            return self.client.mget(keys)  # type: ignore[return-value]  # bytes: no decoding
        except Exception as exc:  # noqa: BLE001 - any Redis failure is a cache miss
            self._failed(use, exc)
            return None

    def set_many(self, items: dict[str, bytes], use: str = "set", ex_s: int | None = None) -> bool:
        if not self.available or not items:
            return False
        try:
            if len(items) == 1 and ex_s is None:
                ((key, value),) = items.items()
                self.client.set(key, value)
            else:
                pipe = self.client.pipeline(transaction=False)
                for key, value in items.items():
                    pipe.set(key, value, ex=ex_s)
                pipe.execute()
            return True
        except Exception as exc:  # noqa: BLE001
            self._failed(use, exc)
            return False

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception as exc:  # noqa: BLE001
            self._failed("ping", exc)
            return False

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


def pack_row(row: np.ndarray) -> bytes:
    return np.ascontiguousarray(row, dtype="<f4").tobytes()


def unpack_row(blob: bytes | None, dim: int) -> np.ndarray | None:
    if blob is None or len(blob) != 4 * dim:
        return None
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)
