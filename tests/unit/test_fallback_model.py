"""A stateful model test of the gateway's fallback: Hypothesis plays faults, heals and load.

Every rule is a fault or a heal of the simulated cluster (``sim_cluster``: each shard copy live,
dead, frozen, slow or flaky; the region up or down; Redis up or down), and every step then sends
a batch of requests (0.2 s or 1.5 s of virtual time, open loop at ``RATE`` a second) through the
real gateway service. After each batch the invariants are checked:

* no request fails while some tier can answer (the static list always can), and every answer
  comes inside the SLA: the gateway gives every shard call the deadline it has;
* no attempt is waited for past the timeout it was sent with (``SimCopy.violations``);
* retries never exceed the retry budget (its cap, ``ratio`` per first attempt, ``min_per_s``);
* once the cluster has been unchanged for ``SETTLE_S`` (every breaker has had time to probe
  since), the tier served is exactly the one the cluster's state allows: for each shard the best
  live copy's tier (``primary``, ``retry`` for a flaky primary's failed first attempt,
  ``replica``), the worst of them over the shards that can answer, with ``coverage`` the share of
  the item space those shards hold; a request that needed a shard that cannot answer gets the
  degraded region if it is up, the static list if not. No better (a dishonest tier), no worse;
* by then, every copy that is up has its breaker closed again.

``test_a_breaker_that_never_half_opens_is_caught_and_shrunk`` seeds a bug (a breaker that never
grants a probe) and shows that the machine finds it and shrinks it to a handful of steps.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest
import sim_cluster
import virtual_loop
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from sim_cluster import N_SHARDS, N_USERS, STATES, SimCluster, flaky_hit

from system_under_test.gateway.fallback import BreakerState, CircuitBreaker, Tier, worst

RATE = 25.0  # requests a second of virtual time
SLA_S = 0.020
SETTLE_S = 1.2  # longer than every cool-down (shard copies 0.5 s, the region 1 s)
COPIES = tuple(f"shard-{s}-{role}" for s in range(N_SHARDS) for role in ("primary", "replica"))
SHARE = 1 / N_SHARDS  # the tiny tables split evenly
USABLE = ("live", "flaky")
# Seconds of load after each change: a short look at the transition, or long enough to settle.
LOAD_S = st.sampled_from((0.2, 1.5))

MODEL_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=10,
    deadline=None,
    derandomize=True,  # the unit tier is deterministic: the same examples every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Answer:
    n: int
    user: int
    arrival: float
    done: float
    tier: str | None
    coverage: float | None
    error: BaseException | None


class FallbackMachine(RuleBasedStateMachine):
    """The real gateway (``RecommendService`` over ``ShardCaller``) against a simulated cluster."""

    breaker = None  # a factory of another CircuitBreaker (the seeded bug); None: the real one
    steps: list[str] = []  # the steps of the latest run, for the shrinking test
    judged = 0  # answers held to the exact tier so far (the model test shows it is not idle)

    def __init__(self) -> None:
        super().__init__()
        self.loop = virtual_loop.VirtualTimeLoop()
        self.cluster = SimCluster(self.loop, breaker=type(self).breaker)
        self.service = self.cluster.service
        self.rng = random.Random(0)
        self.n = 0
        self.started = self.changed = self.loop.time()
        type(self).steps = []

    def teardown(self) -> None:
        async def cancel_the_rest() -> None:  # the Redis refill, if one is running
            pending = asyncio.all_tasks() - {asyncio.current_task()}
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self.loop.run_until_complete(cancel_the_rest())
        self.loop.close()

    # ---- faults and heals

    def _changed(self, step: str, changed: bool, seconds: float) -> None:
        if changed:  # setting what already is changes nothing, and waits for nothing
            self.changed = self.loop.time()
        type(self).steps.append(f"{step}, {seconds} s of load")
        self._load(seconds)

    @rule(copy=st.sampled_from(COPIES), state=st.sampled_from(STATES), seconds=LOAD_S)
    def set_copy(self, copy: str, state: str, seconds: float) -> None:
        sim = self.cluster.copies[copy]
        changed = sim.state != state
        sim.set_state(state)
        self._changed(f"{copy} {state}", changed, seconds)

    @rule(seconds=LOAD_S)
    def heal_everything(self, seconds: float) -> None:
        sims = (*self.cluster.copies.values(), self.cluster.region)
        changed = any(c.state != "live" for c in sims) or not self.cluster.redis.up
        for sim in sims:
            sim.set_state("live")
        self.cluster.redis.set_up(True)
        self._changed("heal everything", changed, seconds)

    @rule(up=st.booleans(), seconds=LOAD_S)
    def set_region(self, up: bool, seconds: float) -> None:
        state = "live" if up else "dead"
        changed = self.cluster.region.state != state
        self.cluster.region.set_state(state)
        self._changed(f"region {'up' if up else 'down'}", changed, seconds)

    @rule(up=st.booleans(), seconds=LOAD_S)
    def set_redis(self, up: bool, seconds: float) -> None:
        changed = self.cluster.redis.up != up
        self.cluster.redis.set_up(up)
        self._changed(f"redis {'up' if up else 'down'}", changed, seconds)

    # ---- load, and the invariants

    def _load(self, seconds: float) -> None:
        answers = self.loop.run_until_complete(self._send(seconds))
        for a in answers:
            self._check_answer(a)
        assert self.cluster.violations() == []
        self._check_retry_budget()
        if self.loop.time() - self.changed >= SETTLE_S:
            self._check_breakers_closed()

    async def _send(self, seconds: float) -> list[Answer]:
        start = self.loop.time()
        tasks = []
        for i in range(round(seconds * RATE)):
            await asyncio.sleep(max(0.0, start + i / RATE - self.loop.time()))
            self.n += 1
            user = int(N_USERS * self.rng.random() ** 3)  # skewed: hot users are cached
            tasks.append(self.loop.create_task(self._one(self.n, user)))
        return list(await asyncio.gather(*tasks))

    async def _one(self, n: int, user: int) -> Answer:
        arrival = self.loop.time()
        try:
            result = await self.service.recommend(user, 10, f"sim-{n}", arrival)
        except Exception as exc:  # noqa: BLE001 - an error is what the invariant looks for
            return Answer(n, user, arrival, self.loop.time(), None, None, exc)
        coverage = result.payload.get("coverage")
        return Answer(n, user, arrival, self.loop.time(), result.tier, coverage, None)

    def _check_answer(self, a: Answer) -> None:
        assert a.error is None, f"request sim-{a.n} failed: {a.error!r}"
        assert a.done - a.arrival <= SLA_S + 1e-9, (
            f"request sim-{a.n} answered after {(a.done - a.arrival) * 1e3:.2f} ms"
        )
        if a.arrival - self.changed < SETTLE_S:
            return  # breakers may still be learning the change
        type(self).judged += 1
        tier, coverage = self._allowed(a.n)
        if a.tier in (Tier.DEGRADED.label, Tier.STATIC.label):
            assert coverage != 1.0, (
                f"request sim-{a.n} fell back to {a.tier} while every shard has a live copy"
            )
            fallback = Tier.DEGRADED if self.cluster.region.state == "live" else Tier.STATIC
            assert a.tier == fallback.label, (
                f"request sim-{a.n} fell back to {a.tier}; the region is "
                f"{self.cluster.region.state}: {self._states()}"
            )
            return
        assert tier is not None, f"request sim-{a.n}: no shard can answer, yet {a.tier}"
        assert (a.tier, a.coverage) == (tier.label, coverage), (
            f"request sim-{a.n} served at {a.tier} (coverage {a.coverage}); the cluster "
            f"allows {tier.label} (coverage {coverage}): {self._states()}"
        )

    def _allowed(self, n: int) -> tuple[Tier | None, float | None]:
        """The sharded answer's tier and coverage the cluster allows request ``n`` (None, None:
        no shard can answer)."""
        hit = flaky_hit(f"sim-{n}")
        tiers = []
        for s in range(N_SHARDS):
            primary = self.cluster.copies[f"shard-{s}-primary"].state
            replica = self.cluster.copies[f"shard-{s}-replica"].state
            if primary == "live":
                tiers.append(Tier.PRIMARY)
            elif primary == "flaky":  # a failed first attempt is retried (the retry answers)
                tiers.append(Tier.RETRY if hit else Tier.PRIMARY)
            elif replica == "live" or (replica == "flaky" and not hit):
                tiers.append(Tier.REPLICA)
        if not tiers:
            return None, None
        return worst(*tiers), round(len(tiers) * SHARE, 6)

    def _check_retry_budget(self) -> None:
        budget = self.service.caller.budget
        sent = [rid for c in self.cluster.copies.values() for _, _, rid in c.sent]
        retries = sum(rid.endswith(":retry") for rid in sent)
        firsts = sum(not rid.endswith((":retry", ":probe")) for rid in sent)
        elapsed = self.loop.time() - self.started
        limit = budget.cap + budget.ratio * firsts + budget.min_per_s * elapsed
        assert retries <= limit, f"{retries} retries for {firsts} first attempts in {elapsed} s"

    def _check_breakers_closed(self) -> None:
        for s, copies in enumerate(self.service.caller.shards):
            for role, breaker in (("primary", copies.breaker), ("replica", copies.replica_breaker)):
                name = f"shard-{s}-{role}"
                if self.cluster.copies[name].state in USABLE:
                    assert breaker.closed, (
                        f"{name} has been {self.cluster.copies[name].state} for "
                        f"{self.loop.time() - self.changed:.2f} s, its breaker is "
                        f"{breaker.state.value}: {self._states()}"
                    )

    def _states(self) -> str:
        bad = {n: c.state for n, c in self.cluster.copies.items() if c.state != "live"}
        return f"copies not live: {bad or 'none'}; region {self.cluster.region.state}"


def test_the_fallback_keeps_its_invariants_under_any_faults_and_heals():
    run_state_machine_as_test(FallbackMachine, settings=MODEL_SETTINGS)


class NeverHalfOpens(CircuitBreaker):
    """The seeded bug: once open, the breaker never grants a probe, so it never closes."""

    def allow(self, now: float) -> bool:
        return self.state is BreakerState.CLOSED


class BrokenFallbackMachine(FallbackMachine):
    breaker = staticmethod(lambda slow_call_s: NeverHalfOpens(slow_call_s=slow_call_s))


def test_a_breaker_that_never_half_opens_is_caught_and_shrunk():
    runs = []

    class Counted(BrokenFallbackMachine):
        def teardown(self) -> None:
            runs.append(len(type(self).steps))
            super().teardown()

    with pytest.raises(AssertionError, match="breaker is open|allows primary"):
        run_state_machine_as_test(
            Counted,
            # no explain phase: it re-runs the example many times over to annotate it
            settings=settings(
                MODEL_SETTINGS,
                max_examples=200,
                phases=(Phase.generate, Phase.shrink),
                report_multiple_bugs=False,
                print_blob=False,
            ),
        )
    # The last run is Hypothesis's replay of the shrunk example: break a copy (the requests
    # after it open its breaker), then heal it with load long enough for a probe: two steps.
    steps = Counted.steps
    assert len(steps) <= 2, (steps, len(runs))
    assert steps[-1].endswith(("live, 1.5 s of load", "heal everything, 1.5 s of load")), steps


def test_the_simulated_cluster_is_what_the_model_assumes():
    """The oracle's premises: the tables split evenly, and the flaky hits are spread out."""
    assert sim_cluster.N_ITEMS % N_SHARDS == 0
    hits = [n for n in range(1, 200) if flaky_hit(f"sim-{n}")]
    assert hits and all(
        b - a >= sim_cluster.FLAKY_EVERY for a, b in zip(hits, hits[1:], strict=False)
    )
