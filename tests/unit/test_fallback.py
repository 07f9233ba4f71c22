"""The gateway's fallback decisions, with a fake clock and simulated shard copies.

``simulate`` is a tiny discrete-event loop: it plays a :class:`ShardCallPlan` against copies that
are live (answer after a latency), dead (refuse at once), frozen (never answer: the client's
timeout fires at the deadline) or flaky (the first attempt fails fast, later ones are live).
Every combination of primary x replica x breaker state is checked exhaustively; Hypothesis
checks the timing properties. The async executor (``calls.ShardCaller``) is tested at the end
on a virtual-time event loop (``virtual_loop``) against simulated copies (``sim_cluster``): exact
times, no wall clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import sim_cluster
import virtual_loop
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_cluster import SimCluster, SimCopy

from system_under_test.gateway.calls import ShardCallFailed, shard_caller
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
from system_under_test.shard_server import FaultSpec

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


def test_breaker_opens_on_a_slow_call_rate_over_its_window():
    b = CircuitBreaker(slow_call_s=0.01, slow_rate=0.5, window_calls=20, min_calls=10)
    for i in range(9):  # 9 slow calls: fewer than min_calls
        b.record_success(i * 0.01, latency_s=0.012)
    assert b.closed and b.failures == 0  # slow answers are not failures
    b.record_slow(0.09)  # the 10th: given up unanswered after slow_call_s
    assert b.state is BreakerState.OPEN
    assert not b.allow(0.5) and b.allow(0.6)  # cool-down from 0.09, then one probe
    b.record_success(0.6, latency_s=0.02)  # a slow probe re-opens it
    assert b.state is BreakerState.OPEN
    assert b.allow(1.1)
    b.record_success(1.1, latency_s=0.001)  # a fast probe closes it
    assert b.closed


def test_breaker_ignores_a_few_slow_calls_and_slides_its_window():
    b = CircuitBreaker(slow_call_s=0.01, slow_rate=0.5, window_calls=20, min_calls=10)
    for i in range(100):  # a stall: 9 slow calls in a row among fast ones
        b.record_success(i * 0.004, latency_s=0.03 if 40 <= i < 49 else 0.001)
    assert b.closed
    for i in range(9):  # a copy that turned slow: its calls push the fast ones out
        b.record_slow(0.4 + i * 0.004)
    assert b.closed  # 9 slow of the last 20
    b.record_slow(0.44)
    assert b.state is BreakerState.OPEN  # 10 of the last 20
    old = CircuitBreaker(slow_call_s=0.01, window_s=1.0, min_calls=10)
    for i in range(9):
        old.record_slow(i * 0.1)  # 0.0 s .. 0.8 s
    old.record_slow(2.0)  # the nine are more than a second old: out of the window
    assert old.closed


def test_breaker_answers_to_calls_sent_before_it_opened_do_not_close_it():
    b = CircuitBreaker(threshold=2)
    b.record_failure(0.0)
    b.record_failure(0.1)
    assert b.state is BreakerState.OPEN
    b.record_success(0.2)  # a late answer to an earlier call
    assert b.state is BreakerState.OPEN and not b.allow(0.3)


def test_breaker_rejects_bad_settings_naming_them():
    with pytest.raises(ValueError, match="slow_call_s > 0.*got 0"):
        CircuitBreaker(slow_call_s=0)
    with pytest.raises(ValueError, match="0 < slow_rate <= 1"):
        CircuitBreaker(slow_rate=1.5)
    with pytest.raises(ValueError, match="min_calls <= window_calls; got .* 30 and 20"):
        CircuitBreaker(min_calls=30)


@pytest.mark.parametrize("primary_allowed", (True, False))
def test_a_copy_whose_breaker_is_open_gets_neither_hedges_nor_fallbacks(primary_allowed):
    plan = ShardCallPlan(
        deadline=DEADLINE_S,
        primary_allowed=primary_allowed,
        has_replica=True,
        replica_allowed=False,
        hedge_delay_s=HEDGE_S,
        retry_allowed=lambda: False,
    )
    sends = plan.start(0.0)
    if not primary_allowed:  # no fast copy at all: fail at once (the caller falls back early)
        assert sends == [] and plan.done and plan.tier is None
        assert plan.reason == "no fast copy: the primary's breaker is open and so is the replica's"
        return
    assert sends == [Copy.PRIMARY] and plan.wake_at is None  # no hedge timer
    assert plan.on_result(Copy.PRIMARY, 0.0002, "unavailable") == []
    assert plan.done and plan.reason == "primary failed and the replica's breaker is open"


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


# ---- the executor on a virtual-time event loop, with simulated copies


def run_call(
    primary: str,
    replica: str | None,
    deadline_s: float = 0.017,
    repeat: int = 1,
    gap_s: float = 0.0,
    slow_call_s: float = math.inf,
    best_effort: bool = False,
    breaker: dict | None = None,
):
    """``repeat`` calls to one shard whose copies are in the given states (sim_cluster.SimCopy),
    ``gap_s`` apart, on virtual time: (results, primary, replica, caller)."""

    async def scenario():
        loop = asyncio.get_running_loop()

        def echo(msg):
            return {"from": msg.header["rid"]}, {}

        p = SimCopy("p", loop, echo)
        p.set_state(primary)
        r = None
        if replica is not None:
            r = SimCopy("r", loop, echo)
            r.set_state(replica)
        caller = shard_caller(
            [(p, r)],
            GatewayMetrics(),
            slow_call_s,
            clock=loop.time,
            breaker=lambda slow_s: CircuitBreaker(slow_call_s=slow_s, **(breaker or {})),
        )
        results = []
        for i in range(repeat):
            done = loop.create_future()
            caller.start(
                0,
                "retrieve",
                loop.time() + deadline_s,
                f"rid-{i + 1}",
                None,
                None,
                None,
                lambda res, exc, done=done: done.set_result(res if exc is None else exc),
                best_effort=best_effort,
            )
            results.append((loop.time(), await done, loop.time()))
            await asyncio.sleep(gap_s)
        await asyncio.sleep(0.1)  # let probes and losers finish
        assert p.violations == [] and (r is None or r.violations == [])
        return results, p, r, caller

    return virtual_loop.run(scenario())


def test_executor_frozen_primary_is_hedged_and_the_loser_dropped():
    ((start, res, end),), p, r, caller = run_call("frozen", "live")
    assert res.tier is Tier.REPLICA and res.hedged and res.msg.header["from"] == "rid-1"
    assert end - start == pytest.approx(HedgeDelay().initial_s + sim_cluster.LIVE_S)
    assert p.pending == {}  # the hedged loser was abandoned, not leaked
    m = caller.metrics
    assert m.hedges.get("0") == 1 and m.hedge_wins.get("0") == 1
    assert m.shard_errors.get("0", "primary", "hedge_lost") == 1


def test_executor_flaky_primary_is_retried_with_a_distinct_rid():
    # rid-32 is the flaky copy's: its first attempt fails, the retry ("rid-32:retry") answers
    results, p, r, caller = run_call("flaky", "live", repeat=32)
    res = results[-1][1]
    assert res.tier is Tier.RETRY and res.msg.header["from"] == "rid-32:retry"
    assert [rid for _, _, rid in p.sent][-2:] == ["rid-32", "rid-32:retry"] and r.sent == []
    assert caller.metrics.retries.get("0") == 1
    assert all(res.tier is Tier.PRIMARY for _, res, _ in results[:-1])


def test_executor_dead_both_fails_and_frozen_breaker_opens():
    ((_, exc, _),), *_ = run_call("dead", "dead")
    assert isinstance(exc, ShardCallFailed) and "unavailable" in str(exc)
    results, p, r, caller = run_call("frozen", "live", repeat=14)
    assert all(res.tier is Tier.REPLICA for _, res, _ in results)
    # A lost hedge is a slow call: after 10 (the slow-call window's minimum, all slow) the
    # breaker is open and later calls skip the frozen primary entirely.
    assert caller.shards[0].breaker.is_open and len(p.sent) == 10 and len(r.sent) == 14
    assert 'recchaos_breaker_open{shard="0"} 1' in caller.metrics.registry.render()


def test_executor_gives_up_a_best_effort_call_at_the_slow_call_threshold():
    ((start, exc, end),), p, r, _ = run_call("slow", "slow", slow_call_s=0.01, best_effort=True)
    assert isinstance(exc, ShardCallFailed) and "slow" in str(exc)
    assert end - start == pytest.approx(0.01)  # not the 17 ms deadline
    # A required call waits for the slow answer (15 ms) within its deadline.
    ((start, res, end),), *_ = run_call("slow", None, slow_call_s=0.01)
    assert res.tier is Tier.PRIMARY and end - start == pytest.approx(sim_cluster.SLOW_S)


def test_executor_slow_copies_open_their_breakers_and_then_cost_nothing():
    results, p, r, caller = run_call(
        "slow", "slow", repeat=40, gap_s=0.005, slow_call_s=0.01, best_effort=True
    )
    copies = caller.shards[0]
    assert copies.breaker.is_open and copies.replica_breaker.is_open
    failed_at_once = [end - start for start, res, end in results if end == start]
    assert len(failed_at_once) >= 25  # once both are open: no copy is fast, no waiting
    assert "no fast copy" in str(results[-1][1])
    assert caller.metrics.shard_errors.get("0", "primary", "slow") >= 10


def test_executor_probes_an_open_copy_without_making_a_request_wait():
    """A dead primary's breaker opens; after its cool-down, one detached probe goes to it per
    cool-down (requests keep going to the replica); once it answers fast, it is closed."""

    async def scenario():
        loop = asyncio.get_running_loop()
        p = SimCopy("p", loop, lambda msg: ({}, {}))
        r = SimCopy("r", loop, lambda msg: ({}, {}))
        p.set_state("dead")
        caller = shard_caller([(p, r)], GatewayMetrics(), 0.01, clock=loop.time)
        tiers, waits = [], []
        for i in range(120):  # 1.2 s at 100 calls/s
            if i == 80:
                p.set_state("live")  # at 0.8 s
            start = loop.time()
            res = await caller.call(0, "retrieve", start + 0.017, f"rid-{i}")
            tiers.append(res.tier)
            waits.append(loop.time() - start)
            await asyncio.sleep(0.01 - (loop.time() - start))
        return tiers, waits, p, caller

    tiers, waits, p, caller = virtual_loop.run(scenario())
    probes = [rid for _, _, rid in p.sent if rid.endswith(":probe")]
    assert probes and max(waits) < 0.002  # no request waited for a probe
    assert set(tiers[5:80]) == {Tier.REPLICA}
    # Probes at 0.5 s cool-downs; the one after the restart at 0.8 s (at about 1.0 s) closes it.
    assert tiers[-1] is Tier.PRIMARY and caller.shards[0].breaker.closed
    assert caller.metrics.probes.get("0", "primary", "fast") == 1
    assert caller.metrics.probes.get("0", "primary", "failed") == len(probes) - 1


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=300),
    q=st.floats(0, 1),
)
def test_hedge_quantile_equals_numpy_quantile(values, q):
    """The hedge delay's partial-sort quantile is numpy's default (linear) quantile."""
    arr = np.array(values)
    assert _quantile(arr, q) == pytest.approx(float(np.quantile(arr, q)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("corruption", ("nan_rate", "wrong_shape_rate"))
def test_corrupt_shard_answers_are_detected_and_never_served(corruption):
    """A primary whose every answer is corrupt (the fault points app_nan / app_wrong_shape
    switch on): its first attempt and its retry fail validation, the replica answers, and the
    answer is the one an intact cluster gives."""

    async def scenario():
        loop = asyncio.get_running_loop()
        intact, corrupt = SimCluster(loop), SimCluster(loop)
        faults = {corruption: 1.0, "seed": 5}
        corrupt.shard_services["shard-2-primary"].faults.spec = FaultSpec.from_fields(faults)
        good = await intact.service.recommend(7, 10, "sim-1")
        got = await corrupt.service.recommend(7, 10, "sim-1")
        return good, got, corrupt

    good, got, corrupt = virtual_loop.run(scenario())
    assert got.tier == "replica" and got.payload["coverage"] == 1.0
    assert got.payload["items"] == good.payload["items"]
    assert np.isfinite(got.payload["scores"]).all()
    counts = corrupt.shard_services["shard-2-primary"].faults.counts
    assert counts[corruption.removesuffix("_rate")] == 2  # the first attempt and the retry
    errors = corrupt.service.metrics.shard_errors
    assert errors.get("2", "primary", "bad_reply") == 2
