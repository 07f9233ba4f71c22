"""``python -m system_under_test train`` as a real command: it reuses trained artifacts and prints
the quality table."""

from __future__ import annotations

import subprocess
import sys

PRESET = "tiny"


def test_cli_reuses_and_prints_the_table(tiny_artifacts):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "system_under_test",
            "train",
            "--preset",
            PRESET,
            "--artifacts",
            str(tiny_artifacts.parent),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "reusing" in result.stdout
    for name in ("full", "distilled", "popularity"):
        assert name in result.stdout
