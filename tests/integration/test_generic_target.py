"""A generic target (any HTTP service started from its commands) as a
:class:`harness.sut.target.Target`: started, polled until it answers, described by a manifest
the injectors and the watchdog read, and stopped with its whole process group; a component that
exits during start-up fails with its log tail and leaves nothing."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from harness.model.target import GenericTarget
from harness.process import ProcessRef, StartError, free_port
from harness.sut.generic import GenericCluster

pytestmark = pytest.mark.integration


def _gone(refs: list[ProcessRef], timeout_s: float = 5.0) -> list[ProcessRef]:
    deadline = time.monotonic() + timeout_s
    while any(r.alive() for r in refs) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [r for r in refs if r.alive()]


class Registry:
    def __init__(self) -> None:
        self.env = {"RECCHAOS_TEST_GENERIC": "1"}
        self.added: list[tuple[str, ProcessRef]] = []

    def add_process(self, name: str, ref: ProcessRef) -> None:
        self.added.append((name, ref))


def test_a_generic_target_starts_answers_and_stops_with_its_children(tmp_path: Path):
    port = free_port()
    pidfile = tmp_path / "child.pid"
    # A wrapper shell that starts the server as its child: stopping the component must stop both.
    server = f"{sys.executable} -m http.server {port} --bind 127.0.0.1 & echo $! > {pidfile}; wait"
    spec = GenericTarget(
        components={"web": ("sh", "-c", server), "idle": ("sleep", "60")},
        endpoint=f"http://127.0.0.1:{port}/",
    )
    registry = Registry()
    with GenericCluster(spec, tmp_path, log=lambda _: None, registry=registry) as target:
        assert target.base_url == f"http://127.0.0.1:{port}" and target.options is None
        manifest = json.loads(target.manifest_path.read_text())
        assert [c["name"] for c in manifest["components"]] == ["web", "idle"]
        web = target.component("web")
        assert web["command"] == ["sh", "-c", server] and web["start_time"] > 0
        assert [name for name, _ in registry.added] == ["web", "idle"]
        refs = [ref for _, ref in registry.added]
        child = ProcessRef.of_pid(int(pidfile.read_text()))
        assert child is not None and child.alive()
        with pytest.raises(StartError, match="needs the bundled recommender"):
            target.restart("web")
    assert _gone([*refs, child]) == []


def test_a_component_that_exits_during_start_up_fails_with_its_log_and_leaves_nothing(tmp_path):
    port = free_port()
    spec = GenericTarget(
        components={
            "idle": ("sleep", "60"),
            "broken": (sys.executable, "-c", "print('no config file'); raise SystemExit(4)"),
        },
        endpoint=f"http://127.0.0.1:{port}/",
    )
    registry = Registry()
    with pytest.raises(StartError) as err:
        GenericCluster(spec, tmp_path, log=lambda _: None, registry=registry).start()
    text = str(err.value)
    assert "broken exited with code 4 before" in text and "| no config file" in text, text
    assert _gone([ref for _, ref in registry.added]) == []
