"""The shard's pure parts: routing, partial-sum lookups, sharded retrieval, fault points.

Properties are checked against the unsharded computation: summing the per-shard ``lookup``
partials of a bag and dividing by the total count must equal ``embedding_bag`` on the whole table,
and merging every shard's ``retrieve`` by score must equal the whole table's top-n.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual_time import run_virtual

from system_under_test import protocol, sharding
from system_under_test.protocol import Message, RemoteError
from system_under_test.shard_server import (
    FaultPoints,
    FaultSpec,
    ShardService,
    ShardTables,
    corrupt,
    decide,
    plan_faults,
)

SETTINGS = settings(max_examples=40, deadline=None)


def random_tables(seed: int, n_users: int, n_items: int, dim: int, integer: bool = False):
    g = torch.Generator().manual_seed(seed)
    if integer:  # exact arithmetic: sums and dot products of small integers have no rounding
        return (
            torch.randint(-4, 5, (n_users, dim), generator=g).float(),
            torch.randint(-4, 5, (n_items, dim), generator=g).float(),
        )
    return torch.randn(n_users, dim, generator=g), torch.randn(n_items, dim, generator=g)


def all_shards(users, items, n_shards) -> list[ShardTables]:
    return [ShardTables.from_full(users, items, s, n_shards) for s in range(n_shards)]


@st.composite
def cluster(draw, integer: bool = False):
    n_shards = draw(st.integers(1, 6))
    n_items = draw(st.integers(n_shards, 60))
    n_users = draw(st.integers(0, 60))
    dim = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31))
    users, items = random_tables(seed, n_users, n_items, dim, integer)
    return users, items, all_shards(users, items, n_shards)


@st.composite
def bags(draw, n_rows: int):
    """Ids and EmbeddingBag offsets over ``n_rows`` rows, empty bags included."""
    sizes = draw(st.lists(st.integers(0, 5), min_size=1, max_size=6))
    ids = draw(st.lists(st.integers(0, n_rows - 1), min_size=sum(sizes), max_size=sum(sizes)))
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return np.array(ids, dtype=np.int64), offsets


def split_bags(ids: np.ndarray, offsets: np.ndarray, owned: np.ndarray):
    """What a gateway sends one shard: each bag restricted to the owned ids, all bags kept."""
    bag_of = np.searchsorted(offsets, np.arange(len(ids)), side="right") - 1
    kept_ids, kept_bag = ids[owned], bag_of[owned]
    local_offsets = np.searchsorted(kept_bag, np.arange(len(offsets)), side="left")
    return kept_ids, local_offsets.astype(np.int64)


def merged_lookup(shards: list[ShardTables], table: str, ids, offsets):
    total_sums, total_counts = 0, 0
    for t in shards:
        owned = t.owns_users(ids) if table == "user" else t.owns_items(ids)
        part = t.lookup(table, *split_bags(ids, offsets, owned))
        total_sums = total_sums + part["sums"]
        total_counts = total_counts + part["counts"]
    return np.asarray(total_sums), np.asarray(total_counts)


# ---------------------------------------------------------------------------------- routing


@given(n_users=st.integers(0, 300), n_items=st.integers(1, 300), n_shards=st.integers(1, 9))
@SETTINGS
def test_every_id_routes_to_exactly_one_shard(n_users, n_items, n_shards):
    if n_items < n_shards:
        n_items = n_shards
    shards = all_shards(torch.zeros(n_users, 1), torch.zeros(n_items, 1), n_shards)
    users = np.arange(-2, n_users + 2, dtype=np.int64)
    items = np.arange(-2, n_items + 2, dtype=np.int64)
    user_owners = sum(t.owns_users(users).astype(int) for t in shards)
    item_owners = sum(t.owns_items(items).astype(int) for t in shards)
    inside_u = (users >= 0) & (users < n_users)
    inside_i = (items >= 0) & (items < n_items)
    assert (user_owners[inside_u] == 1).all() and (user_owners[~inside_u] == 0).all()
    assert (item_owners[inside_i] == 1).all() and (item_owners[~inside_i] == 0).all()
    # Ownership agrees with the shared routing arithmetic the gateway uses.
    for u in range(n_users):
        assert shards[sharding.user_shard(u, n_shards)].owns_users(np.array([u]))[0]
    owner = sharding.item_shard(items[inside_i], sharding.item_bounds(n_items, n_shards))
    for s, t in enumerate(shards):
        assert t.owns_items(items[inside_i][owner == s]).all()


# ---------------------------------------------------------------------------------- lookup


@given(data=st.data(), c=cluster())
@SETTINGS
def test_partial_sums_over_shards_equal_embedding_bag(data, c):
    users, items, shards = c
    for table, whole in (("user", users), ("item", items)):
        if len(whole) == 0:
            continue
        ids, offsets = data.draw(bags(len(whole)), label=f"{table} bags")
        sums, counts = merged_lookup(shards, table, ids, offsets)
        t_ids, t_off = torch.from_numpy(ids), torch.from_numpy(offsets)
        expect_sum = F.embedding_bag(t_ids, whole, t_off, mode="sum").numpy()
        expect_mean = F.embedding_bag(t_ids, whole, t_off, mode="mean").numpy()
        np.testing.assert_allclose(sums, expect_sum, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(counts, np.diff(offsets, append=len(ids)))
        mean = sums / np.maximum(counts, 1)[:, None]  # an empty bag's mean is zeros, as in torch
        np.testing.assert_allclose(mean, expect_mean, rtol=1e-5, atol=1e-5)


@given(c=cluster(), data=st.data())
@SETTINGS
def test_lookup_without_offsets_is_one_bag_per_id(c, data):
    users, items, shards = c
    t = data.draw(st.sampled_from(shards))
    ids = np.arange(t.item_start, t.item_end, dtype=np.int64)
    out = t.lookup("item", ids)
    np.testing.assert_array_equal(out["sums"], items[t.item_start : t.item_end].numpy())
    np.testing.assert_array_equal(out["counts"], np.ones(len(ids)))


# ---------------------------------------------------------------------------------- retrieve


@given(c=cluster(integer=True), top_n=st.integers(1, 70), seed=st.integers(0, 2**31))
@SETTINGS
def test_retrieve_merged_by_score_equals_unsharded_top_n(c, top_n, seed):
    _, items, shards = c
    query = np.random.default_rng(seed).integers(-3, 4, items.shape[1]).astype(np.float32)
    parts = [t.retrieve(query, top_n) for t in shards]
    for t, part in zip(shards, parts, strict=True):
        n = min(top_n, t.item_end - t.item_start)
        assert part["ids"].shape == (n,) and part["emb"].shape == (n, items.shape[1])
        assert t.owns_items(part["ids"]).all()
        assert (np.diff(part["scores"]) <= 0).all(), "best first"
        np.testing.assert_array_equal(part["emb"], items[part["ids"]].numpy())
    ids = np.concatenate([p["ids"] for p in parts])
    scores = np.concatenate([p["scores"] for p in parts])
    best = np.argsort(-scores, kind="stable")[:top_n]
    whole = items.numpy() @ query
    n = min(top_n, len(items))
    # Ties make the ids ambiguous; the multiset of top scores is not, and every id's score is true.
    np.testing.assert_array_equal(np.sort(scores[best])[::-1], np.sort(whole)[::-1][:n])
    np.testing.assert_array_equal(scores[best], whole[ids[best]])
    assert len(set(ids[best].tolist())) == n


@given(c=cluster(), data=st.data())
@SETTINGS
def test_retrieve_bag_equals_item_lookup(c, data):
    _, items, shards = c
    t = data.draw(st.sampled_from(shards))
    n_local = t.item_end - t.item_start
    local_ids, offsets = data.draw(bags(n_local))
    ids = local_ids + t.item_start
    out = t.retrieve(np.ones(t.dim, np.float32), 5, ids, offsets)
    ref = t.lookup("item", ids, offsets)
    np.testing.assert_array_equal(out["bag_sums"], ref["sums"])
    np.testing.assert_array_equal(out["bag_counts"], ref["counts"])


# ---------------------------------------------------------------------------------- rejection


def _two_shards():
    users, items = random_tables(0, 10, 10, 3)
    return all_shards(users, items, 2)


@pytest.mark.parametrize(
    ("table", "ids", "text"),
    [
        ("user", [0, 2, 3], "user id 3 is not on shard 0 of 2 (1 of 3 ids foreign)"),
        ("user", [10], "user id 10 is not on shard 0"),
        ("user", [-2], "user id -2 is not on shard 0"),
        (
            "item",
            [4, 5, 9],
            "item id 5 is not on shard 0 of 2 (2 of 3 ids foreign); this shard "
            "owns item ids [0, 5)",
        ),
        ("item", [-1], "item id -1"),
    ],
)
def test_foreign_ids_are_rejected_naming_the_id_and_range(table, ids, text):
    t = _two_shards()[0]
    with pytest.raises(RemoteError) as info:
        t.lookup(table, np.array(ids, dtype=np.int64))
    assert info.value.code == "not_owned"
    assert text in str(info.value)
    if table == "item":  # the same check guards retrieve's bag
        with pytest.raises(RemoteError, match="not_owned"):
            t.retrieve(np.zeros(3, np.float32), 2, np.array(ids, np.int64))


@pytest.mark.parametrize(
    ("offsets", "text"),
    [([1], "offsets[0] must be 0, got 1"), ([0, 3, 2], "non-decreasing"), ([0, 5], "at most")],
)
def test_bad_offsets_are_rejected(offsets, text):
    t = _two_shards()[0]
    with pytest.raises(RemoteError, match=re.escape(text)) as info:
        t.lookup("user", np.array([0, 2, 4], np.int64), np.array(offsets, np.int64))
    assert info.value.code == "bad_request"


# ---------------------------------------------------------------------------------- the service


def call(service: ShardService, header: dict, tensors: dict | None = None):
    """One request through the service's handler, as serve_connection makes it."""
    return asyncio.run(service.handle(Message({"id": 1, **header}, tensors or {})))


def test_service_ops_and_errors():
    t = _two_shards()[1]
    svc = ShardService(t, "replica", "v1")
    fields, _ = call(svc, {"op": "ping"})
    assert fields["shard"] == 1 and fields["role"] == "replica" and fields["version"] == "v1"
    assert fields["items"] == [5, 10] and fields["n_users"] == 5
    _, out = call(svc, {"op": "lookup", "table": "user"}, {"ids": np.array([1, 9], np.int64)})
    assert out["sums"].shape == (2, 3)
    # Queried by a user it holds: the user's row is the query, and comes back as user_row.
    bag = np.array([6, 8], np.int64)
    _, by_user = call(
        svc, {"op": "retrieve", "top_n": 4}, {"user_ids": np.array([9]), "bag_ids": bag}
    )
    _, by_query = call(
        svc, {"op": "retrieve", "top_n": 4}, {"query": out["sums"][1], "bag_ids": bag}
    )
    np.testing.assert_array_equal(by_user.pop("user_row"), out["sums"][1:])
    assert by_user.keys() == by_query.keys()
    for name, arr in by_query.items():
        np.testing.assert_array_equal(by_user[name], arr)
    bad = [
        ({"op": "nope"}, {}, "bad_op"),
        ({"op": None}, {}, "bad_op"),
        ({"op": "lookup", "table": "x"}, {"ids": np.array([1], np.int64)}, "bad_request"),
        ({"op": "lookup", "table": "user"}, {}, "bad_request"),
        ({"op": "lookup", "table": "user"}, {"ids": np.array([1.0], np.float32)}, "bad_request"),
        ({"op": "retrieve", "top_n": 0}, {"query": np.zeros(3, np.float32)}, "bad_request"),
        ({"op": "retrieve", "top_n": True}, {"query": np.zeros(3, np.float32)}, "bad_request"),
        ({"op": "retrieve", "top_n": 3}, {"query": np.zeros(4, np.float32)}, "bad_request"),
        ({"op": "retrieve", "top_n": 3}, {"query": np.full(3, np.nan, np.float32)}, "bad_request"),
        (
            {"op": "retrieve", "top_n": 3},
            {"query": np.zeros(3, np.float32), "bag_offsets": np.array([0], np.int64)},
            "bad_request",
        ),
        ({"op": "retrieve", "top_n": 3}, {"user_ids": np.array([2])}, "not_owned"),
        ({"op": "retrieve", "top_n": 3}, {"user_ids": np.array([1, 3])}, "bad_request"),
        ({"op": "retrieve", "top_n": 3}, {"user_ids": np.array([1.0], np.float32)}, "bad_request"),
        (
            {"op": "retrieve", "top_n": 3},
            {"user_ids": np.array([1]), "query": np.zeros(3, np.float32)},
            "bad_request",
        ),
    ]
    for header, tensors, code in bad:
        with pytest.raises(RemoteError) as info:
            call(svc, header, tensors)
        assert info.value.code == code, (header, str(info.value))


# ---------------------------------------------------------------------------------- fault points


@given(seed=st.integers(0, 2**63), rid=st.one_of(st.integers(), st.text(max_size=20)))
@SETTINGS
def test_decide_is_deterministic_and_in_unit_interval(seed, rid):
    x = decide(seed, rid, "error")
    assert 0.0 <= x < 1.0
    assert x == decide(seed, rid, "error")


def test_fault_rates_are_close_to_the_spec_and_replayable():
    spec = FaultSpec(seed=7, error_rate=0.1, delay_ms=5, delay_rate=0.5, nan_rate=0.2)
    plans = [plan_faults(spec, "lookup", f"r{i}") for i in range(4000)]
    assert abs(sum(p.error for p in plans) / 4000 - 0.1) < 0.02
    assert abs(sum(p.delay_s > 0 for p in plans) / 4000 - 0.5) < 0.03
    assert abs(sum(p.nan for p in plans) / 4000 - 0.2) < 0.03
    assert not any(p.wrong_shape for p in plans)
    assert plans == [plan_faults(spec, "lookup", f"r{i}") for i in range(4000)]
    assert plans != [
        plan_faults(FaultSpec(**{**spec.to_fields(), "seed": 8, "ops": None}), "lookup", f"r{i}")
        for i in range(4000)
    ]
    only_retrieve = FaultSpec(error_rate=1.0, ops=("retrieve",))
    assert not plan_faults(only_retrieve, "lookup", 1).any
    assert plan_faults(only_retrieve, "retrieve", 1).error


TOKEN = "t0k3n"


def test_control_sets_counts_and_clears_faults():
    t = _two_shards()[0]
    svc = ShardService(t, "primary", "v1", TOKEN)
    ids = {"ids": np.array([0, 2], np.int64)}
    fields, _ = call(
        svc, {"op": "control", "faults": {"error_rate": 1.0, "seed": 3}, "token": TOKEN}
    )
    assert fields["faults"]["error_rate"] == 1.0
    with pytest.raises(RemoteError) as info:
        call(svc, {"op": "lookup", "table": "user", "rid": "a"}, ids)
    assert info.value.code == "injected"
    call(svc, {"op": "ping"})  # never faulted
    call(
        svc, {"op": "control", "faults": {"nan_rate": 1.0, "wrong_shape_rate": 1.0}, "token": TOKEN}
    )
    _, out = call(svc, {"op": "lookup", "table": "user"}, ids)
    assert out["sums"].shape == (3, 3) and np.isnan(out["sums"][:2]).all()
    assert out["counts"].shape == (3,)
    fields, _ = call(svc, {"op": "control", "clear": True, "token": TOKEN})
    assert fields["faults"] is None and fields["injected"]["nan"] == 1
    _, out = call(svc, {"op": "lookup", "table": "user"}, ids)
    assert out["sums"].shape == (2, 3) and not np.isnan(out["sums"]).any()


def test_keep_warm_runs_the_retrieve_path_past_the_fault_points():
    t = _two_shards()[1]
    svc = ShardService(t, "replica", "v1", TOKEN)
    call(svc, {"op": "control", "faults": {"error_rate": 1.0}, "token": TOKEN})
    for _ in range(3):  # by vector with a bag, then by user, then by vector again
        svc.keep_warm()
    assert svc._warm_round == 3 and len(svc._warm_frames) == 2
    fields, _ = call(svc, {"op": "control", "token": TOKEN})
    assert fields["injected"]["error"] == 0  # a warm round is not a request
    with pytest.raises(RemoteError) as info:  # a request still is
        call(svc, {"op": "retrieve", "top_n": 2, "rid": "x"}, {"query": np.zeros(3, np.float32)})
    assert info.value.code == "injected"


@pytest.mark.parametrize(
    ("server_token", "given", "why"),
    [
        (TOKEN, None, "no 'token' field"),
        (TOKEN, "wrong", "the 'token' field does not match"),
        (TOKEN, TOKEN + "x", "the 'token' field does not match"),
        (TOKEN, 7, "the 'token' field does not match"),
        (TOKEN, "", "the 'token' field does not match"),
        (None, TOKEN, "started without RECCHAOS_CONTROL_TOKEN"),
        (None, None, "started without RECCHAOS_CONTROL_TOKEN"),
    ],
)
def test_control_without_the_token_is_refused_and_logged(server_token, given, why, caplog):
    t = _two_shards()[0]
    svc = ShardService(t, "primary", "v1", server_token)
    header: dict = {"op": "control", "faults": {"error_rate": 1.0}}
    if given is not None:
        header["token"] = given
    for extra in ({}, {"clear": True}, {"faults": {"error_rate": 1.0}}):
        with pytest.raises(RemoteError) as info:
            call(svc, {**header, **extra})
        assert info.value.code == "unauthorized" and why in str(info.value)
    assert svc.faults.spec is None and svc.faults.refused == 3
    call(svc, {"op": "lookup", "table": "user"}, {"ids": np.array([0], np.int64)})
    refusals = [r for r in caplog.records if r.name == "control"]
    assert len(refusals) == 3 and why in refusals[0].getMessage()
    assert TOKEN not in caplog.text  # a refusal never logs what was given


@pytest.mark.parametrize(
    ("faults", "text"),
    [
        ({"error_rate": 1.5}, "'error_rate' = 1.5 must be a number in [0, 1]"),
        ({"eror_rate": 0.1}, "unknown fault field(s) ['eror_rate']"),
        ({"delay_ms": -1}, "'delay_ms' = -1"),
        ({"seed": "x"}, "'seed' = 'x' must be an integer"),
        ({"ops": "lookup"}, "must be a list of op names"),
        ([1], "'faults' must be a map"),
    ],
)
def test_bad_fault_specs_are_rejected(faults, text):
    points = FaultPoints(TOKEN)
    with pytest.raises(RemoteError) as info:
        points.control({"faults": faults, "token": TOKEN})
    assert info.value.code == "bad_request" and text in str(info.value)
    assert points.spec is None


def test_delay_fault_delays_without_blocking():
    t = _two_shards()[0]
    svc = ShardService(t, "primary", "v1", TOKEN)
    call(svc, {"op": "control", "faults": {"delay_ms": 30}, "token": TOKEN})

    async def two_calls():
        loop = asyncio.get_running_loop()
        start = loop.time()
        msg = Message({"id": 1, "op": "lookup", "table": "user"}, {"ids": np.array([0], np.int64)})
        await asyncio.gather(svc.handle(msg), svc.handle(msg))
        return loop.time() - start

    elapsed = run_virtual(two_calls())  # virtual seconds: two 30 ms delays side by side
    assert elapsed == pytest.approx(0.030)


def test_corrupted_reply_still_encodes():
    tensors = {"ids": np.arange(3, dtype=np.int64), "emb": np.ones((3, 2), np.float32)}
    from system_under_test.shard_server import FaultPlan

    bad = corrupt(tensors, FaultPlan(nan=True, wrong_shape=True))
    assert bad["ids"].shape == (4,) and bad["emb"].shape == (4, 2)
    msg = protocol.decode_body(protocol.encode({"id": 1}, bad)[4:])
    assert np.isnan(msg.tensors["emb"][:3]).all()


# ---------------------------------------------------------------------------------- the region


def _region():
    from system_under_test.config import get_preset
    from system_under_test.models import DistilledModel
    from system_under_test.region_server import RegionModel, RegionService

    preset = get_preset("tiny")
    torch.manual_seed(0)
    model = DistilledModel(preset.data, preset.model)
    popular = np.arange(100, dtype=np.int64)[::-1].copy()
    region = RegionModel(model, popular, preset.data.n_items, preset.data.n_dense)
    return region, RegionService(region, "v1")


def test_region_recommends_k_distinct_ids_excluding_padding():
    region, svc = _region()
    dense = {"dense": np.zeros(region.n_dense, np.float32)}
    for history in ([], [5, -1, -1], list(range(40))):
        for k in (1, 17, 100):
            tensors = {"history": np.array(history, np.int64), **dense}
            fields, out = call(svc, {"op": "recommend", "k": k}, tensors)
            assert out["ids"].shape == (k,) and out["scores"].shape == (k,)
            assert len(set(out["ids"].tolist())) == k and fields["filled"] == 0
            assert not set(out["ids"].tolist()) & {h for h in history if h >= 0}
    fields, _ = call(svc, {"op": "ping"})
    assert fields["role"] == "region" and fields["version"] == "v1"


def test_region_completes_a_bad_model_answer_from_the_popular_list():
    region, _ = _region()
    ids = np.array([7, 7, 99, -3, 5000, 8], np.int64)
    scores = np.array([3.0, 2.0, 1.0, 0.5, 0.4, np.nan], np.float32)
    filled, out = region.complete(ids, scores, 6)
    assert filled == 4
    assert out["ids"].tolist() == [7, 99, 98, 97, 96, 95]
    assert (np.diff(out["scores"]) < 0).all()


def test_region_rejects_bad_requests():
    region, svc = _region()
    dense = np.zeros(region.n_dense, np.float32)
    cases = [
        ({"k": 0}, {"history": np.zeros(0, np.int64), "dense": dense}, "'k' = 0 is out of range"),
        ({"k": 101}, {"history": np.zeros(0, np.int64), "dense": dense}, "allowed 1..100"),
        ({"k": 5}, {"history": np.array([2000], np.int64), "dense": dense}, "history item id 2000"),
        ({"k": 5}, {"history": np.zeros(0, np.int64), "dense": dense[:3]}, "must be f32 [8]"),
        ({"k": 5}, {"dense": dense}, "'history' (i64 [n]) is missing"),
    ]
    for fields, tensors, text in cases:
        with pytest.raises(RemoteError) as info:
            call(svc, {"op": "recommend", **fields}, tensors)
        assert info.value.code == "bad_request" and text in str(info.value), str(info.value)
    with pytest.raises(RemoteError, match="bad_op"):
        call(svc, {"op": "lookup"})


def test_region_keep_warm_runs_recommend_past_the_fault_points():
    from system_under_test.region_server import RegionModel, RegionService

    region, _ = _region()
    svc = RegionService(region, "v1", TOKEN)
    call(svc, {"op": "control", "faults": {"error_rate": 1.0}, "token": TOKEN})
    svc.keep_warm()
    svc.keep_warm()
    fields, _ = call(svc, {"op": "control", "token": TOKEN})
    assert fields["injected"]["error"] == 0 and svc._warm_frame is not None
    assert isinstance(region, RegionModel)


# ---------------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--shard", "2", "--shards", "2", "--role", "primary", "--port", "0"],
         "--shard 2 is out of range; allowed: 0 to 1 (--shards 2)"),
        (["--shard", "0", "--shards", "0", "--role", "primary", "--port", "0"],
         "--shards 0 must be at least 1"),
        (["--shard", "0", "--shards", "2", "--role", "leader", "--port", "0"],
         "invalid choice: 'leader'"),
        (["--shard", "0", "--shards", "2", "--role", "primary", "--port", "70000"],
         "--port 70000 is out of range; allowed: 0 (any free port) to 65535"),
        (["--shard", "0", "--shards", "2", "--role", "primary", "--port", "0", "--preset", "huge"],
         "--preset 'huge' is unknown; allowed: default, tiny"),
        (["--shard", "0", "--shards", "2", "--role", "primary", "--port", "0", "--device", "tpu"],
         "invalid choice: 'tpu'"),
        (["--shard", "0", "--shards", "2", "--role", "primary", "--port", "0",
          "--keep-warm-ms", "5"],
         "--keep-warm-ms 5 is out of range; allowed: 0 (never) or 10 to 60000"),
    ],
)  # fmt: skip
def test_bad_shard_arguments_exit_2_naming_the_value(args, text, capsys):
    from system_under_test import shard_server

    with pytest.raises(SystemExit) as info:
        shard_server.main(args)
    assert info.value.code == 2
    assert text in capsys.readouterr().err


def test_cuda_without_a_gpu_is_refused_clearly(capsys, monkeypatch):
    from system_under_test import region_server

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        region_server.main(["--port", "0", "--device", "cuda"])
    assert info.value.code == 2
    assert (
        "--device cuda was given but torch.cuda.is_available() is False" in capsys.readouterr().err
    )


@pytest.mark.parametrize("n_users", (0, 3, 50))
def test_warm_up_runs_every_op_before_serving_and_leaves_no_trace(n_users):
    users, items = random_tables(5, n_users, 40, 4)
    service = ShardService(ShardTables.from_full(users, items, 2, 3), "primary", "v1")
    calls: list[str] = []
    respond = service.respond

    def counting(msg: Message):  # type: ignore[no-untyped-def]
        calls.append(
            msg.header["op"] + ("/" + msg.header["table"] if "table" in msg.header else "")
        )
        return respond(msg)

    service.respond = counting  # type: ignore[method-assign]
    service.warm_up(top_n=10, rounds=3)
    assert set(calls) >= {"retrieve", "lookup/item", "ping"}
    assert ("lookup/user" in calls) == (n_users > 2)  # shard 2 of 3 holds users 2, 5, ...
    assert service.faults.spec is None and service.faults.counts["requests"] == 0
