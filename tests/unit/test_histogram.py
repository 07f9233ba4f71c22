"""LatencyHistogram: exact merges, no silent drops above the range, error-inclusive percentiles,
text encoding across processes, agreement with plain HdrHistogram and with exact quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics.histogram import HIGHEST_US, LatencyHistogram

QS = (50, 90, 95, 99, 99.9, 100)
values = st.lists(
    st.one_of(st.integers(0, 5_000), st.integers(0, HIGHEST_US + 10**6)), max_size=300
)


def hist(vals, failures=0):
    h = LatencyHistogram(failures=failures)
    for v in vals:
        h.record_us(v)
    return h


@given(values, values, st.integers(0, 20), st.integers(0, 20))
@settings(max_examples=150, deadline=None)
def test_merged_percentiles_equal_those_of_the_union(a, b, fa, fb):
    merged = hist(a, fa).merge(hist(b, fb))
    union = hist(a + b, fa + fb)
    assert merged == union
    assert merged.count == len(a) + len(b) and merged.failures == fa + fb
    for q in QS:
        assert _same(merged.percentile(q), union.percentile(q))
        assert _same(merged.percentile_with_errors(q), union.percentile_with_errors(q))
    assert LatencyHistogram.merge_all([hist(a, fa), hist(b, fb)]) == union


@given(values, st.integers(0, 5))
@settings(max_examples=150, deadline=None)
def test_vectorised_recording_equals_one_by_one(vals, failures):
    assert LatencyHistogram.from_us(np.array(vals, dtype=np.int64), failures) == hist(
        vals, failures
    )


powers_of_two = st.integers(0, 31).flatmap(lambda k: st.sampled_from([(1 << k) - 1, 1 << k]))


@given(st.lists(st.one_of(st.integers(0, 5_000), powers_of_two, st.integers(0, HIGHEST_US))))
@settings(max_examples=100, deadline=None)
def test_vectorised_counts_min_and_max_are_plain_hdrhistograms(vals):
    """from_us adds straight into the counts array: the same counts, total, min and max as the
    package recording each value, at every bucket edge."""
    ref = HdrHistogram(1, HIGHEST_US, 3)
    for v in vals:
        assert ref.record_value(v)
    got = LatencyHistogram.from_us(np.array(vals, dtype=np.int64))._hdr
    assert np.array_equal(np.ctypeslib.as_array(got.counts), np.ctypeslib.as_array(ref.counts))
    assert got.get_total_count() == ref.get_total_count()
    if vals:
        assert (got.get_min_value(), got.get_max_value()) == (
            ref.get_min_value(),
            ref.get_max_value(),
        )


@given(values, st.integers(0, 30))
@settings(max_examples=100, deadline=None)
def test_encode_decode_round_trip(vals, failures):
    h = hist(vals, failures)
    back = LatencyHistogram.decode(h.encode())
    assert back == h and back.overflow == h.overflow and back.failures == failures
    assert LatencyHistogram.from_dict(h.to_dict()) == h
    for q in QS:
        assert _same(back.percentile(q), h.percentile(q))


@given(st.lists(st.integers(0, HIGHEST_US), min_size=1, max_size=300))
@settings(max_examples=100, deadline=None)
def test_agrees_with_plain_hdrhistogram(vals):
    ref = HdrHistogram(1, HIGHEST_US, 3)
    for v in vals:
        assert ref.record_value(v)
    h = hist(vals)
    at = ref.get_percentile_to_value_dict(list(QS))  # one pass, the same rule per percentile
    for q in QS:
        assert h.percentile(q) == at[q] / 1000.0
    assert h.max_ms == ref.get_max_value() / 1000.0


def test_three_significant_figures_against_exact_quantiles():
    rng = np.random.default_rng(5)
    us = rng.lognormal(8, 1.5, 50_000).astype(np.int64)
    h = LatencyHistogram.from_us(us)
    ordered = np.sort(us)
    for q in (50, 95, 99, 99.9):
        rank = max(1, int(q * us.size / 100 + 0.5))  # HdrHistogram's rank rule
        exact = ordered[rank - 1] / 1000.0
        # the upper edge of the value's bucket: at most 1/1024 (3 significant figures) above
        assert exact <= h.percentile(q) <= exact * (1 + 1 / 1024) + 0.001


def test_overflow_is_counted_never_dropped():
    h = LatencyHistogram()
    assert h.record_us(1_000)
    assert not h.record_us(HIGHEST_US + 1)
    assert (h.count, h.overflow) == (2, 1)
    assert h.percentile(50) == 1.0 and h.percentile(75) == math.inf  # rank 2 of 2
    assert h.max_ms == math.inf
    assert LatencyHistogram.from_us([5, HIGHEST_US * 2]).overflow == 1


def test_error_inclusive_percentiles_count_failures_as_infinitely_slow():
    h = LatencyHistogram.from_us([1_000] * 98, failures=2)
    assert h.percentile(99) == 1.0  # success-only
    assert h.percentile_with_errors(98) == 1.0
    assert h.percentile_with_errors(99) == math.inf
    assert h.max_with_errors_ms() == math.inf and h.max_ms == 1.0
    no_failures = LatencyHistogram.from_us([1_000, 2_000])
    assert no_failures.percentile_with_errors(99) == no_failures.percentile(99)
    only_failures = LatencyHistogram(failures=3)
    assert math.isnan(only_failures.percentile(50))
    assert only_failures.percentile_with_errors(50) == math.inf


def test_empty_and_invalid():
    h = LatencyHistogram()
    assert math.isnan(h.percentile(99)) and math.isnan(h.max_ms) and h.total == 0
    with pytest.raises(ValueError):
        h.record_us(-1)
    with pytest.raises(ValueError):
        h.percentile(0)
    with pytest.raises(ValueError):
        LatencyHistogram.decode("HISTFAAAA")


def test_merge_does_not_change_its_inputs():
    a, b = LatencyHistogram.from_us([1, 2]), LatencyHistogram.from_us([3])
    a + b
    assert (a.count, b.count) == (2, 1)


def _same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or x == y
