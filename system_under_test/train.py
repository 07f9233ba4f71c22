"""Offline training: synthetic data -> full model -> distilled model -> held-out metrics -> files.

``python -m system_under_test train`` lands in ``main_train``, which asks ``artifacts.py`` for the
preset's artifact directory; ``artifacts.ensure_artifacts`` calls ``train_into`` only when the
version is missing (or ``--force``), into a temporary directory that it then renames.

The full model is trained with two losses summed over shared embeddings: a sampled softmax for
retrieval (in-batch plus uniform negatives, log-Q corrected, so ``user . item`` estimates the log
probability of the next interaction, popularity included) and a binary cross-entropy for the
ranker against uniform negatives (whose optimal logit is that same log probability up to a
constant, which is what ranking the retrieved candidates needs). Each training pair sees the
history that preceded it, never the pair itself: the serving history ends just before the
held-out item in the same way. Recommendations never repeat an item of the user's history (the
users in the data never re-consume), so every top-10 here, like ``models.full_pipeline``, skips
them. The distilled model then imitates the full model's softmax over its top candidates plus
uniform samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from system_under_test import artifacts
from system_under_test.config import PRESETS, Preset, get_preset, version_of
from system_under_test.data import SyntheticData, generate
from system_under_test.models import DistilledModel, FullModel

Log = Callable[[str], None]

# Uniform negatives per batch in the retrieval softmax, as a share of the batch: they reach the
# tail items that in-batch (popularity-distributed) negatives almost never show.
_UNIFORM_NEGATIVE_SHARE = 0.5
# Weight of the L2 penalty on the table rows a batch touches (see _full_losses).
_ROW_L2 = 0.01
# Uniform negatives per positive for the ranker's binary cross-entropy.
_RANKER_NEGATIVES = 2
# Uniform items added to the teacher's top candidates in each distillation softmax.
_DISTILL_SAMPLES = 100
# The student is small and sees each user once per epoch: a larger step converges in budget.
_DISTILL_LR_SCALE = 3.0
_EVAL_USERS = 5000
_EVAL_NEGATIVES = 10
_TOP_K = 10
_N_POPULAR = 100
_PROGRESS_STEPS = 4  # progress lines per epoch


@dataclass(frozen=True)
class _Tensors:
    """The training data as tensors, plus the per-user offsets of the grouped training pairs."""

    train_users: Tensor
    train_items: Tensor
    user_start: Tensor  # [U] index of each user's first training pair
    history: Tensor
    dense: Tensor
    item_category: Tensor
    log_q: Tensor  # [I] log of each item's share of the training pairs
    test_items: Tensor

    @staticmethod
    def of(data: SyntheticData) -> _Tensors:
        starts = np.searchsorted(data.train_users, np.arange(data.n_users), side="left")
        share = (data.popularity + 1.0) / (data.popularity.sum() + data.n_items)
        return _Tensors(
            train_users=torch.from_numpy(data.train_users.copy()),
            train_items=torch.from_numpy(data.train_items.copy()),
            user_start=torch.from_numpy(starts.astype(np.int64)),
            history=torch.from_numpy(data.history.copy()),
            dense=torch.from_numpy(data.dense.copy()),
            item_category=torch.from_numpy(data.item_category.copy()),
            log_q=torch.from_numpy(np.log(share).astype(np.float32)),
            test_items=torch.from_numpy(data.test_items.copy()),
        )

    def causal_history(self, pairs: Tensor, length: int) -> Tensor:
        """``[B, length]``: the user's training items just before each pair, -1 padded."""
        idx = pairs.unsqueeze(1) - length + torch.arange(length)
        first = self.user_start[self.train_users[pairs]].unsqueeze(1)
        return torch.where(idx >= first, self.train_items[idx.clamp(min=0)], -1)


def main_train(argv: Sequence[str] | None = None) -> int:
    """``python -m system_under_test train [--preset P] [--artifacts DIR] [--force]``."""
    from system_under_test.__main__ import prog

    parser = argparse.ArgumentParser(
        prog=f"{prog()} train",
        description="Train the recommender's models (or reuse them) and print held-out metrics.",
    )
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument(
        "--artifacts",
        default=None,
        help="artifact root (default: $RECCHAOS_ARTIFACTS or ~/.cache/recchaos/artifacts)",
    )
    parser.add_argument("--force", action="store_true", help="retrain even if artifacts exist")
    args = parser.parse_args(argv)
    try:
        directory = artifacts.ensure_artifacts(args.preset, root=args.artifacts, force=args.force)
        metadata = artifacts.load_metadata(directory)
    except artifacts.ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_metrics(metadata["metrics"]))
    print(f"artifacts: {directory}")
    return 0


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    lines = [
        f"held-out metrics ({_EVAL_USERS} users at most; seen items excluded from top-{_TOP_K})",
        f"{'model':<12}{'AUC':>8}{'recall@10':>12}",
    ]
    for name in ("full", "distilled", "popularity"):
        row = metrics[name]
        lines.append(f"{name:<12}{row['auc']:>8.4f}{row['recall@10']:>12.4f}")
    return "\n".join(lines)


def train_into(preset_name: str, out_dir: Path, log: Log = print) -> dict:
    """Train everything for ``preset_name`` and write the artifact files into ``out_dir``."""
    preset = get_preset(preset_name)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(2)  # training only; serving processes run one thread each
    try:
        torch.manual_seed(preset.data.seed)
        data = generate(preset.data)
        log(
            f"[train] {preset.name}: {data.n_users} users, {data.n_items} items, "
            f"{data.train_items.shape[0]} training pairs "
            f"(generated in {time.perf_counter() - started:.1f}s)"
        )
        tensors = _Tensors.of(data)
        full = train_full(preset, tensors, log, started)
        distilled = train_distilled(preset, full, tensors, log, started)
        log("[train] evaluating")
        metrics = evaluate(preset, full, distilled, data, tensors)
    finally:
        torch.set_num_threads(previous_threads)
    metadata = {
        "version": version_of(preset),
        "preset": preset.name,
        "data": dataclasses.asdict(preset.data),
        "model": dataclasses.asdict(preset.model),
        "data_seed": preset.data.seed,
        "metrics": metrics,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_version": torch.__version__,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    _write(out_dir, full, distilled, data, metadata)
    log(f"[train] done in {metadata['train_seconds']:.1f}s")
    return metadata


def _write(
    out_dir: Path, full: FullModel, distilled: DistilledModel, data: SyntheticData, meta: dict
) -> None:
    torch.save(full.state_dict(), out_dir / "full.pt")
    torch.save(distilled.state_dict(), out_dir / "distilled.pt")
    popular = np.argsort(-data.popularity, kind="stable")[:_N_POPULAR].astype(np.int64)
    np.savez(
        out_dir / "features.npz",
        history=data.history,
        dense=data.dense,
        item_category=data.item_category,
        popular=popular,
    )
    # Written last: its presence marks the other files as complete.
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def train_full(preset: Preset, t: _Tensors, log: Log, started: float) -> FullModel:
    cfg = preset.model
    model = FullModel(preset.data, cfg)
    optimizer = _FullOptimizer(model, cfg.lr)
    n_pairs = t.train_items.shape[0]
    steps = max(1, -(-n_pairs // cfg.batch_size))
    for epoch in range(cfg.epochs):
        order = torch.randperm(n_pairs)
        totals = torch.zeros(2)
        for step in range(steps):
            pairs = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            retrieval, ranking = _full_losses(model, t, pairs, preset.data.history_len)
            optimizer.zero_grad(set_to_none=True)
            (retrieval + ranking).backward()
            optimizer.step()
            totals += torch.tensor([retrieval.item(), ranking.item()])
            if (step + 1) % max(1, steps // _PROGRESS_STEPS) == 0 or step + 1 == steps:
                mean = totals / (step + 1)
                log(
                    f"[full] epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps} "
                    f"loss {mean.sum():.4f} (retrieval {mean[0]:.4f}, ranker {mean[1]:.4f}) "
                    f"elapsed {time.perf_counter() - started:.1f}s"
                )
    model.eval()
    return model


class _FullOptimizer:
    """Lazy (sparse) Adam for the two big tables, dense Adam for the ranker.

    A batch touches a few thousand of the table rows; dense Adam would update all of them every
    step, which was about half of the step time on the default preset.
    """

    def __init__(self, model: FullModel, lr: float) -> None:
        self.model = model
        tables = [model.user_emb, model.item_emb]
        for table in tables:
            table.sparse = True  # training only: the flag changes gradients, not the module
        self.sparse = torch.optim.SparseAdam([table.weight for table in tables], lr=lr)
        self.dense = torch.optim.Adam(model.ranker.parameters(), lr=lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none=set_to_none)
        self.dense.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.sparse.step()
        self.dense.step()

    def close(self) -> None:
        for table in (self.model.user_emb, self.model.item_emb):
            table.sparse = False


def _full_losses(
    model: FullModel, t: _Tensors, pairs: Tensor, history_len: int
) -> tuple[Tensor, Tensor]:
    users, items = t.train_users[pairs], t.train_items[pairs]
    n_items = t.item_category.shape[0]
    batch = users.shape[0]
    user_vec = model.user_vectors(users)

    # Sampled softmax over in-batch positives plus uniform items. Subtracting the log of each
    # column's expected count in the sample (log-Q) makes the logits estimate log p(item | user).
    n_uniform = max(1, int(batch * _UNIFORM_NEGATIVE_SHARE))
    columns = torch.cat([items, torch.randint(n_items, (n_uniform,))])
    expected = batch * t.log_q[columns].exp() + n_uniform / n_items
    logits = user_vec @ model.item_vectors(columns).T - expected.log()
    accidental = columns.unsqueeze(0) == items.unsqueeze(1)
    accidental[:, :batch].fill_diagonal_(False)
    logits = logits.masked_fill(accidental, float("-inf"))
    retrieval = F.cross_entropy(logits, torch.arange(batch))
    # L2 on the rows this batch touched (lazy Adam has no weight decay): with ~20 pairs per user,
    # unregularised user rows memorise their pairs and held-out recall falls after 2 epochs.
    retrieval = retrieval + _ROW_L2 * (
        user_vec.pow(2).sum(dim=1).mean() + model.item_vectors(items).pow(2).sum(dim=1).mean()
    )

    # Ranker: each positive against uniform negatives, with the same user-side inputs.
    negatives = torch.randint(n_items, (batch, _RANKER_NEGATIVES))
    rank_items = torch.cat([items.unsqueeze(1), negatives], dim=1).reshape(-1)
    reps = 1 + _RANKER_NEGATIVES
    hist = model.pooled_history(t.causal_history(pairs, history_len))
    rank_logits = model.ranker(
        user_vec.repeat_interleave(reps, dim=0),
        hist.repeat_interleave(reps, dim=0),
        t.dense[users].repeat_interleave(reps, dim=0),
        model.item_vectors(rank_items),
        t.item_category[rank_items],
    )
    labels = torch.zeros(batch, reps)
    labels[:, 0] = 1.0
    ranking = F.binary_cross_entropy_with_logits(rank_logits, labels.reshape(-1))
    return retrieval, ranking


def train_distilled(
    preset: Preset, full: FullModel, t: _Tensors, log: Log, started: float
) -> DistilledModel:
    cfg = preset.model
    model = DistilledModel(preset.data, cfg)
    with torch.no_grad():
        # Start from the popularity baseline: the teacher's scores carry popularity, and the
        # bias alone would otherwise take most of the distillation budget to learn it.
        model.item_bias.weight.copy_((t.log_q - t.log_q.mean()).unsqueeze(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr * _DISTILL_LR_SCALE)
    n_users = t.history.shape[0]
    batch_size = max(1, cfg.batch_size // 4)
    steps = max(1, -(-n_users // batch_size))
    for epoch in range(cfg.distill_epochs):
        order = torch.randperm(n_users)
        total = 0.0
        for step in range(steps):
            users = order[step * batch_size : (step + 1) * batch_size]
            loss = _distill_loss(model, full, t, users, cfg.n_candidates)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            if (step + 1) % max(1, steps // _PROGRESS_STEPS) == 0 or step + 1 == steps:
                log(
                    f"[distilled] epoch {epoch + 1}/{cfg.distill_epochs} step {step + 1}/{steps} "
                    f"loss {total / (step + 1):.4f} "
                    f"elapsed {time.perf_counter() - started:.1f}s"
                )
    model.eval()
    return model


def _distill_loss(
    model: DistilledModel, full: FullModel, t: _Tensors, users: Tensor, n_candidates: int
) -> Tensor:
    history, dense = t.history[users], t.dense[users]
    n_items = t.item_category.shape[0]
    with torch.no_grad():
        user_vec = full.user_vectors(users)
        top = torch.topk(full.retrieval_scores(user_vec), n_candidates, dim=1).indices
        sampled = torch.randint(n_items, (users.shape[0], _DISTILL_SAMPLES))
        items = torch.cat([top, sampled], dim=1)  # [B, S]
        teacher = _rank_matrix(full, user_vec, history, dense, items, t.item_category)
        # Seen items are never served, so they take no part in either distribution.
        seen = _seen_mask(items, history)
        target = torch.softmax(teacher.masked_fill(seen, float("-inf")), dim=1)
    student = model.scores(history, dense, items).masked_fill(seen, float("-inf"))
    log_q = torch.log_softmax(student, dim=1).masked_fill(seen, 0.0)
    return -(target * log_q).sum(dim=1).mean()


def _rank_matrix(
    full: FullModel,
    user_vec: Tensor,
    history: Tensor,
    dense: Tensor,
    items: Tensor,
    item_category: Tensor,
) -> Tensor:
    """Full-model ranker logits ``[B, M]`` of ``items [B, M]`` for ``B`` users."""
    batch, m = items.shape
    hist = full.pooled_history(history)
    flat = items.reshape(-1)
    logits = full.ranker(
        user_vec.repeat_interleave(m, dim=0),
        hist.repeat_interleave(m, dim=0),
        dense.repeat_interleave(m, dim=0),
        full.item_vectors(flat),
        item_category[flat],
    )
    return logits.reshape(batch, m)


@torch.no_grad()
def evaluate(
    preset: Preset,
    full: FullModel,
    distilled: DistilledModel,
    data: SyntheticData,
    t: _Tensors,
    chunk: int = 500,
) -> dict[str, dict[str, float]]:
    """AUC (held-out item vs uniform negatives) and recall@10 on a fixed sample of users."""
    rng = np.random.default_rng(preset.data.seed + 1)
    n_eval = min(_EVAL_USERS, data.n_users)
    users = torch.from_numpy(np.sort(rng.choice(data.n_users, n_eval, replace=False)))
    positives = t.test_items[users]
    negatives = torch.from_numpy(rng.integers(0, data.n_items, (n_eval, _EVAL_NEGATIVES)))
    negatives = torch.where(
        negatives == positives.unsqueeze(1), (negatives + 1) % data.n_items, negatives
    )
    pairs = torch.cat([positives.unsqueeze(1), negatives], dim=1)  # column 0 is the positive
    popularity = torch.from_numpy(data.popularity.astype(np.float32))
    popular_order = torch.argsort(-popularity, stable=True)

    scores: dict[str, list[Tensor]] = {"full": [], "distilled": [], "popularity": []}
    hits: dict[str, list[Tensor]] = {"full": [], "distilled": [], "popularity": []}
    for lo in range(0, n_eval, chunk):
        u = users[lo : lo + chunk]
        history, dense, pos = t.history[u], t.dense[u], positives[lo : lo + chunk]
        user_vec = full.user_vectors(u)
        scores["full"].append(
            _rank_matrix(full, user_vec, history, dense, pairs[lo : lo + chunk], t.item_category)
        )
        scores["distilled"].append(distilled.scores(history, dense, pairs[lo : lo + chunk]))
        scores["popularity"].append(popularity[pairs[lo : lo + chunk]])

        recs = {
            "full": _full_top_k(
                full, user_vec, history, dense, t.item_category, preset.model.n_candidates
            ),
            "distilled": _distilled_top_k(distilled, history, dense),
            "popularity": _popular_top_k(popular_order, history),
        }
        for name, top in recs.items():
            hits[name].append((top == pos.unsqueeze(1)).any(dim=1))

    return {
        name: {
            "auc": round(_pairwise_auc(torch.cat(scores[name])), 4),
            "recall@10": round(torch.cat(hits[name]).float().mean().item(), 4),
        }
        for name in scores
    }


def _pairwise_auc(scores: Tensor) -> float:
    """Share of (positive, negative) pairs ordered correctly; column 0 holds the positive."""
    pos, neg = scores[:, :1], scores[:, 1:]
    return ((pos > neg).float() + 0.5 * (pos == neg).float()).mean().item()


def _seen_mask(items: Tensor, history: Tensor) -> Tensor:
    return (items.unsqueeze(2) == history.unsqueeze(1)).any(dim=2)


def _full_top_k(
    full: FullModel,
    user_vec: Tensor,
    history: Tensor,
    dense: Tensor,
    item_category: Tensor,
    n_candidates: int,
) -> Tensor:
    """Batched ``models.full_pipeline``: retrieve, drop seen, rank, top 10."""
    candidates = torch.topk(full.retrieval_scores(user_vec), n_candidates, dim=1).indices
    logits = _rank_matrix(full, user_vec, history, dense, candidates, item_category)
    logits = logits.masked_fill(_seen_mask(candidates, history), float("-inf"))
    return candidates.gather(1, torch.topk(logits, _TOP_K, dim=1).indices)


def _distilled_top_k(distilled: DistilledModel, history: Tensor, dense: Tensor) -> Tensor:
    scores = distilled.scores(history, dense)
    rows = torch.arange(history.shape[0]).unsqueeze(1).expand_as(history)
    valid = history >= 0
    scores[rows[valid], history[valid]] = float("-inf")
    return torch.topk(scores, _TOP_K, dim=1).indices


def _popular_top_k(popular_order: Tensor, history: Tensor) -> Tensor:
    """The 10 most popular items each user has not seen (at most H of the head are seen)."""
    head = popular_order[: _TOP_K + history.shape[1]].unsqueeze(0).expand(history.shape[0], -1)
    seen = _seen_mask(head, history)
    # Stable sort on "seen" keeps popularity order among the unseen items.
    order = torch.argsort(seen.to(torch.int8), dim=1, stable=True)
    return head.gather(1, order[:, :_TOP_K])
