"""Tests of training and the artifact directory: one tiny training run, shared by the module.

Covers the held-out quality bar (full beats popularity), the files and their round trip, the
cache (a second ``ensure_artifacts`` reuses), and the clear errors for incomplete directories.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from system_under_test import artifacts
from system_under_test.artifacts import ArtifactError
from system_under_test.config import get_preset, version_of

torch = pytest.importorskip("torch")

from system_under_test import train  # noqa: E402
from system_under_test.models import full_pipeline  # noqa: E402

PRESET = "tiny"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    lines: list[str] = []
    directory = artifacts.ensure_artifacts(PRESET, root=root, log=lines.append)
    assert any("[full] epoch" in line for line in lines), lines
    return directory


def test_directory_is_named_by_version_and_complete(trained):
    assert trained.name == version_of(get_preset(PRESET))
    assert sorted(p.name for p in trained.iterdir()) == sorted(artifacts.FILES)
    leftovers = [p.name for p in trained.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "temporary directories must not outlive training"


def test_metadata_fields_and_metrics(trained):
    meta = artifacts.load_metadata(trained)
    assert meta["version"] == trained.name
    assert meta["preset"] == PRESET
    assert meta["data_seed"] == get_preset(PRESET).data.seed
    for key in ("created_at", "torch_version", "train_seconds", "data", "model"):
        assert key in meta
    metrics = meta["metrics"]
    assert set(metrics) == {"full", "distilled", "popularity"}
    assert metrics["full"]["auc"] > metrics["popularity"]["auc"] + 0.03, metrics
    assert metrics["full"]["recall@10"] > metrics["popularity"]["recall@10"], metrics


def test_models_and_features_round_trip(trained):
    meta = artifacts.load_metadata(trained)
    full = artifacts.build_full_model(meta)
    distilled = artifacts.build_distilled_model(meta)
    state = torch.load(trained / "full.pt", weights_only=True)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert {"user_emb.weight", "item_emb.weight"} <= set(state)

    features = artifacts.load_features(trained)
    cfg = get_preset(PRESET).data
    assert features["history"].shape == (cfg.n_users, cfg.history_len)
    assert features["history"].dtype == np.int64
    assert features["dense"].dtype == np.float32
    assert features["item_category"].shape == (cfg.n_items,)
    popular = features["popular"]
    assert popular.shape == (100,) and len(set(popular.tolist())) == 100

    user = 11
    history = torch.from_numpy(features["history"][user])
    dense = torch.from_numpy(features["dense"][user])
    ids, _ = full_pipeline(
        full,
        user,
        history,
        dense,
        torch.from_numpy(features["item_category"]),
        meta["model"]["n_candidates"],
        10,
    )
    assert len(set(ids.tolist())) == 10
    ids, _ = distilled.recommend(history, dense, 10)
    assert len(set(ids.tolist())) == 10


def test_batched_evaluation_matches_the_reference_pipeline(trained):
    """The recall@10 in the metadata is computed with the same pipeline the cluster serves."""
    meta = artifacts.load_metadata(trained)
    full = artifacts.build_full_model(meta)
    f = artifacts.load_features(trained)
    users = torch.tensor([0, 5, 123, 3999])
    history, dense = torch.from_numpy(f["history"])[users], torch.from_numpy(f["dense"])[users]
    category = torch.from_numpy(f["item_category"])
    n = meta["model"]["n_candidates"]
    with torch.no_grad():
        batched = train._full_top_k(full, full.user_vectors(users), history, dense, category, n)
    for row, user in enumerate(users.tolist()):
        ids, _ = full_pipeline(full, user, history[row], dense[row], category, n, 10)
        assert ids.tolist() == batched[row].tolist()


def test_second_ensure_reuses_without_training(trained, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("ensure_artifacts retrained an existing version")

    monkeypatch.setattr(train, "train_into", no_training)
    before = (trained / "full.pt").stat().st_mtime_ns
    lines: list[str] = []
    again = artifacts.ensure_artifacts(PRESET, root=trained.parent, log=lines.append)
    assert again == trained
    assert any("reusing" in line for line in lines), lines
    assert (trained / "full.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("missing", ["full.pt", "metadata.json", "features.npz"])
def test_partial_directory_gives_a_clear_error(trained, tmp_path, missing):
    copy = tmp_path / trained.name
    shutil.copytree(trained, copy)
    (copy / missing).unlink()
    with pytest.raises(ArtifactError) as info:
        artifacts.ensure_artifacts(PRESET, root=tmp_path, log=lambda line: None)
    assert str(copy) in str(info.value) and missing in str(info.value)
    assert "--force" in str(info.value)
    with pytest.raises(ArtifactError, match=missing):
        artifacts.load_metadata(copy)


def test_corrupt_files_name_the_file(trained, tmp_path):
    copy = tmp_path / trained.name
    shutil.copytree(trained, copy)
    (copy / "full.pt").write_bytes(b"not a checkpoint")
    meta = artifacts.load_metadata(copy)
    with pytest.raises(ArtifactError, match="full.pt"):
        artifacts.build_full_model(meta)
    (copy / "metadata.json").write_text("{")
    with pytest.raises(ArtifactError, match="metadata.json"):
        artifacts.load_metadata(copy)


def test_crash_while_training_leaves_nothing(tmp_path, monkeypatch):
    def crash(preset_name, out_dir, log):
        (out_dir / "full.pt").write_bytes(b"half")
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(train, "train_into", crash)
    with pytest.raises(RuntimeError, match="killed"):
        artifacts.ensure_artifacts(PRESET, root=tmp_path, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv(artifacts.ENV_VAR, str(tmp_path / "env"))
    assert artifacts.artifact_root(tmp_path / "cli") == tmp_path / "cli"
    assert artifacts.artifact_root() == tmp_path / "env"
    monkeypatch.delenv(artifacts.ENV_VAR)
    assert artifacts.artifact_root() == Path("~/.cache/recchaos/artifacts").expanduser()


def test_metadata_is_plain_json(trained):
    meta = json.loads((trained / "metadata.json").read_text())
    assert "_dir" not in meta
