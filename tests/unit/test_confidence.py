"""Quantile confidence intervals from order statistics: the ranks against an exact binomial
oracle (integer arithmetic, and scipy's where it is installed), their values from histograms,
and how an SLO with ``confidence`` is judged."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checks.judge import judge
from harness.checks.verdict import CheckResult, Verdict
from harness.metrics.confidence import binomial_cdf, quantile_interval, quantile_ranks
from harness.metrics.histogram import LatencyHistogram
from harness.metrics.stats import window_stats
from harness.metrics.windows import Window
from harness.model.errors import Problem
from harness.model.requestlog import TIERS, empty_log
from harness.model.slo import Evidence, SLOSpec, read_slo


# -- the oracle: exact binomial tails in integers -----------------------------------------------
def exact_ranks(n: int, q: Fraction, level: Fraction) -> tuple[int, int]:
    """The defining rule, computed exactly in integers: the largest r with P(B < r) <= tail,
    the smallest s with P(B >= s) <= tail, for B ~ Binomial(n, q)."""
    a, b = q.numerator, q.denominator
    tail = (1 - level) / 2
    # P(B = j) * b**n, and the tail test P <= tail as P * b**n * den <= num * b**n.
    weights = [math.comb(n, j) * a**j * (b - a) ** (n - j) for j in range(n + 1)]
    scale = b**n * tail.numerator
    below = [0]
    for w in weights:
        below.append(below[-1] + w)
    total = below[-1]
    low = max(r for r in range(n + 1) if below[r] * tail.denominator <= scale)
    high = min(s for s in range(1, n + 2) if (total - below[s]) * tail.denominator <= scale)
    return low, high


CASES = [
    (n, q, level)
    for n in (1, 2, 5, 10, 20, 37, 60, 100, 150)
    for q in ("1/2", "9/10", "19/20", "99/100", "999/1000")
    for level in ("9/10", "19/20", "99/100")
]


@pytest.mark.parametrize(("n", "q", "level"), CASES)
def test_ranks_match_the_exact_binomial_oracle(n: int, q: str, level: str) -> None:
    got = quantile_ranks(n, float(Fraction(q)), float(Fraction(level)))
    assert (got.low, got.high) == exact_ranks(n, Fraction(q), Fraction(level))


@pytest.mark.parametrize(("n", "q"), [(600, "99/100"), (2000, "99/100"), (1000, "1/2")])
def test_ranks_of_window_sized_samples_match_the_oracle(n: int, q: str) -> None:
    got = quantile_ranks(n, float(Fraction(q)), 0.95)
    assert (got.low, got.high) == exact_ranks(n, Fraction(q), Fraction(19, 20))


def test_ranks_match_scipy_where_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    for n in (50, 600, 5000, 36000):
        for q in (0.5, 0.95, 0.99, 0.999):
            got = quantile_ranks(n, q, 0.95)
            cdf = stats.binom(n, q).cdf
            assert got.low == 0 or cdf(got.low - 1) <= 0.025 < cdf(got.low)
            assert got.high == n + 1 or 1 - cdf(got.high - 1) <= 0.025 < 1 - cdf(got.high - 2)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 5000),
    q=st.sampled_from([0.5, 0.9, 0.95, 0.99, 0.999]),
    level=st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_coverage_reaches_the_level_and_the_ranks_are_the_tightest(
    n: int, q: float, level: float
) -> None:
    r = quantile_ranks(n, q, level)
    tail = (1 - level) / 2
    assert 0 <= r.low < r.high <= n + 1
    assert r.coverage >= level - 1e-9
    assert binomial_cdf(r.low - 1, n, q) <= tail + 1e-12
    assert r.low == n or binomial_cdf(r.low, n, q) > tail - 1e-12  # one rank up breaks it
    assert 1 - binomial_cdf(r.high - 1, n, q) <= tail + 1e-12
    assert r.high == 1 or 1 - binomial_cdf(r.high - 2, n, q) > tail - 1e-12


def test_too_few_samples_leave_the_upper_end_open() -> None:
    r = quantile_ranks(100, 0.99, 0.95)  # P(all 100 below the p99) = 0.366 > 0.025
    assert (r.low, r.high) == (97, 101)


@pytest.mark.parametrize("bad", [(-1, 0.5, 0.95), (10, 0.0, 0.95), (10, 1.0, 0.95), (10, 0.5, 1)])
def test_bad_arguments_are_refused_with_the_value(bad: tuple[int, float, float]) -> None:
    with pytest.raises(ValueError, match="got"):
        quantile_ranks(*bad)


# -- values from a histogram ----------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(1, 5_000_000), min_size=1, max_size=400),
    failures=st.integers(0, 20),
    q=st.sampled_from([0.5, 0.95, 0.99]),
)
def test_interval_brackets_the_order_statistics_at_its_ranks(
    values: list[int], failures: int, q: float
) -> None:
    h = LatencyHistogram.from_us(values, failures=failures)
    ordered = sorted(values) + [math.inf] * failures
    iv = quantile_interval(h, "p99", q, with_errors=True)
    assert iv is not None and iv.samples == len(ordered)
    if iv.low_rank:
        true_low = ordered[iv.low_rank - 1] / 1000
        assert iv.low_ms <= true_low and (
            math.isinf(true_low) or true_low - iv.low_ms < 0.002 * true_low + 0.002
        )
    else:
        assert iv.low_ms == 0.0
    if iv.high_rank <= len(ordered):
        true_high = ordered[iv.high_rank - 1] / 1000
        assert iv.high_ms >= true_high
    else:
        assert math.isinf(iv.high_ms)


def test_success_only_interval_leaves_failures_out() -> None:
    h = LatencyHistogram.from_us(np.arange(1000, 2000), failures=500)
    assert quantile_interval(h, "p50", 0.5, with_errors=False).samples == 1000
    assert quantile_interval(h, "p50", 0.5, with_errors=True).samples == 1500
    assert quantile_interval(LatencyHistogram(), "p50", 0.5, with_errors=True) is None


def test_value_at_rank_refuses_a_rank_outside_the_population() -> None:
    h = LatencyHistogram.from_us([1000, 2000])
    assert h.value_at_rank(2) == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match="rank must be in 1..2, got 3"):
        h.value_at_rank(3)


# -- judging with confidence -----------------------------------------------------------------------
def stats_of(latencies_ms: list[float]):
    log = empty_log(len(latencies_ms))
    log["intended_ns"] = np.arange(len(latencies_ms)) * 5_000_000 + 10**9
    log["send_ns"] = log["intended_ns"]
    log["done_ns"] = log["intended_ns"] + (np.asarray(latencies_ms) * 1e6).astype(np.int64)
    log["status"] = 200
    log["tier"] = TIERS.index("primary")
    return window_stats(log, Window("steady", 0.0, 1e6, "steady"), 20.0)


def p99_slo(confidence: float | None) -> SLOSpec:
    return SLOSpec("p99", "at_most", 20.0, confidence=confidence, origin="slos[0]")


def run_judge(slo: SLOSpec, latencies: list[float]) -> CheckResult:
    return judge(slo, stats_of(latencies), where="x.yaml, slos[0]", sla_ms=20, evidence=Evidence())


def test_every_quantile_check_states_its_interval() -> None:
    r = run_judge(p99_slo(None), [5.0] * 600)
    assert r.verdict is Verdict.PASS
    assert "95% CI [5.0, 5.0] ms (ranks 589 and 599 of 600)" in r.message
    assert r.interval is not None and (r.interval["low_rank"], r.interval["high_rank"]) == (
        589,
        599,
    )
    assert CheckResult.from_dict(r.to_dict()) == r


def test_with_confidence_a_straddling_interval_is_inconclusive() -> None:
    # 600 samples, 6 above the limit: the point p99 is 5 ms, the interval reaches 30 ms.
    latencies = [5.0] * 594 + [30.0] * 6
    plain = run_judge(p99_slo(None), latencies)
    assert plain.verdict is Verdict.PASS  # the point estimate alone says PASS
    r = run_judge(p99_slo(0.95), latencies)
    assert r.verdict is Verdict.INCONCLUSIVE
    assert r.message.startswith("p99 5.0 ms steady window")
    assert (
        "is too close to call at 95% confidence: the interval straddles the SLO of 20.0 ms"
        in r.message
    )
    assert "95% CI [5.0, 30.0] ms" in r.message


def test_with_confidence_an_interval_wholly_beyond_the_limit_fails() -> None:
    r = run_judge(p99_slo(0.95), [5.0] * 570 + [30.0] * 30)
    assert r.verdict is Verdict.FAIL and "exceeds the SLO of 20.0 ms" in r.message


def test_with_confidence_too_few_samples_cannot_pass_an_upper_bound() -> None:
    r = run_judge(p99_slo(0.95), [5.0] * 150)  # 150 samples cannot bound a p99 from above
    assert r.verdict is Verdict.INCONCLUSIVE
    assert "95% CI [5.0, inf] ms" in r.message and "too few samples to bound it above" in r.message


def test_ratio_checks_carry_no_interval() -> None:
    slo = SLOSpec("error_ratio", "at_most", 0.0, origin="slos[0]")
    r = run_judge(slo, [5.0] * 600)
    assert r.interval is None and "CI" not in r.message


# -- the SLO key --------------------------------------------------------------------------------
def read(data: dict) -> tuple[SLOSpec | None, list[Problem]]:
    problems: list[Problem] = []
    return read_slo(data, "slos[0]", problems, "slos[0]"), problems


def test_confidence_round_trips() -> None:
    slo, problems = read({"metric": "p99", "at_most": 20, "confidence": 0.99})
    assert not problems and slo is not None and slo.confidence == 0.99
    assert read(slo.to_dict())[0] == slo


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        (
            {"metric": "p99", "at_most": 20, "confidence": 1.0},
            "slos[0].confidence",
            "above 0.5 and below 1",
        ),
        ({"metric": "p99", "at_most": 20, "confidence": "high"}, "slos[0].confidence", "above 0.5"),
        (
            {"metric": "error_ratio", "at_most": 0, "confidence": 0.95},
            "slos[0].confidence",
            "confidence only with a quantile metric: p50, p95, p99, p99.9",
        ),
        ({"metric": "max", "at_most": 20, "confidence": 0.95}, "slos[0].confidence", "quantile"),
    ],
)
def test_bad_confidence_names_the_field_and_what_is_allowed(
    data: dict, field: str, allowed: str
) -> None:
    slo, problems = read(data)
    assert slo is None
    assert [p.field for p in problems] == [field]
    assert allowed in problems[0].allowed
