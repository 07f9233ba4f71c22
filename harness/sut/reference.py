"""Asking the bundled recommender for its reference answers and its sizes, by command.

The harness never imports ``system_under_test``: :func:`recommender_reference` runs
``python -m system_under_test reference`` (the file it writes is read by
:mod:`harness.model.reference`), and :func:`describe_preset` runs it with ``--describe`` for the
population and catalogue of a preset (no torch, well under a second). References are cached by
model version, k and user set under ``$RECCHAOS_REFERENCES`` (default
``~/.cache/recchaos/references``), written there atomically by the command, so runs with the
same mix compute theirs once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.model.errors import HarnessError

ENV_CACHE = "RECCHAOS_REFERENCES"
DEFAULT_CACHE = Path("~/.cache/recchaos/references")
REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_TIMEOUT_S = 900.0  # the default preset's 100,000 users on a busy 2-core machine
DESCRIBE_TIMEOUT_S = 60.0


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "system_under_test", "reference", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def describe_preset(preset: str) -> dict[str, Any]:
    """``{"population", "catalogue", "model_version", "k_max", "preset"}`` of a preset;
    HarnessError with the command's output when it cannot say."""
    try:
        done = subprocess.run(
            _command(["--preset", preset, "--describe"]),
            capture_output=True,
            text=True,
            timeout=DESCRIBE_TIMEOUT_S,
            cwd=REPO_ROOT,
            env=_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"cannot ask the recommender about preset {preset!r}: {exc}") from None
    if done.returncode != 0:
        raise HarnessError(
            f"the recommender cannot describe preset {preset!r} (exit {done.returncode}): "
            f"{done.stderr.strip()[-500:]}"
        )
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def cache_key(model_version: str, k: int, users: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(users, dtype=np.int64).tobytes()).hexdigest()
    return f"{model_version}-k{k}-{users.size}u-{digest[:16]}.npz"


def recommender_reference(
    preset: str,
    model_version: str,
    users: np.ndarray,
    k: int,
    out: Path,
    log: Callable[[str], None] = print,
) -> Path:
    """The reference for ``users`` (distinct, ascending) at ``k`` copied to ``out``, from the
    cache or computed by the recommender's ``reference`` command (HarnessError with its output
    when that fails)."""
    cached = cache_dir() / cache_key(model_version, k, users)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        _compute(preset, users, k, cached, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, out)
    return out


def _compute(
    preset: str, users: np.ndarray, k: int, dest: Path, log: Callable[[str], None]
) -> None:
    with tempfile.TemporaryDirectory(prefix="reference-", dir=dest.parent) as tmp:
        ids = Path(tmp) / "users.npy"
        np.save(ids, np.ascontiguousarray(users, dtype=np.int64))
        args = ["--preset", preset, "--k", str(k), "--users", f"@{ids}", "--out", str(dest)]
        log(f"computing the reference answers of {users.size} users (k={k}) for {preset}")
        try:
            done = subprocess.run(
                _command(args),
                capture_output=True,
                text=True,
                timeout=REFERENCE_TIMEOUT_S,
                cwd=REPO_ROOT,
                env=_env(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HarnessError(f"the reference command failed: {exc}") from None
    if done.returncode != 0 or not dest.is_file():
        raise HarnessError(
            f"`recchaos sut reference {' '.join(args)}` exited {done.returncode}:\n"
            + "\n".join(f"    | {line}" for line in (done.stderr or done.stdout).splitlines()[-20:])
        )
    for line in done.stdout.splitlines():
        log(f"  {line}")
