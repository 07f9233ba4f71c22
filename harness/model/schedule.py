"""Pure, seeded schedules: the open-loop request schedule and the random fault schedule.

No clock reads: every time here is an offset from the start of the load. The same phases and
seed give the same intended send times and the same user ids, on any machine; the same seed gives
the same fault schedule. Request ids are positions in the schedule (0, 1, 2, ...), which is what
the shard server's fault points hash together with the seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.model.faults import FaultSpec
from harness.model.load import LoadPhase, RequestMix

STREAM_REQUESTS = 0x52455153  # independent random streams derived from one seed
STREAM_FAULTS = 0x46415554


@dataclass(frozen=True, eq=False)
class RequestSchedule:
    """Column arrays, one row per request, in intended-send order (row index = request id)."""

    intended_ns: np.ndarray  # int64, offsets from load start
    user_ids: np.ndarray  # int64
    k: np.ndarray  # int32
    phase: np.ndarray  # int16, index into the phases
    duration_s: float

    def __len__(self) -> int:
        return int(self.intended_ns.shape[0])


def phase_count(phase: LoadPhase) -> int:
    """Number of requests in a phase: every j >= 0 with j / rate < duration."""
    if phase.rate <= 0:
        return 0
    return int(math.ceil(round(phase.rate * phase.duration_s, 6)))


def request_schedule(phases: Sequence[LoadPhase], seed: int) -> RequestSchedule:
    """The open-loop schedule: evenly spaced intended send times, seeded Zipf-like user ids."""
    rng = np.random.default_rng([STREAM_REQUESTS, seed])
    times, users, ks, idx = [], [], [], []
    start_ns = 0
    for i, phase in enumerate(phases):
        n = phase_count(phase)
        if n:
            step = 1e9 / phase.rate
            times.append(
                start_ns + np.floor(np.arange(n, dtype=np.float64) * step).astype(np.int64)
            )
            users.append(zipf_users(phase.mix, rng.random(n), seed))
            ks.append(np.full(n, phase.mix.k, dtype=np.int32))
            idx.append(np.full(n, i, dtype=np.int16))
        start_ns += int(round(phase.duration_s * 1e9))
    if not times:
        empty = np.zeros(0, dtype=np.int64)
        return RequestSchedule(
            empty, empty.copy(), np.zeros(0, np.int32), np.zeros(0, np.int16), start_ns / 1e9
        )
    return RequestSchedule(
        np.concatenate(times),
        np.concatenate(users),
        np.concatenate(ks),
        np.concatenate(idx),
        start_ns / 1e9,
    )


def zipf_users(mix: RequestMix, uniform: np.ndarray, seed: int) -> np.ndarray:
    """User ids for uniform draws in [0, 1): rank r has weight 1 / r**s over the population.

    Ranks map to ids through a seeded bijection (``(a * rank + b) mod users`` with ``a`` coprime
    to ``users``), so the hottest users are spread over the id space (and over the shards).
    """
    cdf = _zipf_cdf(mix.users, mix.zipf_exponent)
    rank = np.minimum(np.searchsorted(cdf, uniform, side="right"), mix.users - 1)
    a, b = _bijection(mix.users, seed)
    return (rank.astype(np.int64) * a + b) % mix.users


@functools.lru_cache(maxsize=4)
def _zipf_cdf(users: int, exponent: float) -> np.ndarray:
    cdf = np.cumsum(np.arange(1, users + 1, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]
    cdf.flags.writeable = False
    return cdf


def _bijection(n: int, seed: int) -> tuple[int, int]:
    if n == 1:
        return 1, 0
    rng = np.random.default_rng([STREAM_REQUESTS, seed, n])
    a = int(rng.integers(1, n))
    while math.gcd(a, n) != 1:
        a = a % (n - 1) + 1
    return a, int(rng.integers(0, n))


def random_fault_schedule(
    seed: int,
    targets: Sequence[str],
    every_s: float,
    duration_s: float,
    kinds: Sequence[str],
    *,
    start_s: float = 0.0,
    end_s: float,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    compatible: Callable[[str, str], bool] | None = None,
) -> tuple[FaultSpec, ...]:
    """One fault every ``every_s`` from ``start_s`` while it ends by ``end_s``.

    Each fault picks a kind uniformly, then a target uniformly among those the kind may hit
    (``compatible(kind, target)``); ``params`` gives each kind's parameters.
    """
    if every_s <= 0 or duration_s <= 0 or not kinds or not targets:
        raise ValueError("random_fault_schedule needs every_s > 0, duration_s > 0, kinds, targets")
    rng = np.random.default_rng([STREAM_FAULTS, seed])
    out = []
    j = 0
    while (at := round(start_s + j * every_s, 9)) + duration_s <= end_s + 1e-9:
        kind = kinds[int(rng.integers(len(kinds)))]
        pool = [t for t in targets if compatible is None or compatible(kind, t)]
        if not pool:
            raise ValueError(f"no target in {list(targets)} can take a {kind} fault")
        target = pool[int(rng.integers(len(pool)))]
        kind_params = dict((params or {}).get(kind, {}))
        out.append(
            FaultSpec(kind, target, at, duration_s, kind_params, origin=f"fault_schedule[{j}]")
        )
        j += 1
    return tuple(out)
