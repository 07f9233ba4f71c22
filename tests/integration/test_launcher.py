"""``python -m system_under_test up`` and ``down`` with real processes: ``up`` owns its children
until the cluster is up (SIGTERM, SIGINT, SIGHUP stop every component started so far; exit
128 + the signal), every child inherits ``up``'s environment (how a harness finds them if ``up``
dies), and ``down`` stops what the manifest names by PID and start time, leaving nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
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


def post(url: str, body: bytes, timeout_s: float = 5.0) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{url}/v1/recommend", body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextlib.contextmanager
def launched(tmp_path: Path, artifacts: Path, *extra: str) -> Iterator[tuple[Path, dict, dict]]:
    """``up`` with ``extra`` options: yields the manifest's path, its data and the environment
    (tagged); on the way out SIGKILLs whatever is still tagged and checks nothing is left."""
    tag = os.urandom(6).hex()
    env = {**os.environ, "PYTHONPATH": str(REPO), TAG: tag}
    manifest = tmp_path / "manifest.json"
    try:
        up = ManagedProcess(
            [*up_command(manifest, artifacts), *extra], tmp_path / "up.log", env=env
        )
        assert up.start().wait(120) == 0, up.tail_text()
        yield manifest, json.loads(manifest.read_text()), env
    finally:
        for _, ref in tagged_processes(TAG, tag):
            ref.signal(signal.SIGKILL)
    assert wait_gone(tag, 10) == []


def run_down(manifest: Path, tmp_path: Path, env: dict) -> None:
    down = ManagedProcess(
        [sys.executable, "-m", "system_under_test", "down", "--manifest", str(manifest)],
        tmp_path / "down.log",
        env=env,
    )
    assert down.start().wait(60) == 0, down.tail_text()


def test_the_default_two_gateways_behind_haproxy_survive_a_gateway_kill(tmp_path, tiny_artifacts):
    with launched(tmp_path, tiny_artifacts.parent, "--server-timeout-ms", "11") as (
        manifest,
        data,
        env,
    ):
        comps = {c["name"]: c for c in data["components"]}
        config = (Path(comps["lb"]["log"]).parent / "haproxy.cfg").read_text()
        assert "    timeout server 11ms" in config.splitlines(), config
        assert {"gateway-0", "gateway-1", "lb"} <= set(comps) and "gateway" not in comps
        assert comps["lb"]["role"] == "lb" and comps["gateway-1"]["role"] == "gateway"
        assert data["gateway_url"] == f"http://{comps['lb']['address']}"
        assert data["gateways"] == 2
        # HAProxy is the process the launcher started (it became HAProxy), tagged like the rest.
        assert Path(f"/proc/{comps['lb']['pid']}/exe").resolve().name == "haproxy"
        assert {ref.pid for _, ref in tagged_processes(TAG, env[TAG])} == {
            c["pid"] for c in comps.values()
        }
        url = data["gateway_url"]
        status, body = post(url, b'{"user_id": 3, "k": 5}')
        assert status == 200 and len(body["items"]) == 5, body
        # A bad body through the balancer still gets the gateway's own 4xx JSON error.
        status, body = post(url, b'{"user_id": "three"}')
        assert status == 422 and body["field"] == "user_id", body

        os.kill(comps["gateway-0"]["pid"], signal.SIGKILL)
        answers = [post(url, b'{"user_id": 3, "k": 5}')[0] for _ in range(30)]
        assert answers == [200] * 30, answers
        lb_log = Path(comps["lb"]["log"]).read_text()

        run_down(manifest, tmp_path, env)
        assert wait_gone(env[TAG], 10) == [], lb_log
        assert not manifest.exists()


def test_one_gateway_is_the_gateway_alone_with_no_balancer(tmp_path, tiny_artifacts):
    """``--gateways 1``: the layout from before the balancer, exactly: the component
    ``gateway``, which ``gateway_url`` names, and no ``lb``."""
    with launched(tmp_path, tiny_artifacts.parent, "--gateways", "1") as (manifest, data, env):
        comps = {c["name"]: c for c in data["components"]}
        assert sorted(comps) == ["gateway", "region", "shard-0-primary", "shard-0-replica"]
        assert comps["gateway"]["role"] == "gateway" and data["gateways"] == 1
        assert data["gateway_url"] == f"http://{comps['gateway']['address']}"
        status, body = post(data["gateway_url"], b'{"user_id": 3, "k": 5}')
        assert status == 200 and len(body["items"]) == 5, body
        run_down(manifest, tmp_path, env)
