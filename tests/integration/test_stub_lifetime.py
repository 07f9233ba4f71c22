"""The calibration stub does not outlive whoever started it: with ``--parent-pid`` it stops
within a second of that process dying, even by SIGKILL (no teardown ran, nobody sent SIGTERM).

Real processes: a parent starts the stub (as the tests' fixtures do, with its own PID), prints
the stub's PID and is SIGKILLed; the stub, re-parented, must be gone within 5 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from children import exited_within

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

PARENT = """
import json, os, subprocess, sys, time
stub = subprocess.Popen(
    [sys.executable, "-m", "harness.load.stub", "--port", "0", "--parent-pid", str(os.getpid())],
    stdout=subprocess.PIPE, stderr=open(sys.argv[1], "w"), start_new_session=True,
)
ready = json.loads(stub.stdout.readline())
print(ready["pid"], flush=True)
time.sleep(60)
"""


def test_the_stub_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "stub.stderr"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(log)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent did not start a stub: {line!r}"
        pid = int(line)
    finally:
        parent.kill()
        parent.wait(timeout=10)
    if not exited_within(pid, 5.0):
        pytest.fail(f"stub {pid} outlived its parent by 5 s:\n{log.read_text()}")
    assert "parent process" in log.read_text()
