"""Component benchmarks (pytest-benchmark): the per-request building blocks, one at a time.

Routing, the gateway's L1 row-cache lookup, the ranker forward pass (tiny preset), histogram
recording, and one whole gateway request in process (the real ``RecommendService`` with its shard
calls answered by in-process ``ShardService`` objects, frames encoded and decoded as on the wire,
no sockets). Not collected by the default test run (``testpaths = ["tests"]``); the nightly job
runs ``pytest benchmarks/test_components.py --benchmark-json=FILE`` once per round and compares
the rounds with ``recchaos compare`` (see docs/reports.md).
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)

BATCH = 64


@pytest.fixture(scope="module")
def torch1():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)  # one intra-op thread per process, as the servers run
    return torch


@pytest.fixture(scope="module")
def artifacts(torch1) -> Path:
    from system_under_test.artifacts import ensure_artifacts

    return ensure_artifacts("tiny", log=lambda _msg: None)


def test_routing(benchmark) -> None:
    from system_under_test import sharding

    bounds = sharding.item_bounds(100_000, 4)
    ids = np.random.default_rng(0).integers(0, 100_000, BATCH)

    def route():
        sharding.user_shard(12345, 4)
        return sharding.item_shard(ids, bounds)

    owners = benchmark(route)
    assert owners.min() >= 0 and owners.max() < 4


def test_cache_lookup(benchmark) -> None:
    from system_under_test.gateway.cache import RowCache

    cache = RowCache(20_000, 32, 100_000)
    rng = np.random.default_rng(0)
    hot = rng.choice(100_000, 15_000, replace=False)
    cache.put(hot, rng.standard_normal((hot.size, 32)).astype(np.float32))
    ids = np.concatenate([hot[:48], rng.integers(0, 100_000, 16)])

    hit, rows = benchmark(cache.get, ids)
    assert hit[:48].all() and rows.shape == (BATCH, 32)


def test_model_forward(benchmark, artifacts: Path, torch1) -> None:
    from system_under_test.artifacts import build_full_model, load_features, load_metadata

    metadata = load_metadata(artifacts)
    model = build_full_model(metadata).eval()
    feats = load_features(artifacts)
    n_items = int(metadata["data"]["n_items"])
    rng = np.random.default_rng(0)
    users = torch1.from_numpy(rng.integers(0, int(metadata["data"]["n_users"]), BATCH))
    history = torch1.from_numpy(np.ascontiguousarray(feats["history"][users.numpy()]))
    dense = torch1.from_numpy(np.ascontiguousarray(feats["dense"][users.numpy()], dtype=np.float32))
    items = torch1.from_numpy(rng.integers(0, n_items, BATCH))
    cats = torch1.from_numpy(
        np.ascontiguousarray(feats["item_category"][items.numpy()], dtype=np.int64)
    )

    def forward():
        with torch1.inference_mode():
            return model(users, history, dense, items, cats)

    logits = benchmark(forward)
    assert logits.shape == (BATCH,)


def test_histogram_record(benchmark) -> None:
    from harness.metrics.histogram import LatencyHistogram

    values = np.random.default_rng(0).lognormal(8, 0.6, 1000).astype(np.int64)

    def record():
        h = LatencyHistogram()
        h.record_many_us(values)
        for v in values[:50].tolist():
            h.record_us(v)
        return h

    h = benchmark(record)
    assert h.count == 1050


class InProcessShard:
    """A ``protocol.Client`` stand-in: frames go through encode/decode, the shard answers at once."""

    def __init__(self, service, protocol) -> None:
        self.service, self.protocol = service, protocol

    async def call(self, op, timeout_s, fields=None, tensors=None):
        p = self.protocol
        msg = p.decode_body(p.encode({"op": op, **(fields or {})}, tensors)[4:])
        header, out = await self.service.handle(msg)
        return p.decode_body(p.encode({"ok": True, **header}, out)[4:])

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def gateway(artifacts: Path, torch1):
    from system_under_test import protocol
    from system_under_test.artifacts import load_metadata
    from system_under_test.gateway.calls import ShardCaller, ShardCopies
    from system_under_test.gateway.metrics import GatewayMetrics
    from system_under_test.gateway.model import load_bundle
    from system_under_test.gateway.service import RecommendService
    from system_under_test.gateway.settings import Address, GatewaySettings
    from system_under_test.shard_server import ShardService, ShardTables

    n_shards = 2
    version = str(load_metadata(artifacts)["version"])
    state = torch1.load(artifacts / "full.pt", map_location="cpu", weights_only=True)
    copies = []
    for s in range(n_shards):
        tables = ShardTables.from_full(
            state["user_emb.weight"], state["item_emb.weight"], s, n_shards
        )
        copies.append(
            ShardCopies(
                s,
                InProcessShard(ShardService(tables, "primary", version), protocol),
                InProcessShard(ShardService(tables, "replica", version), protocol),
            )
        )
    del state
    addr = Address("127.0.0.1", 0)
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        preset="tiny",
        artifacts=None,
        primaries=(addr,) * n_shards,
        replicas=(addr,) * n_shards,
        region=None,
        redis=None,
    )
    metrics = GatewayMetrics()
    service = RecommendService(
        settings, load_bundle(artifacts), ShardCaller(copies, metrics), None, None, metrics
    )
    service.warm_up()
    loop = asyncio.new_event_loop()
    yield service, loop
    loop.close()


def test_gateway_request(benchmark, gateway) -> None:
    service, loop = gateway
    users = itertools.cycle(range(0, 400, 7))  # a small hot set: L1 warm after the first pass
    counter = itertools.count()

    def request():
        rid = f"bench-{next(counter)}"
        return loop.run_until_complete(service.recommend(next(users), 10, rid))

    for _ in range(60):
        request()
    result = benchmark(request)
    assert result.tier == "primary", result.payload
    assert len(result.payload["items"]) == 10
