"""Per-second series and spectra from a request log (pure, no files)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics.histogram import LatencyHistogram
from harness.model.requestlog import TIERS, empty_log, error_code
from reports.report.series import per_second, rank_quantiles, spectrum, spectrum_points, spectrum_x


def log_of(intended_ms, response_ms, tiers=None):
    rows = empty_log(len(intended_ms))
    rows["intended_ns"] = (np.asarray(intended_ms) * 1e6).astype(np.int64)
    rows["send_ns"] = rows["intended_ns"] + 100_000
    rows["done_ns"] = rows["intended_ns"] + (np.asarray(response_ms) * 1e6).astype(np.int64)
    rows["status"] = 200
    rows["tier"] = 0 if tiers is None else tiers
    return rows


def test_quantiles_per_second_use_the_nearest_rank_from_the_intended_send():
    # second 0: 1..100 ms; second 1: 10 x 5 ms
    rows = log_of(
        list(np.linspace(0, 990, 100)) + [1000 + 10 * i for i in range(10)],
        list(range(1, 101)) + [5] * 10,
    )
    s = per_second(rows)
    assert len(s) == 2
    assert s.quantiles[50.0][0] == 50.0 and s.quantiles[99.0][0] == 99.0
    assert s.quantiles[99.0][1] == 5.0
    assert s.count.tolist() == [100, 10]
    assert np.allclose(s.lag_p99_ms, 0.1)


def test_failures_count_as_infinitely_slow_and_unsent_rows_have_no_lag():
    rows = log_of([0, 100, 200, 300], [1, 2, 3, 4])
    rows["error_kind"][3] = error_code("not_sent")
    rows["send_ns"][3] = -1
    rows["done_ns"][3] = -1
    s = per_second(rows)
    assert math.isinf(s.quantiles[99.0][0])
    assert s.quantiles[50.0][0] == 2.0
    assert s.failures.tolist() == [1]
    assert s.within_sla.tolist() == [3]


def test_tier_counts_and_empty_seconds():
    tiers = np.array([TIERS.index("primary"), TIERS.index("replica"), TIERS.index("replica")])
    rows = log_of([0, 2500, 2600], [1, 1, 1], tiers)
    s = per_second(rows, end_s=4.0)
    assert len(s) == 4
    assert s.tiers["replica"].tolist() == [0, 0, 2, 0]
    assert s.tiers["primary"].tolist() == [1, 0, 0, 0]
    assert math.isnan(s.quantiles[50.0][1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0.01, 1e4)), min_size=1, max_size=80))
def test_rank_quantiles_match_a_sorted_reference(pairs):
    groups = np.array([g for g, _ in pairs])
    values = np.array([v for _, v in pairs])
    got = rank_quantiles(values, groups, 4, (50.0, 99.0))
    for g in range(4):
        mine = np.sort(values[groups == g])
        for q in (50.0, 99.0):
            if not mine.size:
                assert math.isnan(got[q][g])
                continue
            rank = max(1, int(q * mine.size / 100 + 0.5))
            assert got[q][g] == mine[min(rank, mine.size) - 1]


def test_spectrum_is_sampled_on_the_hdr_axis_and_ends_past_the_last_rank():
    h = LatencyHistogram.from_us(np.arange(1, 1001) * 10, failures=0)
    pts = spectrum(h)
    assert pts[0][0] == 0.0
    assert spectrum_x(pts[-1][0]) >= 3.0  # 1000 values: out to p99.9
    assert all(a[1] <= b[1] for a, b in zip(pts, pts[1:], strict=False))
    assert spectrum_points(0) == []
    assert abs(spectrum_x(99.0) - 2.0) < 1e-9


def test_spectrum_with_failures_reaches_inf():
    h = LatencyHistogram.from_us([1000] * 90, failures=10)
    assert math.isinf(spectrum(h)[-1][1])
