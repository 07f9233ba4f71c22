"""``recchaos run --dry-run --manifest PATH`` against manifests written here: the plan and the
load's totals printed, exit 0 when every fault target is in the manifest, exit 2 naming each
one that is not (and what the manifest has), and ``--manifest`` refused without ``--dry-run``.
Nothing is started: the manifest is a file (tests/integration/test_dry_run.py uses real ones)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.model.faults import FaultSpec
from harness.runner.dryrun import Components, missing_targets, read_components

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))
KILL = str(ROOT / "scenarios" / "primary_kill.yaml")


def manifest(
    tmp_path: Path,
    shards: int = 4,
    redis: str | None = "redis://127.0.0.1:1/0",
    gateways: int = 2,
) -> Path:
    names = [f"shard-{i}-{c}" for i in range(shards) for c in ("primary", "replica")]
    front = ["gateway"] if gateways == 1 else [f"gateway-{i}" for i in range(gateways)] + ["lb"]
    comps = [{"name": n, "pid": 0} for n in names + ["region", *front]]
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps({"gateway_url": "http://127.0.0.1:1", "components": comps, "redis": redis})
    )
    return path


def dry(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["run", *argv, "--dry-run"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("profile", ["pr", "nightly"])
@pytest.mark.parametrize("scenario", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_passes_against_a_four_shard_manifest(
    tmp_path, capsys, scenario, profile
):
    from harness.model.scenario import load_scenario

    gateways = getattr(load_scenario(scenario).target, "gateways", 2)
    path = manifest(tmp_path, gateways=gateways)  # as `up --gateways N` writes it
    code, out, err = dry(capsys, str(scenario), "--profile", profile, "--manifest", str(path))
    assert code == 0, err
    assert out.splitlines()[-1].startswith("OK: every fault target is a component of the target")


def test_the_plan_and_the_load_totals_are_printed(tmp_path, capsys):
    code, out, _ = dry(
        capsys, KILL, "--profile", "pr", "--rate", "150",
        "--manifest", str(manifest(tmp_path)),
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"dry run: {KILL} (primary_kill, seed ")
    assert "nothing is loaded or injected" in lines[0]
    assert f"the manifest {tmp_path / 'manifest.json'} (a running target, --manifest)" in lines[1]
    assert any(
        line.startswith("load: 1 phase, ") and "requests (mean 150.0/s" in line for line in lines
    )
    assert "  6 s to the end of the load: kill(shard-1-primary) (faults[0])" in lines
    assert "guards: none" in lines


def test_the_capacity_steps_are_printed_with_the_time_they_add(tmp_path, capsys):
    overload = str(ROOT / "scenarios" / "overload.yaml")
    code, out, _ = dry(
        capsys, overload, "--profile", "nightly", "--manifest", str(manifest(tmp_path))
    )
    assert code == 0
    assert (
        "capacity: steps of 300, 400, 500, 550, 600, 650, 700, 800, 900 requests/s, 5 s each"
        " (45 s before the load)"
    ) in out.splitlines()
    assert "capacity:" not in dry(capsys, KILL, "--manifest", str(manifest(tmp_path)))[1]


def test_a_target_missing_from_the_manifest_exits_2_naming_it(tmp_path, capsys):
    code, out, err = dry(capsys, KILL, "--manifest", str(manifest(tmp_path, shards=1)))
    assert code == 2
    assert "kill(shard-1-primary) (faults[0])  [NOT IN THE TARGET]" in out
    assert (
        f"{KILL}: 1 fault target not in the manifest "
        f"{tmp_path / 'manifest.json'} (a running target, --manifest): faults[0] names "
        "'shard-1-primary' (kill); the target has: shard-0-primary, shard-0-replica, region, "
        "gateway-0, gateway-1, lb, redis"
    ) in err


def test_a_misspelt_target_exits_2_naming_it_before_anything_starts(tmp_path, capsys):
    bad = tmp_path / "misspelt.yaml"
    bad.write_text(Path(KILL).read_text().replace(
        "target: shard-1-primary", "target: shard-1-primray"))  # fmt: skip
    code, _, err = dry(capsys, str(bad))  # no --manifest: would start a target if it got there
    assert code == 2
    assert "faults[0].target: got 'shard-1-primray'" in err


def test_redis_counts_only_when_the_manifest_names_one(tmp_path):
    assert "redis" in read_components(manifest(tmp_path)).names
    assert "redis" not in read_components(manifest(tmp_path, redis=None)).names


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "cannot read the manifest"),
        ('{"components": {"a": 1}}', "not a target manifest"),
        ("[]", "not a target manifest"),
    ],
)
def test_an_unreadable_manifest_exits_2_saying_why(tmp_path, capsys, text, problem):
    path = tmp_path / "m.json"
    path.write_text(text)
    code, _, err = dry(capsys, KILL, "--manifest", str(path))
    assert code == 2 and f"--manifest {path}: {problem}" in err


def test_no_manifest_file_says_to_bring_the_target_up(tmp_path, capsys):
    code, _, err = dry(capsys, KILL, "--manifest", str(tmp_path / "none"))
    assert code == 2 and "no such file; is the target up (`recchaos sut up`)?" in err


def test_manifest_without_dry_run_is_a_usage_error(tmp_path, capsys):
    code = cli.main(["run", KILL, "--manifest", str(manifest(tmp_path))])
    assert code == 2
    assert "is only for --dry-run: a run starts (and stops) its own target" in (
        capsys.readouterr().err
    )


def test_missing_targets_names_generated_faults_by_their_origin():
    spec = FaultSpec("kill", "shard-7-primary", 12.0, 3.0, {}, origin="fault_schedule[2]")
    [line] = missing_targets((spec,), Components(("gateway",), "m"))
    assert line == "fault_schedule[2] names 'shard-7-primary' (kill); the target has: gateway"
