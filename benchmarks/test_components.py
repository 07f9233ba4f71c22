"""Component benchmarks (pytest-benchmark): the per-request building blocks, one at a time.

Routing, the gateway's L1 row-cache lookup, the ranker forward pass (tiny preset), histogram
recording, per-window statistics of a long run, and one whole gateway request in process (the real ``RecommendService`` with its shard
calls answered by in-process ``ShardService`` objects, frames encoded and decoded as on the wire,
no sockets). The gateway's metrics, side by side: the metric updates one real request makes,
replayed on the hand-written exporter (``system_under_test/gateway/metrics.py``) and on the same
metrics in ``prometheus_client``, and one ``/metrics`` scrape of each (group ``exporter-*``): the
figures behind keeping the hand-written exporter (docs/recommender.md). Not collected by the
default test run (``testpaths = ["tests"]``); the nightly job runs
``pytest benchmarks/test_components.py --benchmark-json=FILE`` once per round and compares the
rounds with ``recchaos compare`` (see docs/reports.md).
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


def test_window_stats(benchmark) -> None:
    """Per-window statistics of a 1,000 s run at 200 requests/s (200,000 requests) with 8 faults:
    what judging a long nightly run costs (the windows are found with vectorised masks)."""
    from harness.metrics import window_stats, windows_for
    from harness.model.record import FaultEvent
    from harness.model.requestlog import empty_log

    n = 200_000
    rows = empty_log(n)
    rows["intended_ns"] = np.arange(n, dtype=np.int64) * 5_000_000
    rows["send_ns"] = rows["intended_ns"] + 100_000
    rows["done_ns"] = rows["send_ns"] + 2_000_000
    rows["status"] = 200
    faults = [
        FaultEvent("kill", "gateway", {}, "faults[0]", t * 10**9, 0.0, (t + 5) * 10**9, None, True)
        for t in range(100, 900, 100)
    ]
    windows = windows_for(faults, 0.0, 1000.0, 5.0, 2.0)

    stats = benchmark(lambda: [window_stats(rows, w, 20) for w in windows])
    assert sum(s.count for s in stats if s.window.kind == "during") == 8 * 5 * 200


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


# -- the gateway's exporter: hand-written vs prometheus_client ------------------------------------

UPDATES = ("inc", "observe", "set")


def record_updates(metrics, request) -> list[tuple[str, str, tuple, dict]]:
    """The metric updates ``request()`` makes: (attribute of GatewayMetrics, method, args, kw)."""
    calls: list[tuple[str, str, tuple, dict]] = []
    patched = []
    for attr, metric in vars(metrics).items():
        for method in UPDATES:
            real = getattr(metric, method, None)
            if attr == "registry" or real is None:
                continue

            def spy(*args, _real=real, _key=(attr, method), **kw):
                calls.append((*_key, args, kw))
                return _real(*args, **kw)

            setattr(metric, method, spy)  # an instance attribute shadows the method
            patched.append((metric, method))
    try:
        request()
    finally:
        for metric, method in patched:
            delattr(metric, method)
    return calls


def _hand(metric, method, labels, value):
    if method == "observe":
        metric.observe(value, *labels)
    elif method == "set":
        metric.set(*labels, value=value)
    else:
        metric.inc(*labels, amount=value)


def _client(metric, method, labels, value):
    child = metric.labels(*labels) if labels else metric
    getattr(child, method)(value)


def prometheus_twin(hand):
    """The same metrics (names, help, labels, buckets) in a prometheus_client registry."""
    import prometheus_client as pc

    registry = pc.CollectorRegistry()
    twin = {}
    for m in hand.registry.metrics:
        if m.kind == "histogram":
            made = pc.Histogram(m.name, m.help, m.label_names, registry=registry, buckets=m.buckets)
        else:
            cls = pc.Counter if m.kind == "counter" else pc.Gauge
            made = cls(m.name, m.help, m.label_names, registry=registry)
        twin[m.name] = made
    return registry, twin


def replay_ops(calls, target: str):
    """One request's updates as ``(function, metric, method, labels, value)`` for ``target``."""
    from system_under_test.gateway.metrics import GatewayMetrics

    hand = GatewayMetrics()
    registry, twin = prometheus_twin(hand)
    ops = []
    for attr, method, args, kw in calls:
        metric = getattr(hand, attr)
        if method == "observe":
            value, labels = args[0], args[1:]
        else:
            value, labels = kw.get("value", kw.get("amount", 1.0)), args
        if target == "hand-written":
            ops.append((_hand, metric, method, labels, value))
        else:
            ops.append((_client, twin[metric.name], method, labels, value))
    return ops, hand, registry


@pytest.fixture(scope="module")
def request_updates(gateway):
    service, loop = gateway
    for i in range(60):  # warm: L1 hit, tier primary, as test_gateway_request measures
        loop.run_until_complete(service.recommend(i % 57 * 7, 10, f"warm-{i}"))
    calls = record_updates(
        service.metrics,
        lambda: loop.run_until_complete(service.recommend(14, 10, "record")),
    )
    assert calls, "the request updated no metric"
    return calls


def scraped(text: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    def label(k: str, v: str) -> tuple[str, str]:
        return (k, repr(float(v))) if k == "le" else (k, v)  # "1" and "1.0" are one bound

    return {
        (s.name, tuple(sorted(label(k, v) for k, v in s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created") and s.value  # a series never touched: 0 or absent
    }


@pytest.mark.parametrize("exporter", ["hand-written", "prometheus_client"])
def test_exporter_per_request(benchmark, request_updates, exporter) -> None:
    """One request's metric updates (about a dozen), on each exporter; same samples after."""
    ops, hand, registry = replay_ops(request_updates, exporter)
    benchmark.group = "exporter-per-request"
    benchmark.extra_info["updates_per_request"] = len(ops)

    def replay():
        for fn, metric, method, labels, value in ops:
            fn(metric, method, labels, value)

    benchmark(replay)
    if exporter == "prometheus_client":
        assert_same_samples(request_updates)


def assert_same_samples(calls) -> None:
    """The twin is the same exporter: one request replayed on each scrapes to equal samples."""
    import prometheus_client as pc

    hand_ops, hand, _ = replay_ops(calls, "hand-written")
    client_ops, _, registry = replay_ops(calls, "prometheus_client")
    for fn, *rest in hand_ops + client_ops:
        fn(*rest)
    assert scraped(hand.registry.render()) == scraped(pc.generate_latest(registry).decode())


@pytest.mark.parametrize("exporter", ["hand-written", "prometheus_client"])
def test_exporter_scrape(benchmark, request_updates, exporter) -> None:
    """One ``/metrics`` text after 1,000 requests' updates."""
    import prometheus_client as pc

    ops, hand, registry = replay_ops(request_updates, exporter)
    for _ in range(1000):
        for fn, *rest in ops:
            fn(*rest)
    benchmark.group = "exporter-scrape"
    render = (
        hand.registry.render
        if exporter == "hand-written"
        else (lambda: pc.generate_latest(registry).decode())
    )
    text = benchmark(render)
    assert "recchaos_requests_total" in text
