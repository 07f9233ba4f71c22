"""The recommender's models: the full two-stage model and the distilled fallback model (torch).

``FullModel`` is what the sharded cluster serves. Retrieval is a plain dot product between the
user's row of ``user_emb`` and each item's row of ``item_emb`` (so each item shard can score its
own row range with no other tower); the ``DLRMRanker`` then re-scores the merged top candidates
with the user row, the mean of the history items' rows, the dense features and the candidates'
rows and categories, which the gateway has already looked up.

``DistilledModel`` is tier 3 of the fallback path (the degraded "region"): small, self-contained,
trained by ``train.py`` to imitate the full model, and needing no shard at serving time.

``full_pipeline`` is the unsharded reference of the serving path, used by tests to check that the
sharded cluster returns the same answer. Candidates already in the user's history are dropped
before ranking (the users in the data never re-consume an item).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from system_under_test.config import DataConfig, ModelConfig

# Initial scale of embedding rows: N(0, 1) rows would make dot products of size ~dim, saturating
# the softmax and the ranker at the first step.
_EMB_INIT_STD = 0.05


def _mlp(sizes: list[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRMRanker(nn.Module):
    """DLRM-style ranker over five vectors: dense, user, pooled history, item, item category.

    The ten pairwise dot products of those vectors, concatenated with the bottom-MLP output, go
    through the top MLP to one logit.
    """

    N_VECTORS = 5
    _pairs: Tensor  # [2, 10] upper-triangle indices, a non-persistent buffer

    def __init__(
        self,
        n_categories: int,
        n_dense: int,
        dim: int,
        bottom_mlp: tuple[int, ...],
        top_mlp: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.dim = dim
        self.cat_emb = nn.Embedding(n_categories, dim)
        nn.init.normal_(self.cat_emb.weight, std=_EMB_INIT_STD)
        bottom = [n_dense, *bottom_mlp]
        if bottom[-1] != dim:
            bottom.append(dim)  # the dense vector takes part in the dot products
        self.bottom = _mlp(bottom, final_activation=False)
        n_pairs = self.N_VECTORS * (self.N_VECTORS - 1) // 2
        self.top = _mlp([n_pairs + dim, *top_mlp, 1], final_activation=False)
        pairs = torch.triu_indices(self.N_VECTORS, self.N_VECTORS, offset=1)
        self.register_buffer("_pairs", pairs, persistent=False)

    def forward(
        self,
        user_vec: Tensor,
        hist_pooled: Tensor,
        dense: Tensor,
        item_vec: Tensor,
        item_cat: Tensor,
    ) -> Tensor:
        """Logits ``[B]`` for ``B`` (user, item) rows; every argument has a leading ``B``."""
        return self._head(self.bottom(dense), user_vec, hist_pooled, item_vec, item_cat)

    def score(
        self,
        user_vec: Tensor,
        hist_pooled: Tensor,
        dense: Tensor,
        cand_emb: Tensor,
        cand_cat: Tensor,
    ) -> Tensor:
        """Logits ``[N]`` of ``N`` candidates for one user, in one batched pass.

        ``user_vec``/``hist_pooled`` are ``[d]``, ``dense`` is ``[n_dense]``, ``cand_emb`` is
        ``[N, d]`` and ``cand_cat`` ``[N]``. Same arithmetic as ``forward``; the user-side inputs
        are computed once and broadcast.
        """
        n = cand_emb.shape[0]
        bottom = self.bottom(dense.unsqueeze(0)).expand(n, -1)
        return self._head(
            bottom,
            user_vec.unsqueeze(0).expand(n, -1),
            hist_pooled.unsqueeze(0).expand(n, -1),
            cand_emb,
            cand_cat,
        )

    def _head(
        self, bottom: Tensor, user: Tensor, hist: Tensor, item: Tensor, item_cat: Tensor
    ) -> Tensor:
        vectors = torch.stack([bottom, user, hist, item, self.cat_emb(item_cat)], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))  # [B, 5, 5]
        pairs = dots[:, self._pairs[0], self._pairs[1]]  # [B, 10]
        return self.top(torch.cat([pairs, bottom], dim=1)).squeeze(1)


class FullModel(nn.Module):
    """Retrieval tables plus the ranker; the whole model the sharded cluster serves."""

    def __init__(self, data: DataConfig, model: ModelConfig) -> None:
        super().__init__()
        self.user_emb = nn.EmbeddingBag(data.n_users, model.dim, mode="sum")
        self.item_emb = nn.EmbeddingBag(data.n_items, model.dim, mode="sum")
        nn.init.normal_(self.user_emb.weight, std=_EMB_INIT_STD)
        nn.init.normal_(self.item_emb.weight, std=_EMB_INIT_STD)
        self.ranker = DLRMRanker(
            data.n_categories, data.n_dense, model.dim, model.bottom_mlp, model.top_mlp
        )

    def user_vectors(self, user_ids: Tensor) -> Tensor:
        """The retrieval query ``[B, d]``: each user's row of ``user_emb``."""
        return self.user_emb(user_ids.unsqueeze(1))

    def item_vectors(self, item_ids: Tensor) -> Tensor:
        return self.item_emb(item_ids.reshape(-1, 1)).reshape(*item_ids.shape, -1)

    def pooled_history(self, history: Tensor) -> Tensor:
        """Mean of the ``item_emb`` rows of each ``[B, H]`` history (-1 pads); zeros if empty.

        Summed by the bag, then divided by the count: the definition the gateway uses with the
        rows it gathers from the item shards.
        """
        valid = history >= 0
        counts = valid.sum(dim=1)
        offsets = torch.cumsum(counts, dim=0) - counts
        summed = self.item_emb(history[valid], offsets)
        return summed / counts.clamp(min=1).unsqueeze(1).to(summed.dtype)

    def retrieval_scores(self, user_vec: Tensor, item_ids: Tensor | None = None) -> Tensor:
        """``user_vec [B, d]`` against all items (``[B, I]``) or ``item_ids [B, M]``."""
        if item_ids is None:
            return user_vec @ self.item_emb.weight.T
        return torch.bmm(self.item_vectors(item_ids), user_vec.unsqueeze(2)).squeeze(2)

    def forward(
        self,
        user_ids: Tensor,
        history: Tensor,
        dense: Tensor,
        item_ids: Tensor,
        item_cat: Tensor,
    ) -> Tensor:
        """Ranker logits ``[B]`` for (user, history, dense, item) rows; ``history`` -1 padded."""
        return self.ranker(
            self.user_vectors(user_ids),
            self.pooled_history(history),
            dense,
            self.item_vectors(item_ids),
            item_cat,
        )


class DistilledModel(nn.Module):
    """A small model that serves with no shard: its own item table, a user tower over history.

    User vector = MLP([mean of the history items' own vectors, MLP(dense)]); an item's score is
    ``user . item_vec + item_bias``, over all items at once.
    """

    def __init__(self, data: DataConfig, model: ModelConfig) -> None:
        super().__init__()
        d = model.distilled_dim
        self.n_items = data.n_items
        self.item_vec = nn.Embedding(data.n_items, d)
        nn.init.normal_(self.item_vec.weight, std=_EMB_INIT_STD)
        self.item_bias = nn.Embedding(data.n_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.dense_mlp = _mlp([data.n_dense, 2 * d, d], final_activation=True)
        self.user_mlp = _mlp([2 * d, 2 * d, d], final_activation=False)

    def user_vectors(self, history: Tensor, dense: Tensor) -> Tensor:
        """``[B, d]`` from ``history [B, H]`` (-1 padded) and ``dense [B, n_dense]``."""
        valid = (history >= 0).unsqueeze(2)
        rows = self.item_vec(history.clamp(min=0)) * valid
        mean = rows.sum(dim=1) / valid.sum(dim=1).clamp(min=1)
        return self.user_mlp(torch.cat([mean, self.dense_mlp(dense)], dim=1))

    def scores(self, history: Tensor, dense: Tensor, item_ids: Tensor | None = None) -> Tensor:
        """Scores of all items ``[B, I]``, or of ``item_ids [B, M]``."""
        user = self.user_vectors(history, dense)
        if item_ids is None:
            return user @ self.item_vec.weight.T + self.item_bias.weight.T
        vecs = self.item_vec(item_ids)
        return torch.bmm(vecs, user.unsqueeze(2)).squeeze(2) + self.item_bias(item_ids).squeeze(2)

    @torch.no_grad()
    def recommend(self, history: Tensor, dense: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top ``k`` distinct item ids (best first) and their scores for one user.

        ``history`` is ``[h]`` item ids (-1 pads allowed); items in it are never recommended.
        """
        scores = self.scores(history.reshape(1, -1), dense.reshape(1, -1)).squeeze(0)
        seen = history[history >= 0]
        scores[seen] = float("-inf")
        top = torch.topk(scores, min(k, self.n_items))
        return top.indices, top.values


@torch.no_grad()
def full_pipeline(
    model: FullModel,
    user_id: int,
    history: Tensor,
    dense: Tensor,
    item_category: Tensor,
    n_candidates: int,
    k: int,
) -> tuple[Tensor, Tensor]:
    """Unsharded reference of the serving path: retrieve, drop seen items, rank, top ``k``.

    1. retrieval: the ``n_candidates`` items with the largest ``user_row . item_row``;
    2. candidates that occur in ``history`` (``[h]`` ids, -1 pads allowed) are dropped;
    3. the ranker scores the rest; returns the ``k`` best ids and their ranker logits.
    """
    user_vec = model.user_emb.weight[user_id]
    candidates = torch.topk(model.item_emb.weight @ user_vec, n_candidates).indices
    seen = history[history >= 0]
    candidates = candidates[~torch.isin(candidates, seen)]
    hist_pooled = model.pooled_history(history.reshape(1, -1)).squeeze(0)
    logits = model.ranker.score(
        user_vec, hist_pooled, dense, model.item_emb.weight[candidates], item_category[candidates]
    )
    top = torch.topk(logits, min(k, candidates.shape[0]))
    return candidates[top.indices], top.values
