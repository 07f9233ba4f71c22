"""Standard HdrHistogram files (harness/metrics/intervals.py): the interval histograms add up to
each window's histogram exactly, and the hdrhistogram package's own log reader gets them back."""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics.intervals import (
    TAGS,
    bounds_ns,
    hdr_files,
    hgrm_name,
    intervals,
    merged,
    new_hdr,
    window_cuts,
)
from harness.metrics.stats import window_stats
from harness.metrics.windows import Window
from harness.model.requestlog import empty_log, error_code
from reports.synthetic import Synth, request_log


def hdr_counts(h: HdrHistogram) -> tuple[int, list[int]]:
    # One pass over the counts for all five (get_value_at_percentile walks them once per call);
    # an empty histogram has no entry, where get_value_at_percentile says 0.
    at = h.get_percentile_to_value_dict([1, 50, 90, 99, 100])
    return h.get_total_count(), [at.get(q, 0) for q in (1, 50, 90, 99, 100)]


def stats_hdr(hist) -> tuple[int, list[int]]:
    """The in-range part of a recchaos LatencyHistogram, as plain HdrHistogram figures."""
    h = new_hdr()
    h.decode_and_add(hist.encode().split(" ")[3])
    return hdr_counts(h)


@st.composite
def logs(draw) -> tuple[np.ndarray, list[Window]]:
    n = draw(st.integers(0, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = empty_log(n)
    rows["id"] = np.arange(n)
    rows["intended_ns"] = np.sort(rng.integers(0, 6_000_000_000, n))
    sent = rng.random(n) > 0.05
    rows["send_ns"] = np.where(sent, rows["intended_ns"] + rng.integers(0, 3_000_000, n), -1)
    ok = sent & (rng.random(n) > 0.1)
    rows["done_ns"] = np.where(ok, rows["send_ns"] + rng.integers(0, 90_000_000, n), -1)
    rows["status"] = np.where(ok, 200, 0)
    rows["tier"] = np.where(ok, 0, -1)
    rows["error_kind"] = np.where(ok, 0, error_code("timeout"))
    cuts = sorted(draw(st.lists(st.floats(0.0, 7.0), min_size=2, max_size=6, unique=True)))
    windows = [
        Window(f"w{i}", a, b, "steady")
        for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))
    ]
    return rows, windows


@settings(max_examples=25, deadline=None)
@given(data=logs())
def test_intervals_inside_a_window_add_up_to_its_histograms(data):
    rows, windows = data
    parts = intervals(rows, window_cuts(windows))
    for w in windows:
        stats = window_stats(rows, w, 20.0)
        for tag, hist in (
            ("response", stats.response_hist),
            ("service", stats.service_hist),
            ("lag", stats.lag_hist),
        ):
            assert hdr_counts(merged(parts, tag, w.start_s, w.end_s)) == stats_hdr(hist), (w, tag)
    # and nothing is lost or counted twice over the whole log
    answered = int((rows["status"] == 200).sum())
    assert merged(parts, "response").get_total_count() == answered


def test_bounds_are_whole_seconds_plus_the_cuts():
    rows = request_log(Synth(duration_s=3.0, rate=10))
    assert bounds_ns(rows, [1.25, 2.0]) == [0, 1_000_000_000, 1_250_000_000, 2_000_000_000, 3e9]


def test_the_package_log_reader_reads_every_interval_and_tag(tmp_path):
    s = Synth(duration_s=6.0, fault_at_s=2.0, fault_s=2.0, failures=5)
    rows = request_log(s)
    windows = [Window("before", 0.5, 2.0, "before"), Window("during", 2.0, 4.0, "during")]
    origin = 1796543244.363614  # a wall time that does not print round
    files = hdr_files(rows, windows, origin_wall=origin)
    path = tmp_path / "latency.hlog"
    path.write_text(files["latency.hlog"])
    reader = HistogramLogReader(str(path), new_hdr())
    got: dict[str, list[HdrHistogram]] = {t: [] for t in TAGS}
    while (h := reader.get_next_interval_histogram()) is not None:
        got[h.get_tag()].append(h)
    parts = intervals(rows, window_cuts(windows))
    assert [len(v) for v in got.values()] == [len(parts)] * 3
    assert reader.get_start_time_sec() == origin
    first = got["response"][0]
    assert first.get_start_time_stamp() == pytest.approx(origin * 1000)
    for w in windows:
        stats = window_stats(rows, w, s.sla_ms)
        h = new_hdr()
        for part in got["response"]:
            mid_s = (part.get_start_time_stamp() + part.get_end_time_stamp()) / 2000 - origin
            if w.start_s <= mid_s < w.end_s:
                h.add(part)
        assert hdr_counts(h) == stats_hdr(stats.response_hist)
        assert h.get_value_at_percentile(99) / 1000 == stats.latency.p99


def test_hgrm_per_window_is_the_percentile_distribution(tmp_path):
    rows = request_log(Synth(duration_s=4.0, fault_at_s=1.0, fault_s=2.0))
    windows = [Window("during kill(shard-0-primary)", 1.0, 3.0, "during")]
    files = hdr_files(rows, windows, 1.8e9)
    text = files["hgrm/00-during-kill-shard-0-primary.hgrm"]
    assert text.split("\n", 1)[0].split() == [
        "Value",
        "Percentile",
        "TotalCount",
        "1/(1-Percentile)",
    ]
    stats = window_stats(rows, windows[0], 20.0)
    assert f"TotalCount     = {stats.successes:12.3f}" in text
    assert f"#[Max     = {stats.latency.max:12.3f}" in text
    mean = float(text.split("Mean    =")[1].split(",")[0])
    sd = float(text.split("StdDeviation   =")[1].split("]")[0])
    assert 0 < sd < mean * 3  # in ms like the mean (the package prints microseconds)


def test_hgrm_names_are_ordered_and_safe():
    assert (
        hgrm_name(3, "after kill(shard-1-primary) #2")
        == "hgrm/03-after-kill-shard-1-primary-2.hgrm"
    )
    assert hgrm_name(0, "***") == "hgrm/00-window.hgrm"
