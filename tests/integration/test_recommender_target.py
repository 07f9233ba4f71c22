"""The local recommender as a :class:`harness.sut.target.Target`, with the Redis the harness
starts at a given address: up (the default layout, two gateways behind the balancer lb),
answering through Redis, restartable, stopped with nothing left."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from harness.auth import read_token_file
from harness.inject import appfaults
from harness.process import ProcessRef
from harness.process.identity import tagged_processes
from harness.sut.recommender import RecommenderCluster, RecommenderOptions
from harness.sut.redis import redis_available

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TAG = "RECCHAOS_TEST_CLUSTER_TAG"


class Registry:
    """Tags every process the cluster starts (and their children): what is left is findable."""

    def __init__(self) -> None:
        self.env = {TAG: os.urandom(6).hex()}
        self.added: list[str] = []

    def add_process(self, name: str, ref: ProcessRef) -> None:
        self.added.append(name)


@pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")
def test_the_redis_address_is_where_redis_listens_and_the_gateway_looks(tmp_path, tiny_artifacts):
    options = RecommenderOptions(
        shards=1,
        preset="tiny",
        redis=True,
        artifacts=str(tiny_artifacts.parent),
        startup_timeout_s=120,
        redis_address="127.0.0.2:0",  # another loopback address, a free port
    )
    refs: list[ProcessRef] = []
    registry = Registry()
    try:
        with RecommenderCluster(options, tmp_path, registry=registry) as cluster:
            redis = cluster.component("redis")
            assert redis["address"].startswith("127.0.0.2:") and redis["start_time"]
            gateways = [cluster.component(f"gateway-{i}") for i in range(2)]  # the default
            assert cluster.base_url == f"http://{cluster.component('lb')['address']}"
            for gateway in gateways:
                assert f"redis://{redis['address']}/0" in gateway["command"]
            assert cluster.extra_components() == [redis]
            assert [name for name, _ in cluster.extra_pids()] == ["fault proxy", "redis"]
            body = json.dumps({"user_id": 7, "k": 5}).encode()
            req = urllib.request.Request(
                f"{cluster.base_url}/v1/recommend", data=body, method="POST"
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200
            # The first gateway to start writes the features (it authenticated with the run's
            # token); the other may find them there already.
            logs = [Path(gateway["log"]).read_text(errors="replace") for gateway in gateways]
            assert any("wrote features of" in log for log in logs), logs
            old = ProcessRef(redis["pid"], redis["start_time"])
            new_pid = cluster.restart("redis")
            assert new_pid != old.pid and not old.alive()
            shard = cluster.component("shard-0-replica")
            old_shard = ProcessRef(shard["pid"], shard["start_time"])
            new_shard = cluster.restart("shard-0-replica")  # the live one is stopped first
            assert not old_shard.alive()
            manifest = json.loads(cluster.manifest_path.read_text())
            entry = next(c for c in manifest["components"] if c["name"] == "shard-0-replica")
            assert entry["pid"] == new_shard != shard["pid"] and entry["start_time"] > 0
            token = read_token_file(manifest["control_token_file"])
            assert token == cluster.token  # the restarted copy got it in its environment too:
            assert appfaults.control(entry["address"], {}, token=token)["faults"] is None
            refs = [ProcessRef(c["pid"], c["start_time"]) for c in manifest["components"]]
            refs += [ref for _, ref in cluster.extra_pids()] + [old, old_shard]
        deadline = time.monotonic() + 10
        while any(ref.alive() for ref in refs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [ref for ref in refs if ref.alive()] == []
        assert tagged_processes(TAG, registry.env[TAG]) == []  # nothing the manifest forgot either
        assert registry.added[:3] == ["redis", "fault proxy", "launcher"]
    finally:  # a failed check must not leave the cluster behind
        for _, ref in tagged_processes(TAG, registry.env[TAG]):
            ref.signal(signal.SIGKILL)
