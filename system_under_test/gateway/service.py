"""The recommend pipeline: features, user row, one retrieve per shard, rank; and the fallbacks.

One request, with deadline = arrival + SLA - margin (every shard call gets the time that remains):

1. features: history ids and dense features (in process, or Redis with an in-process fallback);
2. user row: L1, else Redis L2 (read in the same round trip as the features), else from shard
   ``u % S``: its ``retrieve`` queried by the user's id answers the row with its candidates (one
   call on that shard, then the others');
3. one ``retrieve`` per shard (query = user row, top_n = n_candidates), piggybacking that shard's
   uncached history rows; the merged top candidates by score, minus items already in the history;
4. the ranker scores them; the top k are the answer. Rows seen are kept in L1.

Which shards a request needs. A shard is *required* when the request needs rows only that shard
holds: the user's row (if not cached) and uncached history rows. The fan-out to the other shards
is best-effort: a shard with no live copy only removes its item range from the search, the answer
reports ``"coverage"`` (the fraction of the item space searched, 1.0 normally) and the tier of the
parts that did answer, and ``recchaos_partial_coverage_total`` counts it. Only a request that
needs a dead shard goes to the degraded region; so does one whose deadline is nearly spent
(under 2 ms) before a shard phase. If the region fails too, the static popular list answers (in
process; never fails). The tier reported is the worst any part needed (fallback.Tier).

Unknown users (id >= n_users; negative ids are rejected by the API) get a cold-start answer: the
popular list, ``"cold_start": true``, tier ``primary`` (it needed no fallback).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from system_under_test import protocol, sharding
from system_under_test.gateway.cache import RedisL2, RowCache, pack_row, unpack_row
from system_under_test.gateway.calls import (
    BadReply,
    CallResult,
    ShardCaller,
    ShardCallFailed,
    error_kind,
)
from system_under_test.gateway.fallback import CircuitBreaker, Tier, worst
from system_under_test.gateway.features import FeatureStore
from system_under_test.gateway.metrics import GatewayMetrics
from system_under_test.gateway.model import ModelBundle
from system_under_test.gateway.settings import GatewaySettings

log = logging.getLogger("gateway.service")

# The region call gets the SLA (not the shard deadline: the margin is for fallbacks) minus this
# reserve for answering over HTTP; with less than _REGION_MIN_S left it is not tried at all, and
# only a timeout after at least _REGION_FAIR_TIMEOUT_S counts against its breaker.
_REGION_RESERVE_S = 0.0005
_REGION_MIN_S = 0.001
_REGION_FAIR_TIMEOUT_S = 0.005
# Users whose features one write of the background refill puts back into Redis: each write
# blocks the event loop (and must finish inside the 2 ms Redis timeout on a busy machine).
_REFILL_CHUNK = 50


@dataclass
class Result:
    tier: str
    payload: dict[str, Any]


class NeedFallback(Exception):
    """The sharded path cannot answer this request; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class _HistoryRows:
    """A request's history rows: which L1 holds (``hit``, ``rows`` filled where it does), the
    sorted ids it lacks, and each shard's bag of those (a slice of ``missing``)."""

    hit: np.ndarray
    rows: np.ndarray
    missing: np.ndarray
    bags: list[np.ndarray]


class _Stages:
    """Per-stage wall time of one request, in milliseconds."""

    def __init__(self, clock: Callable[[], float], arrival: float | None = None) -> None:
        self.clock = clock
        self.start = self.last = clock()
        self.ms: dict[str, float] = {}
        if arrival is not None and arrival < self.start:
            # Time between the request's arrival and its handling (event-loop queueing) counts.
            self.ms["queue"] = (self.start - arrival) * 1000
            self.start = arrival

    def lap(self, stage: str) -> float:
        now = self.clock()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self.last) * 1000
        self.last = now
        return now

    def done(self) -> dict[str, float]:
        self.ms["total"] = (self.clock() - self.start) * 1000
        return {k: round(v, 3) for k, v in self.ms.items()}


class _Throttled:
    """At most one log line per key per ``every_s``, with the count of suppressed ones."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last.get(key, -1e9) < self.every_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return
        n = self.suppressed.pop(key, 0)
        self.last[key] = now
        log.warning(msg + (f" (+{n} similar in the last {self.every_s:.0f} s)" if n else ""), *args)


class RecommendService:
    def __init__(
        self,
        settings: GatewaySettings,
        bundle: ModelBundle,
        caller: ShardCaller,
        region: Any | None,
        l2: RedisL2 | None,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.bundle, self.caller = settings, bundle, caller
        self.region, self.l2, self.metrics, self.clock = region, l2, metrics, clock
        self.n_shards = settings.n_shards
        self.bounds = bundle.bounds(self.n_shards)
        self.share = (np.diff(self.bounds) / bundle.n_items).tolist()
        self.users = RowCache(settings.l1_rows, bundle.dim, bundle.n_users)
        self.items = RowCache(settings.l1_rows, bundle.dim, bundle.n_items)
        self.features = FeatureStore(bundle.history, bundle.dense, bundle.version)
        self.region_breaker = CircuitBreaker(threshold=3, cooldown_s=1.0)
        self.min_left_s = settings.min_left_ms / 1000
        self.throttled = _Throttled()
        self._user_key = f"recchaos:{bundle.version}:user:"
        self._refill: asyncio.Task[int] | None = None

    # ---- the API's service interface

    async def recommend(
        self, user_id: int, k: int, request_id: str, arrival: float | None = None
    ) -> Result:
        """``arrival``: ``clock()`` time the request arrived (default now); the deadline and the
        total time count from it."""
        stages = _Stages(self.clock, arrival)
        try:
            if user_id >= self.bundle.n_users:
                result = self._cold_start(k, stages)
            else:
                result = await self._recommend(user_id, k, request_id, stages)
        except Exception:
            self.metrics.requests.inc("none", "error")
            raise
        self.metrics.requests.inc(
            result.tier, "cold_start" if result.payload.get("cold_start") else "ok"
        )
        timings = result.payload["timings_ms"]
        self.metrics.request_seconds.observe(timings["total"] / 1000, result.tier)
        for stage, ms in timings.items():
            if stage != "total":
                self.metrics.stage_seconds.observe(ms / 1000, stage)
        return result

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Every shard primary answers ping with our model version inside the request budget
        (the model is loaded, and the gateway warmed up before it listened: ready means serving
        in time, not merely answering)."""
        budget_s = self.settings.budget_s

        async def ping(s: int) -> str | None:
            client = self.caller.shards[s].primary
            sent = self.clock()
            try:
                msg = await client.call("ping", 0.25)
            except protocol.CallError as exc:
                return f"{exc.kind}: {exc}"
            took = self.clock() - sent
            version = msg.header.get("version")
            if version != self.bundle.version:
                return f"serves model {version!r}, the gateway {self.bundle.version!r}"
            if took > budget_s:
                return (
                    f"answered a ping in {took * 1000:.1f} ms, more than the request budget "
                    f"of {budget_s * 1000:.1f} ms"
                )
            return None

        problems = await asyncio.gather(*(ping(s) for s in range(self.n_shards)))
        not_ready = {f"shard-{s}-primary": p for s, p in enumerate(problems) if p}
        detail: dict[str, Any] = {
            "model_loaded": True,
            "model_version": self.bundle.version,
            "shards": self.n_shards,
            "not_ready": not_ready,
        }
        if self.l2 is not None:
            detail["redis"] = "ok" if self.l2.available else f"skipped: {self.l2.last_error}"
        return not not_ready, detail

    def metrics_text(self) -> str:
        return self.metrics.registry.render()

    def count_http_error(self, status: int) -> None:
        self.metrics.http_errors.inc(str(status))

    async def close(self) -> None:
        for copies in self.caller.shards:
            for client in (copies.primary, copies.replica):
                if client is not None:
                    await client.close()
        if self.region is not None:
            await self.region.close()
        if self._refill is not None:
            self._refill.cancel()
        if self.l2 is not None:
            self.l2.close()

    # ---- the pipeline

    async def _recommend(self, user_id: int, k: int, rid: str, stages: _Stages) -> Result:
        deadline = stages.start + self.settings.budget_s
        hist, dense, l2_row = self._features(user_id)
        stages.lap("features")
        try:
            if deadline - self.clock() < self.min_left_s:
                raise NeedFallback("deadline", "before the user row")
            need = self._history_rows(hist)
            user_vec = self._cached_user_row(user_id, l2_row)
            user_tier, owner = Tier.PRIMARY, None
            if user_vec is None:
                user_vec, owner = await self._retrieve_by_user(user_id, need.bags, deadline, rid)
                user_tier = owner[1].tier
            now = stages.lap("user")
            if deadline - now < self.min_left_s:
                raise NeedFallback(
                    "deadline", f"{(deadline - now) * 1000:.2f} ms left before retrieve"
                )
            cands, cand_emb, hist_mean, tiers, coverage = await self._retrieve(
                user_vec, hist, need, deadline, rid, owner
            )
            stages.lap("retrieve")
        except NeedFallback as exc:
            return await self._fallback(exc, k, rid, hist, dense, stages)
        items, scores = self._rank(user_vec, hist_mean, dense, cands, cand_emb, k)
        stages.lap("rank")
        tier = worst(user_tier, *tiers)
        return Result(tier.label, self._payload(items, scores, tier, stages, coverage=coverage))

    def _features(self, user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(history, dense, user row from L2 or None), in one Redis round trip if configured."""
        if self.l2 is None or not self.l2.available:
            hist, dense = self.features.local(user_id)
            return hist, dense, None
        want_row = self.users.slot_of[user_id] < 0 if self.users.capacity else True
        keys = [self.features.key(user_id)]
        if want_row:
            keys.append(f"{self._user_key}{user_id}")
        got = self.l2.mget(keys, use="features")
        feats = self.features.decode(got[0]) if got else None
        if feats is None:
            self.metrics.cache_misses.inc("features")
            feats = self.features.local(user_id)
            if got is not None:  # Redis is up but lacks the key (flushed, restarted): refill
                self._refill_features()
        else:
            self.metrics.cache_hits.inc("features")
        row = unpack_row(got[1], self.bundle.dim) if got and want_row else None
        if want_row and got is not None:
            (self.metrics.cache_hits if row is not None else self.metrics.cache_misses).inc("l2")
        return feats[0], feats[1], row

    def _refill_features(self) -> None:
        """Refill Redis's features in the background, a chunk at a time (one refill at once).

        Writing each missing user's features back on its request cost every request after a
        Redis restart a second blocking round trip (and the loop time every answer waited for).
        """
        if self._refill is not None and not self._refill.done():
            return
        assert self.l2 is not None
        self._refill = asyncio.get_running_loop().create_task(
            self.features.refill(self.l2, chunk=_REFILL_CHUNK)
        )
        self._refill.add_done_callback(self._refilled)

    def _refilled(self, task: asyncio.Task[int]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("refilling redis features failed", exc_info=task.exception())
        elif task.result():
            n = task.result()
            log.info("redis: refilled the features of %d of %d users", n, self.features.n_users)

    def _cached_user_row(self, user_id: int, l2_row: np.ndarray | None) -> np.ndarray | None:
        """The user's row from L1, else from Redis L2 (read with the features); None if neither
        holds it."""
        row = self.users.get_one(user_id)
        if row is not None:
            self.metrics.cache_hits.inc("l1")
            return row
        self.metrics.cache_misses.inc("l1")
        if l2_row is not None:
            self.users.put_one(user_id, l2_row)
        return l2_row

    async def _retrieve_by_user(
        self, user_id: int, bags: list[np.ndarray], deadline: float, rid: str
    ) -> tuple[np.ndarray, tuple[int, CallResult]]:
        """The user's own shard's ``retrieve``, queried by the user's row, which comes back in
        the same answer (``user_row``) and is cached: a request whose user row is not cached
        waits for that shard once, not for a ``lookup`` and then a ``retrieve``. The shard is
        required (no other holds the row). ``(row, (shard, result))``."""
        shard = sharding.user_shard(user_id, self.n_shards)
        bag = bags[shard]
        tensors = {"user_ids": np.array([user_id], dtype=np.int64)}
        if len(bag):
            tensors["bag_ids"] = bag
        try:
            res = await self.caller.call(
                shard,
                "retrieve",
                deadline,
                rid,
                {"top_n": self.bundle.n_candidates},
                tensors,
                self._retrieve_check(shard, len(bag), user_row=True),
            )
        except ShardCallFailed as exc:
            raise NeedFallback("user_shard", str(exc)) from None
        row = res.msg.tensors["user_row"][0].copy()
        self.users.put_one(user_id, row)
        if self.l2 is not None:
            self.l2.set_many({f"{self._user_key}{user_id}": pack_row(row)}, use="l2")
        return row, (shard, res)

    def _history_rows(self, hist: np.ndarray) -> _HistoryRows:
        """Which history rows L1 holds, and each shard's bag of the ones it does not."""
        hit, rows = self.items.get(hist)
        n_hist = len(hist)
        n_hit = int(np.count_nonzero(hit))
        if n_hit:
            self.metrics.cache_hits.inc("l1", amount=n_hit)
        if n_hit < n_hist:
            self.metrics.cache_misses.inc("l1", amount=n_hist - n_hit)
            missing = np.unique(hist[~hit])
            # sorted, so each shard's bag is a slice: cut at the shards' item bounds
            cuts = [0, *np.searchsorted(missing, self.bounds[1:-1]).tolist(), len(missing)]
            bags = [missing[cuts[s] : cuts[s + 1]] for s in range(self.n_shards)]
        else:
            missing = _NO_IDS
            bags = [_NO_IDS] * self.n_shards
        return _HistoryRows(hit, rows, missing, bags)

    async def _retrieve(
        self,
        user_vec: np.ndarray,
        hist: np.ndarray,
        need: _HistoryRows,
        deadline: float,
        rid: str,
        owner: tuple[int, CallResult] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Tier], float]:
        """Candidates (ids, rows), the history mean, the answering shards' tiers, coverage.
        ``owner``: a shard whose retrieve has already answered (:meth:`_retrieve_by_user`)."""
        n_shards = self.n_shards
        hit, hist_rows, missing, bags = need.hit, need.rows, need.missing, need.bags
        n_hist = len(hist)
        # One call per shard, all in flight at once; one future for the lot (no task per call).
        results: list[Any] = [None] * n_shards
        left = [n_shards]
        all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(s: int, result: CallResult | None, exc: BaseException | None) -> None:
            results[s] = result if exc is None else exc
            left[0] -= 1
            if not left[0] and not all_done.done():
                all_done.set_result(None)

        for s in range(n_shards):
            if owner is not None and s == owner[0]:
                done(s, owner[1], None)
            else:
                self._retrieve_one(s, user_vec, bags[s], deadline, rid, functools.partial(done, s))
        if left[0]:
            await all_done
        ids_l, scores_l, emb_l, fetched, tiers = [], [], [], [], []
        coverage = 0.0
        for s, res in enumerate(results):
            if isinstance(res, ShardCallFailed):
                if len(bags[s]):
                    raise NeedFallback("history_shard", str(res))
                self.throttled.warning(
                    f"coverage-{s}",
                    "shard %d did not answer retrieve: answering without its item range (%s)",
                    s,
                    res,
                )
                continue
            if isinstance(res, BaseException):
                raise res
            t = res.msg.tensors
            ids_l.append(t["ids"])
            scores_l.append(t["scores"])
            emb_l.append(t["emb"])
            if len(bags[s]):
                fetched.append(t["bag_sums"])
            tiers.append(res.tier)
            coverage += self.share[s]
        if not ids_l:
            raise NeedFallback("no_candidates", "no shard answered retrieve")
        if coverage < 1.0 - 1e-9:
            self.metrics.partial_coverage.inc()
        if len(missing):
            rows = np.concatenate(fetched)  # bags are sorted and shards ascending: = missing
            self.items.put(missing, rows)
            miss = ~hit
            hist_rows[miss] = rows[np.searchsorted(missing, hist[miss])]
        hist_mean = (
            (hist_rows.sum(axis=0) / n_hist).astype(np.float32)
            if n_hist
            else np.zeros(self.bundle.dim, np.float32)
        )
        ids, scores, emb = np.concatenate(ids_l), np.concatenate(scores_l), np.concatenate(emb_l)
        n = self.bundle.n_candidates
        if len(ids) > n:
            top = np.argpartition(-scores, n - 1)[:n]
            ids, emb = ids[top], emb[top]
        self.items.put(ids, emb)
        if n_hist:
            keep = ~_isin(ids, hist)
            if not keep.all():
                ids, emb = ids[keep], emb[keep]
        return ids, emb, hist_mean, tiers, round(coverage, 6)

    def _retrieve_check(
        self, shard: int, m: int, user_row: bool = False
    ) -> Callable[[protocol.Message], str | None]:
        """The check of a ``retrieve`` answer of ``shard`` with a bag of ``m`` history ids (and
        the user's row, with ``user_row``): shapes, the shard's item range, finite values."""
        lo, hi = int(self.bounds[shard]), int(self.bounds[shard + 1])
        top_n, dim = self.bundle.n_candidates, self.bundle.dim

        def check(msg: protocol.Message) -> str | None:
            t = msg.tensors
            ids, scores, emb = t.get("ids"), t.get("scores"), t.get("emb")
            if ids is None or scores is None or emb is None:
                return f"retrieve reply lacks ids/scores/emb (got {sorted(t)})"
            n = len(ids)
            if ids.ndim != 1 or scores.shape != (n,) or emb.shape != (n, dim) or n > top_n:
                return (
                    f"retrieve reply shapes ids {_shape(ids)} scores {_shape(scores)} "
                    f"emb {_shape(emb)} do not fit top_n={top_n}, dim={dim}"
                )
            if n and (_MIN(ids) < lo or _MAX(ids) >= hi):
                return f"retrieve reply has ids outside the shard's range [{lo}, {hi})"
            if not (_all_finite(scores) and _all_finite(emb)):
                return "retrieve reply has non-finite scores or rows"
            if m:
                sums = t.get("bag_sums")
                if sums is None or sums.shape != (m, dim) or not _all_finite(sums):
                    return f"retrieve reply bag_sums {_shape(sums)} is not {m} finite rows"
            if user_row:
                row = t.get("user_row")
                if row is None or row.shape != (1, dim) or not _all_finite(row):
                    return f"retrieve reply user_row {_shape(row)} is not one finite row of {dim}"
            return None

        return check

    def _retrieve_one(
        self,
        shard: int,
        user_vec: np.ndarray,
        bag: np.ndarray,
        deadline: float,
        rid: str,
        on_done: Callable[[CallResult | None, BaseException | None], None],
    ) -> None:
        m = len(bag)
        check = self._retrieve_check(shard, m)
        tensors = {"query": user_vec, "bag_ids": bag} if m else {"query": user_vec}
        # (bag without offsets: one row per id, so L1 can keep them)
        self.caller.start(
            shard,
            "retrieve",
            deadline,
            rid,
            {"top_n": self.bundle.n_candidates},
            tensors,
            check,
            on_done,
            best_effort=not m,  # without history rows to fetch, the request can do without it
        )

    def _rank(
        self,
        user_vec: np.ndarray,
        hist_mean: np.ndarray,
        dense: np.ndarray,
        ids: np.ndarray,
        emb: np.ndarray,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        b, dev = self.bundle, self.bundle.device
        if not len(ids):
            return ids, np.zeros(0, np.float32)
        if dev.type == "cpu":
            # What ranker.score runs on the CPU without autograd (as in models.full_pipeline),
            # called on the numpy arrays directly: no torch op on the request path.
            scores = b.ranker.score_numpy(user_vec, hist_mean, dense, emb, b.item_category[ids])
            k = min(k, len(ids))
            best = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
            best = best[np.argsort(-scores[best], kind="stable")]
            return ids[best], scores[best]
        with torch.inference_mode():
            ids_t = torch.from_numpy(ids).to(dev)
            logits = b.ranker.score(
                torch.from_numpy(user_vec).to(dev),
                torch.from_numpy(hist_mean).to(dev),
                torch.from_numpy(np.ascontiguousarray(dense)).to(dev),
                torch.from_numpy(emb).to(dev),
                b.item_category_t[ids_t],
            )
            top = torch.topk(logits, min(k, len(ids)))
            return ids[top.indices.cpu().numpy()], top.values.cpu().numpy()

    # ---- fallbacks

    async def _fallback(
        self,
        exc: NeedFallback,
        k: int,
        rid: str,
        hist: np.ndarray,
        dense: np.ndarray,
        stages: _Stages,
    ) -> Result:
        self.metrics.region_fallbacks.inc(exc.reason)
        self.throttled.warning(f"fallback-{exc.reason}", "request %s -> region: %s", rid, exc)
        region_deadline = stages.start + self.settings.sla_ms / 1000 - _REGION_RESERVE_S
        why = self._static_reason(region_deadline - self.clock())
        if why is None:
            timeout = region_deadline - self.clock()
            try:
                items, scores = await self._region(k, rid, hist, dense, timeout)
                self.region_breaker.record_success(self.clock())
                stages.lap("fallback")
                return Result(
                    Tier.DEGRADED.label, self._payload(items, scores, Tier.DEGRADED, stages)
                )
            except (protocol.CallError, OSError) as err:  # incl. TimeoutError of a hung connect
                kind = error_kind(err)
                # A timeout with little time given says more about our deadline than the region.
                if kind != "timeout" or timeout >= _REGION_FAIR_TIMEOUT_S:
                    self.region_breaker.record_failure(self.clock())
                why = f"region_{kind}"
                self.throttled.warning(f"static-{why}", "request %s -> static list: %s", rid, err)
        self.metrics.static_fallbacks.inc(why)
        items, scores = self._static(k, hist)
        stages.lap("fallback")
        return Result(Tier.STATIC.label, self._payload(items, scores, Tier.STATIC, stages))

    def _static_reason(self, left_s: float) -> str | None:
        """Why the region cannot be asked (a metric label), or None when it can."""
        if self.region is None:
            return "no_region"
        if left_s < _REGION_MIN_S:
            return "no_time"
        if not self.region_breaker.allow(self.clock()):
            return "region_breaker_open"
        return None

    async def _region(
        self, k: int, rid: str, hist: np.ndarray, dense: np.ndarray, timeout: float
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.region is not None  # _static_reason() said so
        msg = await self.region.call(
            "recommend",
            timeout,
            {"k": k, "rid": rid},
            {"history": hist, "dense": np.ascontiguousarray(dense)},
        )
        ids, scores = msg.tensors.get("ids"), msg.tensors.get("scores")
        if (
            ids is None
            or scores is None
            or ids.shape != (k,)
            or scores.shape != (k,)
            or not np.isfinite(scores).all()
            or ids.min() < 0
            or ids.max() >= self.bundle.n_items
        ):
            raise BadReply(
                f"region reply ids {_shape(ids)} scores {_shape(scores)} is not "
                f"{k} finite in-catalogue items"
            )
        return ids, scores

    def _static(self, k: int, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pop = self.bundle.popular
        fresh = pop[~_isin(pop, hist)]
        items = (fresh if len(fresh) >= k else pop)[:k]
        return items, self._popular_scores(len(items))

    def _popular_scores(self, n: int) -> np.ndarray:
        # Rank-based: the list has no model scores; higher is better, like every other tier.
        return 1.0 - np.arange(n, dtype=np.float32) / max(len(self.bundle.popular), 1)

    def _cold_start(self, k: int, stages: _Stages) -> Result:
        self.metrics.cold_start.inc()
        items = self.bundle.popular[:k]
        payload = self._payload(items, self._popular_scores(len(items)), Tier.PRIMARY, stages)
        payload["cold_start"] = True
        return Result(Tier.PRIMARY.label, payload)

    def _payload(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        tier: Tier,
        stages: _Stages,
        coverage: float | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "items": np.asarray(items).tolist(),
            "scores": np.asarray(scores, dtype=np.float64).tolist(),
            "tier": tier.label,
            "model_version": self.bundle.version,
            "cold_start": False,
        }
        if coverage is not None:
            out["coverage"] = coverage
        out["timings_ms"] = stages.done()
        return out

    async def warm_up_fallbacks(self) -> None:
        """The region's and the static list's paths once (at start-up, before listening)."""
        hist, dense = self.features.local(0)
        if self.region is not None:
            try:
                await self._region(10, "warm-up", hist, dense, 0.25)
            except (protocol.CallError, OSError) as exc:
                log.info("warm-up: the region did not answer (%s)", exc)
        self._static(10, hist)

    def warm_up(self) -> None:
        """One ranker pass at start-up: the first torch call costs milliseconds."""
        b = self.bundle
        n = min(b.n_candidates, b.n_items)
        self._rank(
            np.zeros(b.dim, np.float32),
            np.zeros(b.dim, np.float32),
            np.zeros(b.n_dense, np.float32),
            np.arange(n, dtype=np.int64),
            np.zeros((n, b.dim), np.float32),
            10,
        )


_NO_IDS = np.zeros(0, dtype=np.int64)
_NO_IDS.flags.writeable = False
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce


def _all_finite(arr: np.ndarray) -> bool:
    """``np.isfinite(arr).all()`` for float32 arrays in one pass: their float64 sum cannot
    overflow, so it is finite exactly when every element is (NaN and inf propagate)."""
    return math.isfinite(np.add.reduce(arr, axis=None, dtype=np.float64))


def _isin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.isin`` for the small arrays of one request (a broadcast compare: 3 us, not 25 us)."""
    if len(a) * len(b) > 100_000:
        return np.isin(a, b)
    return (a[:, None] == b[None, :]).any(axis=1)


def _shape(arr: np.ndarray | None) -> str:
    return "missing" if arr is None else f"{arr.dtype} {list(arr.shape)}"
