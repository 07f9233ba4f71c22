"""Sizes and hyper-parameters of the synthetic data and the models, as frozen presets.

Pure data, no torch. A preset plus a seed fully determines the training data and therefore the
artifacts; ``version_of`` turns them into the artifact version string that every server reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    """The synthetic population and its latent-factor ground truth."""

    n_users: int = 100_000
    n_items: int = 50_000
    n_categories: int = 100
    n_dense: int = 8
    latent_dim: int = 16
    history_len: int = 20
    interactions_per_user: int = 24
    zipf_exponent: float = 1.1
    seed: int = 7


@dataclass(frozen=True)
class ModelConfig:
    """The full DLRM-style ranker, its retrieval stage and the distilled model."""

    dim: int = 32
    bottom_mlp: tuple[int, ...] = (64, 32)
    top_mlp: tuple[int, ...] = (64, 32)
    distilled_dim: int = 16
    n_candidates: int = 100
    epochs: int = 2
    batch_size: int = 2048
    lr: float = 0.01
    distill_epochs: int = 2


@dataclass(frozen=True)
class Preset:
    name: str
    data: DataConfig
    model: ModelConfig


PRESETS: dict[str, Preset] = {
    "default": Preset("default", DataConfig(), ModelConfig(batch_size=1024, epochs=2)),
    # Small enough to train in seconds; used by the tests.
    "tiny": Preset(
        "tiny",
        DataConfig(n_users=4_000, n_items=2_000, n_categories=20, interactions_per_user=20),
        ModelConfig(
            dim=16,
            bottom_mlp=(32, 16),
            top_mlp=(32, 16),
            distilled_dim=8,
            n_candidates=50,
            epochs=6,
            batch_size=512,
            distill_epochs=8,
        ),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        allowed = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown preset {name!r}; allowed: {allowed}") from None


def version_of(preset: Preset) -> str:
    """A short, stable artifact version: preset name plus a hash of every size and seed."""
    blob = json.dumps(
        {"data": dataclasses.asdict(preset.data), "model": dataclasses.asdict(preset.model)},
        sort_keys=True,
    ).encode()
    return f"{preset.name}-{hashlib.sha256(blob).hexdigest()[:10]}"
