"""Fixtures shared by integration test modules."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.process import ManagedProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stub_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh load-test stub server (``harness.load.stub``), stopped afterwards."""
    argv = [sys.executable, "-m", "harness.load.stub", "--port", "0", "--parent-pid",
            str(os.getpid())]  # fmt: skip
    with ManagedProcess(argv, tmp_path / "stub.log", name="stub", cwd=REPO, pipes=True) as proc:
        assert proc.popen is not None and proc.popen.stdout is not None
        yield f"http://127.0.0.1:{json.loads(proc.popen.stdout.readline())['port']}"
