"""``python -m system_under_test up`` and ``down`` with real processes: ``up`` owns its children
until the cluster is up (SIGTERM, SIGINT, SIGHUP stop every component started so far; exit
128 + the signal), every child inherits ``up``'s environment (how a harness finds them if ``up``
dies), and ``down`` stops what the manifest names by PID and start time, leaving nothing."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from harness.process import ManagedProcess
from harness.process.identity import tagged_processes

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TAG = "RECCHAOS_TEST_LAUNCHER_TAG"


def up_command(manifest: Path, artifacts: Path) -> list[str]:
    return [sys.executable, "-m", "system_under_test", "up", "--shards", "1", "--preset", "tiny",
            "--artifacts", str(artifacts), "--manifest", str(manifest), "--timeout", "120"]  # fmt: skip


def wait_gone(tag: str, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := tagged_processes(TAG, tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [f"{name} (PID {ref.pid})" for name, ref in left]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_cluster_starts_stops_every_child(sig, tmp_path, tiny_artifacts):
    tag = os.urandom(6).hex()
    env = {**os.environ, "PYTHONPATH": str(REPO), TAG: tag}
    manifest = tmp_path / "manifest.json"
    log = tmp_path / "up.log"
    try:
        with ManagedProcess(up_command(manifest, tiny_artifacts.parent), log, env=env) as up:
            # Two shard copies spawned (they carry the tag): the cluster is starting, not up.
            up.wait_ready(lambda: len(tagged_processes(TAG, tag)) >= 2, 60, "components started")
            assert not manifest.exists() and "cluster up" not in log.read_text()
            up.signal(sig)
            code = up.wait(30)
        text = log.read_text()
        assert code == 128 + sig, text
        assert f"{signal.Signals(sig).name}: stopped every process started so far" in text, text
        assert wait_gone(tag, 10) == [], text
        assert not manifest.exists()
    finally:
        for _, ref in tagged_processes(TAG, tag):
            ref.signal(signal.SIGKILL)


def check_token_handoff(token_file: Path, comps: list[dict]) -> None:
    """``up`` made a token, kept it in a 0600 file beside the manifest, and handed it to every
    server in its environment, on no command line: the shards' control op wants it."""
    from harness.auth import read_token_file
    from harness.inject import appfaults

    token = read_token_file(token_file)  # refuses a file others could read
    for comp in comps:
        assert token not in Path(f"/proc/{comp['pid']}/cmdline").read_text(), comp["name"]
    shard = next(c for c in comps if c["role"] == "primary")
    assert appfaults.control(shard["address"], {}, token=token)["faults"] is None
    with pytest.raises(appfaults.ControlError, match="answered unauthorized"):
        appfaults.control(shard["address"], {"faults": {"error_rate": 1.0}})


def test_up_then_down_leaves_nothing_and_down_checks_start_times(tmp_path, tiny_artifacts):
    tag = os.urandom(6).hex()
    env = {**os.environ, "PYTHONPATH": str(REPO), TAG: tag}
    manifest = tmp_path / "manifest.json"
    try:
        up = ManagedProcess(
            up_command(manifest, tiny_artifacts.parent), tmp_path / "up.log", env=env
        )
        assert up.start().wait(120) == 0, up.tail_text()
        data = json.loads(manifest.read_text())
        comps = data["components"]
        assert all(isinstance(c["start_time"], float) for c in comps), comps
        token_file = Path(data["control_token_file"])
        assert token_file == manifest.parent.resolve() / "control.token"
        check_token_handoff(token_file, comps)
        assert {ref.pid for _, ref in tagged_processes(TAG, tag)} == {c["pid"] for c in comps}
        # A manifest entry whose start time is not the running process's is not ours to stop.
        region = next(c for c in comps if c["name"] == "region")
        region["start_time"] -= 100.0
        manifest.write_text(json.dumps({"gateway_url": "x", "components": comps}))
        down = ManagedProcess(
            [sys.executable, "-m", "system_under_test", "down", "--manifest", str(manifest)],
            tmp_path / "down.log",
            env=env,
        )
        assert down.start().wait(60) == 0, down.tail_text()
        assert [name for name, _ in tagged_processes(TAG, tag)] == [
            "system_under_test serve-region"
        ]
        assert "stopping region" not in (tmp_path / "down.log").read_text()
    finally:
        for _, ref in tagged_processes(TAG, tag):
            ref.signal(signal.SIGKILL)
    assert wait_gone(tag, 10) == []
