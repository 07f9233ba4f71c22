"""Where a run came from: commit, versions, host, and the exact command that replays it."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("recchaos", "locust", "hdrhistogram", "numpy", "torch", "msgpack", "redis")


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=cwd or Path(__file__).resolve().parents[2],
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        cwd=cwd or Path(__file__).resolve().parents[2],
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def host() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def replay_command(
    scenario_path: str,
    seed: int,
    profile: str | None = None,
    rate: float | None = None,
    duration: float | None = None,
    sla_ms: float | None = None,
    backend: str | None = None,
) -> str:
    """The command line that runs the same scenario with the same seed again."""
    parts = ["recchaos", "run", scenario_path, "--seed", str(seed)]
    if profile:
        parts += ["--profile", profile]
    if rate is not None:
        parts += ["--rate", f"{rate:g}"]
    if duration is not None:
        parts += ["--duration", f"{duration:g}"]
    if sla_ms is not None:
        parts += ["--sla-ms", f"{sla_ms:g}"]
    if backend is not None:
        parts += ["--backend", backend]
    return shlex.join(parts)


def pytest_replay(
    node: str, seed: int, profile: str | None = None, overrides: dict[str, str] | None = None
) -> str:
    """The pytest command line that reruns one test or scenario item with the same seed;
    ``overrides`` maps further pytest flags (``--sla-ms``) to their values."""
    parts = ["pytest", node, "--chaos-seed", str(seed)]
    if profile:
        parts += ["--chaos-profile", profile]
    for flag, value in (overrides or {}).items():
        parts += [flag, value]
    return shlex.join(parts)


def invoked_as() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
