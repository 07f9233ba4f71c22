"""The gateway in a real cluster (tiny preset, 2 shards x primary/replica, region, Redis).

One cluster per module (start-up is the expensive part); every test that breaks a component
heals it in ``finally`` so the next test starts from a healthy cluster, and the module fixture
reaps every process. Failures show the last log lines of every component.

Order matters only through caches: ``test_sharded_answer_equals_reference`` warms the gateway's L1
with users 0..23, which ``test_both_copies_dead`` relies on for its best-effort case.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cluster import Cluster, start_cluster

from harness.sut.redis import RedisServer, redis_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SLA_S = 0.020
REFERENCE_USERS = range(0, 24)


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    if not redis_available():
        yield None
        return
    with RedisServer(tmp_path_factory.mktemp("redis")) as proc:
        yield proc


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, tiny_artifacts: Path, redis_proc: RedisServer | None
) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("cluster-logs")
    redis_url = redis_proc.url if redis_proc else None
    env = redis_proc.client_env() if redis_proc else None
    with start_cluster(log_dir, shards=2, redis_url=redis_url, env=env) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_artifacts: Path):
    import torch

    from system_under_test.artifacts import build_full_model, load_features, load_metadata

    metadata = load_metadata(tiny_artifacts)
    model = build_full_model(metadata)
    features = load_features(tiny_artifacts)
    return model, features, int(metadata["model"]["n_candidates"]), torch


def until_tier(cluster: Cluster, user_id: int, tier: str, timeout_s: float = 15.0, k: int = 10):
    """Ask until the answer comes at ``tier`` (bounded); returns the last reply."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = cluster.recommend(user_id, k)
        if reply.status == 200 and reply.tier == tier:
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(
                f"user {user_id}: no tier {tier!r} within {timeout_s} s; last "
                f"reply {reply.status} {reply.body}"
            )
        time.sleep(0.05)


def fresh_users(shard: int, n: int, start: int) -> list[int]:
    """Users of ``shard`` (of 2) that no other test asks for: their rows are not in L1."""
    return [u for u in range(start, start + 4 * n) if u % 2 == shard][:n]


def test_sharded_answer_equals_reference(cluster, reference):
    model, features, n_candidates, torch = reference
    with cluster.diagnose():
        for user in REFERENCE_USERS:
            reply = until_tier(cluster, user, "primary", timeout_s=5.0)
            assert reply.headers["x-recchaos-tier"] == "primary"
            ids, logits = model_answer(model, features, n_candidates, torch, user, 10)
            assert reply.body["items"] == ids, f"user {user}"
            np.testing.assert_allclose(reply.body["scores"], logits, rtol=1e-4, atol=1e-5)
            assert reply.body["coverage"] == 1.0 and reply.body["cold_start"] is False
            assert reply.body["model_version"]
            assert {"features", "user", "retrieve", "rank", "total"} <= set(
                reply.body["timings_ms"]
            )


def test_an_uncached_user_row_costs_its_shard_one_call(cluster, reference):
    """The user's own shard answers its retrieve and the user's row in one call: a request
    whose row is not cached waits on that shard once, not for a lookup and then a retrieve."""
    model, features, n_candidates, torch = reference
    calls = "recchaos_shard_call_seconds_count"
    with cluster.diagnose():
        until_tier(cluster, REFERENCE_USERS[0], "primary", timeout_s=5.0)  # shards warm
        for user in fresh_users(shard=1, n=3, start=3300):
            before = [cluster.metric(calls, shard=str(s)) for s in (0, 1)]
            reply = cluster.recommend(user, k=10)
            after = [cluster.metric(calls, shard=str(s)) for s in (0, 1)]
            assert reply.status == 200 and reply.tier in ("primary", "replica"), reply.body
            # one answered call per shard (a logical call counts its winning answer only): the
            # user's shard 1 was asked once, for its candidates and the user's row together
            assert (after[0] - before[0], after[1] - before[1]) == (1, 1), (user, before, after)
            ids, logits = model_answer(model, features, n_candidates, torch, user, 10)
            assert reply.body["items"] == ids, f"user {user}"
            np.testing.assert_allclose(reply.body["scores"], logits, rtol=1e-4, atol=1e-5)
            # the row is cached now: the same user again costs shard 1 its retrieve alone
            again = cluster.recommend(user, k=10)
            assert again.status == 200 and again.body["items"] == ids
            assert cluster.metric(calls, shard="1") - after[1] == 1


def model_answer(model, features, n_candidates, torch, user: int, k: int):
    from system_under_test.models import full_pipeline

    ids, logits = full_pipeline(
        model,
        user,
        torch.from_numpy(features["history"][user]),
        torch.from_numpy(features["dense"][user]),
        torch.from_numpy(features["item_category"]),
        n_candidates,
        k,
    )
    return ids.tolist(), logits.numpy()


def test_bad_inputs_are_4xx_and_unknown_users_cold_start(cluster):
    with cluster.diagnose():
        r = cluster.recommend(None, raw_body=b"{nope")
        assert r.status == 400 and r.body["field"] == "body"
        for body, field_ in (
            (b'{"user_id": true}', "user_id"),
            (b'{"user_id": 1.5}', "user_id"),
            (b'{"user_id": -1}', "user_id"),
            (b'{"user_id": 1, "k": 0}', "k"),
            (b'{"user_id": 1, "k": 101}', "k"),
            (b"{}", "user_id"),
        ):
            r = cluster.recommend(None, raw_body=body)
            assert (r.status, r.body["field"]) == (422, field_), body
        assert cluster.http("GET", "/nope").status == 404
        assert cluster.http("GET", "/v1/recommend").status == 405
        assert cluster.recommend(None, raw_body=b"x" * 70_000).status == 413
        r = cluster.recommend(10**12, k=5)
        assert r.status == 200 and r.body["cold_start"] is True and len(r.body["items"]) == 5
        assert cluster.http("GET", "/healthz").status == 200
        assert cluster.http("GET", "/readyz").status == 200


def test_killed_primary_serves_from_replica_then_recovers(cluster):
    try:
        with cluster.diagnose():
            cluster.kill("shard-0-primary")
            replies = [cluster.recommend(u) for u in range(100, 140)]
            assert all(r.status == 200 for r in replies), [r.body for r in replies]
            tiers = Counter(r.tier for r in replies)
            assert tiers["replica"] >= 38, tiers  # every request needs shard 0's retrieve
            assert readiness_names(cluster) == ["shard-0-primary"]
            cluster.restart("shard-0-primary")
            until_tier(cluster, 100, "primary", timeout_s=15.0)
            assert cluster.metric("recchaos_shard_call_errors_total", shard="0", copy="primary") > 0
    finally:
        if not cluster.alive("shard-0-primary"):
            cluster.restart("shard-0-primary")


def readiness_names(cluster: Cluster) -> list[str]:
    r = cluster.http("GET", "/readyz")
    assert r.status == 503, r.body
    return sorted(r.body["not_ready"])


def test_frozen_primary_is_hedged_within_the_deadline(cluster):
    try:
        with cluster.diagnose():
            until_tier(cluster, 200, "primary")
            hedges_before = cluster.metric("recchaos_hedges_total", shard="1")
            cluster.freeze("shard-1-primary")
            replies = [cluster.recommend(u) for u in range(200, 240)]
            assert all(r.status == 200 for r in replies), [r.body for r in replies]
            tiers = Counter(r.tier for r in replies)
            assert tiers["replica"] >= 36, tiers
            totals = sorted(r.body["timings_ms"]["total"] for r in replies)
            assert totals[int(len(totals) * 0.9)] < SLA_S * 1000, totals
            assert cluster.metric("recchaos_hedges_total", shard="1") > hedges_before
            # After a few lost hedges the breaker opens: calls go straight to the replica.
            assert cluster.metric("recchaos_breaker_open", shard="1") == 1.0
            cluster.thaw("shard-1-primary")
            until_tier(cluster, 200, "primary", timeout_s=15.0)
            assert cluster.metric("recchaos_breaker_open", shard="1") == 0.0
    finally:
        cluster.thaw("shard-1-primary")


def test_both_copies_dead_degraded_then_static(cluster):
    dead = ("shard-1-primary", "shard-1-replica")
    try:
        with cluster.diagnose():
            for name in dead:
                cluster.kill(name)
            # Users whose row lives on shard 1 need it: the degraded region answers.
            for user in fresh_users(shard=1, n=8, start=3000):
                r = cluster.recommend(user, k=7)
                assert r.status == 200 and r.tier == "degraded", (user, r.body)
                assert len(r.body["items"]) == 7 and "fallback" in r.body["timings_ms"]
            # A user whose rows are all in L1 needs shard 1 only for candidates: best effort.
            r = cluster.recommend(REFERENCE_USERS[0])
            assert r.status == 200 and r.tier in ("primary", "retry", "replica"), r.body
            assert r.body["coverage"] == pytest.approx(0.5)
            # Region down too: the static popular list, which never fails.
            cluster.kill("region")
            for user in fresh_users(shard=1, n=6, start=3100):
                r = cluster.recommend(user, k=5)
                assert r.status == 200 and r.tier == "static", (user, r.body)
                assert len(r.body["items"]) == 5
            assert cluster.metric("recchaos_static_fallbacks_total") >= 6
            assert cluster.metric("recchaos_region_fallbacks_total", reason="user_shard") >= 8
            assert cluster.metric("recchaos_requests_total", tier="static") >= 6
    finally:
        for name in (*dead, "region"):
            if not cluster.alive(name):
                cluster.restart(name)
    with cluster.diagnose():
        until_tier(cluster, fresh_users(shard=1, n=1, start=3200)[0], "primary", timeout_s=15.0)


def test_redis_down_still_serves(cluster, redis_proc):
    if redis_proc is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with cluster.diagnose():
        for user in range(300, 305):
            assert cluster.recommend(user).status == 200
        assert cluster.metric("recchaos_cache_hits_total", level="features") > 0
        redis_proc.stop()
        replies = [cluster.recommend(u) for u in range(305, 325)]
        assert all(r.status == 200 for r in replies), [r.body for r in replies]
        assert Counter(r.tier for r in replies)["primary"] >= 18
        assert max(r.body["timings_ms"]["total"] for r in replies) < 50
        assert cluster.metric("recchaos_redis_errors_total") >= 1


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    """The container health check's command (deploy/compose.yaml), run here."""
    return subprocess.run(
        [sys.executable, "-m", "system_under_test", "probe", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_container_health_probe_answers_for_every_component_and_fails_a_frozen_one(cluster):
    for name, comp in cluster.comps.items():
        args = [comp.address] + (["--http", "/healthz"] if comp.role == "gateway" else [])
        done = probe(*args)
        assert done.returncode == 0, f"{name}: {done.stderr}"
    replica = cluster.comps["shard-1-replica"]
    cluster.freeze("shard-1-replica")
    try:
        done = probe(replica.address, "--timeout", "0.5")
    finally:
        cluster.thaw("shard-1-replica")
    assert done.returncode == 1 and f"ping {replica.address}" in done.stderr, done.stderr
    gateway = cluster.comps["gateway"].address
    missing = probe(gateway, "--http", "/nope", "--timeout", "2")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr, missing.stderr
