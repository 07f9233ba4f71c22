"""A run's latencies in HdrHistogram's standard file formats, so any HdrHistogram tool opens them.

* ``latency.hlog``: a histogram log written with the ``hdrhistogram`` package's log writer. One
  interval histogram per second of *intended* send time and per tag (``response``: intended send
  to answer; ``service``: actual send to answer; ``lag``: intended to actual send), values in
  microseconds. Intervals are also cut at every window boundary, so merging the intervals that
  lie inside a window gives exactly that window's histogram in ``run.json``.
* one ``.hgrm`` percentile distribution per window (response time, in milliseconds), as
  ``HdrHistogram.outputPercentileDistribution`` writes it.

HdrHistogram has no "infinitely slow": these files hold answered requests only (failures and
requests never sent are counted in ``run.json``, whose error-inclusive percentiles treat them as
infinite). Pure: request log and windows in, file texts out; the runner writes them.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogWriter

from harness.metrics.histogram import HIGHEST_US, LOWEST_US, SIGNIFICANT_FIGURES
from harness.metrics.windows import Window
from harness.model.requestlog import succeeded

TAGS = ("response", "service", "lag")
HLOG = "latency.hlog"
HGRM_DIR = "hgrm"
NS_PER_S = 1_000_000_000
MS_PER_US = 1000.0


@dataclass(frozen=True)
class Interval:
    """Requests intended in ``[start_ns, end_ns)`` since the load origin, one histogram per tag."""

    start_ns: int
    end_ns: int
    histograms: dict[str, HdrHistogram]


def new_hdr() -> HdrHistogram:
    """An empty histogram with the range and precision every recchaos histogram has."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def bounds_ns(requests: np.ndarray, cuts_s: Sequence[float], bin_s: float = 1.0) -> list[int]:
    """Interval edges: every ``bin_s`` from 0 past the last intended send, plus each cut.

    Cuts are rounded to nanoseconds the way windows select their requests
    (:func:`harness.metrics.stats.in_window`), so a window is a union of whole intervals.
    """
    step = round(bin_s * NS_PER_S)
    last = int(requests["intended_ns"].max()) if requests.size else 0
    top = (last // step + 1) * step
    edges = set(range(0, top + 1, step))
    edges.update(round(c * NS_PER_S) for c in cuts_s if 0 < round(c * NS_PER_S) < top)
    return sorted(edges)


def _us(ns: np.ndarray) -> np.ndarray:
    return (np.maximum(ns, 0) + 500) // 1000  # as harness.metrics.stats rounds them


def _tag_values(rows: np.ndarray) -> dict[str, np.ndarray]:
    ok = succeeded(rows)
    sent = rows["send_ns"] >= 0
    return {
        "response": _us(rows["done_ns"][ok] - rows["intended_ns"][ok]),
        "service": _us(rows["done_ns"][ok] - rows["send_ns"][ok]),
        "lag": _us(rows["send_ns"][sent] - rows["intended_ns"][sent]),
    }


def _hdr_of(values_us: np.ndarray) -> HdrHistogram:
    h = new_hdr()
    values, counts = np.unique(values_us, return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        h.record_value(v, c)  # above an hour: not trackable, left out (run.json counts it)
    return h


def intervals(
    requests: np.ndarray, cuts_s: Sequence[float] = (), bin_s: float = 1.0
) -> list[Interval]:
    """The request log cut into intervals of intended send time (see :func:`bounds_ns`)."""
    edges = bounds_ns(requests, cuts_s, bin_s)
    order = np.argsort(requests["intended_ns"], kind="stable")
    rows = requests[order]
    at = np.searchsorted(rows["intended_ns"], edges, side="left")
    out = []
    for k in range(len(edges) - 1):
        values = _tag_values(rows[at[k] : at[k + 1]])
        out.append(Interval(edges[k], edges[k + 1], {tag: _hdr_of(values[tag]) for tag in TAGS}))
    return out


def window_cuts(windows: Sequence[Window]) -> list[float]:
    return sorted({t for w in windows for t in (w.start_s, w.end_s)})


def hlog_text(parts: Sequence[Interval], origin_wall: float, comment: str = "") -> str:
    """A histogram log (format 1.2) of ``parts``; timestamps in seconds since ``origin_wall``."""
    out = io.StringIO()
    writer = HistogramLogWriter(out)
    writer.output_log_format_version()
    # StartTime and BaseTime must print alike: the reader drops an interval whose offset from
    # StartTime is below 0, which a rounded StartTime makes of the first one. (The package's
    # output_start_time also fails: it calls datetime.iso_format.)
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(origin_wall))
    writer.output_comment(f"[StartTime: {origin_wall:f} (seconds since epoch), {when}Z]")
    writer.output_comment(f"[BaseTime: {origin_wall:f} (seconds since epoch)]")
    if comment:
        writer.output_comment(comment)
    writer.output_legend()
    for part in parts:
        start_s, end_s = part.start_ns / NS_PER_S, part.end_ns / NS_PER_S
        for tag in TAGS:
            # The package's writer (0.10.8) takes no tag; its reader reads the Java format's
            # "Tag=NAME," line prefix, written here just before the interval line.
            out.write(f"Tag={tag},")
            writer.output_interval_histogram(part.histograms[tag], start_s, end_s, MS_PER_US)
    return out.getvalue()


def hgrm_text(h: HdrHistogram) -> str:
    """The percentile distribution of ``h`` (values in ms), HdrHistogram's ``.hgrm`` text."""
    out = io.BytesIO()
    h.output_percentile_distribution(out, MS_PER_US)
    text = out.getvalue().decode("ascii")
    # The package prints the standard deviation unscaled (microseconds); the format's is in
    # the output unit, like the mean beside it.
    return re.sub(
        r"StdDeviation   = *[0-9.]+",
        lambda _: f"StdDeviation   = {h.get_stddev() / MS_PER_US:12.3f}",
        text,
    )


def hgrm_name(index: int, window_name: str) -> str:
    """``hgrm/02-during-kill-shard-0-primary.hgrm``: ordered like the record's windows."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", window_name).strip("-").lower() or "window"
    return f"{HGRM_DIR}/{index:02d}-{slug[:80]}.hgrm"


COMMENT = (
    "[recchaos: intervals of intended send time, 1 s and cut at window boundaries; tags "
    "response, service, lag; values in microseconds, Interval_Max in milliseconds; "
    "answered requests only]"
)


def merged(
    parts: Sequence[Interval], tag: str, start_s: float = 0.0, end_s: float = math.inf
) -> HdrHistogram:
    """The ``tag`` histograms of the intervals lying inside ``[start_s, end_s)``, added up."""
    h = new_hdr()
    lo = round(start_s * NS_PER_S)
    hi = math.inf if math.isinf(end_s) else round(end_s * NS_PER_S)
    for p in parts:
        if p.start_ns >= lo and p.end_ns <= hi:
            h.add(p.histograms[tag])
    return h


def hdr_files(
    requests: np.ndarray, windows: Sequence[Window], origin_wall: float
) -> dict[str, str]:
    """Every standard HdrHistogram file of a run: relative path -> text. Each window's ``.hgrm``
    comes from the log's own intervals, so the two files cannot disagree."""
    parts = intervals(requests, window_cuts(windows))
    files = {HLOG: hlog_text(parts, origin_wall, COMMENT)}
    for i, w in enumerate(windows):
        window = merged(parts, "response", w.start_s, w.end_s)
        files[hgrm_name(i, w.name)] = hgrm_text(window)
    return files
