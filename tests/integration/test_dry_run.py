"""``recchaos run --dry-run`` against real targets.

Every shipped scenario (pr and nightly profiles) is checked against the manifest of a running
recommender of the scenarios' own shape (4 shards, tiny preset, Redis, and the default layout,
two gateways behind the balancer, or the layout a scenario asks for: ``--manifest``, nothing
started by the dry run) and exits 0; a scenario whose target that recommender lacks exits 2
naming it. Without ``--manifest`` the dry run starts the target itself, reads its manifest and
stops it again: no process it started is left, and no run directory is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import cli
from harness.model.scenario import load_scenario
from harness.runner.target import start_recommender
from harness.sut.recommender import RecommenderOptions
from harness.sut.target import Target

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))
SHORT = ROOT / "tests" / "data" / "short_kill.yaml"
TAG = "RECCHAOS_TEST_TAG"


def gateways_of(scenario: Path) -> int:
    return getattr(load_scenario(scenario).target, "gateways", 2)


def _start(tmp_path_factory: pytest.TempPathFactory, gateways: int) -> Target:
    options = RecommenderOptions(shards=4, preset="tiny", redis=True, gateways=gateways)
    return start_recommender(options, tmp_path_factory.mktemp("running") / "cluster")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], Target]]:
    """The scenarios' recommender with N gateways, started on first use and left up for the
    module (as `recchaos sut up` leaves one): only the layouts the scenarios ask for start."""
    up: dict[int, Target] = {}

    def running_with(gateways: int) -> Target:
        if gateways not in up:
            up[gateways] = _start(tmp_path_factory, gateways)
        return up[gateways]

    try:
        yield running_with
    finally:
        for target in up.values():
            target.stop()


@pytest.fixture(scope="module")
def running(layouts: Callable[[int], Target]) -> Target:
    """The default layout: two gateways behind the balancer (`up`'s default)."""
    return layouts(2)


@pytest.mark.parametrize("profile", ["pr", "nightly"])
def test_every_shipped_scenario_checks_out_against_a_running_recommender(layouts, capsys, profile):
    assert len(SHIPPED) >= 10
    for scenario in SHIPPED:
        manifest = str(layouts(gateways_of(scenario)).manifest_path)
        code = cli.main(["run", str(scenario), "--dry-run", "--profile", profile,
                         "--manifest", manifest])  # fmt: skip
        out = capsys.readouterr()
        assert code == 0, f"{scenario.name}:\n{out.out}\n{out.err}"
        assert out.out.splitlines()[-1].startswith("OK: every fault target is a component")


def test_a_target_the_running_recommender_lacks_exits_2_naming_it(running, tmp_path, capsys):
    scenario = tmp_path / "five_shards.yaml"
    text = (ROOT / "scenarios" / "primary_kill.yaml").read_text()
    scenario.write_text(
        text.replace("shards: 4", "shards: 5").replace("shard-1-primary", "shard-4-primary")
    )
    code = cli.main(["run", str(scenario), "--dry-run", "--manifest", str(running.manifest_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "faults[0] names 'shard-4-primary' (kill); the target has: shard-0-primary" in err
    names = [c["name"] for c in json.loads(running.manifest_path.read_text())["components"]]
    assert "shard-4-primary" not in names


def tagged(tag: str) -> list[int]:
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(int(entry))
    return found


def test_without_a_manifest_the_dry_run_starts_checks_and_stops_the_target(tmp_path):
    tag, scratch, runs = uuid.uuid4().hex, tmp_path / "tmp", tmp_path / "runs"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(SHORT), "--dry-run", "--out", str(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, TAG: tag, "TMPDIR": str(scratch)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "starting the target to read its manifest (recommender, 2 shards" in out
    assert "components from the manifest of the target started for this check" in out
    assert "  4 s to 7 s: kill(shard-0-primary) (faults[0])" in out
    assert "load: 1 phase, 12 s, 1,200 requests (mean 100.0/s, peak 100/s)" in out
    deadline = time.monotonic() + 10
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged(tag) == []  # cluster, proxy and watchdog all gone
    assert list(scratch.iterdir()) == []  # its working directory too
    assert not runs.exists()  # no run directory: nothing ran
