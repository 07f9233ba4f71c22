"""Synthetic interaction data with a latent-factor ground truth. numpy only, never torch.

First stage of the recommender's offline side: ``generate(DataConfig)`` builds the population the
models in ``models.py`` are trained on (by ``train.py``) and whose per-user features the serving
processes load from the artifacts. Everything is a pure function of the config and its seed.

The generative story. Categories have centres in a latent space; an item's latent is its category
centre plus noise; item popularity follows a Zipf law over a random ranking. A user's latent leans
towards one favourite and one second category, and the user's dense context features shift it a
little. Each interaction is drawn with probability proportional to
``popularity * exp(u . v / T)``, sampled in two stages so that nothing is ever ``users x items``:
a category from ``P_k * exp(u . c_k / T)`` (``P_k`` the category's popularity mass), then an item
of that category by sampling-importance-resampling: ``_PROPOSALS`` items drawn by popularity,
one kept with weight ``exp(u . v / T)``. A user never interacts with the same item twice, so the
held-out last interaction is never in the user's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from system_under_test.config import DataConfig

# Softmax temperature of the affinity u . v; with unit-norm centres, a third to a half of a user's
# interactions fall in the favourite category.
_TEMPERATURE = 0.2
# Item latent = category centre + noise of this norm (relative to the unit-norm centre).
_ITEM_NOISE = 0.6
# User latent = fav + _SECOND_WEIGHT * second + noise of norm _USER_NOISE.
_SECOND_WEIGHT = 0.5
_USER_NOISE = 0.4
# Norm of the shift that the dense features add to a user's latent.
_DENSE_SHIFT = 0.35
# Candidates per draw for the within-category importance resampling.
_PROPOSALS = 16
# Share of users with a short sequence (2-5 interactions): cold-ish users with padded histories.
_SHORT_USER_SHARE = 0.1
# Draw this many times more than needed so that dropping repeats leaves enough distinct items.
_OVERDRAW = 1.3
# Users per vectorised block: small enough that gathers stay in cache (about 4x faster).
_CHUNK = 2048


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """The generated data set. All arrays are read-only.

    ``train_users``/``train_items`` are grouped by user (ascending) and, within a user, in
    interaction order, so the interactions before a training pair are the pairs just before it.
    ``history[u]`` is the last ``history_len`` of user ``u``'s training items, most recent last,
    left-padded with -1; the held-out ``test_items[u]`` follows them and never occurs among them.
    """

    item_category: np.ndarray  # [I] int64
    history: np.ndarray  # [U, H] int64, -1 padded on the left
    dense: np.ndarray  # [U, n_dense] float32
    train_users: np.ndarray  # [N] int64
    train_items: np.ndarray  # [N] int64
    test_users: np.ndarray  # [U] int64 (every user has one held-out interaction)
    test_items: np.ndarray  # [U] int64
    popularity: np.ndarray  # [I] int64, interaction counts in the training pairs

    @property
    def n_users(self) -> int:
        return int(self.history.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_category.shape[0])


@dataclass(frozen=True)
class _Truth:
    centres: np.ndarray  # [K, L]
    item_category: np.ndarray  # [I]
    item_latent: np.ndarray  # [I, L]
    item_weight: np.ndarray  # [I] Zipf popularity weight
    user_latent: np.ndarray  # [U, L] including the dense shift
    dense: np.ndarray  # [U, n_dense]


def generate(cfg: DataConfig) -> SyntheticData:
    """Generate the whole data set from ``cfg`` (deterministic in ``cfg.seed``)."""
    _validate(cfg)
    rng = np.random.default_rng(cfg.seed)
    truth = _ground_truth(cfg, rng)
    lengths = _sequence_lengths(cfg, rng)
    sequences = _draw_sequences(cfg, truth, lengths, rng)
    return _split(cfg, truth, sequences)


def _validate(cfg: DataConfig) -> None:
    if cfg.n_items < cfg.n_categories:
        raise ValueError(
            f"n_items={cfg.n_items} must be >= n_categories={cfg.n_categories} "
            "so that every category holds an item"
        )
    for name in ("n_users", "n_categories", "latent_dim", "history_len", "interactions_per_user"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"DataConfig.{name} must be >= 1, got {getattr(cfg, name)}")


def _ground_truth(cfg: DataConfig, rng: np.random.Generator) -> _Truth:
    dim = cfg.latent_dim
    centres = rng.normal(size=(cfg.n_categories, dim)) / np.sqrt(dim)
    # A shuffled round-robin keeps every category non-empty and about equally large.
    item_category = rng.permutation(np.arange(cfg.n_items) % cfg.n_categories).astype(np.int64)
    item_latent = centres[item_category] + _ITEM_NOISE * rng.normal(size=(cfg.n_items, dim)) / (
        np.sqrt(dim)
    )
    ranks = rng.permutation(cfg.n_items)
    item_weight = 1.0 / (ranks + 1.0) ** cfg.zipf_exponent

    fav = rng.integers(0, cfg.n_categories, size=cfg.n_users)
    second = rng.integers(0, cfg.n_categories, size=cfg.n_users)
    user_latent = centres[fav] + _SECOND_WEIGHT * centres[second]
    user_latent += _USER_NOISE * rng.normal(size=(cfg.n_users, dim)) / np.sqrt(dim)
    dense = rng.normal(size=(cfg.n_users, cfg.n_dense))
    if cfg.n_dense > 0:
        shift = rng.normal(size=(cfg.n_dense, dim)) / np.sqrt(cfg.n_dense * dim)
        user_latent += _DENSE_SHIFT * dense @ shift
    return _Truth(
        centres=centres.astype(np.float32),
        item_category=item_category,
        item_latent=item_latent.astype(np.float32),
        item_weight=item_weight,
        user_latent=user_latent.astype(np.float32),
        dense=dense.astype(np.float32),
    )


def _sequence_lengths(cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    ipu = cfg.interactions_per_user
    lengths = rng.integers(max(2, ipu // 2), max(3, ipu + ipu // 2 + 1), size=cfg.n_users)
    short = rng.random(cfg.n_users) < _SHORT_USER_SHARE
    lengths[short] = rng.integers(2, 6, size=int(short.sum()))
    return lengths.astype(np.int64)


def _draw_sequences(
    cfg: DataConfig, truth: _Truth, lengths: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """All interactions as flat ``(users, items)``: users ascending, each in interaction order."""
    sampler = _CategorySampler(truth)
    n_draws = np.ceil(lengths * _OVERDRAW).astype(np.int64) + 3
    users, items = [], []
    for lo in range(0, cfg.n_users, _CHUNK):
        hi = min(lo + _CHUNK, cfg.n_users)
        owner = np.repeat(np.arange(hi - lo), n_draws[lo:hi])
        drawn = sampler.draw(truth.user_latent[lo:hi], owner, rng)
        keep = _first_distinct(owner, drawn, lengths[lo:hi], cfg.n_items)
        users.append(owner[keep] + lo)
        items.append(drawn[keep])
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


class _CategorySampler:
    """Two-stage draw: category by its affinity and mass, then an item by resampling."""

    def __init__(self, truth: _Truth) -> None:
        self.truth = truth
        self.order = np.argsort(truth.item_category, kind="stable")  # items grouped by category
        self.count = np.bincount(truth.item_category, minlength=truth.centres.shape[0])
        self.first = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        weight = truth.item_weight[self.order]
        self.log_mass = np.log(np.add.reduceat(weight, self.first))
        # Walker alias tables, one per category span: O(1) popularity draws inside a category
        # (a searchsorted per proposal took half of the generation time).
        self.accept = np.empty(weight.shape[0])
        self.alias = np.empty(weight.shape[0], dtype=np.int64)
        for start, n in zip(self.first.tolist(), self.count.tolist(), strict=True):
            span = slice(start, start + n)
            accept, alias = _alias_table(weight[span])
            self.accept[span], self.alias[span] = accept, alias + start

    def draw(self, users: np.ndarray, owner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``owner`` (an index into ``users``)."""
        cats = self._categories(users, owner, rng)

        # Proposals: popularity draws inside the category, through its alias table.
        n = owner.shape[0]
        count = self.count[cats][:, None]
        offset = (rng.random((n, _PROPOSALS)) * count).astype(np.int64)
        slot = self.first[cats][:, None] + np.minimum(offset, count - 1)
        slot = np.where(rng.random((n, _PROPOSALS)) < self.accept[slot], slot, self.alias[slot])
        proposals = self.order[slot]  # [n, P]

        # matmul, not einsum: einsum's generic loop is several times slower here.
        latents = np.take(self.truth.item_latent, proposals, axis=0)  # [n, P, L]
        affinity = np.matmul(latents, users[owner][:, :, None])[..., 0]
        gumbel = rng.gumbel(size=affinity.shape)
        pick = np.argmax(affinity / _TEMPERATURE + gumbel, axis=1)
        return proposals[np.arange(proposals.shape[0]), pick]

    def _categories(
        self, users: np.ndarray, owner: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        logits = self.log_mass + (users @ self.truth.centres.T) / _TEMPERATURE  # [n, K]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(probs, axis=1)
        cdf /= cdf[:, -1:]
        # One global sorted array (row r occupies (r, r + 1]) turns n row-wise inverse-CDF
        # look-ups into a single searchsorted.
        n_cat = cdf.shape[1]
        flat = (cdf + np.arange(users.shape[0])[:, None]).ravel()
        keys = owner + rng.random(owner.shape[0])
        pos = np.searchsorted(flat, keys, side="left")
        return np.clip(pos - owner * n_cat, 0, n_cat - 1)


def _alias_table(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method: slot ``j`` keeps itself with ``accept[j]``, else ``alias[j]``.

    Indices are local to ``weight``'s span; the caller offsets them.
    """
    n = weight.shape[0]
    scaled = weight * (n / weight.sum())
    accept = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [j for j in range(n) if scaled[j] < 1.0]
    large = [j for j in range(n) if scaled[j] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        accept[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return accept, alias


def _first_distinct(
    owner: np.ndarray, items: np.ndarray, lengths: np.ndarray, n_items: int
) -> np.ndarray:
    """Mask keeping, in order, the first ``lengths[u]`` distinct items drawn for each user."""
    key = owner.astype(np.int64) * n_items + items
    idx = np.argsort(key, kind="stable")
    sorted_key = key[idx]
    repeat = np.zeros(key.shape[0], dtype=bool)
    # A stable sort puts a value's earliest draw first, so later copies are the repeats.
    repeat[idx[1:]] = sorted_key[1:] == sorted_key[:-1]
    keep = ~repeat
    kept_so_far = np.cumsum(keep)
    seg_start = np.searchsorted(owner, np.arange(lengths.shape[0]), side="left")
    base = np.where(seg_start > 0, kept_so_far[np.maximum(seg_start - 1, 0)], 0)
    rank = kept_so_far - base[owner]  # 1-based rank of each kept draw within its user
    return keep & (rank <= lengths[owner])


def _split(
    cfg: DataConfig, truth: _Truth, sequences: tuple[np.ndarray, np.ndarray]
) -> SyntheticData:
    users, items = sequences
    lengths = np.bincount(users, minlength=cfg.n_users)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    is_test = np.zeros(items.shape[0], dtype=bool)
    is_test[ends - 1] = True

    # The history precedes the held-out item: positions [end - 1 - H, end - 1) of the user.
    pos = (ends - 1)[:, None] - cfg.history_len + np.arange(cfg.history_len)
    history = np.where(pos >= starts[:, None], items[np.maximum(pos, 0)], -1)

    train_items = items[~is_test]
    data = SyntheticData(
        item_category=truth.item_category,
        history=history.astype(np.int64),
        dense=truth.dense,
        train_users=users[~is_test],
        train_items=train_items,
        test_users=np.arange(cfg.n_users, dtype=np.int64),
        test_items=items[is_test],
        popularity=np.bincount(train_items, minlength=cfg.n_items).astype(np.int64),
    )
    for value in vars(data).values():
        value.setflags(write=False)
    return data
