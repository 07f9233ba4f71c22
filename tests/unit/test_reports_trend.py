"""Change points on per-run p99 (binary segmentation) and the trend rendering."""

from __future__ import annotations

import numpy as np

from reports.effect import MinEffect
from reports.history.changepoints import change_points
from reports.history.store import RunEntry, WindowEntry
from reports.history.trend import render_html, render_markdown, trend_lines


def noisy(level, n, seed, spread=0.05):
    return list(level * np.random.default_rng(seed).lognormal(0, spread, n))


def test_a_step_is_found_where_it_happens():
    values = noisy(10, 8, 1) + noisy(14, 8, 2)
    [cp] = change_points(values)
    assert cp.index == 8
    assert cp.direction == "up"
    assert 9 < cp.before < 11 and 13 < cp.after < 15
    assert "up" in cp.describe() and "%" in cp.describe()


def test_noise_and_a_single_slow_run_are_not_change_points():
    assert change_points(noisy(10, 20, 3)) == []
    values = noisy(10, 20, 4)
    values[10] = 40.0
    assert change_points(values) == []


def test_two_steps_and_a_step_down():
    values = noisy(10, 6, 5) + noisy(16, 6, 6) + noisy(8, 6, 7)
    cps = change_points(values)
    assert [c.index for c in cps] == [6, 12]
    assert [c.direction for c in cps] == ["up", "down"]


def test_small_steps_are_below_the_minimum_effect():
    values = noisy(10, 10, 8, 0.001) + noisy(10.3, 10, 9, 0.001)  # +3%: significant but small
    assert change_points(values) == []
    assert len(change_points(values, min_effect=MinEffect(0.01, 0.1))) == 1


def test_too_short_series_and_infinities():
    assert change_points([1.0, 2.0, 3.0]) == []
    values = noisy(10, 6, 10) + [float("inf")] * 6
    [cp] = change_points(values)  # failures reaching p99 (inf) are capped at 4x the largest
    assert cp.index == 6 and cp.after > 30


def entry(i, p99):
    e = RunEntry(
        i,
        f"/runs/r{i}",
        f"b{i}",
        "kill",
        None,
        i,
        None,
        1.8e9 + i * 86400,
        "complete",
        "PASS",
        False,
        1.8e9 + i * 86400,
    )
    e.windows["during kill"] = WindowEntry(
        "during kill", "during", p99 / 3, p99 / 2, p99, 500, None
    )
    return e


def test_trend_lines_and_rendering():
    values = noisy(10, 6, 11) + noisy(15, 6, 12)
    lines = trend_lines([entry(i, v) for i, v in enumerate(values)])
    [line] = lines
    assert line.scenario == "kill" and len(line.changes) == 1
    html = render_html(lines, "h.sqlite")
    assert "<svg" in html and "change point, during kill" in html
    assert "at run 7" in render_markdown(lines)
