"""The remote-worker steps of docs/distributed.md, with a worker on another host: a network
namespace this test creates, joined to this one by a veth pair with addresses of its own
(10.R.S.1 here, 10.R.S.2 there), and removes again.

The Locust master binds the veth address (``master_bind``), one worker runs here and one in
the namespace with the job the driver writes (``job-remote.json``) and ``--locust-master
HOST:PORT``; the target (the calibration stub) listens on the veth address too. The merged
result must account for every request, half of them sent through the veth.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from harness.load import LoadJob, run_load
from harness.model.load import LoadPhase, RequestMix
from harness.model.target import RequestTemplate
from harness.process import ManagedProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
REQUEST = RequestTemplate(
    "POST", "/v1/recommend", '{"user_id": $user_id, "k": $k}',
    (("Content-Type", "application/json"),),
)  # fmt: skip


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def network_namespace() -> Iterator[tuple[str, str, str]]:
    """(namespace, this side's address, the namespace's address); always removed again."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a network namespace needs root and iproute2")
    tag = f"{os.getpid() % 100000}"
    ns, here, there = f"rcw{tag}", f"rcwh{tag}", f"rcwn{tag}"
    used = ip("-o", "-4", "addr").stdout
    subnet = next(
        f"10.{200 + i // 250}.{i % 250}"
        for i in range(os.getpid() % 5000, os.getpid() % 5000 + 50)
        if f" 10.{200 + i // 250}.{i % 250}." not in used
    )
    steps = [
        ("netns", "add", ns),
        ("link", "add", here, "type", "veth", "peer", "name", there),
        ("link", "set", there, "netns", ns),
        ("addr", "add", f"{subnet}.1/24", "dev", here),
        ("link", "set", here, "up"),
        ("-n", ns, "addr", "add", f"{subnet}.2/24", "dev", there),
        ("-n", ns, "link", "set", there, "up"),
        ("-n", ns, "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            done = ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot create the namespace: ip {' '.join(step)}: {done.stderr}")
        yield ns, f"{subnet}.1", f"{subnet}.2"
    finally:
        ip("netns", "del", ns)  # takes its end of the veth pair, and so the pair, with it
        ip("link", "del", here)  # already gone unless the namespace never got its end
        assert ns not in ip("netns", "list").stdout and here not in ip("-o", "link").stdout


def rx_packets(device: str) -> int:
    return int(Path(f"/sys/class/net/{device}/statistics/rx_packets").read_text())


@contextlib.contextmanager
def stub_on(host: str, log: Path) -> Iterator[str]:
    argv = [sys.executable, "-m", "harness.load.stub", "--host", host, "--port", "0",
            "--service-ms", "2", "--tier", "primary", "--parent-pid", str(os.getpid())]  # fmt: skip
    with ManagedProcess(argv, log, name="stub", cwd=REPO, pipes=True) as proc:
        assert proc.popen is not None and proc.popen.stdout is not None
        ready, _, _ = select.select([proc.popen.stdout], [], [], 20)
        assert ready, f"the stub did not start: {proc.tail_text()}"
        yield f"http://{host}:{json.loads(proc.popen.stdout.readline())['port']}"


def test_a_worker_in_another_network_namespace_joins_the_master(tmp_path: Path):
    with network_namespace() as (ns, here_ip, _), stub_on(here_ip, tmp_path / "s.log") as url:
        out = tmp_path / "load"
        job = LoadJob(
            target=url,
            phases=(LoadPhase("steady", 100, 2.0, RequestMix(zipf_exponent=1.1, users=1000)),),
            seed=7,
            output_dir=str(out),
            request=REQUEST,
        )
        master = f"{here_ip}:{free_port(here_ip)}"
        remote: list[ManagedProcess] = []
        namespaces: list[str] = []

        def join_from_the_namespace() -> None:
            """What the docs tell a user on the other host to run, once the job is there."""
            deadline = time.monotonic() + 30
            while not (out / "job-remote.json").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "harness.load.worker",
                    str(out / "job-remote.json"), "--locust-master", master]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            proc = ManagedProcess(argv, tmp_path / "remote.log", name="remote", cwd=REPO, env=env)
            remote.append(proc.start())
            while time.monotonic() < deadline + 5:  # `ip netns exec` enters, then execs python
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{proc.pid}/exe").resolve().name.startswith("python"):
                        namespaces.append(os.readlink(f"/proc/{proc.pid}/ns/net"))
                        return
                time.sleep(0.01)

        here = f"rcwh{os.getpid() % 100000}"
        before = rx_packets(here)
        joiner = threading.Thread(target=join_from_the_namespace, daemon=True)
        joiner.start()
        try:
            res = run_load(
                job, timeout_s=90, workers=2, mode="locust", master_bind=master, local_workers=1
            )
            joiner.join(35)
            assert remote, "the remote worker never started"
            assert remote[0].wait(20) == 0, remote[0].tail_text()
            assert namespaces and namespaces[0] != os.readlink("/proc/self/ns/net")
        finally:
            joiner.join(35)
            for proc in remote:
                proc.stop(grace_s=1.0)
        problems = res.unaccounted()
        assert not problems, problems
        assert res.summary["workers"] == 2 and res.summary["answered"] == 200, res.summary
        for w in (0, 1):  # each worker sent every second request, one of them from there
            assert np.all(res.log["id"][res.log["worker"] == w] % 2 == w)
            assert int((res.log["worker"] == w).sum()) == 100
        # the namespace's half came through the veth: at least a packet per request
        assert rx_packets(here) - before >= 100
        assert json.loads((out / "job-remote.json").read_text())["target"] == url
