"""The real ``recchaos`` console entry point in a fresh interpreter: exit codes and messages of
``scenarios validate`` as a user sees them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scenarios").glob("*.yaml"))

BAD = """\
seed: 7
target: {kind: recommender, shards: 2}
load:
  - {name: main, rate: 100, duration_s: 30}
faults:
  - {kind: kill, target: shard-1-primary, at_s: 10, duration_s: 5}
  - {kind: freeze, target: shard-0-primary, at_s: 12, duration_s: 5}
  - {kind: kill, target: shard-0-replica, at_s: 14, duration_s: -2}
slos:
  - {metric: p99, at_most: 20, windws: [during]}
"""


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


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
