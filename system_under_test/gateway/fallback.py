"""The gateway's fallback decisions, as pure logic: tiers, breaker, retry budget, hedge delay, plan.

Nothing here touches a socket or reads a clock: every method takes ``now`` (seconds, any
monotonic origin) so the decisions can be unit-tested with a fake clock and simulated peers.
``calls.py`` executes a :class:`ShardCallPlan` over real protocol clients; ``service.py``
combines the tiers of a request's parts with :func:`worst`.

The rules are those of docs/architecture.md ("Fallback semantics"). For one shard call:

1. the primary, unless its circuit breaker is open; at most one retry, after a jittered backoff
   of 0.2-1 ms, when the first attempt failed fast (dead peer, remote error), the deadline leaves
   room and the retry budget has a token (tier ``retry`` if the retry answered);
2. the replica: hedged once the primary has been silent for about its observed p95 (a frozen
   primary is found only by time), sent at once when the primary failed or its breaker is open;
   the first success wins (tier ``replica`` when the replica's answer is used);
3. otherwise the call fails and the caller decides: the degraded region or the static list.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Tier(enum.IntEnum):
    """Who served a response, best first. A request reports the worst tier any part needed."""

    PRIMARY = 0
    RETRY = 1
    REPLICA = 2
    DEGRADED = 3
    STATIC = 4

    @property
    def label(self) -> str:
        return self.name.lower()


def worst(*tiers: Tier) -> Tier:
    """The worst of the tiers (``PRIMARY`` for none): the tier a whole response reports."""
    return max(tiers, default=Tier.PRIMARY)


class Copy(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"


# Remote failures that another attempt cannot fix: the request itself is wrong, or the time is up.
# (``not_owned`` and ``bad_op`` mean the gateway was given the wrong shard order: a config error.)
NON_RETRYABLE_CODES = frozenset({"bad_request", "bad_op", "not_owned", "deadline_exceeded"})


def failed_fast(kind: str, code: str | None = None) -> bool:
    """A failure worth one retry: the peer refused or dropped us, answered with an error, or
    sent a reply that failed validation (``bad_reply``: NaN, wrong shape).

    A timeout is not fast: it has used the time a retry would need.
    """
    if kind in ("unavailable", "bad_reply"):
        return True
    return kind == "remote" and code not in NON_RETRYABLE_CODES


# --------------------------------------------------------------------------------------------
# Circuit breaker


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One copy's circuit breaker: failures and slow calls open it, a probe closes it again.

    It opens after ``threshold`` consecutive failures (a dead peer is found in a few calls), or
    when, of its last ``window_calls`` calls (those of the last ``window_s`` seconds), at least
    ``min_calls`` ended and a share of ``slow_rate`` or more of them were slow: answered after
    ``slow_call_s``, or given up unanswered at that point (``record_slow``). That is how
    resilience libraries count slow calls (a slow-call rate threshold over a sliding window): a
    copy that still answers, but too late to be of use, is treated like a failing one within
    about ``min_calls`` calls (a time window holding a second of healthy calls took half a second
    to tip: 100 requests at 12 ms), while a short stall, which slows a few calls in flight, does
    not open anything.

    While open, calls skip the copy. After ``cooldown_s`` one probe is granted (half-open): a
    fast success closes the breaker, a failure or a slow answer re-opens it for another
    cool-down. A probe whose outcome is never recorded does not wedge the breaker: another is
    granted once ``cooldown_s`` has passed since it started. Answers to calls sent before the
    breaker opened do not close it: only a probe does.
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 0.5,
        slow_call_s: float = math.inf,
        slow_rate: float = 0.5,
        window_calls: int = 20,
        window_s: float = 1.0,
        min_calls: int = 10,
    ) -> None:
        if threshold < 1 or cooldown_s <= 0:
            raise ValueError(
                f"breaker needs threshold >= 1 and cooldown_s > 0, got {threshold} and {cooldown_s}"
            )
        if (
            not slow_call_s > 0
            or not 0 < slow_rate <= 1
            or window_s <= 0
            or not 1 <= min_calls <= window_calls
        ):
            raise ValueError(
                f"breaker needs slow_call_s > 0, 0 < slow_rate <= 1, window_s > 0 and "
                f"1 <= min_calls <= window_calls; got {slow_call_s}, {slow_rate}, {window_s}, "
                f"{min_calls} and {window_calls}"
            )
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self.slow_call_s, self.slow_rate = slow_call_s, slow_rate
        self.window_calls, self.window_s, self.min_calls = window_calls, window_s, min_calls
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None
        # (end time, slow) of the calls in the sliding window, and how many of them were slow
        self._window: collections.deque[tuple[float, bool]] = collections.deque()
        self._slow = 0

    @property
    def is_open(self) -> bool:
        """True while calls bypass the copy (open, or half-open with its probe out)."""
        return self.state is not BreakerState.CLOSED

    @property
    def closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def allow(self, now: float) -> bool:
        """May a call go to the copy? Grants at most one probe per cool-down when open."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self._opened_at < self.cooldown_s:
            return False
        if (
            self.state is BreakerState.HALF_OPEN
            and self._probe_at is not None
            and now - self._probe_at < self.cooldown_s
        ):
            return False
        self.state = BreakerState.HALF_OPEN
        self._probe_at = now
        return True

    def record_success(self, now: float, latency_s: float = 0.0) -> None:
        """A call answered after ``latency_s``: slow when that exceeds ``slow_call_s``."""
        slow = latency_s > self.slow_call_s
        if self.state is BreakerState.HALF_OPEN:
            if slow:
                self._open(now)
            else:
                self._close()
        elif self.state is BreakerState.CLOSED:
            if not slow:
                self.failures = 0
            if self._count(now, slow):
                self._open(now)

    def record_slow(self, now: float) -> None:
        """A call given up unanswered once it had been out ``slow_call_s``."""
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)
        elif self.state is BreakerState.CLOSED and self._count(now, True):
            self._open(now)

    def record_failure(self, now: float, slow: bool = False) -> None:
        """A call failed (``slow``: it timed out, after at least ``slow_call_s``)."""
        self.failures += 1
        tripped = self.state is BreakerState.CLOSED and self._count(now, slow)
        if tripped or self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self._open(now)

    def _count(self, now: float, slow: bool) -> bool:
        """Add one call to the window; True when the window now says "slow copy"."""
        window = self._window
        horizon = now - self.window_s
        while window and (window[0][0] <= horizon or len(window) >= self.window_calls):
            self._slow -= window.popleft()[1]
        window.append((now, slow))
        self._slow += slow
        return len(window) >= self.min_calls and self._slow >= self.slow_rate * len(window)

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._probe_at = None
        self._window.clear()
        self._slow = 0

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probe_at = None
        self._window.clear()
        self._slow = 0


# --------------------------------------------------------------------------------------------
# Retry budget


class RetryBudget:
    """A token bucket that keeps retries to about ``ratio`` of calls (10% by default).

    Every first attempt deposits ``ratio`` tokens, a retry spends one. ``min_per_s`` tokens a
    second trickle in as well, so a quiet gateway can still retry; ``cap`` bounds a burst of
    retries after a long healthy stretch (a dead primary must not double the load on a cluster).
    """

    def __init__(self, ratio: float = 0.1, min_per_s: float = 5.0, cap: float = 10.0) -> None:
        if not 0 <= ratio <= 1 or min_per_s < 0 or cap < 1:
            raise ValueError(
                f"retry budget needs 0 <= ratio <= 1, min_per_s >= 0 and cap >= 1, "
                f"got {ratio}, {min_per_s}, {cap}"
            )
        self.ratio, self.min_per_s, self.cap = ratio, min_per_s, cap
        self.tokens = cap
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self.tokens = min(self.cap, self.tokens + (now - self._last) * self.min_per_s)
        self._last = now if self._last is None else max(self._last, now)

    def deposit(self, now: float) -> None:
        """One first attempt was made."""
        self._refill(now)
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_spend(self, now: float) -> bool:
        """Take a token for one retry; False when the budget is spent."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# --------------------------------------------------------------------------------------------
# Hedge delay


class HedgeDelay:
    """Sliding-window quantile (p95 by default) of one copy's successful call latencies.

    The estimate is recomputed every ``every`` samples (a percentile over a few hundred floats
    costs microseconds, but not on every call). Until ``min_samples`` have been seen it returns
    ``initial_s``. Failed and cancelled calls are not samples: their latency is unknown.
    """

    def __init__(
        self,
        window: int = 256,
        quantile: float = 0.95,
        floor_s: float = 0.001,
        initial_s: float = 0.002,
        min_samples: int = 20,
        every: int = 16,
    ) -> None:
        if window < 1 or not 0 < quantile <= 1 or floor_s < 0:
            raise ValueError(
                f"hedge delay needs window >= 1, 0 < quantile <= 1, floor_s >= 0; "
                f"got {window}, {quantile}, {floor_s}"
            )
        self.quantile, self.floor_s, self.initial_s = quantile, floor_s, initial_s
        self.min_samples, self.every = min_samples, every
        self._buf = np.zeros(window, dtype=np.float64)
        self._n = 0
        self._estimate = initial_s

    def observe(self, latency_s: float) -> None:
        self._buf[self._n % len(self._buf)] = latency_s
        self._n += 1
        if self._n >= self.min_samples and (
            self._n % self.every == 0 or self._n == self.min_samples
        ):
            filled = self._buf[: min(self._n, len(self._buf))]
            self._estimate = _quantile(filled, self.quantile)

    @property
    def samples(self) -> int:
        return self._n

    def delay(self, remaining_s: float = math.inf) -> float:
        """The hedge delay, clamped to ``[floor_s, remaining_s]``."""
        return min(max(self._estimate, self.floor_s), max(remaining_s, 0.0))


def _quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (its default, linear method) by a partial sort: a few
    microseconds instead of tens, on the request path."""
    index = q * (len(values) - 1)
    lo = math.floor(index)
    hi = min(lo + 1, len(values) - 1)
    part = np.partition(values, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    t = index - lo
    # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


# --------------------------------------------------------------------------------------------
# The plan of one shard call


@dataclass(frozen=True)
class CallPolicy:
    """Timing knobs of one shard call (seconds)."""

    backoff_min_s: float = 0.0002
    backoff_max_s: float = 0.001
    # Do not start an attempt with less time left than this: it could not answer in time.
    min_attempt_s: float = 0.0003
    # A call's share of the request's budget: one still unanswered after this long is slow. The
    # request stops waiting for it (it goes on without the shard, or falls back) and the
    # copies' breakers count it. (The gateway derives it from its budget; inf: never.)
    slow_call_s: float = math.inf

    def backoff(self, jitter: float) -> float:
        """Backoff for a jitter drawn uniformly from [0, 1)."""
        return self.backoff_min_s + jitter * (self.backoff_max_s - self.backoff_min_s)


class _State(enum.Enum):
    IDLE = "idle"
    INFLIGHT = "inflight"
    BACKOFF = "backoff"
    FAILED = "failed"
    DONE = "done"


@dataclass
class ShardCallPlan:
    """The decisions for one call to one shard (primary, retry, hedge, replica), event by event.

    The executor calls :meth:`start`, then reports every answer with :meth:`on_result` and every
    expiry of :attr:`wake_at` with :meth:`on_timer`; each returns the copies to send to now. The
    plan is finished when :attr:`done` is set: :attr:`winner` and :attr:`tier` then say who
    answered, or both are None when no copy did (``reason`` says why). The executor cancels
    whatever is still in flight at that point (a hedged loser is dropped, never leaked).

    ``primary_allowed`` / ``replica_allowed``: the copy's breaker is closed (a copy that failed
    or became slow is skipped; its probes are the executor's business). ``deadline`` is the time
    the caller stops waiting: the request's deadline, or earlier (``CallPolicy.slow_call_s``).
    """

    deadline: float
    primary_allowed: bool
    has_replica: bool
    hedge_delay_s: float
    retry_allowed: Callable[[], bool]
    jitter: float = 0.5
    policy: CallPolicy = field(default_factory=CallPolicy)
    replica_allowed: bool = True

    primary: _State = _State.IDLE
    replica: _State = _State.IDLE
    attempts: int = 0
    wake_at: float | None = None
    done: bool = False
    winner: Copy | None = None
    tier: Tier | None = None
    hedged: bool = False
    retried: bool = False
    reason: str = ""
    errors: list[str] = field(default_factory=list)
    _wake_kind: str = ""

    # ---- events

    @property
    def replica_usable(self) -> bool:
        return self.has_replica and self.replica_allowed

    def start(self, now: float) -> list[Copy]:
        if self.primary_allowed:
            return self._send_primary(now)
        if self.replica_usable:
            return self._send_replica(now, hedge=False)
        return self._fail(
            "no fast copy: the primary's breaker is open and "
            + ("so is the replica's" if self.has_replica else "there is no replica")
        )

    def on_timer(self, now: float) -> list[Copy]:
        kind, self.wake_at, self._wake_kind = self._wake_kind, None, ""
        if self.done:
            return []
        if kind == "hedge" and self.primary is _State.INFLIGHT and self.replica is _State.IDLE:
            if self.deadline - now >= self.policy.min_attempt_s:
                return self._send_replica(now, hedge=True)
            return []
        if kind == "retry" and self.primary is _State.BACKOFF:
            return self._send_primary(now)
        return []

    def on_result(
        self, copy: Copy, now: float, kind: str | None = None, code: str | None = None
    ) -> list[Copy]:
        """``kind`` None is a success; otherwise a ``CallError.kind`` (and a remote ``code``)."""
        if self.done:
            return []
        if kind is None:
            return self._succeed(copy)
        self.errors.append(
            f"{copy.value}#{self.attempts if copy is Copy.PRIMARY else 1}: "
            f"{kind}{'/' + code if code else ''}"
        )
        if copy is Copy.REPLICA:
            self.replica = _State.FAILED
            if self.primary in (_State.INFLIGHT, _State.BACKOFF):
                return []  # the primary may still answer
            return self._fail("primary and replica failed")
        self.primary = _State.FAILED
        if self._wake_kind == "hedge":
            self.wake_at, self._wake_kind = None, ""
        if self.replica is _State.INFLIGHT:
            return []  # the hedge is out already: wait for it
        backoff = self.policy.backoff(self.jitter)
        if (
            self.attempts == 1
            and failed_fast(kind, code)
            and self.deadline - now >= backoff + self.policy.min_attempt_s
            and self.retry_allowed()
        ):
            self.primary, self.retried = _State.BACKOFF, True
            self._wake(now + backoff, "retry")
            return []
        return self._to_replica(now)

    def on_deadline(self, now: float, reason: str = "deadline reached") -> list[Copy]:
        if not self.done:
            self._fail(reason)
        return []

    # ---- helpers

    def _send_primary(self, now: float) -> list[Copy]:
        if self.deadline - now < self.policy.min_attempt_s:
            self.primary = _State.FAILED
            if self.replica is _State.IDLE and self.deadline - now < self.policy.min_attempt_s:
                return self._fail(
                    f"only {max(self.deadline - now, 0) * 1000:.2f} ms left: no copy could be tried"
                )
            return self._to_replica(now)
        self.attempts += 1
        self.primary = _State.INFLIGHT
        if self.replica_usable and self.replica is _State.IDLE:
            hedge_at = now + max(self.hedge_delay_s, 0.0)
            if hedge_at <= self.deadline - self.policy.min_attempt_s:
                self._wake(hedge_at, "hedge")
        return [Copy.PRIMARY]

    def _send_replica(self, now: float, hedge: bool) -> list[Copy]:
        self.replica = _State.INFLIGHT
        self.hedged = self.hedged or hedge
        return [Copy.REPLICA]

    def _to_replica(self, now: float) -> list[Copy]:
        if self.replica is _State.INFLIGHT:
            return []
        if (
            self.replica_usable
            and self.replica is _State.IDLE
            and self.deadline - now >= self.policy.min_attempt_s
        ):
            return self._send_replica(now, hedge=False)
        if not self.has_replica:
            return self._fail("primary failed and there is no replica")
        if not self.replica_allowed:
            return self._fail("primary failed and the replica's breaker is open")
        return self._fail("primary failed and no replica could be tried")

    def _succeed(self, copy: Copy) -> list[Copy]:
        self.done, self.winner, self.wake_at, self._wake_kind = True, copy, None, ""
        if copy is Copy.REPLICA:
            self.replica, self.tier = _State.DONE, Tier.REPLICA
        else:
            self.primary = _State.DONE
            self.tier = Tier.RETRY if self.attempts > 1 else Tier.PRIMARY
        return []

    def _fail(self, reason: str) -> list[Copy]:
        self.done, self.reason, self.wake_at, self._wake_kind = True, reason, None, ""
        return []

    def _wake(self, at: float, kind: str) -> None:
        self.wake_at, self._wake_kind = at, kind

    @property
    def inflight(self) -> list[Copy]:
        out = []
        if self.primary is _State.INFLIGHT:
            out.append(Copy.PRIMARY)
        if self.replica is _State.INFLIGHT:
            out.append(Copy.REPLICA)
        return out
