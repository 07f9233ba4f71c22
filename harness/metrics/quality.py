"""Answer quality: per-request agreement and NDCG, and their statistics per window and tier.

Per request (:func:`answer_quality`), for a valid answer to a user the reference covers (cold
starts excluded: the target does not know the user), with ``k`` the request's k:

* ``agreement`` (overlap@k): the share of the reference's top-k that the answer's first k
  items contain; 1.0 for the full model's own answer, whatever the order;
* ``ndcg`` (NDCG@k against the held-out ground truth): ``1 / log2(rank + 1)`` when the user's
  held-out item is at 1-based ``rank <= k`` in the answer, else 0; with one relevant item the
  ideal DCG is 1. Its mean is a rank-discounted hit rate (recall@k is the undiscounted one).

Per window (:func:`window_quality`), over the rows given: answers checked, valid, cold starts,
the invalid ones by validity code, and per tier (and over all) the valid share and the mean and
standard deviation of agreement and NDCG. :func:`expected_quality` gives what each serving model
would score on a given stream of users (the mix of a run), from the reference's own lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.model.reference import Reference
from harness.model.requestlog import ANSWER_CODES, TIERS

ALL = "all"
_CHUNK_CELLS = 4_000_000  # rows x k x k compared at once


def answer_quality(
    requests: np.ndarray, answers: np.ndarray, reference: Reference, k: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(agreement, ndcg)`` float32 per row; NaN where not measured (see the module doc)."""
    n = requests.shape[0]
    agreement = np.full(n, np.nan, dtype=np.float32)
    ndcg = np.full(n, np.nan, dtype=np.float32)
    pos, covered = reference.rows_of(requests["user_id"])
    todo = np.flatnonzero((requests["answer"] == 0) & ~requests["cold_start"] & covered)
    if not todo.size:
        return agreement, ndcg
    width = min(int(k[todo].max()), answers.shape[1], reference.k)
    step = max(1, _CHUNK_CELLS // (width * width))
    for lo in range(0, todo.size, step):
        rows = todo[lo : lo + step]
        a, r = _measure(answers[rows], reference, pos[rows], k[rows], width)
        agreement[rows], ndcg[rows] = a, r
    return agreement, ndcg


def _measure(
    answered: np.ndarray, ref: Reference, ref_rows: np.ndarray, k: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    cols = np.arange(width)
    inside = cols[None, :] < np.minimum(k, width)[:, None]
    got = np.where(inside, answered[:, :width], -2)  # -2 never matches
    want = np.where(inside, ref.items[ref_rows, :width], -3)
    want = np.where(want >= 0, want, -3)
    hits = ((got[:, :, None] == want[:, None, :]) & (got[:, :, None] >= 0)).any(axis=2)
    n_want = (want >= 0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(n_want > 0, hits.sum(axis=1) / n_want, np.nan)
    held = ref.held_out[ref_rows]
    at = (got == held[:, None]) & (held[:, None] >= 0)
    gain = 1.0 / np.log2(cols + 2.0)
    ndcg = np.where(held >= 0, (at * gain[None, :]).sum(axis=1), np.nan)
    return agreement.astype(np.float32), ndcg.astype(np.float32)


@dataclass(frozen=True)
class TierQuality:
    """Answers checked and valid, and the agreement and NDCG of those measured."""

    checked: int
    valid: int
    measured: int
    agreement: float
    agreement_sd: float
    ndcg: float
    ndcg_sd: float

    @property
    def valid_share(self) -> float:
        return self.valid / self.checked if self.checked else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "valid": self.valid,
            "valid_share": self.valid_share,
            "measured": self.measured,
            "agreement_at_k": self.agreement,
            "agreement_sd": self.agreement_sd,
            "ndcg_at_k": self.ndcg,
            "ndcg_sd": self.ndcg_sd,
        }

    @classmethod
    def of(cls, rows: np.ndarray) -> TierQuality:
        checked = rows["answer"] >= 0
        a = rows["agreement"][~np.isnan(rows["agreement"])].astype(np.float64)
        g = rows["ndcg"][~np.isnan(rows["ndcg"])].astype(np.float64)
        return cls(
            checked=int(checked.sum()),
            valid=int((rows["answer"] == 0).sum()),
            measured=int(a.size),
            agreement=float(a.mean()) if a.size else math.nan,
            agreement_sd=float(a.std()) if a.size else math.nan,
            ndcg=float(g.mean()) if g.size else math.nan,
            ndcg_sd=float(g.std()) if g.size else math.nan,
        )


@dataclass(frozen=True)
class WindowQuality:
    """A window's answers: cold starts, invalid ones by code, quality over all and per tier."""

    cold_start: int
    codes: dict[str, int]
    by_tier: dict[str, TierQuality]  # ALL and every tier that served a checked answer

    def tier(self, name: str | None) -> TierQuality:
        return self.by_tier.get(name or ALL) or TierQuality(0, 0, 0, *(math.nan,) * 4)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cold_start": self.cold_start,
            "codes": dict(self.codes),
            "by_tier": {t: q.to_dict() for t, q in self.by_tier.items()},
        }


def window_quality(rows: np.ndarray) -> WindowQuality:
    """The quality statistics of a window's rows (answers checked by the load worker)."""
    checked = rows[rows["answer"] >= 0]
    codes, counts = np.unique(checked["answer"], return_counts=True)
    by_tier = {ALL: TierQuality.of(checked)}
    for i, name in enumerate(TIERS):
        at = checked[checked["tier"] == i]
        if at.size:
            by_tier[name] = TierQuality.of(at)
    return WindowQuality(
        cold_start=int(checked["cold_start"].sum()),
        codes={
            ANSWER_CODES[c]: int(n)
            for c, n in zip(codes.tolist(), counts.tolist(), strict=True)
            if 0 < c < len(ANSWER_CODES)
        },
        by_tier=by_tier,
    )


def expected_quality(reference: Reference, users: np.ndarray, k: int) -> dict[str, Any]:
    """What the full model (the reference itself), the distilled model and the popular list
    would score on the stream ``users`` (one entry per request: a mix weights its users),
    for the users the reference covers: mean agreement and NDCG at ``k``, and the hit rate."""
    pos, covered = reference.rows_of(users)
    pos = pos[covered]
    out: dict[str, Any] = {"requests": int(pos.size), "k": int(k)}
    if not pos.size:
        return out
    lists = {"full": reference.items, **reference.lists}
    ks = np.full(pos.size, k, dtype=np.int64)
    width = min(k, reference.k)
    for name, items in lists.items():
        agreement, ndcg = _measure(items[pos], reference, pos, ks, width)
        held = reference.held_out[pos]
        hit = (items[pos, :width] == held[:, None]).any(axis=1) & (held >= 0)
        out[name] = {
            "agreement_at_k": round(float(np.nanmean(agreement)), 4),
            "ndcg_at_k": round(float(np.nanmean(ndcg)), 4),
            "hit_rate": round(float(hit.mean()), 4),
        }
    return out


__all__ = [
    "ALL",
    "TierQuality",
    "WindowQuality",
    "answer_quality",
    "expected_quality",
    "window_quality",
]
