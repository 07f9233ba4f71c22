"""Installing recchaos into a user's environment does not fight the user's own pins.

A fresh virtual environment, a user's constraints pinning numpy and redis to versions other than
constraints.txt's, and pip's resolver installing recchaos from a copy of this source tree: it
must resolve, keep the user's versions, pass ``pip check``, and work (``recchaos --version``,
validating every shipped scenario, a seeded request schedule and a histogram, which use numpy).
With exact pins in pyproject.toml (as before the ranges) this resolution is impossible.

Slow (a minute or two: pip fetches what its cache lacks); skipped with the reason when the
package index cannot be reached, so it is safe offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
USER_PINS = {"numpy": "1.26.4", "redis": "5.2.1"}  # both inside pyproject.toml's ranges
SOURCE = ("pyproject.toml", "README.md", "harness", "system_under_test", "reports")
OFFLINE = (  # what pip's retry warning says when the index is out of reach
    "NewConnectionError",
    "NameResolutionError",
    "ConnectTimeoutError",
    "Could not fetch URL",
)
INSTALL_TIMEOUT_S = 900

CHECK = """
import numpy, redis
from harness.metrics.histogram import LatencyHistogram
from harness.model.load import LoadPhase, RequestMix
from harness.model.schedule import request_schedule
print(numpy.__version__, redis.__version__)
sched = request_schedule((LoadPhase("main", 200.0, 2.0, RequestMix(users=100)),), seed=7)
assert len(sched.intended_ns) == 400, len(sched.intended_ns)
h = LatencyHistogram()
for us in range(1, 1001):
    h.record_us(us)
assert 495 <= h.percentile(50) * 1000 <= 505, h.percentile(50)
"""


def pinned(constraints: Path) -> dict[str, str]:
    pins = {}
    for line in constraints.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def run(argv: list[str], cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def skip_if_offline(pip: list[str], tmp_path: Path) -> None:
    """Skip, with pip's words, when the index cannot be reached: one short probe (one retry, whose
    warning names the connection error), not a resolver run retrying every package."""
    probe = [*pip, "download", "--no-deps", "--retries", "1", "--timeout", "10", "-d"]
    got = run([*probe, str(tmp_path / "probe"), f"numpy=={USER_PINS['numpy']}"], tmp_path)
    if got.returncode != 0 and any(sign in got.stdout + got.stderr for sign in OFFLINE):
        pytest.skip(f"the package index cannot be reached:\n{got.stderr[-600:]}")


def test_recchaos_installs_beside_a_users_other_numpy_and_redis(tmp_path):
    ours = pinned(REPO / "constraints.txt")
    for name, version in USER_PINS.items():
        assert ours[name] != version, f"{name}: pick a user pin other than constraints.txt's"
    source = tmp_path / "src"  # a copy: building in the tree would write build/ into it
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCE:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=skip)
        else:
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    user = tmp_path / "user-constraints.txt"
    user.write_text("".join(f"{n}=={v}\n" for n, v in USER_PINS.items()))
    pip = [str(venv / "bin" / "python"), "-m", "pip"]

    skip_if_offline(pip, tmp_path)
    installed = run([*pip, "install", "-c", str(user), str(source)], tmp_path, INSTALL_TIMEOUT_S)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    checked = run([*pip, "check"], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    python = str(venv / "bin" / "python")
    works = run([python, "-c", CHECK], tmp_path)
    assert works.returncode == 0, works.stdout + works.stderr
    assert works.stdout.split() == [USER_PINS["numpy"], USER_PINS["redis"]]
    version = run([str(venv / "bin" / "recchaos"), "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("recchaos "), version
    scenarios = sorted(str(p) for p in (REPO / "scenarios").glob("*.yaml"))
    valid = run([str(venv / "bin" / "recchaos"), "scenarios", "validate", *scenarios], tmp_path)
    assert valid.returncode == 0, valid.stdout[-2000:] + valid.stderr[-2000:]
