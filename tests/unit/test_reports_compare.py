"""The comparison statistics: Mann-Whitney U, bootstrap intervals, minimum effect, the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics.histogram import LatencyHistogram
from reports.compare.stats import (
    IMPROVEMENT,
    NO_CHANGE,
    NOT_TESTED,
    REGRESSION,
    bootstrap_median_diff,
    bootstrap_quantile_diff,
    judge,
    mann_whitney_u,
)
from reports.effect import MinEffect, parse_min_effect


def test_mann_whitney_known_example():
    # scipy.stats.mannwhitneyu documentation example: U = 17, exact two-sided p = 0.1111
    males = [19, 22, 16, 29, 24]
    females = [20, 11, 17, 12]
    u, p = mann_whitney_u(males, females, "two-sided")
    assert u == 17.0
    assert p == pytest.approx(1 / 9)
    assert mann_whitney_u(males, females, "greater")[1] == pytest.approx(1 / 18)


def test_three_runs_each_fully_separated_give_the_smallest_exact_p():
    u, p = mann_whitney_u([4, 5, 6], [1, 2, 3], "greater")
    assert (u, p) == (9.0, pytest.approx(0.05))  # 1 / C(6, 3)
    assert mann_whitney_u([4, 5, 6], [1, 2, 3], "less")[1] == pytest.approx(1.0)


def test_ties_and_infinities_are_ranked():
    u, p = mann_whitney_u([math.inf, 5, 5], [5, 1, 2], "greater")
    assert u == 8.0  # inf beats all 3; each 5 beats 1 and 2 and ties the other 5 (2.5)
    assert 0 < p < 1


def test_normal_approximation_is_close_to_exact():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 1, 9), rng.normal(0, 1, 8)
    exact = mann_whitney_u(a, b, "greater")[1]
    approx = mann_whitney_u(a, b, "greater", exact_limit=0)[1]
    assert abs(exact - approx) < 0.02


def test_mann_whitney_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        mann_whitney_u([], [1.0])
    with pytest.raises(ValueError, match="nan"):
        mann_whitney_u([math.nan], [1.0])
    with pytest.raises(ValueError, match="alternative"):
        mann_whitney_u([1.0], [2.0], "bigger")


def test_bootstrap_median_interval_covers_the_shift():
    lo, hi = bootstrap_median_diff([10, 10.2, 9.9, 10.1], [12, 12.1, 11.9, 12.2], seed=1)
    assert 1.5 < lo <= hi < 2.5
    assert all(math.isnan(v) for v in bootstrap_median_diff([], [1.0]))


def test_histogram_bootstrap_sees_a_30_percent_tail_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = LatencyHistogram.from_us(rng.lognormal(8, 0.5, 4000).astype(np.int64))
    same = LatencyHistogram.from_us(rng.lognormal(8, 0.5, 4000).astype(np.int64))
    slow = LatencyHistogram.from_us((rng.lognormal(8, 0.5, 4000) * 1.3).astype(np.int64))
    lo, hi = bootstrap_quantile_diff(base, slow, 99.0, seed=2)
    assert lo > 0
    lo, hi = bootstrap_quantile_diff(base, same, 99.0, seed=2)
    assert lo <= 0 <= hi


@pytest.mark.parametrize(
    ("base", "cur", "up"),
    [
        (10.0, 10.6, True),  # +6%, +0.6 ms: both margins met
        (10.0, 10.4, False),  # +4%: relative margin missed
        (2.0, 2.4, False),  # +20% but +0.4 ms: absolute margin missed
        (2.0, math.inf, True),  # failures reach the rank: always a regression
        (math.inf, math.inf, False),
        (math.nan, 3.0, False),
    ],
)
def test_min_effect_needs_both_margins(base, cur, up):
    assert MinEffect(0.05, 0.5).met(base, cur) is up


def test_min_effect_downwards_and_text():
    e = MinEffect(0.05, 0.5)
    assert e.met_down(10.0, 9.0) and not e.met(10.0, 9.0)
    assert e.describe() == "at least 5% and 0.5 ms"


def test_parse_min_effect():
    assert parse_min_effect("5%,0.5ms") == MinEffect(0.05, 0.5)
    assert parse_min_effect("10%") == MinEffect(0.10, 0.5)
    assert parse_min_effect("1ms") == MinEffect(0.05, 1.0)
    with pytest.raises(ValueError, match="neither N% nor Nms; example: 5%,0.5ms"):
        parse_min_effect("5 percent")


def test_judge_calls_a_significant_large_shift_a_regression():
    j = judge([10, 10.2, 9.9], [11.0, 11.3, 11.1])
    assert j.status == REGRESSION and j.regression
    assert j.p_value == pytest.approx(0.05)
    assert j.delta == pytest.approx(1.1)
    assert j.ci[0] > 0
    assert "Mann-Whitney" in j.method


def test_judge_ignores_a_significant_but_tiny_shift():
    j = judge([10.0, 10.01, 10.02], [10.2, 10.21, 10.22])  # +2%: below the minimum effect
    assert j.status == NO_CHANGE


def test_judge_ignores_a_large_but_noisy_shift():
    j = judge([10, 14, 9, 12], [11, 15, 10, 13.5])
    assert j.status == NO_CHANGE
    assert j.p_value > 0.05


def test_judge_reports_improvements():
    assert judge([11.0, 11.3, 11.1], [10, 10.2, 9.9]).status == IMPROVEMENT


def test_judge_with_one_run_shows_the_request_bootstrap_but_calls_nothing():
    rng = np.random.default_rng(0)
    h1 = LatencyHistogram.from_us(rng.lognormal(8, 0.5, 3000).astype(np.int64))
    h2 = LatencyHistogram.from_us((rng.lognormal(8, 0.5, 3000) * 1.4).astype(np.int64))
    values = ([h1.percentile(99)], [h2.percentile(99)])
    j = judge(*values, hists=(h1, h2), q=99.0)
    assert j.status == NOT_TESTED and j.ci[0] > 0
    assert "a call needs 3 runs a side" in j.method
    assert "machine noise between runs not covered" in j.method
    # a caller who accepts that lowers min_runs on purpose
    assert judge(*values, hists=(h1, h2), q=99.0, min_runs=1).status == REGRESSION
    j = judge([1.0], [2.0])
    assert j.status == NOT_TESTED and "too few runs (1 vs 1; need 3)" in j.method
