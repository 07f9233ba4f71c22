"""The gateway's metrics: labelled counters, gauges and histograms, rendered as Prometheus text.

Kept tiny and allocation-light because every request updates a dozen of them: a metric is a dict
from a label tuple to a number (or a bucket list), and ``render()`` writes text exposition format
0.0.4 only when ``/metrics`` is scraped. Single-threaded by design (one event loop), so no locks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

# Seconds; fine below a millisecond, where shard calls live, up to the worst stalls.
SHARD_CALL_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.05,
    0.1,
    0.5,
)
REQUEST_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    1.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, key)} {_num(value)}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        self.values[labels] = value


class Histogram:
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = SHARD_CALL_BUCKETS,
    ) -> None:
        self.name, self.help, self.label_names = name, help_, labels
        self.buckets = tuple(sorted(buckets))
        # per label tuple: [count per bucket..., count in +Inf only], sum
        self.values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        entry = self.values.get(labels)
        if entry is None:
            entry = self.values[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        entry[0][bisect.bisect_left(self.buckets, value)] += 1
        entry[1][0] += value

    def count(self, *labels: str) -> int:
        entry = self.values.get(labels)
        return sum(entry[0]) if entry else 0

    def samples(self) -> Iterable[str]:
        for key, (counts, total) in sorted(self.values.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _num(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}"
            yield f"{self.name}_sum{_labels(self.label_names, key)} {_num(total[0])}"
            yield f"{self.name}_count{_labels(self.label_names, key)} {running}"


class Registry:
    """Metrics in registration order; ``collectors`` refresh gauges just before rendering."""

    def __init__(self) -> None:
        self.metrics: list[Counter | Histogram] = []
        self.collectors: list[Callable[[], None]] = []

    def counter(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Counter:
        metric = Counter(name, help_, labels)
        self.metrics.append(metric)
        return metric

    def gauge(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Gauge:
        metric = Gauge(name, help_, labels)
        self.metrics.append(metric)
        return metric

    def histogram(
        self,
        name: str,
        help_: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = SHARD_CALL_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help_, labels, buckets)
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        for collect in self.collectors:
            collect()
        lines: list[str] = []
        for metric in self.metrics:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


class GatewayMetrics:
    """Every metric the gateway exports, by name (see the ``/metrics`` endpoint)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.counter(
            "recchaos_requests_total",
            "Recommend requests by serving tier and outcome.",
            ("tier", "outcome"),
        )
        self.request_seconds = r.histogram(
            "recchaos_request_seconds",
            "Gateway time per recommend request, by tier.",
            ("tier",),
            REQUEST_BUCKETS,
        )
        self.stage_seconds = r.histogram(
            "recchaos_stage_seconds",
            "Gateway time per stage of a recommend request (the timings_ms of each answer).",
            ("stage",),
            REQUEST_BUCKETS,
        )
        self.queue_seconds = r.histogram(
            "recchaos_queue_delay_seconds",
            "Time from a recommend request's arrival (its first byte read, or the balancer's "
            "X-Request-Start when earlier: source) to the start of its handler, shed or not.",
            ("source",),
            SHARD_CALL_BUCKETS,
        )
        self.shed = r.counter(
            "recchaos_shed_total",
            "Recommend requests shed with a fast 503 and Retry-After, by reason.",
            ("reason",),
        )
        self.overloaded = r.gauge(
            "recchaos_overloaded",
            "1 while the overload controller sheds at its target (a standing queue in the last "
            "interval).",
        )
        self.http_errors = r.counter(
            "recchaos_http_errors_total",
            "Rejected or failed HTTP requests by status code.",
            ("status",),
        )
        self.shard_call = r.histogram(
            "recchaos_shard_call_seconds",
            "Latency of answered shard calls by shard and copy.",
            ("shard", "copy"),
        )
        self.shard_errors = r.counter(
            "recchaos_shard_call_errors_total",
            "Failed shard calls by shard, copy and kind.",
            ("shard", "copy", "kind"),
        )
        self.breaker_open = r.gauge(
            "recchaos_breaker_open",
            "1 while the shard primary's circuit breaker is not closed.",
            ("shard",),
        )
        self.replica_breaker_open = r.gauge(
            "recchaos_replica_breaker_open",
            "1 while the shard replica's circuit breaker is not closed.",
            ("shard",),
        )
        self.probes = r.counter(
            "recchaos_breaker_probes_total",
            "Probes of copies with an open breaker: sent, and how each ended (fast, slow, failed).",
            ("shard", "copy", "outcome"),
        )
        self.retries = r.counter("recchaos_retries_total", "Primary retries sent.", ("shard",))
        self.retry_budget_exhausted = r.counter(
            "recchaos_retry_budget_exhausted_total",
            "Retries not sent because the retry budget was spent.",
            ("shard",),
        )
        self.hedges = r.counter("recchaos_hedges_total", "Hedged replica calls sent.", ("shard",))
        self.hedge_wins = r.counter(
            "recchaos_hedge_wins_total", "Hedged calls whose replica answer was used.", ("shard",)
        )
        self.cache_hits = r.counter(
            "recchaos_cache_hits_total", "Embedding-row cache hits.", ("level",)
        )
        self.cache_misses = r.counter(
            "recchaos_cache_misses_total", "Embedding-row cache misses.", ("level",)
        )
        self.redis_errors = r.counter(
            "recchaos_redis_errors_total",
            "Redis failures (the request went on without Redis).",
            ("use",),
        )
        self.region_fallbacks = r.counter(
            "recchaos_region_fallbacks_total",
            "Requests sent to the degraded region, by reason.",
            ("reason",),
        )
        self.static_fallbacks = r.counter(
            "recchaos_static_fallbacks_total",
            "Requests answered from the static popular list.",
            ("reason",),
        )
        self.partial_coverage = r.counter(
            "recchaos_partial_coverage_total",
            "Requests answered without some shard's candidate range (best-effort fan-out).",
        )
        self.cold_start = r.counter(
            "recchaos_cold_start_total", "Requests for users unknown to the model."
        )

    def observe_queue(self, delay_s: float, admitted: bool, source: str) -> None:
        """One recommend request's queueing delay, and whether the overload gate shed it."""
        self.queue_seconds.observe(delay_s, source)
        if not admitted:
            self.shed.inc("queue_delay")
