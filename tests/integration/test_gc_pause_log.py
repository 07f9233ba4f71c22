"""The recommender's garbage-collection pause log, in a child process: the callback stays
installed in the process that froze its heap."""

from __future__ import annotations

import subprocess
import sys


def test_a_long_garbage_collection_pause_is_logged():
    """After freeze_heap, a collection pausing the process past GC_PAUSE_LOG_S is logged (run in
    a child: the callback stays installed in the process that froze its heap)."""

    code = (
        "import gc, logging, sys\n"
        "logging.basicConfig(stream=sys.stderr, level=logging.INFO)\n"
        "from system_under_test.runtime import freeze_heap\n"
        "freeze_heap()\n"
        "junk = [[i] for i in range(1_000_000)]\n"  # a million live containers to traverse
        "gc.collect()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "garbage collection of generation 2 paused the process" in out.stderr
