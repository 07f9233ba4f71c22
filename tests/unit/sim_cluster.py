"""A simulated recommender cluster around the gateway's real request path, on virtual time.

The gateway is the real one: ``RecommendService`` with its features, caches, retrieve fan-out,
ranking and fallbacks, over the real ``ShardCaller`` (plans, breakers, probes, retry budget,
hedging) and the real ``RedisL2`` (its skip-after-failure breaker). Everything it talks to is
simulated in process: each shard copy is a :class:`SimCopy` that answers with the real
``ShardService`` over tiny random tables, after a latency its *state* decides; the region is a
:class:`SimCopy` too; Redis is a dict behind a redis-py shaped client that can be down. Time is
the virtual clock of ``virtual_loop.VirtualTimeLoop``: a copy's latency, a deadline or a
breaker's cool-down pass at once, and computing takes no time, so every outcome is exact.

Copy states: ``live`` answers in ``LIVE_S``; ``dead`` refuses (``Unavailable``) in ``DEAD_S``;
``frozen`` accepts and never answers; ``slow`` answers after ``SLOW_S`` (+15 ms: later than any
call may take); ``flaky`` fails the first attempt of every ``FLAKY_EVERY``-th request with an
``injected`` remote error (its retries and probes answer, like a fault point keyed by request
id). A copy records every attempt the gateway leaves running past the timeout it sent it with.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from system_under_test import protocol
from system_under_test.gateway.cache import RedisL2
from system_under_test.gateway.calls import shard_caller
from system_under_test.gateway.fallback import CircuitBreaker
from system_under_test.gateway.metrics import GatewayMetrics
from system_under_test.gateway.model import ModelBundle
from system_under_test.gateway.service import RecommendService
from system_under_test.gateway.settings import Address, GatewaySettings
from system_under_test.models import DLRMRanker
from system_under_test.shard_server import ShardService, ShardTables

LIVE_S = 0.0005
DEAD_S = 0.0001
SLOW_S = 0.015
FLAKY_EVERY = 32
STATES = ("live", "dead", "frozen", "slow", "flaky")

N_SHARDS, N_USERS, N_ITEMS, DIM, N_DENSE, N_CATEGORIES, HISTORY = 4, 120, 240, 8, 4, 5, 5


def flaky_hit(rid: str) -> bool:
    """Does a flaky copy fail this attempt? The first attempt of every FLAKY_EVERY-th request."""
    number = rid.rsplit("-", 1)[-1]
    return number.isdigit() and int(number) % FLAKY_EVERY == 0


class SimCopy:
    """One simulated peer with the gateway client's interface (``send``, ``abandon``, ``call``)."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        answer: Callable[[protocol.Message], tuple[dict[str, Any], dict[str, np.ndarray]]],
    ) -> None:
        self.name, self.loop, self.answer = name, loop, answer
        self.state = "live"
        self._ids = itertools.count(1)
        # call id -> (timer or None, sent at, timeout, callback)
        self.pending: dict[int, tuple[asyncio.TimerHandle | None, float, float, Any]] = {}
        self.sent: list[tuple[float, str, str]] = []  # (time, op, rid)
        self.violations: list[str] = []

    def set_state(self, state: str) -> None:
        was, self.state = self.state, state
        if state == "dead":  # a killed process drops its connections: calls in flight fail
            for call_id in list(self.pending):
                self._deliver(call_id, None, protocol.Unavailable(f"{self.name}: killed"))
        elif was == "frozen":  # a thawed process answers its backlog
            for call_id, (timer, _sent, _t, _cb) in list(self.pending.items()):
                if timer is None:
                    self._schedule(call_id, LIVE_S, None)

    def send(self, op: str, timeout_s: float, fields: Any, tensors: Any, callback: Any) -> int:
        call_id = next(self._ids)
        now = self.loop.time()
        rid = str((fields or {}).get("rid", ""))
        self.sent.append((now, op, rid))
        if timeout_s <= 0:
            self.violations.append(f"{self.name}: {op} {rid} sent with no time left")
        self.pending[call_id] = (None, now, timeout_s, callback)
        state = self.state
        if state == "dead":
            self._schedule(call_id, DEAD_S, protocol.Unavailable(f"{self.name}: refused"))
        elif state == "frozen":
            pass  # accepted, never answered
        elif state == "flaky" and flaky_hit(rid):
            error = protocol.RemoteError("injected", f"{self.name}: injected error")
            self._schedule(call_id, LIVE_S, error)
        else:
            message = protocol.Message({"op": op, **(fields or {})}, dict(tensors or {}))
            self._schedule(call_id, SLOW_S if state == "slow" else LIVE_S, message)
        return call_id

    def _schedule(self, call_id: int, delay: float, outcome: Any) -> None:
        _timer, sent, timeout, callback = self.pending[call_id]
        timer = self.loop.call_later(delay, self._deliver, call_id, outcome, None)
        self.pending[call_id] = (timer, sent, timeout, callback)

    def _deliver(self, call_id: int, outcome: Any, error: BaseException | None) -> None:
        entry = self.pending.pop(call_id, None)
        if entry is None:
            return  # abandoned by the gateway
        timer, sent, timeout, callback = entry
        if timer is not None:
            timer.cancel()
        if isinstance(outcome, BaseException):
            outcome, error = None, outcome
        if self.loop.time() > sent + timeout + 1e-9:
            self.violations.append(
                f"{self.name}: an attempt sent at {sent:.4f} with a {timeout * 1e3:.2f} ms "
                f"timeout was still waited for at {self.loop.time():.4f}"
            )
        if error is not None:
            callback(None, error)
            return
        try:
            fields, tensors = self.answer(outcome)
        except protocol.RemoteError as exc:
            callback(None, exc)
            return
        callback(protocol.Message({"ok": True, **fields}, tensors), None)

    def abandon(self, call_id: int, stale_after_s: float | None = None) -> bool:
        entry = self.pending.pop(call_id, None)
        if entry is not None and entry[0] is not None:
            entry[0].cancel()
        return False

    async def call(
        self, op: str, timeout_s: float, fields: Any = None, tensors: Any = None
    ) -> protocol.Message:
        fut: asyncio.Future[protocol.Message] = self.loop.create_future()

        def done(msg: protocol.Message | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(msg)  # type: ignore[arg-type]

        call_id = self.send(op, timeout_s, fields, tensors, done)
        timer = self.loop.call_later(
            timeout_s, done, None, protocol.Timeout(f"{self.name}: no answer")
        )
        try:
            return await fut
        finally:
            timer.cancel()
            self.abandon(call_id)

    async def close(self) -> None:
        pass


class SimRedis:
    """A redis-py shaped client over a dict; down, every command raises ``ConnectionError``.
    Coming back up, it is empty (a restarted Redis without persistence)."""

    def __init__(self) -> None:
        import redis

        self.error = redis.ConnectionError
        self.store: dict[str, bytes] = {}
        self.up = True

    def set_up(self, up: bool) -> None:
        if up and not self.up:
            self.store.clear()
        self.up = up

    def _check(self) -> None:
        if not self.up:
            raise self.error("Connection refused (simulated)")

    def mget(self, keys: list[str]) -> list[bytes | None]:
        self._check()
        return [self.store.get(k) for k in keys]

    def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        self._check()
        self.store[key] = value

    def pipeline(self, transaction: bool = False) -> SimRedis._Pipe:
        return SimRedis._Pipe(self)

    def close(self) -> None:
        pass

    class _Pipe:
        def __init__(self, redis: SimRedis) -> None:
            self.redis, self.items = redis, []  # type: list[tuple[str, bytes]]

        def set(self, key: str, value: bytes, ex: int | None = None) -> None:
            self.items.append((key, value))

        def execute(self) -> None:
            self.redis._check()
            self.redis.store.update(self.items)


def _bundle(rng: np.random.Generator) -> ModelBundle:
    torch.manual_seed(0)
    ranker = DLRMRanker(N_CATEGORIES, N_DENSE, DIM, (8, DIM), (8,)).eval()
    history = rng.integers(0, N_ITEMS, (N_USERS, HISTORY))
    history[:, -1] = -1  # padding, as in the trained features
    category = rng.integers(0, N_CATEGORIES, N_ITEMS).astype(np.int64)
    return ModelBundle(
        version="sim",
        ranker=ranker,
        device=torch.device("cpu"),
        n_users=N_USERS,
        n_items=N_ITEMS,
        n_dense=N_DENSE,
        dim=DIM,
        n_candidates=12,
        item_category=category,
        item_category_t=torch.from_numpy(category),
        popular=np.arange(30, dtype=np.int64),
        history=history.astype(np.int64),
        dense=rng.standard_normal((N_USERS, N_DENSE)).astype(np.float32),
    )


def _region_answer(msg: protocol.Message) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    k = int(msg.header["k"])
    ids = np.arange(N_ITEMS - k, N_ITEMS, dtype=np.int64)[::-1].copy()
    return {"filled": 0}, {"ids": ids, "scores": np.linspace(1, 0, k).astype(np.float32)}


class SimCluster:
    """The real gateway service wired to simulated copies, a region and Redis."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        seed: int = 0,
        breaker: Callable[[float], CircuitBreaker] | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.loop = loop
        users = torch.from_numpy(rng.standard_normal((N_USERS, DIM)).astype(np.float32))
        items = torch.from_numpy(rng.standard_normal((N_ITEMS, DIM)).astype(np.float32))
        self.copies: dict[str, SimCopy] = {}
        self.shard_services: dict[str, ShardService] = {}  # their fault points, by copy name
        clients = []
        for s in range(N_SHARDS):
            tables = ShardTables.from_full(users, items, s, N_SHARDS)
            pair = []
            for role in ("primary", "replica"):
                service = ShardService(tables, role, "sim")
                name = f"shard-{s}-{role}"
                self.shard_services[name] = service
                self.copies[name] = SimCopy(name, loop, self._shard_answer(service))
                pair.append(self.copies[name])
            clients.append((pair[0], pair[1]))
        self.region = SimCopy("region", loop, _region_answer)
        self.redis = SimRedis()
        settings = GatewaySettings(
            host="127.0.0.1",
            port=0,
            preset="tiny",
            artifacts=None,
            primaries=tuple(Address("sim", s) for s in range(N_SHARDS)),
            replicas=tuple(Address("sim", 100 + s) for s in range(N_SHARDS)),
            region=Address("sim", 200),
            redis="redis://sim",
            l1_rows=64,  # smaller than the tables: rows are evicted and fetched again
        )
        self.settings = settings
        metrics = GatewayMetrics()
        caller = shard_caller(
            clients,
            metrics,
            settings.slow_call_s,
            clock=loop.time,
            rng=random.Random(seed),
            breaker=breaker,
        )
        l2 = RedisL2(settings.redis or "", clock=loop.time)
        l2.client = self.redis  # type: ignore[assignment]
        self.service = RecommendService(
            settings, _bundle(rng), caller, self.region, l2, metrics, clock=loop.time
        )
        self.service.features.load_into(l2)

    @staticmethod
    def _shard_answer(service: ShardService) -> Callable[[protocol.Message], Any]:
        def answer(msg: protocol.Message) -> Any:
            reply = service.respond(msg)
            assert isinstance(reply, tuple)
            return reply

        return answer

    def violations(self) -> list[str]:
        return [v for c in (*self.copies.values(), self.region) for v in c.violations]
