"""Answers checked on real runs: a known, seeded share of wrong answers from the calibration
stub shows exactly as invalid in every window (by the recommender contract, a JSON Schema and a
validator function); a deliberately broken gateway (constant lists, NaN scores) fails the
steady-state scenario naming ``valid_share`` or ``agreement_at_k``; corrupt shard replies
(``app_nan``, ``app_wrong_shape``) never reach an answer; and ``recchaos sut reference`` writes
the full model's own answers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from harness.checks.verdict import Verdict
from harness.load.stub import answers_wrongly
from harness.metrics.stats import in_window
from harness.metrics.windows import Window
from harness.model.reference import read_reference
from harness.model.requestlog import read_log
from harness.process import ManagedProcess, free_port, tcp_open
from harness.runner.run import run, run_against
from harness.runner.session import shared_recommender
from harness.runner.settings import RunSettings, resolve_scenario
from harness.sut.recommender import RecommenderOptions
from harness.sut.target import Target

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
STEADY = ROOT / "scenarios" / "steady_state.yaml"
WRONG_SHARE, STUB_SEED = 0.1, 11


def stub_scenario(tmp_path: Path, kind: str, answers: dict[str, object]) -> Path:
    """A generic target: the calibration stub answering WRONG_SHARE of requests wrongly
    (``kind``), frozen for 1.5 s halfway, checked as ``answers`` says."""
    port = free_port()
    stub = [sys.executable, "-m", "harness.load.stub", "--port", str(port), "--tier", "primary"]
    stub += ["--answer", "recommender", "--wrong-share", str(WRONG_SHARE)]
    stub += ["--wrong-kind", kind, "--seed", str(STUB_SEED)]
    for name in ("answer.schema.json", "answer_checks.py"):
        (tmp_path / name).write_text((DATA / name).read_text())
    doc = {
        "name": f"wrong_{kind}",
        "seed": 3,
        "target": {
            "kind": "generic",
            "components": {"stub": stub},
            "endpoint": f"http://127.0.0.1:{port}",
            "request": {
                "method": "POST",
                "path": "/v1/recommend",
                "body": '{"user_id": $user_id, "k": $k}',
                "headers": {"X-Request-Id": "$request_id"},
            },
        },
        "warmup_s": 1,
        "settle_s": 0.5,
        "mix": {"users": 500, "k": 10},
        "load": [{"name": "main", "rate": 150, "duration_s": 10}],
        "faults": [{"kind": "freeze", "target": "stub", "at_s": 4, "duration_s": 1.5}],
        "answers": answers,
        "slos": [
            {
                "metric": "valid_share",
                "at_least": 1,
                "expect": "violated",
                "reason": f"the stub answers {WRONG_SHARE:.0%} of requests wrongly",
            }
        ],
        "evidence": {"min_samples": 50},
    }
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "kind, answers, code",
    [
        ("nan", {"format": "recommender", "catalogue": 1000}, "non_finite_scores"),
        ("missing_version", {"schema": "answer.schema.json"}, "schema"),
        ("duplicate", {"validator": "answer_checks:distinct_items"}, "validator"),
    ],
)
def test_a_known_share_of_wrong_answers_shows_exactly_in_every_window(
    tmp_path, kind, answers, code
):
    path = stub_scenario(tmp_path, kind, answers)
    outcome = run(RunSettings(str(path), out_dir=tmp_path / "runs", progress=False), log=print)
    assert outcome.record is not None and outcome.record.status == "complete", outcome.message
    log = read_log(outcome.run_dir / "load" / "requests.npy")
    wrong = np.array([answers_wrongly(STUB_SEED, str(i), WRONG_SHARE) for i in log["id"]])
    checked = log["answer"] >= 0
    assert checked.sum() > 0.95 * log.size  # the freeze delays answers; it loses none
    assert 0.07 < wrong[checked].mean() < 0.13  # the known share, from the same hash
    windows = outcome.record.windows
    assert [w["window"]["kind"] for w in windows] == ["before", "during", "after"]
    for w in windows:
        rows = in_window(log, Window.from_dict(w["window"]))
        mine = (rows["answer"] >= 0) & np.array(
            [answers_wrongly(STUB_SEED, str(i), WRONG_SHARE) for i in rows["id"]], dtype=bool
        )
        expected = int(mine.sum())
        name = w["window"]["name"]
        assert w["answers"]["codes"] == ({code: expected} if expected else {}), name
        assert w["error_kinds"].get("bad_answer", 0) == expected, name
        n = int((rows["answer"] >= 0).sum())
        assert w["valid_share"] == pytest.approx(1 - expected / n), name
    shares = [c for c in outcome.record.checks if c["metric"] == "valid_share"]
    assert len(shares) == 3 and all(c["value"] < 1 for c in shares)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    options = RecommenderOptions(shards=4, preset="tiny", redis=True, sla_ms=20.0)
    with shared_recommender(options, tmp_path_factory.mktemp("answers-cluster")) as target:
        yield target


class Fronted:
    """``target`` with its load sent to another URL (the broken gateway in front of it); every
    other part (manifest, components, restarts) is the real target's."""

    def __init__(self, target: Target, base_url: str) -> None:
        self._target = target
        self.base_url = base_url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@contextmanager
def broken_gateway(target: Target, mode: str, log: Path) -> Iterator[Target]:
    upstream = target.base_url.removeprefix("http://")
    port = free_port()
    argv = [sys.executable, str(ROOT / "tests/integration/broken_gateway.py")]
    argv += ["--upstream", upstream, "--mode", mode, "--port", str(port)]
    with ManagedProcess(argv, log, name="broken-gateway").start() as proc:
        proc.wait_ready(lambda: tcp_open("127.0.0.1", port), 10.0, "the broken gateway listens")
        yield Fronted(target, f"http://127.0.0.1:{port}")  # type: ignore[misc]


@pytest.mark.parametrize("mode, metric", [("nan", "valid_share"), ("constant", "agreement_at_k")])
def test_a_broken_gateway_fails_the_steady_state_scenario_naming_the_quality_slo(
    cluster, tmp_path, mode, metric
):
    settings = RunSettings(str(STEADY), out_dir=tmp_path, profile="pr", progress=False)
    scenario = resolve_scenario(settings)
    with broken_gateway(cluster, mode, tmp_path / "broken.log") as target:
        outcome = run_against(target, scenario, settings, log=print)
    assert outcome.verdict is Verdict.FAIL, outcome.message
    assert outcome.record is not None
    failed = [c for c in outcome.record.checks if c["metric"] == metric and c["verdict"] == "FAIL"]
    assert failed, [c["message"] for c in outcome.record.checks]
    pattern = (
        rf"{metric}( \(primary answers\))? (0|0\.\d+) steady window \[\d+\.\d s, \d+\.\d s\] is below the SLO of at"
        rf" least (1|0\.\d+) \(.*steady_state\.yaml, slos\[\d+\]\); "
    )
    assert re.match(pattern, failed[0]["message"]), failed[0]["message"]


def test_corrupt_shard_replies_never_reach_an_answer(cluster, tmp_path):
    settings = RunSettings(str(DATA / "app_faults.yaml"), out_dir=tmp_path, progress=False)
    outcome = run_against(cluster, resolve_scenario(settings), settings, log=print)
    assert outcome.record is not None and outcome.record.status == "complete", outcome.message
    windows = outcome.record.windows
    assert windows and all(w["valid_share"] == 1.0 for w in windows)
    assert all("bad_answer" not in w["error_kinds"] for w in windows)
    during = [w for w in windows if w["window"]["kind"] == "during"]
    assert len(during) == 2
    for w in during:  # the fault took effect: the replica answered, and as the full model does
        replica = w["answers"]["by_tier"]["replica"]
        assert replica["measured"] > 0 and replica["agreement_at_k"] >= 0.99, w["window"]["name"]
    valid = [c for c in outcome.record.checks if c["metric"] == "valid_share"]
    assert valid and all(c["verdict"] in ("PASS", "INCONCLUSIVE") for c in valid)


def test_the_reference_command_writes_the_full_models_answers(tmp_path):
    out = tmp_path / "ref.npz"
    cmd = [sys.executable, "-m", "harness.cli", "sut", "reference", "--preset", "tiny"]
    done = subprocess.run(
        cmd + ["--users", "3,1,3,4001", "--k", "5", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 of the given ids are outside the population of 4000" in done.stdout
    ref = read_reference(out)
    assert ref.users.tolist() == [1, 3] and ref.k == 5 and ref.meta["population"] == 4000
    assert ref.meta["summary"]["requests"] == 3  # user 3 twice: the summary weighs requests
    import torch

    from system_under_test import artifacts
    from system_under_test.models import full_pipeline

    meta = artifacts.load_metadata(artifacts.artifact_dir("tiny"))
    full, features = artifacts.build_full_model(meta), artifacts.load_features(meta["_dir"])
    for row, user in enumerate(ref.users.tolist()):
        ids, _ = full_pipeline(
            full,
            user,
            torch.from_numpy(features["history"][user]),
            torch.from_numpy(features["dense"][user]),
            torch.from_numpy(features["item_category"]),
            meta["model"]["n_candidates"],
            5,
        )
        assert ref.items[row].tolist() == ids.tolist()
    described = subprocess.run(
        cmd + ["--describe"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert json.loads(described.stdout)["population"] == 4000
    bad = subprocess.run(
        cmd + ["--users", "1-x", "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--users '1-x': 'x' is not a user id" in bad.stderr
