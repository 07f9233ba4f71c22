"""The docker backend against a real, private dockerd (Debian's ``docker.io``), no registry.

* each docker fault injector, applied to one container, verified, healed (idempotently) and
  the container serving again; then nothing left on the engine (fast: CI runs it);
* ``primary_kill`` and ``primary_freeze`` (pr profile) run by the runner against the
  recommender as containers (``backend: docker``): faults applied and verified, the replica
  tier served during the fault, and the verdict PASS (slow: about 40 s each here; the whole
  module took 105 s on 2 cores, so CI runs it all).

Images come from ``docker import`` of a minimal root filesystem; containers run this host's
interpreter, venv, repository and cached artifacts, bind-mounted read-only. The engine, and
every container, network, image, bridge, iptables rule and sysctl it touched, is removed or
restored at the end of the module (:mod:`tests.integration.dockerd`); the test fails if not.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.inject.base import Component, InjectContext, make_injector
from harness.process import wait_until
from harness.sut.containers import (
    LABEL,
    docker_client,
    host_mounts,
    import_rootfs_image,
    read_listening_ports,
)

sys.path.insert(0, str(Path(__file__).parent))
from dockerd import PrivateDockerd  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
PORT = 7000


@pytest.fixture(scope="module")
def engine() -> Iterator[PrivateDockerd]:
    pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")
    eng = PrivateDockerd().start()
    if eng.failure:
        eng.stop()
        pytest.skip(f"no Docker engine on this machine: {eng.failure}")
    try:
        yield eng
    finally:
        left = eng.stop()
    assert not left, f"the docker tests left things behind: {left}"


@pytest.fixture
def server(engine: PrivateDockerd, tmp_path: Path) -> Iterator[tuple[InjectContext, object]]:
    """One container running a TCP server (the host's Python, http.server) on a network of its
    own, published on 127.0.0.1, as a one-component docker manifest; removed afterwards."""
    client = docker_client(engine.host)
    image = import_rootfs_image(client, "recchaos-test", "rootfs")
    net = client.networks.create("recchaos-test-net", labels={LABEL: "test"})
    command = [sys.executable, "-m", "http.server", str(PORT), "--bind", "0.0.0.0"]
    container = client.containers.create(
        image,
        command,
        name="recchaos-test-server",
        labels={LABEL: "test"},
        volumes=host_mounts(tmp_path),
        tmpfs={"/tmp": ""},
        working_dir="/tmp",
        ports={f"{PORT}/tcp": ("127.0.0.1", None)},
        network=net.name,
    )
    try:
        container.start()
        wait_until(lambda: _listening(container), 20, "http.server listening in its container")
        container.reload()
        host_port = container.attrs["NetworkSettings"]["Ports"][f"{PORT}/tcp"][0]["HostPort"]
        manifest = {
            "backend": "docker",
            "docker_host": engine.host,
            "network": net.name,
            "components": [
                {
                    "name": "server",
                    "role": "server",
                    "pid": container.attrs["State"]["Pid"],
                    "address": f"127.0.0.1:{host_port}",
                    "internal_address": f"server:{PORT}",
                    "container": container.id,
                    "command": command,
                }
            ],
        }
        path = tmp_path / "manifest.json"
        path.write_text(json.dumps(manifest))
        yield InjectContext.from_manifest(path, run_id="dockertest"), container
    finally:
        container.remove(force=True)
        net.remove()
        client.images.remove(image, force=True)
        client.close()


def _listening(container) -> bool:
    container.reload()
    pid = int(container.attrs["State"].get("Pid") or 0)
    return container.status == "running" and pid > 0 and PORT in read_listening_ports(pid)


def _poke(address: str) -> None:
    """Some traffic through the published port (the partition's counters need packets)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.recv(100)
    except OSError:
        pass


FAULTS = [
    ("kill", {}, "exited"),
    ("terminate", {"grace_s": 1.0}, "exited"),
    ("freeze", {}, "paused"),
    ("cpu_freeze", {}, "paused"),
    ("restart", {"delay_s": 0.5}, None),
    ("cpu_throttle", {"cpu_fraction": 0.2}, "running"),
    ("disconnect", {}, "running"),
    ("partition", {}, "running"),
    ("packet_loss", {"probability": 0.9}, "running"),
]


@pytest.mark.parametrize(("kind", "params", "state"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_docker_fault_applies_verifies_and_heals(server, kind, params, state):
    ctx, container = server
    inj = make_injector(kind, "server", params, ctx)
    assert type(inj).__module__ == "harness.inject.containers"
    action = inj.heal_action()
    try:
        inj.apply()
        if state is not None:
            container.reload()
            deadline = time.monotonic() + 5
            while container.status != state and time.monotonic() < deadline:
                time.sleep(0.05)
                container.reload()
            assert container.status == state
        ok, note = inj.verify()
        for _ in range(20):  # counter-based evidence needs traffic
            if ok:
                break
            _poke(ctx.component("server").address)
            ok, note = inj.verify()
        assert ok, note
        action = inj.heal_action()
    finally:
        inj.heal()
        inj.heal()  # idempotent
    container.reload()
    assert container.status == "running"
    wait_until(lambda: _listening(container), 20, f"server listening again after {kind}")
    if kind == "cpu_throttle":
        assert container.attrs["HostConfig"]["CpuQuota"] in (0, -1)
    if kind == "disconnect":
        assert ctx.network in container.attrs["NetworkSettings"]["Networks"]
    assert isinstance(action, dict) and "action" in action
    if action["action"] != "none":  # the watchdog's way is idempotent too, after the heal
        from harness.inject.base import execute_heal_action

        assert execute_heal_action(action)


def test_the_manifest_chooses_the_docker_injectors_and_process_ones_stay(tmp_path: Path):
    comps = [Component("server", "server", 1, "127.0.0.1:1", container="abc")]
    proc = InjectContext(components={c.name: c for c in comps})
    assert type(make_injector("kill", "server", {}, proc)).__module__ == "harness.inject.signals"
    with pytest.raises(Exception, match="needs the docker backend"):
        make_injector("disconnect", "server", {}, proc).apply()
    docker_ctx = InjectContext(components={c.name: c for c in comps}, backend="docker")
    inj = make_injector("latency", "server", {"delay_ms": 5}, docker_ctx)
    with pytest.raises(Exception, match="no userspace fault proxy"):
        inj.apply()


# -- scenarios against the recommender in containers -------------------------------------------


def _run_scenario(engine: PrivateDockerd, name: str, tmp_path: Path, monkeypatch):
    from harness.runner.run import run
    from harness.runner.settings import RunSettings

    monkeypatch.setenv("DOCKER_HOST", engine.host)
    monkeypatch.setenv("RECCHAOS_DOCKER_HOST_MOUNTS", "1")
    settings = RunSettings(
        str(REPO / "scenarios" / f"{name}.yaml"),
        out_dir=tmp_path,
        profile="pr",
        backend="docker",
        progress=False,
    )
    lines: list[str] = []
    started = time.monotonic()
    outcome = run(settings, log=lines.append)
    took = time.monotonic() - started
    record = json.loads((outcome.run_dir / "run.json").read_text())
    assert outcome.verdict is not None, f"{outcome.message}\n" + "\n".join(lines[-30:])
    assert record["scenario"]["target"]["backend"] == "docker"
    timeline = record["timeline"]
    assert timeline and all(e["verified"] for e in timeline), timeline
    assert engine.counts() == {"containers": 0, "networks": 0, "images": 0}
    gateway_log = (outcome.run_dir / "cluster" / "logs" / "gateway.log").read_text(
        "utf-8", "replace"
    )
    assert "wrote features of" in gateway_log  # Redis took the run's token as its password
    print(f"{name} in containers: verdict {outcome.verdict.value} in {took:.0f} s")
    return outcome, record


@pytest.mark.slow
@pytest.mark.parametrize("name", ["primary_kill", "primary_freeze"])
def test_scenario_against_containers(engine, name, tmp_path, monkeypatch):
    """Faults applied and verified on containers, the replica tier served during the fault,
    and the verdict PASS: the containers hold the same SLA as the processes."""
    outcome, record = _run_scenario(engine, name, tmp_path, monkeypatch)
    during = [w for w in record["windows"] if w["window"]["kind"] == "during"]
    assert during and sum(w["tier_counts"]["replica"] for w in during) > 0, during
    table = "\n".join(_window_line(w) for w in record["windows"])
    print(table)
    failed = [c for c in record["checks"] if c["verdict"] != "PASS"]
    assert outcome.verdict.value == "PASS", (
        f"{name} on the docker backend: verdict {outcome.verdict.value}, not PASS "
        f"(run {outcome.run_dir}); failing checks:\n"
        + "\n".join(f"  {c['verdict']} in window {c['window']!r}: {c['message']}" for c in failed)
        + f"\nwindows:\n{table}"
    )


def _window_line(w: dict) -> str:
    lat = w["latency_ms"]
    return (
        f"  {w['window']['name']:<32} n={w['count']:<5} p99={lat['p99']} ms p95={lat['p95']} ms "
        f"errors={w['errors']} tiers={w['tier_counts']}"
    )
