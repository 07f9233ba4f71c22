"""The harness SIGKILLed anywhere leaves nothing: ``recchaos run`` on a small scenario
(``tests/data/kill_anywhere.yaml``: Redis, the fault proxy, a freeze, an iptables partition and
a cgroup CPU quota) is killed at 10 moments from 1 s after its start to after its verdict
(start-up, load, each active fault, teardown), and with the docker backend at 3 (containers
starting, a fault active, teardown). After each, once the watchdog is done: 0 processes of the
run (every process the harness or its children started, whatever session or parent it ended up
with: they all stay in a pids cgroup the harness was started in), 0 of the run's iptables
chains, 0 of its cgroups, 0 containers, networks and images, and ``run.json`` says the run was
killed, with the time. About 3 minutes for the 10 process moments and 2 for the docker ones on
the 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.inject import netfilter
from harness.inject.cgroups import v1_mount
from harness.process import ManagedProcess

sys.path.insert(0, str(Path(__file__).parent))
from dockerd import PrivateDockerd  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "tests" / "data" / "kill_anywhere.yaml"
MOMENT_TIMEOUT_S = 180.0  # the docker backend's start-up included
CLEANUP_TIMEOUT_S = 60.0

Moment = Callable[[Path | None, float], bool]


class Tracker:
    """A cgroup of the v1 ``pids`` hierarchy that the harness is started in. Every process it,
    or any of its children, starts stays in it whatever session or parent it ends up with, so
    an empty cgroup means nothing of the run is left (containers run under the engine's own)."""

    def __init__(self, root: Path) -> None:
        self.path = root / f"rctrack-{os.getpid()}-{os.urandom(3).hex()}"
        self.path.mkdir()

    def argv(self, argv: list[str]) -> list[str]:
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def describe(self) -> str:
        out = []
        for pid in self.pids():
            try:
                out.append(
                    f"{pid}: "
                    + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
            except OSError:
                out.append(f"{pid}: (gone)")
        return "\n".join(out)

    def remove(self) -> None:
        """Kill what is left (only when a check already failed) and remove the cgroup."""
        deadline = time.monotonic() + 10
        while self.path.exists() and time.monotonic() < deadline:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.path.rmdir()
            except OSError:
                time.sleep(0.05)


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    root = v1_mount("pids")
    if root is None:
        pytest.skip("no cgroup v1 pids hierarchy to track the run's processes in")
    t = Tracker(root)
    try:
        yield t
    finally:
        t.remove()


# -- moments ---------------------------------------------------------------------------------


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _applied(run: Path | None, kind: str) -> bool:
    lines = _text(run / "faults.journal").splitlines() if run is not None else []
    return any('"type":"applied"' in line and f'"kind":"{kind}"' in line for line in lines)


def _verdict(run: Path | None) -> bool:
    try:
        return run is not None and bool(json.loads(_text(run / "run.json")).get("verdict"))
    except ValueError:
        return False


def _exists(run: Path | None, *parts: str) -> bool:
    return run is not None and run.joinpath(*parts).exists()


def _shard_log(run: Path | None) -> str:
    return _text(run / "cluster" / "logs" / "shard-0-primary.log") if run is not None else ""


MOMENTS: dict[str, Moment] = {
    "1 s after start": lambda run, t: t >= 1.0,
    "the launcher starting components": lambda run, t: (
        _exists(run, "cluster", "logs", "shard-0-primary.log") and " ready " not in _shard_log(run)
    ),
    "a component ready, the cluster not up": lambda run, t: (
        " ready " in _shard_log(run) and not _exists(run, "cluster", "manifest.json")
    ),
    "the cluster just up": lambda run, t: _exists(run, "cluster", "manifest.json"),
    "the load workers starting": lambda run, t: _exists(run, "load", "job-0.json"),
    "a freeze active": lambda run, t: _applied(run, "freeze"),
    "a partition active (iptables)": lambda run, t: _applied(run, "partition"),
    "a CPU quota active (cgroup)": lambda run, t: _applied(run, "cpu_throttle"),
    "after the verdict": lambda run, t: _verdict(run),
    "tearing down": lambda run, t: _exists(run, "cluster", "components.json"),
}


# -- one kill --------------------------------------------------------------------------------


def _run_dir(out: Path) -> Path | None:
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    return dirs[0] if dirs else None


def _kill_at(
    name: str, moment: Moment, tracker: Tracker, out: Path, extra: list[str], env: dict[str, str]
) -> tuple[Path | None, float]:
    """Start ``recchaos run``, SIGKILL it when ``moment`` holds; returns its run directory and
    when it was killed (seconds after start)."""
    argv = [sys.executable, "-m", "harness.cli", "run", str(SCENARIO), "--out", str(out),
            "--no-progress", *extra]  # fmt: skip
    log = out.parent / f"{out.name}.log"
    harness = ManagedProcess(tracker.argv(argv), log, name="recchaos run", env=env, cwd=REPO)
    started = time.monotonic()
    with harness.start():
        while True:
            run = _run_dir(out)
            elapsed = time.monotonic() - started
            if moment(run, elapsed):
                break
            assert not harness.exited(), (
                f"moment {name!r} missed: the harness exited with {harness.poll()}; "
                f"{harness.tail_text(30)}"
            )
            assert elapsed < MOMENT_TIMEOUT_S, f"moment {name!r} not within {MOMENT_TIMEOUT_S} s"
            time.sleep(0.02)
        assert harness.signal(signal.SIGKILL), f"the harness was gone at moment {name!r}"
        return _run_dir(out), time.monotonic() - started


def _watchdog_done(run: Path | None) -> bool:
    lines = _text(run / "watchdog.log").splitlines() if run is not None else []
    return bool(lines) and ": done" in lines[-1]


def _leftover_rules_and_cgroups(run: Path) -> list[str]:
    """The run's iptables chains and cgroups (named in its journal) that still exist."""
    left = []
    rules = netfilter.iptables("-S").stdout if netfilter.unsupported_reason() is None else ""
    for line in _text(run / "faults.journal").splitlines():
        action = json.loads(line).get("heal_action") or {}
        if action.get("chain") and action["chain"] in rules:
            left.append(f"iptables chain {action['chain']}")
        if action.get("action") == "cgroup_remove" and Path(action["path"]).exists():
            left.append(f"cgroup {action['path']}")
    return left


def _check_clean(name: str, run: Path | None, tracker: Tracker, killed_at: float) -> str:
    deadline = time.monotonic() + CLEANUP_TIMEOUT_S
    while (tracker.pids() or (run is not None and not _watchdog_done(run))) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    wlog = _text(run / "watchdog.log")[-3000:] if run is not None else "(no run directory)"
    assert tracker.pids() == [], f"{name}: processes left:\n{tracker.describe()}\n{wlog}"
    if run is None:  # killed before the run directory existed: nothing was started
        return f"{name}: killed at {killed_at:.1f} s, before the run directory existed"
    assert _leftover_rules_and_cgroups(run) == [], f"{name}: {wlog}"
    last = wlog.splitlines()[-1]
    assert "all clean" not in wlog and last.endswith("could not: nothing"), f"{name}: {wlog}"
    record: dict[str, Any] = json.loads((run / "run.json").read_text())
    assert record["status"] == "killed" and record["ended_wall"], (
        f"{name}: {record['status']}; errors {record['errors']}; watchdog log:\n{wlog}"
    )
    assert record["errors"][0].startswith("killed: "), record["errors"]
    return f"{name}: killed at {killed_at:.1f} s; {last.split(': ', 1)[1][:160]}"


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.skipif(netfilter.unsupported_reason() is not None, reason="needs iptables (root)")
def test_a_sigkilled_harness_leaves_nothing_at_ten_moments(tracker: Tracker, tmp_path: Path):
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    report = []
    for i, (name, moment) in enumerate(MOMENTS.items()):
        out = tmp_path / f"runs-{i}"
        run, killed_at = _kill_at(name, moment, tracker, out, [], env)
        report.append(_check_clean(name, run, tracker, killed_at))
    print("\n".join(report) + f"\n10 moments in {time.monotonic() - started:.0f} s")


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
    assert not left, f"the docker kill test left things behind: {left}"


@pytest.mark.docker
def test_a_sigkilled_harness_leaves_no_container_at_three_moments(
    engine: PrivateDockerd, tracker: Tracker, tmp_path: Path
):
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DOCKER_HOST": engine.host}
    env["RECCHAOS_DOCKER_HOST_MOUNTS"] = "1"
    moments: dict[str, Moment] = {
        "containers starting": lambda run, t: (
            engine.counts()["containers"] >= 2 and not _exists(run, "cluster", "manifest.json")
        ),
        "a fault active": lambda run, t: _applied(run, "freeze"),
        "tearing down": MOMENTS["tearing down"],
    }
    report = []
    for i, (name, moment) in enumerate(moments.items()):
        out = tmp_path / f"runs-{i}"
        run, killed_at = _kill_at(name, moment, tracker, out, ["--backend", "docker"], env)
        report.append(_check_clean(name, run, tracker, killed_at))
        assert engine.counts() == {"containers": 0, "networks": 0, "images": 0}, name
    print("\n".join(report) + f"\n3 docker moments in {time.monotonic() - started:.0f} s")
