"""Which shard owns which embedding row. Pure arithmetic, no torch, shared by every process.

User rows are hash-partitioned: user ``u`` lives on shard ``u % S`` at local row ``u // S``.
Item rows are range-partitioned: shard ``s`` owns the contiguous ids ``[start_s, end_s)``, the
ranges as equal as possible (the first ``n % S`` shards hold one more row). Shards are numbered
from 0; the component names use the same numbers (``shard-0-primary``).
"""

from __future__ import annotations

import numpy as np


def user_shard(user_id: int, n_shards: int) -> int:
    return user_id % n_shards


def user_local_row(user_id: int, n_shards: int) -> int:
    return user_id // n_shards


def user_rows_of_shard(n_users: int, shard: int, n_shards: int) -> np.ndarray:
    """Global user ids held by ``shard``, in local-row order."""
    return np.arange(shard, n_users, n_shards, dtype=np.int64)


def item_bounds(n_items: int, n_shards: int) -> np.ndarray:
    """``bounds[s]`` .. ``bounds[s + 1]`` is the item id range of shard ``s``; length S + 1."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if n_items < n_shards:
        raise ValueError(f"cannot range-partition {n_items} items over {n_shards} shards")
    base, extra = divmod(n_items, n_shards)
    sizes = np.full(n_shards, base, dtype=np.int64)
    sizes[:extra] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def item_shard(item_ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Owning shard of each item id (vectorised)."""
    return np.searchsorted(bounds, item_ids, side="right") - 1
