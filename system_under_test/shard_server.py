"""One shard copy of the recommender (primary or replica: the two are identical processes).

``python -m system_under_test serve-shard --shard S --shards N --role primary|replica ...`` loads
only shard S's rows of the user and item embedding tables from the trained ``full.pt`` (user rows
hash-partitioned, item rows range-partitioned, see ``sharding.py``), drops the rest and serves them
over the framed protocol of ``protocol.py`` (specified in ``docs/protocol.md``):

* ``ping``     health and identity (shard, role, model version, owned ranges);
* ``lookup``   per-bag partial sums of owned rows (``nn.EmbeddingBag`` sum semantics); the gateway
               adds the partials of several shards and divides by the total count for a mean;
* ``retrieve`` the shard's best ``top_n`` items for a query vector (or for the row of a user it
               holds, returned too), with their rows, plus (in the same call) partial sums of a
               bag of owned items: one call per shard per request;
* ``control``  the per-request fault points (``FaultPoints``) that chaos scenarios switch on;
               only with the token the server was started with (``auth.py``).

Layers, pure first: ``ShardTables`` is the computation (no sockets, no clock), ``FaultSpec`` and
``FaultPoints`` decide injected faults from a hash of (seed, request id), ``ShardService`` maps ops
to both, and ``main`` is the process around them. ``region_server`` reuses the fault points and the
process plumbing at the bottom of this module.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from system_under_test import protocol, sharding
from system_under_test.auth import TOKEN_VARIABLE, token_matches
from system_under_test.protocol import Message, RemoteError, Tensors
from system_under_test.runtime import KEEP_WARM_S, keep_warm_problem

control_log = logging.getLogger("control")

TABLES = ("user", "item")
ROLES = ("primary", "replica")
DEVICES = ("cpu", "cuda")

Reply = tuple[dict[str, Any], Tensors]


# --------------------------------------------------------------------------------------------
# Request validation shared by the shard and the region: every message names the offending value.


def int_field(header: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RemoteError("bad_request", f"field {name!r} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise RemoteError(
            "bad_request", f"field {name!r} = {value} is out of range; allowed {allowed}"
        )
    return value


def id_tensor(tensors: Tensors, name: str, required: bool = True) -> np.ndarray | None:
    """A 1-D int64 tensor (ids or offsets), or None when optional and absent."""
    arr = tensors.get(name)
    if arr is None:
        if required:
            raise RemoteError("bad_request", f"tensor {name!r} (i64 [n]) is missing")
        return None
    if arr.dtype != np.int64 or arr.ndim != 1:
        raise RemoteError(
            "bad_request", f"tensor {name!r} must be i64 [n], got {arr.dtype} {list(arr.shape)}"
        )
    return arr


def vector_tensor(tensors: Tensors, name: str, dim: int) -> np.ndarray:
    """A float32 vector of length ``dim``, copied (incoming tensors are read-only views)."""
    arr = tensors.get(name)
    if arr is None:
        raise RemoteError("bad_request", f"tensor {name!r} (f32 [{dim}]) is missing")
    if arr.dtype != np.float32 or arr.shape != (dim,):
        raise RemoteError(
            "bad_request",
            f"tensor {name!r} must be f32 [{dim}], got {arr.dtype} {list(arr.shape)}",
        )
    if not np.isfinite(arr).all():
        raise RemoteError("bad_request", f"tensor {name!r} holds NaN or infinite values")
    return arr.copy()


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# --------------------------------------------------------------------------------------------
# The computation.


class ShardTables:
    """One shard's rows of the user and item tables, and the lookups and retrieval on them.

    Pure: numpy arrays in (as the protocol decodes them), numpy arrays out (as it encodes them),
    ``RemoteError`` for a request the shard cannot answer. Rows live on the tables' device.
    """

    def __init__(
        self,
        shard: int,
        n_shards: int,
        n_users: int,
        item_bounds: np.ndarray,
        user_rows: torch.Tensor,
        item_rows: torch.Tensor,
    ) -> None:
        if not 0 <= shard < n_shards:
            raise ValueError(f"shard {shard} out of range for {n_shards} shards")
        self.shard, self.n_shards, self.n_users = shard, n_shards, n_users
        self.item_start, self.item_end = int(item_bounds[shard]), int(item_bounds[shard + 1])
        self.n_items = int(item_bounds[-1])
        n_local_users = len(sharding.user_rows_of_shard(n_users, shard, n_shards))
        if user_rows.ndim != 2 or user_rows.shape[0] != n_local_users:
            raise ValueError(
                f"shard {shard}/{n_shards} of {n_users} users needs {n_local_users} user rows, "
                f"got shape {list(user_rows.shape)}"
            )
        if item_rows.ndim != 2 or item_rows.shape[0] != self.item_end - self.item_start:
            raise ValueError(
                f"item range [{self.item_start}, {self.item_end}) needs "
                f"{self.item_end - self.item_start} item rows, got shape {list(item_rows.shape)}"
            )
        if user_rows.shape[1] != item_rows.shape[1]:
            raise ValueError(
                f"user rows are {user_rows.shape[1]}-d but item rows {item_rows.shape[1]}-d"
            )
        self.user_rows, self.item_rows = user_rows.contiguous(), item_rows.contiguous()
        self.dim = int(item_rows.shape[1])
        self.device = item_rows.device
        # On the CPU, numpy views of the same memory: gathers and top-n selection in numpy cost a
        # few microseconds where the torch equivalents cost tens (per-op dispatch overhead).
        self._user_np: np.ndarray | None = None
        self._item_np: np.ndarray | None = None
        if self.device.type == "cpu" and item_rows.dtype == torch.float32:
            self._user_np = self.user_rows.detach().numpy()
            self._item_np = self.item_rows.detach().numpy()

    @classmethod
    def from_full(
        cls,
        user_table: torch.Tensor,
        item_table: torch.Tensor,
        shard: int,
        n_shards: int,
        device: str | torch.device = "cpu",
    ) -> ShardTables:
        """Copy shard ``shard``'s rows out of the whole tables; the caller may then drop those."""
        n_users, n_items = int(user_table.shape[0]), int(item_table.shape[0])
        bounds = sharding.item_bounds(n_items, n_shards)
        users = torch.from_numpy(sharding.user_rows_of_shard(n_users, shard, n_shards))
        user_rows = user_table.index_select(0, users)
        item_rows = item_table[int(bounds[shard]) : int(bounds[shard + 1])]
        return cls(
            shard,
            n_shards,
            n_users,
            bounds,
            user_rows.to(device=device, dtype=torch.float32, copy=True).contiguous(),
            item_rows.to(device=device, dtype=torch.float32, copy=True).contiguous(),
        )

    @property
    def n_local_users(self) -> int:
        return int(self.user_rows.shape[0])

    def owns_users(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= 0) & (ids < self.n_users) & (ids % self.n_shards == self.shard)

    def owns_items(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= self.item_start) & (ids < self.item_end)

    def describe_owned(self, table: str) -> str:
        if table == "user":
            return (
                f"user ids u with u % {self.n_shards} == {self.shard} and 0 <= u < {self.n_users}"
            )
        return f"item ids [{self.item_start}, {self.item_end})"

    def local_rows(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Local row of each global id, or ``not_owned`` naming the first foreign id."""
        if table == "user":
            owned, local = self.owns_users(ids), ids // self.n_shards
        elif table == "item":
            owned, local = self.owns_items(ids), ids - self.item_start
        else:
            raise RemoteError("bad_request", f"table {table!r} is not one of {list(TABLES)}")
        if not owned.all():
            bad = ids[~owned]
            raise RemoteError(
                "not_owned",
                f"{table} id {int(bad[0])} is not on shard {self.shard} of {self.n_shards} "
                f"({len(bad)} of {len(ids)} ids foreign); this shard owns "
                f"{self.describe_owned(table)}",
            )
        return np.ascontiguousarray(local, dtype=np.int64)

    def _tensor(self, arr: np.ndarray, dtype: type) -> torch.Tensor:
        """A private copy on the tables' device (incoming arrays are read-only views)."""
        t = torch.from_numpy(np.array(arr, dtype=dtype))
        return t if self.device.type == "cpu" else t.to(self.device)

    def lookup(self, table: str, ids: np.ndarray, offsets: np.ndarray | None = None) -> Tensors:
        """Per-bag sums of this shard's rows: ``{"sums": f32 [B, d], "counts": i64 [B]}``."""
        local = self.local_rows(table, ids)
        rows = self.user_rows if table == "user" else self.item_rows
        if offsets is None:
            # One bag per id: a plain gather, cheaper than an embedding bag.
            rows_np = self._user_np if table == "user" else self._item_np
            if rows_np is not None:
                return {"sums": rows_np[local], "counts": np.ones(len(local), np.int64)}
            index = self._tensor(local, np.int64)
            return {
                "sums": to_numpy(rows.index_select(0, index)),
                "counts": np.ones(len(local), np.int64),
            }
        counts = bag_counts(offsets, len(local))
        sums = F.embedding_bag(
            self._tensor(local, np.int64), rows, self._tensor(offsets, np.int64), mode="sum"
        )
        return {"sums": to_numpy(sums), "counts": counts}

    def retrieve(
        self,
        query: np.ndarray,
        top_n: int,
        bag_ids: np.ndarray | None = None,
        bag_offsets: np.ndarray | None = None,
    ) -> Tensors:
        """This shard's best ``min(top_n, range size)`` items by ``query . row``, best first.

        ``{"ids", "scores", "emb"}``, plus ``{"bag_sums", "bag_counts"}`` (the item-table lookup
        of ``bag_ids`` / ``bag_offsets``) when a bag is given.
        """
        if query.shape != (self.dim,):
            raise RemoteError(
                "bad_request", f"query must be f32 [{self.dim}], got {list(query.shape)}"
            )
        if bag_ids is None and bag_offsets is not None:
            raise RemoteError("bad_request", "tensor 'bag_offsets' given without 'bag_ids'")
        bag = self.lookup("item", bag_ids, bag_offsets) if bag_ids is not None else None
        n = min(top_n, self.item_end - self.item_start)
        if self._item_np is not None:
            out = self._top_n_cpu(query, n)
        else:
            q = self._tensor(query, np.float32)
            scores, local = torch.topk(torch.mv(self.item_rows, q), n, sorted=True)
            out = {
                "ids": to_numpy(local) + self.item_start,
                "scores": to_numpy(scores),
                "emb": to_numpy(self.item_rows.index_select(0, local)),
            }
        if bag is not None:
            out["bag_sums"], out["bag_counts"] = bag["sums"], bag["counts"]
        return out

    def _top_n_cpu(self, query: np.ndarray, n: int) -> Tensors:
        """``torch.mv`` for the scores (the reference's arithmetic, bit for bit: see
        ``models.full_pipeline``), then the top ``n`` by ``np.argpartition`` and a sort of those."""
        assert self._item_np is not None
        if query.dtype != np.float32 or not query.flags.c_contiguous or not query.flags.writeable:
            query = np.array(query, dtype=np.float32)
        scores = torch.mv(self.item_rows, torch.from_numpy(query)).numpy()
        size = len(scores)
        top = np.argpartition(scores, size - n)[size - n :] if n < size else np.arange(size)
        local = top[np.argsort(-scores[top], kind="stable")]
        return {
            "ids": local + self.item_start,
            "scores": scores[local],
            "emb": self._item_np[local],
        }


def bag_counts(offsets: np.ndarray, n_ids: int) -> np.ndarray:
    """Bag sizes from ``nn.EmbeddingBag`` offsets (bag b is ids[offsets[b]:offsets[b+1]])."""
    if len(offsets) == 0:
        if n_ids:
            raise RemoteError("bad_request", f"offsets are empty but {n_ids} ids were given")
        return np.zeros(0, np.int64)
    if offsets[0] != 0:
        raise RemoteError("bad_request", f"offsets[0] must be 0, got {int(offsets[0])}")
    counts = np.diff(offsets, append=n_ids)
    if (counts < 0).any():
        b = int(np.argmax(counts < 0))
        raise RemoteError(
            "bad_request",
            f"offsets must be non-decreasing and at most len(ids) = {n_ids}; offsets[{b}] = "
            f"{int(offsets[b])} is followed by {int(offsets[b + 1]) if b + 1 < len(offsets) else n_ids}",
        )
    return counts.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------
# Fault points: per-request application faults, decided by a hash of (seed, request id) so that a
# replay, and every load worker, injects exactly the same faults into the same requests.

FAULT_KINDS = ("error", "delay", "nan", "wrong_shape")


def decide(seed: int, request_id: Any, point: str = "") -> float:
    """A uniform float in [0, 1) fixed by (seed, request id, fault point)."""
    digest = hashlib.blake2b(f"{seed}:{request_id}:{point}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _rate(fields: Mapping[str, Any], name: str, default: float) -> float:
    value = fields.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise RemoteError("bad_request", f"fault {name!r} = {value!r} must be a number in [0, 1]")
    return float(value)


@dataclass(frozen=True)
class FaultSpec:
    """What to inject. Each rate is the share of matching requests that get that fault."""

    seed: int = 0
    error_rate: float = 0.0
    delay_ms: float = 0.0
    delay_rate: float = 1.0  # share of requests delayed by ``delay_ms`` (all, unless given)
    nan_rate: float = 0.0
    wrong_shape_rate: float = 0.0
    ops: tuple[str, ...] | None = None  # None: every data op (never ping or control)

    @classmethod
    def from_fields(cls, fields: Any) -> FaultSpec:
        if not isinstance(fields, dict):
            raise RemoteError("bad_request", f"'faults' must be a map, got {fields!r}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise RemoteError(
                "bad_request", f"unknown fault field(s) {unknown}; allowed: {allowed}"
            )
        seed = fields.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RemoteError("bad_request", f"fault 'seed' = {seed!r} must be an integer")
        delay_ms = fields.get("delay_ms", 0.0)
        if (
            isinstance(delay_ms, bool)
            or not isinstance(delay_ms, int | float)
            or not 0 <= delay_ms <= 600_000
        ):
            raise RemoteError(
                "bad_request", f"fault 'delay_ms' = {delay_ms!r} must be in [0, 600000]"
            )
        ops = fields.get("ops")
        if ops is not None and (
            not isinstance(ops, list) or not all(isinstance(o, str) for o in ops)
        ):
            raise RemoteError("bad_request", f"fault 'ops' = {ops!r} must be a list of op names")
        return cls(
            seed=seed,
            error_rate=_rate(fields, "error_rate", 0.0),
            delay_ms=float(delay_ms),
            delay_rate=_rate(fields, "delay_rate", 1.0),
            nan_rate=_rate(fields, "nan_rate", 0.0),
            wrong_shape_rate=_rate(fields, "wrong_shape_rate", 0.0),
            ops=tuple(ops) if ops is not None else None,
        )

    def to_fields(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ops"] = list(self.ops) if self.ops is not None else None
        return out


@dataclass(frozen=True)
class FaultPlan:
    """The faults one request gets."""

    delay_s: float = 0.0
    error: bool = False
    nan: bool = False
    wrong_shape: bool = False

    @property
    def any(self) -> bool:
        return bool(self.delay_s or self.error or self.nan or self.wrong_shape)


NO_FAULTS = FaultPlan()


def plan_faults(spec: FaultSpec, op: str, request_id: Any) -> FaultPlan:
    """Pure: the faults ``spec`` gives request ``request_id`` of ``op``."""
    if spec.ops is not None and op not in spec.ops:
        return NO_FAULTS

    def hit(rate: float, point: str) -> bool:
        return rate > 0 and decide(spec.seed, request_id, point) < rate

    return FaultPlan(
        delay_s=spec.delay_ms / 1000 if spec.delay_ms and hit(spec.delay_rate, "delay") else 0.0,
        error=hit(spec.error_rate, "error"),
        nan=hit(spec.nan_rate, "nan"),
        wrong_shape=hit(spec.wrong_shape_rate, "wrong_shape"),
    )


def corrupt(tensors: Tensors, plan: FaultPlan) -> Tensors:
    """Apply a plan's reply corruption: NaN floats, and/or one extra row on every tensor."""
    out = dict(tensors)
    if plan.nan:
        out = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in out.items()}
    if plan.wrong_shape:
        out = {
            k: np.concatenate([v, np.zeros((1, *v.shape[1:]), v.dtype)]) if v.ndim else v[None]
            for k, v in out.items()
        }
    return out


def request_key(header: Mapping[str, Any]) -> Any:
    """The id faults are decided by: the caller's end-to-end ``rid`` if sent, else the frame id."""
    return header["rid"] if "rid" in header else header.get("id")


class FaultPoints:
    """The switchable fault points of one server, and counters that prove they fired.

    ``token``: what a ``control`` request must carry in its ``token`` field (compared in
    constant time); None switches the fault points off for good: every ``control`` is refused.
    A refused request is answered ``unauthorized`` and logged.
    """

    def __init__(self, token: str | None = None) -> None:
        self.spec: FaultSpec | None = None
        self.counts = dict.fromkeys(("requests", *FAULT_KINDS), 0)
        self._token = token
        self.refused = 0

    def plan(self, op: str, header: Mapping[str, Any]) -> FaultPlan:
        if self.spec is None:
            return NO_FAULTS
        self.counts["requests"] += 1
        plan = plan_faults(self.spec, op, request_key(header))
        for kind, fired in zip(
            FAULT_KINDS, (plan.error, plan.delay_s > 0, plan.nan, plan.wrong_shape), strict=True
        ):
            self.counts[kind] += int(fired)
        return plan

    def control(self, header: Mapping[str, Any]) -> dict[str, Any]:
        """The ``control`` op: ``{"faults": {...}}`` sets (and zeroes the counters),
        ``{"clear": true}`` clears (counters kept for reading); either way the state is returned.
        Only with the server's token (``token``); anything else is refused."""
        self._authorize(header)
        if "faults" in header and header.get("clear"):
            raise RemoteError("bad_request", "send either 'faults' or 'clear', not both")
        if "faults" in header:
            self.spec = FaultSpec.from_fields(header["faults"])
            self.counts = dict.fromkeys(self.counts, 0)
        elif header.get("clear"):
            self.spec = None
        return {
            "faults": self.spec.to_fields() if self.spec else None,
            "injected": dict(self.counts),
        }

    def _authorize(self, header: Mapping[str, Any]) -> None:
        given = header.get("token")
        if token_matches(self._token, given):
            return
        self.refused += 1
        if self._token is None:
            why = f"this server was started without {TOKEN_VARIABLE}: its fault points are off"
        else:
            why = "no 'token' field" if given is None else "the 'token' field does not match"
        control_log.warning(
            "refused control request id=%r (%s; %d refused so far)",
            header.get("id"),
            why,
            self.refused,
        )
        raise RemoteError("unauthorized", f"control refused: {why}")

    def respond(
        self, op: str, header: Mapping[str, Any], compute: Callable[[], Reply]
    ) -> Reply | Awaitable[Reply]:
        """The reply now, or (only for a delay fault) an awaitable of it."""
        if self.spec is None:
            return compute()
        plan = self.plan(op, header)
        if plan.delay_s:
            return self._delayed(op, plan, compute)
        return _faulted(op, plan, compute)

    async def _delayed(self, op: str, plan: FaultPlan, compute: Callable[[], Reply]) -> Reply:
        await asyncio.sleep(plan.delay_s)
        return _faulted(op, plan, compute)

    async def run(self, op: str, header: Mapping[str, Any], compute: Callable[[], Reply]) -> Reply:
        reply = self.respond(op, header, compute)
        return reply if isinstance(reply, tuple) else await reply


def _faulted(op: str, plan: FaultPlan, compute: Callable[[], Reply]) -> Reply:
    if plan.error:
        raise RemoteError("injected", f"injected error in {op} (fault points are on)")
    fields, tensors = compute()
    return (fields, corrupt(tensors, plan)) if plan.nan or plan.wrong_shape else (fields, tensors)


# --------------------------------------------------------------------------------------------
# Ops.


# Passes over every op before a shard (or the region) listens: the first few calls of a fresh
# process are the slow ones, a few dozen cost a few milliseconds in all.
WARM_UP_ROUNDS = 30
# A round waits for a calm moment: when the keep-warm timer woke this process more than
# KEEP_WARM_BUSY_S late, the machine is short of CPU (on an idle machine it wakes within 0.1 ms),
# and the round is put off by KEEP_WARM_RETRY_S. Under a surge of twice the capacity the rounds of
# the idle replicas and the region otherwise took 3-6 ms each from the saturated cores
# (scenarios/overload.yaml, two pairs of runs: goodput 497-513 answers/s with the rounds, 524-531
# without; the machine ran at half its usual speed then, so the figures are rough).
KEEP_WARM_BUSY_S = 0.002
KEEP_WARM_RETRY_S = 0.05


class ShardService:
    """Maps request ops to ``ShardTables``, through the fault points."""

    def __init__(
        self, tables: ShardTables, role: str, version: str, control_token: str | None = None
    ) -> None:
        self.tables, self.role, self.version = tables, role, version
        self.faults = FaultPoints(control_token)
        self._ops: dict[str, Callable[[Message], Reply]] = {
            "lookup": self._lookup,
            "retrieve": self._retrieve,
        }
        self._warm_frames: list[bytes] = []
        self._warm_round = 0
        self._warm_top_n = 1

    def respond(self, msg: Message) -> Reply | Awaitable[Reply]:
        """The server's handler: the reply at once, or an awaitable of it for a delay fault."""
        op = msg.header.get("op")
        compute = self._ops.get(op) if isinstance(op, str) else None
        if compute is None:
            if op == "ping":
                return self.ping(), {}
            if op == "control":
                return self.faults.control(msg.header), {}
            allowed = ["ping", "control", *self._ops]
            raise RemoteError("bad_op", f"op {op!r} is not served by a shard; allowed: {allowed}")
        # Fault points: consulted before handling, per request (see FaultPoints).
        return self.faults.respond(str(op), msg.header, lambda: compute(msg))

    async def handle(self, msg: Message) -> Reply:
        reply = self.respond(msg)
        return reply if isinstance(reply, tuple) else await reply

    def warm_up(self, top_n: int, rounds: int = WARM_UP_ROUNDS) -> None:
        """Run every data op's whole path (decode, compute, encode) before the server listens.

        A fresh process pays for lazy work on its first calls: torch's first dispatch of an op,
        numpy's first partition and sort, the allocator growing its arenas for reply buffers.
        Measured on a fresh shard: its first retrieve took 4-10 ms (30 ms and more on a busy
        machine), the later ones 0.4-0.7 ms. Warmed here, "listening" means "serves in time".
        """
        t = self.tables
        self._warm_top_n = top_n  # the keep-warm rounds ask for what the gateways ask for
        rng = np.random.default_rng(0)
        users = sharding.user_rows_of_shard(t.n_users, t.shard, t.n_shards)
        size = t.item_end - t.item_start
        for i in range(rounds):
            query = rng.standard_normal(t.dim).astype(np.float32)
            bag = np.unique(rng.integers(t.item_start, t.item_end, 1 + i % 8))
            calls: list[tuple[dict[str, Any], Tensors]] = [
                ({"op": "retrieve", "top_n": top_n}, {"query": query}),
                ({"op": "retrieve", "top_n": top_n}, {"query": query, "bag_ids": bag}),
                ({"op": "retrieve", "top_n": min(size, 1 + i)}, {"query": query}),
                ({"op": "lookup", "table": "item"}, {"ids": bag}),
                ({"op": "lookup", "table": "item"}, {"ids": bag, "offsets": np.zeros(1, np.int64)}),
                ({"op": "ping"}, {}),
            ]
            if len(users):
                user = users[rng.integers(len(users), size=1)]
                calls.append(({"op": "lookup", "table": "user"}, {"ids": user}))
                calls.append(({"op": "retrieve", "top_n": top_n}, {"user_ids": user}))
            for header, tensors in calls:
                frame = protocol.encode(
                    {"id": i, "deadline": 0, "rid": "warm-up", **header}, tensors
                )
                reply = self.respond(protocol.decode_body(memoryview(frame)[4:]))
                assert isinstance(reply, tuple)  # no fault point is on before serving
                protocol.encode({"id": i, "ok": True, **reply[0]}, reply[1])

    def keep_warm(self) -> None:
        """One retrieve's whole path (decode, compute, encode) without sockets and without the
        fault points (a warm round is not a request: it must not count as one or fail as
        one), alternately queried by a vector with a bag and by a user (see ``runtime.KEEP_WARM_S``)."""
        if not self._warm_frames:
            t = self.tables
            rng = np.random.default_rng(1)
            users = sharding.user_rows_of_shard(t.n_users, t.shard, t.n_shards)
            query = rng.standard_normal(t.dim).astype(np.float32)
            bag = np.unique(rng.integers(t.item_start, t.item_end, 4))
            tensor_sets: list[Tensors] = [{"query": query, "bag_ids": bag}]
            if len(users):
                tensor_sets.append({"user_ids": users[:1]})
            self._warm_frames = [
                protocol.encode({"id": 0, "op": "retrieve", "top_n": self._warm_top_n}, ts)
                for ts in tensor_sets
            ]
        self._warm_round += 1
        frame = self._warm_frames[self._warm_round % len(self._warm_frames)]
        fields, tensors = self._retrieve(protocol.decode_body(memoryview(frame)[4:]))
        protocol.encode({"id": 0, "ok": True, **fields}, tensors)

    def ping(self) -> dict[str, Any]:
        t = self.tables
        return {
            "shard": t.shard,
            "shards": t.n_shards,
            "role": self.role,
            "version": self.version,
            "items": [t.item_start, t.item_end],
            "n_users": t.n_local_users,
            "dim": t.dim,
            "faults": self.faults.spec is not None,
        }

    def _lookup(self, msg: Message) -> Reply:
        table = msg.header.get("table")
        if table not in TABLES:
            raise RemoteError(
                "bad_request", f"field 'table' = {table!r} is not one of {list(TABLES)}"
            )
        ids = id_tensor(msg.tensors, "ids")
        offsets = id_tensor(msg.tensors, "offsets", required=False)
        assert ids is not None
        return {}, self.tables.lookup(table, ids, offsets)

    def _retrieve(self, msg: Message) -> Reply:
        top_n = int_field(msg.header, "top_n", 1)
        bag_ids = id_tensor(msg.tensors, "bag_ids", required=False)
        bag_offsets = id_tensor(msg.tensors, "bag_offsets", required=False)
        user_ids = id_tensor(msg.tensors, "user_ids", required=False)
        if user_ids is None:
            query = vector_tensor(msg.tensors, "query", self.tables.dim)
            return {}, self.tables.retrieve(query, top_n, bag_ids, bag_offsets)
        # Queried by a user this shard holds: its row is the query, and comes back with the
        # answer (a gateway without the row cached needs one call here, not a lookup first).
        if "query" in msg.tensors:
            raise RemoteError("bad_request", "give tensor 'query' or 'user_ids', not both")
        if len(user_ids) != 1:
            raise RemoteError(
                "bad_request", f"tensor 'user_ids' must hold one user id, got {len(user_ids)}"
            )
        row = self.tables.lookup("user", user_ids)["sums"]
        out = self.tables.retrieve(row[0], top_n, bag_ids, bag_offsets)
        out["user_row"] = row
        return {}, out


# --------------------------------------------------------------------------------------------
# Process plumbing, shared with region_server.


class StartupError(Exception):
    """The server cannot start: bad artifacts or device. Logged, exit code 1."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    parser.add_argument("--preset", default="default", help="data/model preset (default 'default')")
    parser.add_argument("--artifacts", type=Path, default=None, help="artifact cache directory")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where tables live")
    parser.add_argument(
        "--keep-warm-ms",
        type=float,
        default=KEEP_WARM_S * 1000,
        help="run the serving path once after this long without a request, so that the first"
        f" call after a quiet spell is not slow (default {KEEP_WARM_S * 1000:g}; 0: never)",
    )


def validate_common(args: argparse.Namespace) -> str | None:
    from system_under_test.config import PRESETS

    if not 0 <= args.port <= 65535:
        return f"--port {args.port} is out of range; allowed: 0 (any free port) to 65535"
    problem = keep_warm_problem(args.keep_warm_ms)
    if problem:
        return problem
    if args.preset not in PRESETS:
        return f"--preset {args.preset!r} is unknown; allowed: {', '.join(sorted(PRESETS))}"
    if args.device == "cuda" and not torch.cuda.is_available():
        return (
            "--device cuda was given but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); use --device cpu"
        )
    return None


def parse_or_exit(
    parser: argparse.ArgumentParser, argv: list[str], extra=None
) -> argparse.Namespace:
    """Parse and validate; a bad value is printed with what is allowed and exits with code 2."""
    args = parser.parse_args(argv)
    problem = validate_common(args) or (extra(args) if extra else None)
    if problem:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return args


def find_artifacts(preset_name: str, cli_value: Path | None) -> Path:
    """The trained artifacts of a preset. Servers never train: ``up`` (or ``train``) does first."""
    from system_under_test.artifacts import artifact_dir, check_complete

    path = artifact_dir(preset_name, cli_value)
    if not path.exists():
        where = f" --artifacts {cli_value}" if cli_value else ""
        raise StartupError(
            f"no artifacts of preset {preset_name!r} in {path}; train them first: "
            f"python -m system_under_test train --preset {preset_name}{where}"
        )
    check_complete(path)
    return path


async def serve(
    handler: protocol.Handler,
    host: str,
    port: int,
    stop: asyncio.Event,
    log: logging.Logger,
    ready: Callable[[int], str],
    keep_warm: Callable[[], None] | None = None,
    keep_warm_s: float = KEEP_WARM_S,
) -> int:
    """Serve until ``stop`` is set; logs ``ready(bound_port)`` once listening. ``keep_warm``
    (the serving path once, without sockets) runs whenever no request came for
    ``keep_warm_s`` (0: never)."""
    last = [time.monotonic()]

    def tracked(msg: Message) -> Reply | Awaitable[Reply]:
        last[0] = time.monotonic()
        return handler(msg)

    server = await protocol.start_server(tracked if keep_warm else handler, host, port)
    bound = int(server.sockets[0].getsockname()[1])
    log.info("ready %s", ready(bound))
    warm = None
    if keep_warm is not None and keep_warm_s > 0:
        warm = asyncio.get_running_loop().create_task(
            _keep_warm(keep_warm, keep_warm_s, last, stop, log)
        )
    await stop.wait()
    if warm is not None:
        warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)  # it logs what the rounds cost
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), 1.0)
    except TimeoutError:  # open client connections are cancelled when the loop ends
        pass
    return 0


class Servable(Protocol):
    def respond(self, msg: Message) -> Reply | Awaitable[Reply]: ...

    def keep_warm(self) -> None: ...


def serve_until_signalled(
    service: Servable, args: argparse.Namespace, log: logging.Logger, ready: Callable[[int], str]
) -> int:
    """Serve ``service`` on ``--host``/``--port``, kept warm every ``--keep-warm-ms`` of
    idleness, until SIGTERM or SIGINT (a shard copy's and the region's process)."""
    from system_under_test.runtime import run_until_signalled

    return run_until_signalled(
        lambda stop: serve(
            service.respond,
            args.host,
            args.port,
            stop,
            log,
            ready,
            service.keep_warm,
            args.keep_warm_ms / 1000,
        ),
        log,
    )


async def _keep_warm(
    run: Callable[[], None],
    every_s: float,
    last: list[float],
    stop: asyncio.Event,
    log: logging.Logger,
) -> None:
    """Run ``run`` each time ``every_s`` has passed without a request (``last[0]``), but only
    while this process gets the CPU promptly; what the rounds cost (CPU time of this thread) and
    how many waited for a calm moment is logged when the server stops."""
    rounds, busy, cpu_s = 0, 0, 0.0
    # Each round after a random 80-100% of ``every_s``: servers started together would otherwise
    # keep warm together, a burst of rounds on every core at once.
    rng = random.Random()
    wait_s = every_s * rng.uniform(0.8, 1.0)
    late_s = 0.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            idle = now - last[0]
            if idle < wait_s or late_s > KEEP_WARM_BUSY_S:
                if idle < wait_s:
                    nap = wait_s - idle
                else:  # a round is due, but the last wake-up came late: the CPU is short
                    busy += 1
                    nap = KEEP_WARM_RETRY_S
                await asyncio.sleep(nap)
                late_s = time.monotonic() - (now + nap)
                continue
            wait_s = every_s * rng.uniform(0.8, 1.0)
            started = time.thread_time()
            try:
                run()
            except Exception:  # noqa: BLE001 - keeping warm must never stop the server
                log.exception("keep-warm round failed; stopping keep-warm")
                return
            cpu_s += time.thread_time() - started
            rounds += 1
            last[0] = time.monotonic()
    finally:
        if rounds or busy:
            log.info(
                "kept warm: %d rounds after %g s without a request, %.1f ms of CPU in all"
                " (%.2f ms each); %d times put off on a busy machine",
                rounds,
                every_s,
                cpu_s * 1e3,
                cpu_s * 1e3 / max(rounds, 1),
                busy,
            )


def load_shard(args: argparse.Namespace) -> tuple[ShardTables, str]:
    from system_under_test.artifacts import load_metadata

    path = find_artifacts(args.preset, args.artifacts)
    version = str(load_metadata(path)["version"])
    # mmap: only this shard's rows are read from disk and copied; the state dict is then dropped.
    state = torch.load(path / "full.pt", map_location="cpu", weights_only=True, mmap=True)
    user_table, item_table = state["user_emb.weight"], state["item_emb.weight"]
    if item_table.shape[0] < args.shards:
        raise StartupError(
            f"--shards {args.shards} exceeds the {item_table.shape[0]} items of preset {args.preset!r}"
        )
    tables = ShardTables.from_full(user_table, item_table, args.shard, args.shards, args.device)
    del state, user_table, item_table
    return tables, version


def main(argv: list[str]) -> int:
    from system_under_test.__main__ import prog

    parser = argparse.ArgumentParser(
        prog=f"{prog()} serve-shard",
        description="Serve one shard copy of the embedding tables (internal; started by `up`).",
    )
    parser.add_argument("--shard", type=int, required=True, help="this shard's number, 0..N-1")
    parser.add_argument("--shards", type=int, required=True, help="number of shards N, >= 1")
    parser.add_argument("--role", choices=ROLES, required=True)
    add_common_arguments(parser)

    def check(args: argparse.Namespace) -> str | None:
        if args.shards < 1:
            return f"--shards {args.shards} must be at least 1"
        if not 0 <= args.shard < args.shards:
            return f"--shard {args.shard} is out of range; allowed: 0 to {args.shards - 1} (--shards {args.shards})"
        return None

    args = parse_or_exit(parser, argv, check)
    from system_under_test.artifacts import ArtifactError
    from system_under_test.auth import token_from_env
    from system_under_test.runtime import (
        configure_process,
        freeze_heap,
        serving_priority,
    )

    log = configure_process(f"shard-{args.shard}-{args.role}")
    try:
        tables, version = load_shard(args)
    except (StartupError, ArtifactError) as exc:
        log.error("%s", exc)
        return 1
    service = ShardService(tables, args.role, version, token_from_env())
    from system_under_test.config import PRESETS

    if not serving_priority():
        log.warning(
            "could not return to the normal scheduling priority and CPU share after start-up"
        )
    service.warm_up(PRESETS[args.preset].model.n_candidates)
    freeze_heap()

    def ready(port: int) -> str:
        return (
            f"shard={args.shard} role={args.role} port={port} "
            f"rows={tables.n_local_users + tables.item_end - tables.item_start} "
            f"user_rows={tables.n_local_users} items=[{tables.item_start},{tables.item_end}) "
            f"dim={tables.dim} device={tables.device} version={version}"
        )

    return serve_until_signalled(service, args, log, ready)


__all__ = [
    "FaultPoints",
    "FaultSpec",
    "ShardService",
    "ShardTables",
    "decide",
    "main",
]
