"""Pure computation over recorded requests: histograms, phase windows, window statistics,
failover and recovery times. numpy and hdrhistogram only; nothing here reads a clock."""

from harness.metrics.failover import Failover, Recovery, time_to_failover, time_to_recover
from harness.metrics.histogram import LatencyHistogram
from harness.metrics.stats import Percentiles, WindowStats, in_window, window_stats
from harness.metrics.windows import Window, windows_for

__all__ = [
    "Failover",
    "LatencyHistogram",
    "Percentiles",
    "Recovery",
    "Window",
    "WindowStats",
    "in_window",
    "time_to_failover",
    "time_to_recover",
    "window_stats",
    "windows_for",
]
