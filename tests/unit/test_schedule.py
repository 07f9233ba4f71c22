"""Seeded schedules: deterministic, at the configured rate, ordered, Zipf-skewed; the random
fault schedule is the same for the same seed and respects its bounds and targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.model.faults import FAULT_KINDS
from harness.model.load import LoadPhase, RequestMix
from harness.model.scenario import load_scenario
from harness.model.schedule import phase_count, random_fault_schedule, request_schedule

mixes = st.builds(
    RequestMix, zipf_exponent=st.floats(0, 2), users=st.integers(1, 5000), k=st.integers(1, 50)
)
phase_lists = st.lists(
    st.builds(
        LoadPhase,
        name=st.just("p"),
        rate=st.floats(0, 2000),
        duration_s=st.floats(0.01, 5),
        mix=mixes,
    ),
    min_size=1,
    max_size=4,
)
seeds = st.integers(0, 2**63 - 1)


@given(phase_lists, seeds)
@settings(max_examples=80, deadline=None)
def test_same_seed_same_schedule(phases, seed):
    a, b = request_schedule(phases, seed), request_schedule(phases, seed)
    for col in ("intended_ns", "user_ids", "k", "phase"):
        assert np.array_equal(getattr(a, col), getattr(b, col))


@given(phase_lists, seeds)
@settings(max_examples=80, deadline=None)
def test_rate_ordering_and_bounds(phases, seed):
    s = request_schedule(phases, seed)
    assert len(s) == sum(phase_count(p) for p in phases)
    assert np.all(np.diff(s.intended_ns) >= 0)
    start_ns = 0  # each phase starts where the previous one ends, rounded to the nanosecond
    for i, p in enumerate(phases):
        rows = s.phase == i
        t = s.intended_ns[rows] / 1e9
        start = start_ns / 1e9
        assert rows.sum() == phase_count(p)
        if rows.any():
            assert s.intended_ns[rows][0] == start_ns
            assert t[-1] < start + p.duration_s + 1e-9
            if len(t) > 1:  # constant rate: evenly spaced to the nanosecond
                assert np.all(np.abs(np.diff(t) - 1 / p.rate) <= 2e-9)
            assert np.all((s.user_ids[rows] >= 0) & (s.user_ids[rows] < p.mix.users))
            assert np.all(s.k[rows] == p.mix.k)
        start_ns += round(p.duration_s * 1e9)
    assert s.duration_s == pytest.approx(start_ns / 1e9, abs=1e-9)


@given(st.floats(0.5, 1000), st.floats(0.1, 100))
def test_phase_count_is_every_slot_before_the_end(rate, duration):
    n = phase_count(LoadPhase("p", rate, duration))
    assert (n - 1) / rate < duration + 1e-6
    assert n / rate >= duration - 1e-6


def test_known_values_do_not_drift():
    """Guards replayability: a run recorded today must replay the same requests tomorrow."""
    s = request_schedule([LoadPhase("a", 10, 1, RequestMix(1.1, 1000, 5))], 42)
    assert s.user_ids.tolist() == [711, 573, 711, 631, 163, 711, 838, 407, 896, 711]
    assert s.intended_ns.tolist() == [i * 100_000_000 for i in range(10)]


def test_zipf_skew_and_uniform():
    mix = RequestMix(zipf_exponent=1.1, users=10_000, k=10)
    users = request_schedule([LoadPhase("a", 2000, 10, mix)], 1).user_ids
    counts = np.sort(np.bincount(users, minlength=10_000))[::-1]
    assert counts[0] / users.size > 0.05  # rank 1 of 10,000 gets ~10% at s = 1.1
    assert counts[:100].sum() / users.size > 0.4
    flat = request_schedule([LoadPhase("a", 2000, 10, RequestMix(0.0, 100, 10))], 1).user_ids
    shares = np.bincount(flat, minlength=100) / flat.size
    assert shares.max() < 0.02 and shares.min() > 0.0


def test_hot_users_spread_over_ids():
    users = request_schedule([LoadPhase("a", 1000, 10, RequestMix(1.2, 1000, 1))], 3).user_ids
    top = np.argsort(np.bincount(users, minlength=1000))[::-1][:8]
    assert len(set((top % 4).tolist())) > 1  # not all the hottest users on one shard


def test_different_seeds_differ():
    phases = [LoadPhase("a", 100, 10)]
    a, b = request_schedule(phases, 1), request_schedule(phases, 2)
    assert not np.array_equal(a.user_ids, b.user_ids)
    assert np.array_equal(a.intended_ns, b.intended_ns)


def test_pause_phase_shifts_later_phases():
    s = request_schedule(
        [LoadPhase("a", 10, 1), LoadPhase("pause", 0, 2), LoadPhase("b", 10, 1)], 0
    )
    assert len(s) == 20 and s.intended_ns[10] == 3_000_000_000


TARGETS = ["shard-0-primary", "shard-0-replica", "shard-1-primary", "gateway"]


@given(
    seeds,
    st.floats(1, 20),
    st.floats(0.1, 0.9),
    st.floats(0, 30),
    st.floats(10, 200),
    st.lists(
        st.sampled_from(["kill", "freeze", "latency", "app_error"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
)
@settings(max_examples=80, deadline=None)
def test_random_fault_schedule(seed, every, frac, start, span, kinds):
    duration = every * frac

    def compatible(kind, target):
        return FAULT_KINDS[kind].mechanism == "signal" or target.startswith("shard-")

    args = dict(start_s=start, end_s=start + span, compatible=compatible)
    plan = random_fault_schedule(seed, TARGETS, every, duration, kinds, **args)
    assert plan == random_fault_schedule(seed, TARGETS, every, duration, kinds, **args)
    ats = [f.at_s for f in plan]
    assert ats == sorted(ats)
    assert all(b - a == pytest.approx(every) for a, b in zip(ats, ats[1:], strict=False))
    assert all(start - 1e-9 <= f.at_s and f.at_s + duration <= start + span + 1e-6 for f in plan)

    def fits(eps):  # how many slots fit, allowing for float rounding at the very edge
        return math.floor((span - duration) / every + eps) + 1 if span - duration >= -eps else 0

    assert fits(-1e-6) <= len(plan) <= fits(1e-6)
    assert all(f.kind in kinds and compatible(f.kind, f.target) for f in plan)
    assert [f.origin for f in plan] == [f"fault_schedule[{i}]" for i in range(len(plan))]


def test_random_fault_schedule_varies_with_seed_and_rejects_nonsense():
    a = random_fault_schedule(1, TARGETS, 5, 1, ["kill", "freeze"], end_s=500)
    b = random_fault_schedule(2, TARGETS, 5, 1, ["kill", "freeze"], end_s=500)
    assert [(f.kind, f.target) for f in a] != [(f.kind, f.target) for f in b]
    with pytest.raises(ValueError):
        random_fault_schedule(1, [], 5, 1, ["kill"], end_s=50)
    with pytest.raises(ValueError, match="no target"):
        random_fault_schedule(
            1, ["gateway"], 5, 1, ["kill"], end_s=50, compatible=lambda k, t: False
        )


def test_scenario_fault_plan_is_reproducible():
    path = "scenarios/random_faults.yaml"
    plans = [load_scenario(path).fault_plan() for _ in range(2)]
    assert plans[0] == plans[1] and len(plans[0]) == 6
    s = load_scenario(path)
    assert all(
        s.warmup_s <= f.at_s and f.at_s + f.duration_s <= s.load_duration_s - s.settle_s
        for f in plans[0]
    )
