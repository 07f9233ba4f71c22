"""The real ``recchaos`` console entry point in a fresh interpreter: exit codes and messages of
``scenarios validate`` as a user sees them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scenarios").glob("*.yaml"))


@pytest.fixture
def bad_file():
    """A scenario with two problems (a negative duration, a misspelt key)."""
    return ROOT / "tests" / "data" / "bad_scenario.yaml"


def run_cli(*args, timeout=60):
    """The real console entry point in a fresh interpreter; shows its output on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def test_real_cli_subprocess(bad_file):
    proc = run_cli("scenarios", "validate", str(bad_file))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{bad_file}: 2 problems" in proc.stderr
    proc = run_cli("scenarios", "validate", *EXAMPLES)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
