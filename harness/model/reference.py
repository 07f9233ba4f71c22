"""The reference-answer file: each user's top-k from the full, unsharded model, and the
held-out ground truth, as written by ``recchaos sut reference`` and read by the harness.

The recommender writes it and the harness reads it; neither imports the other, so this module
is the format's one description on the reading side (``docs/recommender.md`` describes it for
writers). A ``.npz`` archive with:

* ``users`` int64 ``[U]``, ascending and distinct: the users it covers;
* ``items`` int32 ``[U, K]``: the full model's top-K per user, best first (-1 pads a shorter
  list);
* ``held_out`` int64 ``[U]``: the user's held-out next item (the data generator's ground truth);
  -1 where there is none;
* optionally ``distilled`` and ``popular`` int32 ``[U, K]``: what the degraded tier (the
  distilled model) and the static tier (the popular list without the user's history) answer,
  for stating the quality floors of those tiers;
* ``meta``: a JSON string with ``format`` (``recchaos-reference``), ``format_version`` (1),
  ``k``, and for the recommender ``model_version``, ``preset``, ``population`` and
  ``catalogue``.

A service other than the bundled recommender can write the same file for its own users.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "recchaos-reference"
FORMAT_VERSION = 1
EXTRA_LISTS = ("distilled", "popular")


class ReferenceError(ValueError):
    """A reference file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class Reference:
    users: np.ndarray
    items: np.ndarray
    held_out: np.ndarray
    meta: dict[str, Any]
    lists: dict[str, np.ndarray] = field(default_factory=dict)  # distilled, popular
    source: str = ""

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    def rows_of(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each user id: its row here (clipped) and whether it is covered at all."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if not self.users.size:
            return np.zeros(user_ids.shape, np.int64), np.zeros(user_ids.shape, bool)
        pos = np.searchsorted(self.users, user_ids)
        pos = np.minimum(pos, self.users.size - 1)
        return pos, self.users[pos] == user_ids


def read_reference(path: str | os.PathLike[str]) -> Reference:
    """Read and check a reference file; :class:`ReferenceError` naming what is wrong."""
    source = os.fspath(path)
    try:
        with np.load(source, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ReferenceError(f"{source}: cannot read the reference file: {exc}") from None
    missing = [k for k in ("users", "items", "held_out", "meta") if k not in arrays]
    if missing:
        raise ReferenceError(
            f"{source}: not a recchaos reference file: missing {', '.join(missing)}; write one "
            "with `recchaos sut reference`"
        )
    meta = _meta(source, arrays["meta"])
    users, items, held = arrays["users"], arrays["items"], arrays["held_out"]
    _check(source, users.ndim == 1 and users.dtype.kind == "i", "users is not a 1-d int array")
    n = users.shape[0]
    _check(source, bool(np.all(np.diff(users) > 0)), "users are not ascending and distinct")
    _check(
        source,
        items.ndim == 2 and items.shape[0] == n and items.shape[1] >= 1 and items.dtype.kind == "i",
        f"items has shape {items.shape}, not ({n}, k) integers",
    )
    _check(source, held.shape == (n,), f"held_out has shape {held.shape}, not ({n},)")
    lists = {name: arrays[name].astype(np.int32) for name in EXTRA_LISTS if name in arrays}
    for name, arr in lists.items():
        _check(source, arr.shape == items.shape, f"{name} has shape {arr.shape}, not {items.shape}")
    return Reference(
        users.astype(np.int64),
        items.astype(np.int32),
        held.astype(np.int64),
        meta,
        lists,
        source,
    )


def write_reference(path: str | os.PathLike[str], ref: Reference) -> None:
    """Write atomically (used by tests and tools that build references of their own)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.npz"
    arrays: dict[str, Any] = {
        "users": ref.users,
        "items": ref.items,
        "held_out": ref.held_out,
        "meta": np.array(json.dumps(ref.meta)),
        **ref.lists,
    }
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _meta(source: str, raw: np.ndarray) -> dict[str, Any]:
    try:
        meta = json.loads(str(raw))
    except ValueError as exc:
        raise ReferenceError(f"{source}: meta is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ReferenceError(f"{source}: meta.format is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ReferenceError(
            f"{source}: format_version {meta.get('format_version')!r}; this recchaos reads "
            f"{FORMAT_VERSION}"
        )
    return meta


def _check(source: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ReferenceError(f"{source}: {problem}")


__all__ = ["FORMAT", "FORMAT_VERSION", "Reference", "ReferenceError", "read_reference"]
