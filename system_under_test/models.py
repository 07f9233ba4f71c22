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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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


@dataclass
class _NumpyRanker:
    """``DLRMRanker``'s weights for ``score_numpy``: transposed for ``x @ w_t + b``."""

    bottom: list[tuple[np.ndarray, np.ndarray]]
    first_bias: np.ndarray
    w_side_t: np.ndarray
    w_user: np.ndarray
    w_bottom: np.ndarray
    top_rest: list[tuple[np.ndarray, np.ndarray]]
    cat_table: np.ndarray


def _mlp_apply(mlp: nn.Sequential, x: Tensor, skip_first: bool = False) -> Tensor:
    """``mlp(x)`` for a Sequential of Linear and ReLU layers, without module-call overhead."""
    for i, layer in enumerate(mlp):
        if skip_first and i == 0:
            continue
        if isinstance(layer, nn.Linear):
            x = F.linear(x, layer.weight, layer.bias)
        else:
            x = torch.relu(x)
    return x


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
        ``[N, d]`` and ``cand_cat`` ``[N]``. The same function as ``forward``, arranged for one
        user: the bottom MLP, the three user-side dot products and the bottom vector's share of
        the top MLP's first layer are computed once; per candidate only its 7 dot products with
        the other vectors go through that layer (``_pair_weights``). Equal to ``forward`` up to
        float rounding (``test_ranker_score_equals_batched_forward``).

        On the CPU without autograd (serving, ``full_pipeline``) this is :meth:`score_numpy`:
        the same arithmetic in numpy, which costs about a third of the torch ops' dispatch.
        """
        if not torch.is_grad_enabled() and cand_emb.device.type == "cpu":
            return torch.from_numpy(
                self.score_numpy(
                    user_vec.numpy(),
                    hist_pooled.numpy(),
                    dense.numpy(),
                    cand_emb.numpy(),
                    cand_cat.numpy(),
                )
            )
        bottom = _mlp_apply(self.bottom, dense)  # [d]
        w_side, w_user, w_bottom = self._pair_weights()
        user_side = torch.stack([bottom, user_vec, hist_pooled])  # [3, d]
        first = self.top[0]
        assert isinstance(first, nn.Linear)
        # First layer's bias for this user: its bias + the user-side pairs + the bottom vector.
        bias = torch.addmv(first.bias, w_user, torch.mm(user_side, user_side.t()).reshape(-1))
        bias = torch.addmv(bias, w_bottom, bottom)
        cat = F.embedding(cand_cat, self.cat_emb.weight)  # [N, d]
        per_cand = torch.cat(
            [
                torch.mm(cand_emb, user_side.t()),  # item . (bottom, user, hist)
                torch.mm(cat, user_side.t()),  # category . (bottom, user, hist)
                (cand_emb * cat).sum(1, keepdim=True),  # item . category
            ],
            dim=1,
        )  # [N, 7]
        x = torch.addmm(bias, per_cand, w_side.t())
        return _mlp_apply(self.top, x, skip_first=True).squeeze(1)

    def score_numpy(
        self,
        user_vec: np.ndarray,
        hist_pooled: np.ndarray,
        dense: np.ndarray,
        cand_emb: np.ndarray,
        cand_cat: np.ndarray,
    ) -> np.ndarray:
        """:meth:`score` on numpy arrays (float32 rows, int64 categories), CPU weights only."""
        p = self._numpy_params()
        x = np.asarray(dense, dtype=np.float32)
        for i, (w_t, b) in enumerate(p.bottom):
            x = x @ w_t + b
            if i < len(p.bottom) - 1:
                np.maximum(x, 0, out=x)
        bottom = x
        user_side = np.stack([bottom, user_vec, hist_pooled]).astype(np.float32, copy=False)
        bias = p.first_bias + p.w_user @ (user_side @ user_side.T).reshape(-1)
        bias += p.w_bottom @ bottom
        cat = p.cat_table[cand_cat]
        per_cand = np.empty((len(cand_emb), 7), dtype=np.float32)
        np.matmul(cand_emb, user_side.T, out=per_cand[:, :3])
        np.matmul(cat, user_side.T, out=per_cand[:, 3:6])
        np.einsum("ij,ij->i", cand_emb, cat, out=per_cand[:, 6])
        x = per_cand @ p.w_side_t + bias
        for w_t, b in p.top_rest:
            np.maximum(x, 0, out=x)
            x = x @ w_t + b
        return x[:, 0]

    def _numpy_params(self) -> _NumpyRanker:
        """The weights as float32 numpy arrays arranged for :meth:`score_numpy`; cached, and
        rebuilt when any parameter is changed in place (training, ``load_state_dict``) or moved
        (``to``: see ``_apply``)."""
        cached = self.__dict__.get("_numpy_cache")
        if cached is not None and cached[0] == [t._version for t in cached[2]]:
            return cached[1]
        tensors = list(self.parameters())

        def arr(t: Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

        with torch.inference_mode(False), torch.no_grad():
            w_side, w_user, w_bottom = self._pair_weights()
            bottom = [
                (arr(m.weight.t()), arr(m.bias)) for m in self.bottom if isinstance(m, nn.Linear)
            ]
            top = [m for m in self.top if isinstance(m, nn.Linear)]
            params = _NumpyRanker(
                bottom=bottom,
                first_bias=arr(top[0].bias),
                w_side_t=arr(w_side.t()),
                w_user=arr(w_user),
                w_bottom=arr(w_bottom),
                top_rest=[(arr(m.weight.t()), arr(m.bias)) for m in top[1:]],
                cat_table=arr(self.cat_emb.weight),
            )
        self.__dict__["_numpy_cache"] = ([t._version for t in tensors], params, tensors)
        return params

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # to(), cuda(), half(), ...: the cached weight arrangements are stale.
        self.__dict__.pop("_numpy_cache", None)
        self.__dict__.pop("_pair_cache", None)
        return super()._apply(fn, recurse)

    def _pair_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The top MLP's first-layer weight split for ``score``: columns of the 7 per-candidate
        pairs (in ``score``'s order), a ``[h, 9]`` weight over the flattened 3x3 Gram matrix of
        (bottom, user, hist) holding the 3 user-side pairs, and the bottom vector's columns.
        Cached; rebuilt when the weight changes (training, ``load_state_dict``, ``to``)."""
        first = self.top[0]
        assert isinstance(first, nn.Linear)
        weight = first.weight
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        cached = self.__dict__.get("_pair_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        # Plain tensors even when first called under inference_mode: score may run with autograd.
        with torch.inference_mode(False), torch.no_grad():
            pairs = [(int(a), int(b)) for a, b in self._pairs.t().tolist()]
            col = {pair: i for i, pair in enumerate(pairs)}
            # vectors: 0 bottom, 1 user, 2 hist, 3 item, 4 category
            side = [col[(0, 3)], col[(1, 3)], col[(2, 3)], col[(0, 4)], col[(1, 4)], col[(2, 4)]]
            side.append(col[(3, 4)])
            w = weight.detach()
            w_side = w[:, side].contiguous()
            w_user = torch.zeros(w.shape[0], 9, dtype=w.dtype, device=w.device)
            for a, b in ((0, 1), (0, 2), (1, 2)):
                w_user[:, a * 3 + b] = w[:, col[(a, b)]]
            w_bottom = w[:, len(pairs) :].contiguous()
        out = (w_side, w_user, w_bottom)
        self.__dict__["_pair_cache"] = (key, out)
        return out

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
