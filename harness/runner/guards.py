"""Watching a run's guards while its load runs, and halting the run when one trips.

:class:`GuardWatch` feeds the load workers' progress lines to the ``error_ratio`` guards and runs
one probe thread per ``health`` guard (a GET on the target's URL every ``every_s``, from the
load's start until :meth:`GuardWatch.stop`). The first guard to trip is kept with the time the
harness knew (monotonic ns since the run's origin, the timeline's clock) and ``on_trip`` is
called once; the runner's fault thread wakes and :func:`halt` heals every active fault at once
and notes the planned faults it will never apply. The load itself runs on to its planned end, so
the report shows how the system recovered.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from harness.checks.guards import ErrorRatioGuard, GuardTrip, HealthGuard
from harness.model.guards import GuardSpec
from harness.model.record import Halt

Probe = Callable[[str, float], tuple[bool, str]]
"""``(url, timeout_s) -> (ok, detail)``: ok is a 2xx answer within the timeout."""


def http_probe(url: str, timeout_s: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except TimeoutError:
        return False, f"no answer within {timeout_s * 1000:g} ms"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return False, f"no answer within {timeout_s * 1000:g} ms"
        return False, f"{type(reason).__name__}: {reason}"


class GuardWatch:
    """The guards of one run. ``origin_ns`` is the load's start (CLOCK_MONOTONIC); ``on_trip``
    is called once, from the thread that saw the trip."""

    def __init__(
        self,
        guards: Sequence[GuardSpec],
        base_url: str,
        origin_ns: int,
        on_trip: Callable[[GuardTrip], None] = lambda trip: None,
        probe: Probe = http_probe,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.origin_ns = origin_ns
        self.on_trip = on_trip
        self.trip: GuardTrip | None = None
        self.trip_ns = 0
        self.trip_wall = 0.0
        self._probe, self._clock = probe, clock
        self._ratio = [ErrorRatioGuard(g) for g in guards if g.kind == "error_ratio"]
        self._health = [HealthGuard(g) for g in guards if g.kind == "health"]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _now_s(self) -> float:
        return (self._clock() - self.origin_ns) / 1e9

    def on_progress(self, line: dict[str, Any]) -> None:
        """A load worker's progress line (relayed by the load driver)."""
        for guard in self._ratio:
            trip = guard.observe(line)
            if trip is not None:
                self._tripped(trip)

    def start(self) -> None:
        for guard in self._health:
            t = threading.Thread(
                target=self._probe_loop, args=(guard,), name=f"guard-{guard.spec.origin}"
            )
            t.daemon = True
            t.start()
            self._threads.append(t)

    def _probe_loop(self, guard: HealthGuard) -> None:
        spec = guard.spec
        url, timeout_s = self.base_url + spec.path, spec.timeout_ms / 1000
        if self._stop.wait(max(-self._now_s(), 0.0)):  # probing starts with the load
            return
        while self.trip is None:
            start = self._now_s()
            ok, detail = self._probe(url, timeout_s)
            trip = guard.observe(start, self._now_s(), ok, detail)
            if trip is not None:
                self._tripped(trip)
                return
            if self._stop.wait(max(spec.every_s - (self._now_s() - start), 0.0)):
                return

    def _tripped(self, trip: GuardTrip) -> None:
        with self._lock:
            if self.trip is not None:
                return
            self.trip = trip
            self.trip_ns = self._clock() - self.origin_ns
            self.trip_wall = time.time()
        self.on_trip(trip)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop probing; every probe thread ends within its probe timeout."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)


class Haltable(Protocol):
    """What :func:`halt` needs of the fault plan (:class:`harness.runner.faults.FaultPlanRun`)."""

    def halt(self) -> tuple[tuple[str, ...], int | None, list[str], tuple[str, ...]]: ...


def halt(watch: GuardWatch, faults: Haltable) -> Halt:
    """Heal every active fault now; the halt as the run record keeps it."""
    assert watch.trip is not None
    trip = watch.trip
    healed, healed_ns, errors, not_applied = faults.halt()
    return Halt(
        guard=trip.guard.origin,
        rule=trip.guard.describe(),
        kind=trip.guard.kind,
        value=trip.value,
        limit=trip.guard.above,
        evidence=trip.evidence,
        since_s=trip.since_s,
        trip_ns=watch.trip_ns,
        trip_wall=watch.trip_wall,
        healed=healed,
        healed_ns=healed_ns,
        heal_errors=tuple(errors),
        not_applied=not_applied,
    )


__all__ = ["GuardWatch", "Probe", "halt", "http_probe"]
