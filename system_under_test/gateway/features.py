"""The gateway's feature store: each user's history item ids and dense features.

By default the arrays of ``features.npz`` are held in process (a row gather per request). With
``--redis`` the features are also written to Redis on start-up (if the model version's keys are
absent) and read from there, as a production gateway would read a shared feature store; any Redis
failure or missing key falls back to the in-process copy and is counted
(``recchaos_redis_errors_total{use="features"}``, ``recchaos_cache_misses_total{level="features"}``).

Redis value of ``recchaos:{version}:feat:{user}``: the history ids (little-endian int64, padding
dropped) followed by the ``n_dense`` dense features (little-endian float32).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from system_under_test.gateway.cache import RedisL2

log = logging.getLogger("gateway.features")

_BATCH = 2000


class FeatureStore:
    def __init__(self, history: np.ndarray, dense: np.ndarray, version: str) -> None:
        if history.ndim != 2 or dense.ndim != 2 or len(history) != len(dense):
            raise ValueError(
                f"features need history [U, H] and dense [U, n_dense]; got "
                f"{list(history.shape)} and {list(dense.shape)}"
            )
        self.history = np.ascontiguousarray(history, dtype=np.int64)
        self.dense = np.ascontiguousarray(dense, dtype=np.float32)
        self.version = version
        self.n_users, self.n_dense = len(history), int(dense.shape[1])
        self.prefix = f"recchaos:{version}:"
        self.loaded_key = f"{self.prefix}feat:loaded"

    def key(self, user_id: int) -> str:
        return f"{self.prefix}feat:{user_id}"

    def local(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(history ids without padding, dense) from the in-process arrays."""
        hist = self.history[user_id]
        return hist[hist >= 0], self.dense[user_id]

    def encode(self, user_id: int) -> bytes:
        hist, dense = self.local(user_id)
        return hist.astype("<i8").tobytes() + dense.astype("<f4").tobytes()

    def decode(self, blob: bytes | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Features from a Redis value, or None when it is absent or malformed."""
        tail = 4 * self.n_dense
        if blob is None or len(blob) < tail or (len(blob) - tail) % 8:
            return None
        hist = np.frombuffer(blob, dtype="<i8", count=(len(blob) - tail) // 8).astype(np.int64)
        dense = np.frombuffer(blob, dtype="<f4", offset=len(blob) - tail).astype(np.float32)
        return hist, dense

    def load_into(self, l2: RedisL2) -> int:
        """Write every user's features to Redis unless this version's are there already.

        Returns the number of users written (0 when present or when Redis failed: the gateway
        then serves from the in-process copy).
        """
        present = l2.mget([self.loaded_key], use="features")
        if present is None:
            log.warning(
                "redis unavailable at start-up (%s): features served from process", l2.last_error
            )
            return 0
        if present[0] is not None:
            return 0
        for start in range(0, self.n_users, _BATCH):
            batch = {
                self.key(u): self.encode(u) for u in range(start, min(start + _BATCH, self.n_users))
            }
            if not l2.set_many(batch, use="features"):
                log.warning(
                    "redis failed while loading features (%s): served from process", l2.last_error
                )
                return 0
        l2.set_many({self.loaded_key: b"1"}, use="features")
        return self.n_users

    async def refill(self, l2: RedisL2, chunk: int = 100, pause_s: float = 0.005) -> int:
        """Write every user's features back into a Redis that lost them (restarted, flushed),
        ``chunk`` users at a time with a pause between: each write blocks the event loop, so
        one big pipeline would stall every request in flight (2,000 keys: milliseconds).

        Returns the number of users written (0 when they were present or Redis failed).
        """
        present = l2.mget([self.loaded_key], use="features")
        if present is None or present[0] is not None:
            return 0
        for start in range(0, self.n_users, chunk):
            users = range(start, min(start + chunk, self.n_users))
            if not l2.set_many({self.key(u): self.encode(u) for u in users}, use="features"):
                log.warning("redis failed while refilling features (%s)", l2.last_error)
                return start
            await asyncio.sleep(pause_s)
        l2.set_many({self.loaded_key: b"1"}, use="features")
        return self.n_users
