"""The shared-cluster policy of a pytest session (:mod:`harness.runner.session`) with a fake
cluster: which scenarios share one, one cluster per target options, a cluster kept only after a
clean PASS, every cluster stopped at the end. No process is started here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.checks.verdict import Verdict
from harness.model.record import RunRecord
from harness.model.scenario import load_scenario
from harness.runner.run import RunOutcome
from harness.runner.session import ClusterPool, ends_clean, session_workdir
from harness.sut.recommender import RecommenderOptions

TINY = RecommenderOptions(shards=2, preset="tiny", redis=False, sla_ms=20.0)
OTHER = RecommenderOptions(shards=4, preset="tiny", redis=False, sla_ms=20.0)


def outcome(verdict: Verdict | None, errors: tuple[str, ...] = (), code: int = 0) -> RunOutcome:
    record = RunRecord(scenario={}, seed=1, errors=errors)
    return RunOutcome(Path("run"), verdict, code, "", "", record=record)


class FakeClusters:
    """Starts and stops pretend clusters, and remembers which."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, Path]] = []
        self.started = 0

    @contextmanager
    def __call__(self, options: RecommenderOptions, workdir: Path, log: Any) -> Iterator[Any]:
        self.started += 1
        number = self.started
        self.events.append(("start", options.shards, workdir))
        try:
            yield f"cluster {number}"
        finally:
            self.events.append(("stop", options.shards, workdir))


def test_scenario_items_share_a_cluster_only_for_the_local_recommender():
    """The bundled recommender as local processes, keyed by what the cluster is started with
    (items that differ get their own)."""
    kill = load_scenario("scenarios/primary_kill.yaml")
    freeze = load_scenario("scenarios/primary_freeze.yaml")
    a, b = ClusterPool.options_for(kill), ClusterPool.options_for(freeze)
    assert a is not None and a == b and hash(a) == hash(b)  # one cluster for both
    assert ClusterPool.options_for(replace(kill, sla_ms=30.0)) != a
    docker = replace(kill, target=replace(kill.target, backend="docker"))
    assert ClusterPool.options_for(docker) is None
    extra_args = replace(kill, target=replace(kill.target, args=("--x",)))
    assert ClusterPool.options_for(extra_args) is None
    own = replace(kill, target=replace(kill.target, share=False))
    assert ClusterPool.options_for(own) is None  # share: false asks for a cluster of its own


def test_share_false_is_read_kept_and_checked():
    """``share: false`` round-trips through the scenario's dict; a non-boolean is refused with
    the field's path and what is allowed."""
    from harness.model.errors import ScenarioError
    from harness.model.scenario import scenario_from_dict

    shipped = load_scenario("scenarios/shard_down.yaml")
    assert shipped.target.share is True and "share" not in shipped.target.to_dict()
    down = replace(shipped, target=replace(shipped.target, share=False))
    assert down.target.to_dict()["share"] is False
    assert scenario_from_dict(down.to_dict()).target.share is False
    assert "share" not in load_scenario("scenarios/primary_kill.yaml").target.to_dict()
    data = down.to_dict()
    data["target"]["share"] = "no"
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(data, "x.yaml")
    assert "target.share" in str(e.value) and "'no'" in str(e.value)


@pytest.mark.parametrize(
    ("ended", "clean"),
    [
        (outcome(Verdict.PASS), True),
        (outcome(Verdict.PASS, errors=("heal failed: kill(shard-0-primary): x",)), False),
        (outcome(Verdict.FAIL, code=1), False),
        (outcome(Verdict.INCONCLUSIVE, code=3), False),
        (outcome(None, code=4), False),
        (outcome(None, code=130), False),
    ],
)
def test_only_a_pass_without_errors_ends_clean(ended, clean):
    assert ends_clean(ended) is clean


def test_a_cluster_is_shared_until_a_run_does_not_end_clean(tmp_path):
    clusters = FakeClusters()
    pool = ClusterPool(tmp_path, start=clusters)
    lines: list[str] = []
    first = pool.get(TINY, lines.append)
    assert pool.get(TINY, lines.append) == first == "cluster 1"  # shared
    pool.settle(TINY, outcome(Verdict.PASS))
    assert pool.get(TINY, lines.append) == "cluster 1"  # kept after a clean PASS
    pool.settle(TINY, outcome(Verdict.FAIL, code=1))
    assert [e[0] for e in clusters.events] == ["start", "stop"]  # discarded at once
    assert pool.get(TINY, lines.append) == "cluster 2"  # the next item starts afresh
    [start1, _, start2] = clusters.events
    assert start1[2] != start2[2] and start1[2].parent == tmp_path
    assert start1[2].name.endswith("-1") and start2[2].name.endswith("-2")
    assert lines[0] == (
        f"starting a shared recommender in {start1[2]} (items of this target reuse it)"
    )


def test_each_target_gets_its_own_cluster_and_all_stop_at_the_end(tmp_path):
    clusters = FakeClusters()
    pool = ClusterPool(tmp_path, start=clusters)
    assert pool.get(TINY, print) != pool.get(OTHER, print)
    pool.discard(OTHER)
    pool.discard(OTHER)  # idempotent
    pool.close()
    assert [(e[0], e[1]) for e in clusters.events] == [
        ("start", 2),
        ("start", 4),
        ("stop", 4),
        ("stop", 2),
    ]
    pool.close()
    assert len(clusters.events) == 4


def test_session_workdirs_sit_beside_the_runs(tmp_path):
    path = session_workdir(tmp_path, "pytest-session")
    assert path.parent == tmp_path and "-pytest-session-" in path.name
    assert session_workdir(tmp_path, "shared-cluster", 3).name.endswith("-3")


def test_proxy_false_starts_no_proxy_and_refuses_network_faults():
    """``proxy: false`` reaches the cluster options (a cluster of its own kind in the pool), leaves
    no proxied component, and a latency fault on a shard copy is refused naming the field."""
    from harness.model.errors import ScenarioError
    from harness.model.scenario import scenario_from_dict

    kill = load_scenario("scenarios/primary_kill.yaml")
    direct = replace(kill, target=replace(kill.target, proxy=False))
    options = ClusterPool.options_for(direct)
    assert options is not None and options.proxy is False
    assert options != ClusterPool.options_for(kill)  # never shares a proxied cluster
    assert direct.target.proxied() == () and kill.target.proxied()
    assert scenario_from_dict(direct.to_dict()).target.proxy is False
    data = load_scenario("scenarios/shard_latency_5ms.yaml").to_dict()
    data["target"]["proxy"] = False
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(data, "x.yaml")
    assert "faults[0].target: got 'shard-1-primary'" in str(e.value)
    assert "proxy: true" in str(e.value)
