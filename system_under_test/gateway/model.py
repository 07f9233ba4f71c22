"""What the gateway loads at start-up: the ranker, the per-user features and the item metadata.

Never the embedding tables: those live on the shards. ``full.pt`` is opened with ``mmap`` and only
the ``ranker.*`` tensors are read into a ``DLRMRanker``; the tables' pages are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from system_under_test import sharding
from system_under_test.models import DLRMRanker


@dataclass(eq=False)
class ModelBundle:
    version: str
    ranker: DLRMRanker
    device: torch.device
    n_users: int
    n_items: int
    n_dense: int
    dim: int
    n_candidates: int
    item_category: np.ndarray  # [I] int64
    item_category_t: torch.Tensor  # the same, on the ranker's device
    popular: np.ndarray  # [P] int64, most popular first
    history: np.ndarray  # [U, H] int64, -1 padded
    dense: np.ndarray  # [U, n_dense] float32

    def bounds(self, n_shards: int) -> np.ndarray:
        return sharding.item_bounds(self.n_items, n_shards)


def build_ranker(metadata: dict[str, Any]) -> DLRMRanker:
    from system_under_test.artifacts import configs_of

    data, model = configs_of(metadata)
    return DLRMRanker(data.n_categories, data.n_dense, model.dim, model.bottom_mlp, model.top_mlp)


def load_bundle(path: Path, device: str = "cpu") -> ModelBundle:
    """Load the ranker and features of the artifacts in ``path``."""
    from system_under_test.artifacts import load_features, load_metadata

    metadata = load_metadata(path)
    ranker = build_ranker(metadata)
    state = torch.load(path / "full.pt", map_location="cpu", weights_only=True, mmap=True)
    ranker_state = {
        k.removeprefix("ranker."): v.clone() for k, v in state.items() if k.startswith("ranker.")
    }
    del state  # the mmapped tables go with it
    ranker.load_state_dict(ranker_state)
    dev = torch.device(device)
    ranker.to(dev).eval()
    features = load_features(path)
    data, model = metadata["data"], metadata["model"]
    item_category = np.ascontiguousarray(features["item_category"], dtype=np.int64)
    return ModelBundle(
        version=str(metadata["version"]),
        ranker=ranker,
        device=dev,
        n_users=int(data["n_users"]),
        n_items=int(data["n_items"]),
        n_dense=int(data["n_dense"]),
        dim=int(model["dim"]),
        n_candidates=int(model["n_candidates"]),
        item_category=item_category,
        item_category_t=torch.from_numpy(item_category).to(dev),
        popular=np.ascontiguousarray(features["popular"], dtype=np.int64),
        history=np.ascontiguousarray(features["history"], dtype=np.int64),
        dense=np.ascontiguousarray(features["dense"], dtype=np.float32),
    )
