"""The repository's pytest run as a user starts it (a fresh ``python -m pytest``): the plugin is
loaded once, from the conftest and the entry point together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_repository_loads_the_plugin_once_from_its_conftest_and_entry_point():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--co",
            "-q",
            "-p",
            "no:cacheprovider",
            "scenarios/steady_state.yaml",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "scenarios/steady_state.yaml::steady_state" in out.stdout
