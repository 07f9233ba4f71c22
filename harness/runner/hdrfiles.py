"""Writes a run's standard HdrHistogram files (``latency.hlog``, ``hgrm/*.hgrm``) into its run
directory; what they hold is computed by :mod:`harness.metrics.intervals`."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.metrics.intervals import hdr_files
from harness.metrics.stats import WindowStats


def write_hdr_files(
    run_dir: Path, log: np.ndarray, windows: Sequence[WindowStats], origin_mono_ns: int
) -> list[Path]:
    """Write every file (each by atomic replace); returns their paths."""
    # The log's times are monotonic ns since the origin; the hlog states the origin's wall time.
    origin_wall = time.time() - (time.monotonic_ns() - origin_mono_ns) / 1e9
    written = []
    for name, text in hdr_files(log, [w.window for w in windows], origin_wall).items():
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="ascii")
        os.replace(tmp, path)
        written.append(path)
    return written
