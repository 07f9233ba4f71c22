"""The gateway's fallback decisions, with a fake clock and simulated shard copies.

``simulate`` is a tiny discrete-event loop: it plays a :class:`ShardCallPlan` against copies that
are live (answer after a latency), dead (refuse at once), frozen (never answer: the client's
timeout fires at the deadline) or flaky (the first attempt fails fast, later ones are live).
Every combination of primary x replica x breaker state is checked exhaustively; Hypothesis
checks the timing properties. The async executor (``calls.ShardCaller``) gets a few real-loop
tests with fake clients at the end.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual_time import run_virtual

from system_under_test import protocol
from system_under_test.gateway.calls import ShardCaller, ShardCallFailed, ShardCopies
from system_under_test.gateway.fallback import (
    BreakerState,
    CallPolicy,
    CircuitBreaker,
    Copy,
    HedgeDelay,
    RetryBudget,
    ShardCallPlan,
    Tier,
    _quantile,
    failed_fast,
    worst,
)
from system_under_test.gateway.metrics import GatewayMetrics

LIVE_S = 0.0004  # a healthy copy's answer time
DEAD_S = 0.0002  # a dead copy refuses this fast (connection refused)
DEADLINE_S = 0.017  # SLA 20 ms minus a 3 ms margin
HEDGE_S = 0.001
STATES = ("live", "dead", "frozen", "flaky")


@dataclass
class Outcome:
    tier: Tier | None
    winner: Copy | None
    finished_at: float
    hedged: bool
    retried: bool
    sent: list[tuple[float, Copy]]


def answer(state: str, attempt: int, latency: float) -> tuple[float, str | None]:
    """(delay, error kind or None) of one attempt to a copy in ``state``."""
    if state == "live" or (state == "flaky" and attempt > 1):
        return latency, None
    if state in ("dead", "flaky"):
        return DEAD_S, "unavailable"
    return math.inf, "timeout"  # frozen


def simulate(
    primary: str,
    replica: str | None,
    *,
    breaker_open: bool = False,
    budget: bool = True,
    hedge_s: float = HEDGE_S,
    deadline: float = DEADLINE_S,
    p_latency: float = LIVE_S,
    r_latency: float = LIVE_S,
    policy: CallPolicy | None = None,
) -> Outcome:
    plan = ShardCallPlan(
        deadline=deadline,
        primary_allowed=not breaker_open,
        has_replica=replica is not None,
        hedge_delay_s=hedge_s,
        retry_allowed=lambda: budget,
        jitter=0.5,
        policy=policy or CallPolicy(),
    )
    events: list[tuple[float, int, Copy, str | None]] = []
    seq = itertools.count()
    sent: list[tuple[float, Copy]] = []

    def send(copies: list[Copy], now: float) -> None:
        for copy in copies:
            sent.append((now, copy))
            if copy is Copy.PRIMARY:
                delay, kind = answer(primary, plan.attempts, p_latency)
            else:
                assert replica is not None
                delay, kind = answer(replica, 1, r_latency)
            # The executor gives every attempt the time to the deadline: a frozen copy times out.
            at = min(now + delay, deadline)
            if now + delay > deadline:
                kind = "timeout"
            heapq.heappush(events, (at, next(seq), copy, kind))

    now = 0.0
    send(plan.start(now), now)
    while not plan.done:
        wake = plan.wake_at if plan.wake_at is not None else math.inf
        if events and events[0][0] <= wake:
            now, _, copy, kind = heapq.heappop(events)
            if copy in plan.inflight:  # answers of attempts already given up are ignored
                send(plan.on_result(copy, now, kind), now)
        elif wake < math.inf:
            now = wake
            send(plan.on_timer(now), now)
        else:
            now = deadline
            plan.on_deadline(now)
        assert now <= deadline + 1e-12
    return Outcome(plan.tier, plan.winner, now, plan.hedged, plan.retried, sent)


# Expected tier for (primary, replica) with the breaker closed and budget available.
EXPECTED: dict[tuple[str, str | None], Tier | None] = {}
for p, r in itertools.product(STATES, (*STATES, None)):
    if p == "live":
        EXPECTED[p, r] = Tier.PRIMARY
    elif p == "flaky":
        EXPECTED[p, r] = Tier.RETRY
    elif r in ("live", "flaky") and p in ("dead", "frozen"):
        # frozen: hedged after 1 ms; dead: straight after the failed retry. A flaky replica's
        # first (and only) attempt fails fast, so it serves only as "live" does after a retry:
        EXPECTED[p, r] = Tier.REPLICA if r == "live" else None
    else:
        EXPECTED[p, r] = None


@pytest.mark.parametrize("primary,replica", list(EXPECTED), ids=lambda v: str(v))
def test_every_primary_replica_combination_with_breaker_closed(primary, replica):
    out = simulate(primary, replica)
    assert out.tier == EXPECTED[primary, replica], out
    assert out.finished_at <= DEADLINE_S
    if out.tier is None:
        assert out.winner is None
    else:
        assert out.winner is (Copy.REPLICA if out.tier is Tier.REPLICA else Copy.PRIMARY)
    # A frozen primary is found only by time: the replica is hedged after the hedge delay.
    if primary == "frozen" and replica is not None:
        assert out.hedged
        assert (HEDGE_S, Copy.REPLICA) in out.sent
        if replica == "live":
            assert out.finished_at == pytest.approx(HEDGE_S + LIVE_S)
    # A dead primary is retried once (fast failure, budget available), then the replica.
    if primary == "dead":
        assert out.retried
        assert [c for _, c in out.sent].count(Copy.PRIMARY) == 2
        if replica is not None:
            assert out.sent[-1][1] is Copy.REPLICA
            assert not out.hedged
    if primary == "live":
        assert [c for _, c in out.sent] == [Copy.PRIMARY]  # no hedge, no retry
    # A frozen copy in the only remaining path means the whole deadline was spent.
    if out.tier is None and "frozen" in (primary, replica):
        assert out.finished_at == pytest.approx(DEADLINE_S)


@pytest.mark.parametrize(
    "primary,replica", itertools.product(STATES, (*STATES, None)), ids=lambda v: str(v)
)
def test_open_breaker_goes_straight_to_the_replica(primary, replica):
    out = simulate(primary, replica, breaker_open=True)
    assert all(copy is Copy.REPLICA for _, copy in out.sent)
    if replica == "live":
        assert out.tier is Tier.REPLICA and out.finished_at == pytest.approx(LIVE_S)
    else:
        assert out.tier is None
    if replica is None:
        assert out.sent == [] and out.finished_at == 0.0


@pytest.mark.parametrize("replica", ("live", "dead", "frozen", None))
def test_without_retry_budget_a_failed_primary_goes_to_the_replica(replica):
    out = simulate("flaky", replica, budget=False)
    assert not out.retried
    assert [c for _, c in out.sent].count(Copy.PRIMARY) == 1
    assert out.tier == (Tier.REPLICA if replica == "live" else None)


def test_no_retry_when_the_deadline_leaves_no_room():
    # The primary fails fast at 0.2 ms; a 0.6 ms backoff + 0.3 ms attempt does not fit in 1 ms.
    out = simulate("flaky", "live", deadline=0.001, policy=CallPolicy(0.0006, 0.0006))
    assert not out.retried and out.tier is Tier.REPLICA


def test_timeouts_are_not_retried():
    assert not failed_fast("timeout")
    assert failed_fast("unavailable") and failed_fast("bad_reply")
    assert failed_fast("remote", "injected") and failed_fast("remote", "internal")
    assert not failed_fast("remote", "bad_request") and not failed_fast("remote", "not_owned")


@settings(max_examples=300, deadline=None)
@given(
    p_latency=st.floats(0.0001, 0.03),
    r_latency=st.floats(0.0001, 0.03),
    hedge_s=st.floats(0.001, 0.02),
    deadline=st.floats(0.002, 0.03),
)
def test_live_copies_first_answer_wins_and_nothing_outlives_the_deadline(
    p_latency, r_latency, hedge_s, deadline
):
    out = simulate(
        "live", "live", p_latency=p_latency, r_latency=r_latency, hedge_s=hedge_s, deadline=deadline
    )
    assert out.finished_at <= deadline
    primary_at = p_latency
    hedge_sent = hedge_s <= deadline - CallPolicy().min_attempt_s and hedge_s < p_latency
    replica_at = hedge_s + r_latency if hedge_sent else math.inf
    first = min(primary_at, replica_at)
    assert out.hedged == hedge_sent
    if first > deadline:
        assert out.tier is None
    elif primary_at <= replica_at:
        assert out.tier is Tier.PRIMARY and out.finished_at == pytest.approx(primary_at)
    else:
        assert out.tier is Tier.REPLICA and out.finished_at == pytest.approx(replica_at)


@settings(max_examples=200, deadline=None)
@given(
    primary=st.sampled_from(STATES),
    replica=st.sampled_from((*STATES, None)),
    breaker_open=st.booleans(),
    budget=st.booleans(),
    hedge_s=st.floats(0.0, 0.03),
    deadline=st.floats(0.0, 0.03),
)
def test_any_plan_ends_by_the_deadline_with_at_most_three_sends(
    primary, replica, breaker_open, budget, hedge_s, deadline
):
    out = simulate(
        primary,
        replica,
        breaker_open=breaker_open,
        budget=budget,
        hedge_s=hedge_s,
        deadline=deadline,
    )
    assert out.finished_at <= deadline + 1e-12
    copies = [c for _, c in out.sent]
    assert copies.count(Copy.PRIMARY) <= 2 and copies.count(Copy.REPLICA) <= 1
    assert (out.tier is None) == (out.winner is None)


# ---- breaker, budget, hedge delay, tiers


def test_breaker_opens_after_threshold_then_half_open_probe_closes_it():
    b = CircuitBreaker(threshold=3, cooldown_s=0.5)
    for t in (0.0, 0.1):
        b.record_failure(t)
    assert b.allow(0.15) and b.state is BreakerState.CLOSED
    b.record_success(0.2)  # a success resets the count
    for t in (0.3, 0.4, 0.5):
        b.record_failure(t)
    assert b.state is BreakerState.OPEN and b.is_open
    assert not b.allow(0.9)  # cooling down
    assert b.allow(1.0) and b.state is BreakerState.HALF_OPEN  # one probe
    assert not b.allow(1.01)  # only one probe at a time
    b.record_success(1.02)
    assert b.state is BreakerState.CLOSED and b.allow(1.03)


def test_breaker_failed_probe_reopens_and_lost_probe_does_not_wedge():
    b = CircuitBreaker(threshold=1, cooldown_s=0.5)
    b.record_failure(0.0)
    assert b.allow(0.5)
    b.record_failure(0.6)  # the probe failed: open for another cool-down
    assert b.state is BreakerState.OPEN and not b.allow(1.0)
    assert b.allow(1.1)  # next probe; its outcome is never recorded
    assert not b.allow(1.5)
    assert b.allow(1.6)  # a new probe after another cool-down


def test_retry_budget_is_about_ten_percent_of_calls():
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, cap=10.0)
    granted = 0
    for i in range(1000):
        budget.deposit(i * 1e-6)
        granted += budget.try_spend(i * 1e-6)
    assert granted == pytest.approx(10 + 100, abs=2)  # the initial cap, then 10% of 1000


def test_retry_budget_refills_over_time_up_to_cap():
    budget = RetryBudget(ratio=0.0, min_per_s=5.0, cap=2.0)
    assert budget.try_spend(0.0) and budget.try_spend(0.0) and not budget.try_spend(0.0)
    assert not budget.try_spend(0.1)
    assert budget.try_spend(0.2)  # 0.2 s * 5/s = 1 token
    assert budget.tokens < 1
    budget.try_spend(100.0)
    assert budget.tokens == pytest.approx(1.0)  # capped at 2, one spent


def test_hedge_delay_tracks_p95_and_clamps():
    est = HedgeDelay(window=100, floor_s=0.001, initial_s=0.002, min_samples=20, every=10)
    assert est.delay() == 0.002
    for x in np.linspace(0.0001, 0.01, 100):
        est.observe(float(x))
    assert est.delay() == pytest.approx(np.quantile(np.linspace(0.0001, 0.01, 100), 0.95))
    assert est.delay(remaining_s=0.003) == 0.003
    fast = HedgeDelay(min_samples=1, every=1)
    fast.observe(0.0001)
    assert fast.delay() == 0.001  # the floor


def test_tier_order_and_worst():
    assert [t.label for t in sorted(Tier)] == ["primary", "retry", "replica", "degraded", "static"]
    assert worst() is Tier.PRIMARY
    assert worst(Tier.RETRY, Tier.PRIMARY, Tier.REPLICA) is Tier.REPLICA
    assert worst(Tier.STATIC, Tier.DEGRADED) is Tier.STATIC


# ---- the executor on an event loop with a virtual clock, with fake clients


class FakeClient:
    def __init__(self, name: str, state: str, latency: float = 0.0003) -> None:
        self.name, self.state, self.latency = name, state, latency
        self.calls = 0
        self.cancelled = 0

    async def call(self, op, timeout_s, fields=None, tensors=None):
        self.calls += 1
        if self.state == "dead" or (self.state == "flaky" and self.calls == 1):
            raise protocol.Unavailable(f"{self.name}: refused")
        try:
            if self.state == "frozen":
                await asyncio.sleep(timeout_s)
                raise protocol.Timeout(f"{self.name}: no answer")
            await asyncio.sleep(self.latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return protocol.Message({"ok": True, "from": self.name, "rid": fields["rid"]}, {})


def run_call(primary: str, replica: str | None, deadline_s: float = 0.05, repeat: int = 1):
    async def scenario():
        p = FakeClient("p", primary)
        r = FakeClient("r", replica) if replica else None
        loop = asyncio.get_running_loop()
        caller = ShardCaller([ShardCopies(0, p, r)], GatewayMetrics(), clock=loop.time)
        results = []
        for _ in range(repeat):
            try:
                res = await caller.call(0, "retrieve", loop.time() + deadline_s, "rid-1")
                results.append(res)
            except ShardCallFailed as exc:
                results.append(exc)
        await asyncio.sleep(0.01)  # let cancelled losers finish
        return results, p, r, caller

    return run_virtual(scenario())


def test_executor_frozen_primary_is_hedged_and_the_loser_cancelled():
    (res,), p, r, caller = run_call("frozen", "live")
    assert res.tier is Tier.REPLICA and res.hedged and res.msg.header["from"] == "r"
    assert p.cancelled == 1  # the hedged loser was cancelled, not leaked
    m = caller.metrics
    assert m.hedges.get("0") == 1 and m.hedge_wins.get("0") == 1
    assert m.shard_errors.get("0", "primary", "hedge_lost") == 1


def test_executor_flaky_primary_is_retried_with_a_distinct_rid():
    (res,), p, r, caller = run_call("flaky", "live")
    assert res.tier is Tier.RETRY and res.msg.header["rid"] == "rid-1:retry"
    assert p.calls == 2 and r.calls == 0
    assert caller.metrics.retries.get("0") == 1


def test_executor_dead_both_fails_and_frozen_breaker_opens():
    (exc,), *_ = run_call("dead", "dead")
    assert isinstance(exc, ShardCallFailed) and "unavailable" in str(exc)
    results, p, r, caller = run_call("frozen", "live", repeat=8)
    assert all(res.tier is Tier.REPLICA for res in results)
    # After 5 lost hedges the breaker is open: later calls skip the frozen primary entirely.
    assert caller.shards[0].breaker.is_open and p.calls == 5 and r.calls == 8
    assert 'recchaos_breaker_open{shard="0"} 1' in caller.metrics.registry.render()


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=300),
    q=st.floats(0, 1),
)
def test_hedge_quantile_equals_numpy_quantile(values, q):
    """The hedge delay's partial-sort quantile is numpy's default (linear) quantile."""
    arr = np.array(values)
    assert _quantile(arr, q) == pytest.approx(float(np.quantile(arr, q)), rel=1e-12, abs=1e-15)
