"""Executing one shard call with retry, hedging, replica and breaker, over protocol clients.

The decisions are :class:`fallback.ShardCallPlan`'s; this module only turns them into tasks and
timers, feeds answers back, records what happened (breaker, hedge-delay samples, metrics) and
cancels whatever is still in flight once the plan is done: a hedged loser is cancelled, its
pending id dropped from the client, and its late answer discarded by the client's read loop.

Each copy has a breaker (``ShardCopies.breaker`` for the primary, ``replica_breaker``); a call
answered after ``CallPolicy.slow_call_s`` counts as slow for it. A *best-effort* call (one the
request can do without) still unanswered after ``slow_call_s`` is given up: the request stops
waiting for it, and it counts as slow for the breakers of the copies it was out on. A copy whose breaker
is open gets no calls; once its cool-down has passed, the next call to its shard sends it a
*probe*: a copy of that call whose answer nobody waits for (the request is served by the other
copy, or goes on without the shard), timed out at ``slow_call_s``, whose outcome alone closes or
re-opens the breaker. So a dead, frozen or slow copy costs no request its probe.

A primary that loses a hedge counts as a slow call for its breaker: a frozen primary never answers
and never fails on its own, so without this it would cost every request a hedge delay. It is
counted in the breaker's slow-call window (half of at least 10 calls within 1 s), not as a
failure: counted as failures, five lost hedges in a row opened the breaker, and a 20-30 ms
stall of the machine, which makes every call in flight lose its hedge at once, sent a healthy
primary's traffic to the replica for a whole cool-down (130 of 2,550 answers of a run with
no fault at all).

uvloop timers are millisecond-granular and measured against a loop time cached per iteration, so
they fire up to about a millisecond early; a wake before its time waits again (a sub-millisecond
remainder becomes a few loop iterations, which also lets a reply already in the socket be read
before a hedge is sent). Measured before this: 85% of calls hedged against a 1.6 ms p95.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from system_under_test import protocol
from system_under_test.gateway.fallback import (
    CallPolicy,
    CircuitBreaker,
    Copy,
    HedgeDelay,
    RetryBudget,
    ShardCallPlan,
    Tier,
)
from system_under_test.gateway.metrics import GatewayMetrics

log = logging.getLogger("gateway.calls")

# uvloop rounds timers to whole milliseconds against a loop time cached per iteration, so a
# 1.6 ms hedge timer can fire after 0.6 ms: a wake this much before its time waits again.
_EARLY_S = 0.00005


class BadReply(protocol.CallError):
    """An answer that arrived but cannot be used (NaN rows, wrong shapes)."""

    kind = "bad_reply"


class ShardCallFailed(Exception):
    """No copy of a shard answered in time; ``errors`` lists every attempt's failure."""

    def __init__(self, shard: int, reason: str, errors: list[str]) -> None:
        super().__init__(f"shard {shard}: {reason} ({'; '.join(errors) or 'no attempt'})")
        self.shard, self.reason, self.errors = shard, reason, errors


@dataclass
class CallResult:
    msg: protocol.Message
    tier: Tier
    copy: Copy
    hedged: bool
    retried: bool


# A Client-like object: ``await call(op, timeout_s, fields, tensors) -> Message``.
Caller = Any
Validator = Callable[[protocol.Message], str | None]


@dataclass
class ShardCopies:
    """One shard's two copies and their health state (a breaker each, the primary's latency)."""

    shard: int
    primary: Caller
    replica: Caller | None
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    replica_breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    hedges: dict[str, HedgeDelay] = field(default_factory=dict)

    def breaker_of(self, copy: Copy) -> CircuitBreaker:
        return self.breaker if copy is Copy.PRIMARY else self.replica_breaker

    def client_of(self, copy: Copy) -> Caller:
        return self.primary if copy is Copy.PRIMARY else self.replica

    def hedge(self, op: str) -> HedgeDelay:
        est = self.hedges.get(op)
        if est is None:
            est = self.hedges[op] = HedgeDelay()
        return est


# ``on_done(result, None)`` or ``on_done(None, error)``, exactly once per call.
Done = Callable[[CallResult | None, BaseException | None], None]


class ShardCaller:
    """Runs shard calls for the whole gateway; one retry budget shared by every shard."""

    def __init__(
        self,
        shards: list[ShardCopies],
        metrics: GatewayMetrics,
        budget: RetryBudget | None = None,
        policy: CallPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.shards, self.metrics = shards, metrics
        self.budget = budget or RetryBudget()
        self.policy = policy or CallPolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self._labels = [str(s.shard) for s in shards]
        metrics.registry.collectors.append(self._export_breakers)

    def _export_breakers(self) -> None:
        for copies, label in zip(self.shards, self._labels, strict=True):
            self.metrics.breaker_open.set(label, value=1.0 if copies.breaker.is_open else 0.0)
            if copies.replica is not None:
                self.metrics.replica_breaker_open.set(
                    label, value=1.0 if copies.replica_breaker.is_open else 0.0
                )

    def retry_allowed(self, label: str) -> bool:
        """Take a token from the shared retry budget for one retry on shard ``label``."""
        if self.budget.try_spend(self.clock()):
            return True
        self.metrics.retry_budget_exhausted.inc(label)
        return False

    def start(
        self,
        shard: int,
        op: str,
        deadline: float,
        rid: str,
        fields: Mapping[str, Any] | None,
        tensors: Mapping[str, np.ndarray] | None,
        validate: Validator | None,
        on_done: Done,
        best_effort: bool = False,
    ) -> None:
        """Start one logical call to ``shard``; ``on_done`` gets its :class:`CallResult`, or a
        :class:`ShardCallFailed` when no copy answered. Never calls ``on_done`` from inside
        ``start``. Needs a running event loop.

        ``best_effort``: the request can do without this answer, so it is given up once it has
        been out ``policy.slow_call_s`` (a required call waits until the deadline)."""
        _Call(self, shard, op, deadline, rid, fields, tensors, validate, on_done).start(best_effort)

    async def call(
        self,
        shard: int,
        op: str,
        deadline: float,
        rid: str,
        fields: Mapping[str, Any] | None = None,
        tensors: Mapping[str, np.ndarray] | None = None,
        validate: Validator | None = None,
    ) -> CallResult:
        """One logical call to ``shard``; raises :class:`ShardCallFailed` when no copy answers."""
        fut: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()

        def done(result: CallResult | None, exc: BaseException | None) -> None:
            if not fut.done():
                if exc is None:
                    fut.set_result(result)  # type: ignore[arg-type]
                else:
                    fut.set_exception(exc)

        self.start(shard, op, deadline, rid, fields, tensors, validate, done)
        return await fut


def shard_caller(
    clients: Sequence[tuple[Caller, Caller | None]],
    metrics: GatewayMetrics,
    slow_call_s: float,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    breaker: Callable[[float], CircuitBreaker] | None = None,
) -> ShardCaller:
    """The gateway's shard caller over ``(primary, replica)`` clients in shard order: every copy
    behind a breaker that counts calls slower than ``slow_call_s`` (``breaker(slow_call_s)``
    makes one; a test may pass another), best-effort calls given up at ``slow_call_s``."""
    make = breaker or (lambda slow_s: CircuitBreaker(slow_call_s=slow_s))
    copies = [
        ShardCopies(s, primary, replica, make(slow_call_s), make(slow_call_s))
        for s, (primary, replica) in enumerate(clients)
    ]
    return ShardCaller(
        copies, metrics, policy=CallPolicy(slow_call_s=slow_call_s), clock=clock, rng=rng
    )


# An attempt in flight: which copy, when it was sent, and how to drop it (a client and its call
# id, or the task of a client that only has ``async call``).
_Attempt = tuple[Copy, float, Any, Any]


class _Call:
    """One logical shard call: a :class:`ShardCallPlan` driven by answers and one timer.

    No task and no future of its own: attempts go out through ``Client.send`` (answers come
    back as callbacks from the connection's reader), and the plan's next wake (hedge, retry
    backoff, or the deadline) is a single ``loop.call_later`` handle, re-armed only when it
    changes. A client without ``send`` (a test double) gets a task per attempt instead.
    """

    __slots__ = (
        "caller",
        "copies",
        "label",
        "op",
        "deadline",
        "rid",
        "fields",
        "tensors",
        "validate",
        "on_done",
        "plan",
        "attempts",
        "seq",
        "answer",
        "timer",
        "timer_at",
        "finished",
        "loop",
        "capped",
    )

    def __init__(
        self,
        caller: ShardCaller,
        shard: int,
        op: str,
        deadline: float,
        rid: str,
        fields: Mapping[str, Any] | None,
        tensors: Mapping[str, np.ndarray] | None,
        validate: Validator | None,
        on_done: Done,
    ) -> None:
        self.caller = caller
        self.copies = caller.shards[shard]
        self.label = caller._labels[shard]
        self.op, self.deadline, self.rid = op, deadline, rid
        self.fields, self.tensors, self.validate = fields, tensors, validate
        self.on_done = on_done
        self.attempts: dict[int, _Attempt] = {}
        self.seq = 0
        self.answer: protocol.Message | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.finished = False
        self.loop = asyncio.get_running_loop()
        self.capped = False

    # ---- events

    def start(self, best_effort: bool = False) -> None:
        caller, copies = self.caller, self.copies
        now = caller.clock()
        if best_effort:  # stop waiting once the call has had its share of the budget
            give_up = now + caller.policy.slow_call_s
            if give_up < self.deadline:
                self.deadline, self.capped = give_up, True
        primary_ok = copies.breaker.closed
        replica_ok = copies.replica is not None and copies.replica_breaker.closed
        for copy, ok in ((Copy.PRIMARY, primary_ok), (Copy.REPLICA, replica_ok)):
            if not ok and copies.client_of(copy) is not None:
                if copies.breaker_of(copy).allow(now):  # its cool-down is over: probe it
                    _Probe(self, copy, now)
        self.plan = ShardCallPlan(
            deadline=self.deadline,
            primary_allowed=primary_ok,
            has_replica=copies.replica is not None,
            replica_allowed=replica_ok,
            hedge_delay_s=copies.hedge(self.op).delay(self.deadline - now),
            # (a partial of the caller, not a bound method of this call: no reference cycle,
            # so a finished call is freed at once instead of by the garbage collector)
            retry_allowed=functools.partial(caller.retry_allowed, self.label),
            jitter=caller.rng.random(),
            policy=caller.policy,
        )
        self._launch(self.plan.start(now), now)
        if self.plan.done:  # e.g. breaker open and no replica: answer on the next iteration
            self.loop.call_soon(self._guarded, self._next)
        else:
            self._next()

    def _answer(self, token: int, msg: protocol.Message | None, exc: BaseException | None) -> None:
        attempt = self.attempts.pop(token, None)
        if attempt is None or self.finished:
            return
        copy, sent, client, _ = attempt
        plan, copies, caller = self.plan, self.copies, self.caller
        now = caller.clock()
        if exc is None and self.validate is not None:
            problem = self.validate(msg)  # type: ignore[arg-type]
            if problem:
                exc = BadReply(f"{getattr(client, 'name', '?')}: {problem}")
        if exc is None:
            latency = now - sent
            copies.breaker_of(copy).record_success(now, latency)
            if copy is Copy.PRIMARY:
                copies.hedge(self.op).observe(latency)
            caller.metrics.shard_call.observe(latency, self.label, copy.value)
            self._launch(plan.on_result(copy, now), now)
            if plan.winner is copy:
                self.answer = msg
        else:
            self._failed(copy, exc, now)
        self._next()

    def _on_timer(self) -> None:
        self.timer = self.timer_at = None
        plan = self.plan
        if self.finished or plan.done:
            return
        now = self.caller.clock()
        wake = plan.wake_at is not None and plan.wake_at < self.deadline
        due = plan.wake_at if wake else self.deadline
        if now < due - _EARLY_S:  # type: ignore[operator]
            self._next()  # uvloop fired early (ms-granular, stale loop time): wait on
            return
        if wake:
            self._launch(plan.on_timer(now), now)
        else:
            # The deadline: every attempt still out has timed out (a frozen copy), or, at the
            # slow-call threshold before the request's deadline, is given up as slow.
            for _token, (copy, _sent, _client, _handle) in sorted(self.attempts.items()):
                if plan.done:
                    break
                if self.capped:
                    self._slow(copy, now)
                else:
                    self._failed(
                        copy, protocol.Timeout(f"no answer by the deadline ({self.op})"), now
                    )
            if self.capped:
                slow_ms = self.caller.policy.slow_call_s * 1000
                plan.on_deadline(now, f"no answer within the slow-call threshold {slow_ms:.1f} ms")
            else:
                plan.on_deadline(now)
        self._next()

    # ---- helpers

    def _failed(self, copy: Copy, exc: BaseException, now: float) -> None:
        kind = error_kind(exc)
        if kind == "error":
            log.error("shard %s %s call failed unexpectedly", self.label, copy.value, exc_info=exc)
        self.copies.breaker_of(copy).record_failure(now, slow=kind == "timeout")
        self.caller.metrics.shard_errors.inc(self.label, copy.value, kind)
        self._launch(self.plan.on_result(copy, now, kind, getattr(exc, "code", None)), now)

    def _slow(self, copy: Copy, now: float) -> None:
        """Give up an attempt that has been out for the whole slow-call threshold."""
        self.copies.breaker_of(copy).record_slow(now)
        self.caller.metrics.shard_errors.inc(self.label, copy.value, "slow")
        self._launch(self.plan.on_result(copy, now, "slow"), now)

    def _launch(self, sends: list[Copy], at: float) -> None:
        caller, copies, plan = self.caller, self.copies, self.plan
        for copy in sends:
            rid = self.rid
            if copy is Copy.PRIMARY:
                client = copies.primary
                if plan.attempts == 1:
                    caller.budget.deposit(at)
                else:
                    rid = f"{rid}:retry"
                    caller.metrics.retries.inc(self.label)
            else:
                client = copies.replica
                if plan.hedged:
                    caller.metrics.hedges.inc(self.label)
            body = {**self.fields, "rid": rid} if self.fields else {"rid": rid}
            self.seq += 1
            token = self.seq
            send = getattr(client, "send", None)
            if send is not None:

                def answered(msg, exc, token=token):  # type: ignore[no-untyped-def]
                    self._guarded(self._answer, token, msg, exc)

                handle = send(self.op, self.deadline - at, body, self.tensors, answered)
            else:
                handle = self.loop.create_task(
                    client.call(self.op, self.deadline - at, body, self.tensors)
                )
                handle.add_done_callback(functools.partial(self._task_done, token))
            self.attempts[token] = (copy, at, client, handle)

    def _task_done(self, token: int, task: asyncio.Task[protocol.Message]) -> None:
        if task.cancelled():
            return  # dropped by _finish
        exc = task.exception()
        self._guarded(self._answer, token, None if exc else task.result(), exc)

    def _next(self) -> None:
        """Finish if the plan is done; otherwise make sure the timer is set for its next wake."""
        plan = self.plan
        if plan.done:
            self._finish()
            return
        wake = plan.wake_at is not None and plan.wake_at < self.deadline
        due = plan.wake_at if wake else self.deadline
        if due == self.timer_at:
            return
        if self.timer is not None:
            self.timer.cancel()
        delay = max(due - self.caller.clock(), 0.0)  # type: ignore[operator]
        self.timer = self.loop.call_later(delay, self._guarded, self._on_timer)
        self.timer_at = due

    def _finish(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        plan, copies, caller = self.plan, self.copies, self.caller
        now = caller.clock()
        for copy, _sent, client, handle in self.attempts.values():
            if isinstance(handle, asyncio.Task):
                handle.cancel()
                # Python 3.11's wait_for can swallow a cancel whose answer raced in: the task
                # may still end with the call's error, which must not be reported as orphaned.
                handle.add_done_callback(_consume)
            else:
                client.abandon(handle)
            if copy is Copy.PRIMARY and plan.winner is Copy.REPLICA:
                copies.breaker.record_slow(now)
                caller.metrics.shard_errors.inc(self.label, copy.value, "hedge_lost")
        self.attempts.clear()
        if plan.winner is None or plan.tier is None or self.answer is None:
            shard = self.copies.shard
            self.on_done(None, ShardCallFailed(shard, plan.reason, plan.errors))
            return
        if plan.hedged and plan.winner is Copy.REPLICA:
            caller.metrics.hedge_wins.inc(self.label)
        self.on_done(
            CallResult(self.answer, plan.tier, plan.winner, plan.hedged, plan.retried), None
        )

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run an event handler; an unexpected error ends the call with that error (never a
        call that hangs until nobody waits)."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001
            log.exception("shard %s call failed in the executor", self.label)
            if not self.finished:
                self.finished = True
                if self.timer is not None:
                    self.timer.cancel()
                for _copy, _sent, client, handle in self.attempts.values():
                    if isinstance(handle, asyncio.Task):
                        handle.cancel()
                        handle.add_done_callback(_consume)
                    else:
                        client.abandon(handle)
                self.attempts.clear()
                self.on_done(None, exc)


# A probe of a copy with slow_call_s = inf (no threshold configured) still ends: after this.
_PROBE_TIMEOUT_S = 0.05


class _Probe:
    """One detached call that tests whether a copy with an open breaker is healthy again.

    A copy of the call that granted it (same op, fields and tensors; request id ``RID:probe``),
    sent to that copy alone. Nobody waits for it: only the breaker hears its outcome, a fast
    answer closing it, an error, a slow answer or none within ``slow_call_s`` re-opening it.
    """

    __slots__ = ("call", "copy", "sent", "client", "handle", "timer", "over")

    def __init__(self, call: _Call, copy: Copy, now: float) -> None:
        self.call, self.copy, self.sent, self.over = call, copy, now, False
        caller = call.caller
        client = self.client = call.copies.client_of(copy)
        timeout = min(caller.policy.slow_call_s, _PROBE_TIMEOUT_S)
        body = {**(call.fields or {}), "rid": f"{call.rid}:probe"}
        send = getattr(client, "send", None)
        if send is not None:
            self.handle = send(call.op, timeout, body, call.tensors, self._answered)
            self.timer: asyncio.TimerHandle | None = call.loop.call_later(timeout, self._late)
        else:  # a test double with only ``async call``: it times out by itself
            self.handle = call.loop.create_task(client.call(call.op, timeout, body, call.tensors))
            self.handle.add_done_callback(self._task_done)
            self.timer = None
        caller.metrics.probes.inc(call.label, copy.value, "sent")

    def _answered(self, msg: protocol.Message | None, exc: BaseException | None) -> None:
        if self.over:
            return
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
        call = self.call
        try:
            if exc is None and call.validate is not None:
                problem = call.validate(msg)  # type: ignore[arg-type]
                if problem:
                    exc = BadReply(f"{getattr(self.client, 'name', '?')}: {problem}")
            now = call.caller.clock()
            breaker = call.copies.breaker_of(self.copy)
            if exc is None:
                breaker.record_success(now, now - self.sent)
                outcome = "fast" if breaker.closed else "slow"
            else:
                breaker.record_failure(now, slow=error_kind(exc) == "timeout")
                outcome = "failed"
            call.caller.metrics.probes.inc(call.label, self.copy.value, outcome)
        except Exception:  # noqa: BLE001 - a probe must never take a request down with it
            log.exception("shard %s %s probe failed in the executor", call.label, self.copy.value)

    def _late(self) -> None:
        if self.over:
            return
        self.client.abandon(self.handle)
        self._answered(None, protocol.Timeout(f"probe of {self.copy.value}: no answer in time"))

    def _task_done(self, task: asyncio.Task[protocol.Message]) -> None:
        if task.cancelled():
            self._answered(None, protocol.Timeout("probe cancelled"))
            return
        exc = task.exception()
        self._answered(None if exc else task.result(), exc)


def _consume(task: asyncio.Task[protocol.Message]) -> None:
    """Mark a dropped attempt's outcome as retrieved (its error is not an orphan)."""
    if not task.cancelled():
        task.exception()


def error_kind(exc: BaseException) -> str:
    """``CallError.kind``, or the kind an exception from below the client amounts to."""
    if isinstance(exc, protocol.CallError):
        return exc.kind
    if isinstance(exc, TimeoutError):  # a connect that hangs (a DROP rule) escapes as this
        return "timeout"
    if isinstance(exc, OSError):
        return "unavailable"
    return "error"
