"""Unit tests of the synthetic data (``data.py``) and the models (``models.py``).

Small configurations only: every generation here takes milliseconds, and models are untrained
(the training path is covered by ``tests/integration/test_artifacts.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from system_under_test.config import DataConfig, ModelConfig, get_preset
from system_under_test.data import _alias_table, generate

torch = pytest.importorskip("torch")

from system_under_test.models import (  # noqa: E402
    DistilledModel,
    DLRMRanker,
    FullModel,
    full_pipeline,
)

SMALL = DataConfig(
    n_users=300, n_items=200, n_categories=10, n_dense=4, history_len=8, interactions_per_user=10
)
SMALL_MODEL = ModelConfig(
    dim=8, bottom_mlp=(16, 8), top_mlp=(16, 8), distilled_dim=4, n_candidates=30
)


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in vars(a))


# --- data -----------------------------------------------------------------------------------


def test_same_seed_same_arrays_and_other_seed_differs():
    assert _same(generate(SMALL), generate(SMALL))
    other = generate(DataConfig(**{**vars(SMALL), "seed": SMALL.seed + 1}))
    assert not np.array_equal(generate(SMALL).train_items, other.train_items)


def test_arrays_are_read_only():
    data = generate(SMALL)
    with pytest.raises(ValueError):
        data.history[0, 0] = 1


configs = st.builds(
    DataConfig,
    n_users=st.integers(1, 120),
    n_items=st.integers(10, 150),
    n_categories=st.integers(1, 10),
    n_dense=st.integers(0, 5),
    latent_dim=st.integers(2, 8),
    history_len=st.integers(1, 12),
    interactions_per_user=st.integers(1, 16),
    zipf_exponent=st.floats(0.5, 1.5),
    seed=st.integers(0, 2**32 - 1),
)


@settings(max_examples=40, deadline=None)
@given(configs)
def test_shapes_padding_and_held_out(cfg: DataConfig):
    data = generate(cfg)
    U, n_items, H = cfg.n_users, cfg.n_items, cfg.history_len
    assert data.item_category.shape == (n_items,) and data.item_category.dtype == np.int64
    assert set(np.unique(data.item_category)) == set(range(cfg.n_categories))
    assert data.history.shape == (U, H) and data.history.dtype == np.int64
    assert data.dense.shape == (U, cfg.n_dense) and data.dense.dtype == np.float32
    assert np.array_equal(data.test_users, np.arange(U))
    assert data.test_items.shape == (U,)
    assert np.array_equal(data.popularity, np.bincount(data.train_items, minlength=n_items))
    assert np.all(np.diff(data.train_users) >= 0), "training pairs are grouped by user"

    for u in range(U):
        row = data.history[u]
        n = int((row >= 0).sum())
        assert np.all(row[: H - n] == -1), f"user {u}: padding must be on the left: {row}"
        seq = data.train_items[data.train_users == u]
        assert len(set(seq.tolist())) == len(seq), f"user {u} repeats an item: {seq}"
        assert np.array_equal(row[H - n :], seq[-H:] if len(seq) else seq[:0])
        assert data.test_items[u] not in seq, f"user {u}: held-out item is in the history"


def test_some_users_have_short_histories():
    data = generate(get_preset("tiny").data)
    lengths = (data.history >= 0).sum(axis=1)
    assert (lengths <= 5).mean() > 0.05, "about a tenth of the users are short"
    assert (lengths == data.history.shape[1]).mean() > 0.1, "and many fill the history"


def test_popular_items_are_popular():
    """The Zipf head dominates: the top 1% of items take a large share of the interactions."""
    data = generate(get_preset("tiny").data)
    counts = np.sort(data.popularity)[::-1]
    assert counts[: len(counts) // 100].sum() > 0.1 * counts.sum()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=60))
def test_alias_table_reproduces_the_weights(weights):
    w = np.array(weights)
    accept, alias = _alias_table(w)
    n = len(w)
    prob = accept / n
    np.add.at(prob, alias, (1.0 - accept) / n)
    np.testing.assert_allclose(prob, w / w.sum(), atol=1e-9)


# --- models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full() -> FullModel:
    torch.manual_seed(0)
    return FullModel(SMALL, SMALL_MODEL).eval()


def test_full_model_has_the_served_layout(full):
    keys = set(full.state_dict())
    assert {"user_emb.weight", "item_emb.weight"} <= keys
    assert all(k.startswith(("user_emb.", "item_emb.", "ranker.")) for k in keys)
    assert full.user_emb.weight.shape == (SMALL.n_users, SMALL_MODEL.dim)
    assert full.item_emb.weight.shape == (SMALL.n_items, SMALL_MODEL.dim)
    assert full.user_emb.mode == full.item_emb.mode == "sum"


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_ranker_score_equals_batched_forward(n, seed):
    gen = torch.Generator().manual_seed(seed)
    ranker = DLRMRanker(7, 3, 8, (16,), (16, 8)).eval()
    user, hist, dense = (
        torch.randn(8, generator=gen),
        torch.randn(8, generator=gen),
        torch.randn(3, generator=gen),
    )
    cand = torch.randn(n, 8, generator=gen)
    cat = torch.randint(7, (n,), generator=gen)
    with torch.no_grad():
        single = ranker.score(user, hist, dense, cand, cat)
        batched = ranker(user.expand(n, -1), hist.expand(n, -1), dense.expand(n, -1), cand, cat)
    assert single.shape == (n,)
    torch.testing.assert_close(single, batched, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_ranker_numpy_path_equals_torch_path(n, seed):
    """Serving scores in numpy (no grad, CPU); training in torch: the same function."""
    gen = torch.Generator().manual_seed(seed)
    ranker = DLRMRanker(7, 3, 8, (16,), (16, 8)).eval()
    user, hist = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    dense = torch.randn(3, generator=gen)
    cand = torch.randn(n, 8, generator=gen)
    cat = torch.randint(7, (n,), generator=gen)
    via_torch = ranker.score(user, hist, dense, cand, cat).detach()  # grad on: the torch ops
    via_numpy = ranker.score_numpy(
        user.numpy(), hist.numpy(), dense.numpy(), cand.numpy(), cat.numpy()
    )
    assert via_numpy.dtype == np.float32 and via_numpy.shape == (n,)
    torch.testing.assert_close(torch.from_numpy(via_numpy), via_torch, rtol=1e-5, atol=1e-5)


def test_ranker_numpy_weights_follow_in_place_updates():
    """The numpy copy of the weights is rebuilt when training changes a parameter."""
    ranker = DLRMRanker(7, 3, 8, (16,), (16, 8)).eval()
    args = (
        np.ones(8, np.float32),
        np.ones(8, np.float32),
        np.ones(3, np.float32),
        np.ones((2, 8), np.float32),
        np.array([1, 2]),
    )
    before = ranker.score_numpy(*args).copy()
    with torch.no_grad():
        ranker.top[-1].bias.add_(1.0)
    after = ranker.score_numpy(*args)
    np.testing.assert_allclose(after, before + 1.0, rtol=1e-5, atol=1e-5)


def test_pooled_history_is_sum_of_rows_over_count(full):
    history = torch.tensor([[-1, -1, 3, 5], [-1, -1, -1, -1], [1, 2, 2, 7]])
    with torch.no_grad():
        pooled = full.pooled_history(history)
        rows = full.item_emb.weight
        torch.testing.assert_close(pooled[0], (rows[3] + rows[5]) / 2)
        torch.testing.assert_close(pooled[1], torch.zeros(SMALL_MODEL.dim))
        torch.testing.assert_close(pooled[2], (rows[1] + 2 * rows[2] + rows[7]) / 4)


def test_full_forward_feeds_the_ranker_the_served_vectors(full):
    users, items = torch.tensor([0, 7, 9]), torch.tensor([4, 4, 11])
    history = torch.tensor([[-1, 1, 2], [-1, -1, -1], [5, 6, 7]])
    dense, cats = torch.randn(3, SMALL.n_dense), torch.tensor([0, 0, 3])
    with torch.no_grad():
        expected = full.ranker(
            full.user_emb.weight[users],
            full.pooled_history(history),
            dense,
            full.item_emb.weight[items],
            cats,
        )
        torch.testing.assert_close(full(users, history, dense, items, cats), expected)


def test_full_pipeline_retrieves_by_dot_product_and_skips_seen(full):
    item_category = torch.from_numpy(np.arange(SMALL.n_items) % SMALL.n_categories)
    user = 3
    dots = full.item_emb.weight @ full.user_emb.weight[user]
    top = torch.topk(dots, SMALL_MODEL.n_candidates).indices
    history = torch.tensor([-1, -1, int(top[0]), int(top[1])])
    ids, scores = full_pipeline(
        full, user, history, torch.randn(SMALL.n_dense), item_category, SMALL_MODEL.n_candidates, 5
    )
    assert ids.shape == scores.shape == (5,)
    assert len(set(ids.tolist())) == 5
    assert set(ids.tolist()) <= set(top.tolist()) - {int(top[0]), int(top[1])}
    assert torch.all(scores[:-1] >= scores[1:])


def test_distilled_recommend_returns_k_distinct_unseen_ids():
    torch.manual_seed(1)
    model = DistilledModel(SMALL, SMALL_MODEL).eval()
    history = torch.tensor([-1, 5, 9, 9, 17])
    ids, scores = model.recommend(history, torch.randn(SMALL.n_dense), k=10)
    assert ids.shape == scores.shape == (10,)
    assert len(set(ids.tolist())) == 10
    assert not set(ids.tolist()) & {5, 9, 17}
    assert torch.all(scores[:-1] >= scores[1:])
    # Empty history works too (cold user).
    ids, _ = model.recommend(torch.tensor([], dtype=torch.long), torch.zeros(SMALL.n_dense), k=3)
    assert len(set(ids.tolist())) == 3


def test_distilled_scores_of_items_match_scores_of_all():
    torch.manual_seed(2)
    model = DistilledModel(SMALL, SMALL_MODEL).eval()
    history = torch.tensor([[-1, 2, 3], [4, 5, 6]])
    dense = torch.randn(2, SMALL.n_dense)
    items = torch.tensor([[0, 10, 199], [3, 3, 50]])
    with torch.no_grad():
        every = model.scores(history, dense)
        some = model.scores(history, dense, items)
    torch.testing.assert_close(some, every.gather(1, items))
