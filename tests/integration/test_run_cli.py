"""``recchaos run`` end to end with real processes: a whole run, a SIGKILLed harness, Ctrl-C,
and a bad scenario file. After each, nothing the run started may still be running. The harness
runs as a :class:`harness.process.ManagedProcess` (its output in a log beside the run
directories), stopped and reaped whatever the test does."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from harness.process import ManagedProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO = Path(__file__).resolve().parents[1] / "data" / "short_kill.yaml"
RUN_TIMEOUT_S = 240


def _recchaos(log: Path, *args: str) -> ManagedProcess:
    """The harness as a child whose Ctrl-C works. A shell starts background jobs with SIGINT
    ignored, and an ignored signal stays ignored across exec (so Python installs no
    KeyboardInterrupt handler): a test run started that way would send a Ctrl-C nobody hears.
    A handled signal is reset to its default at exec, so SIGINT is handled here while the
    child starts."""
    argv = [sys.executable, "-m", "harness.cli", *args]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return ManagedProcess(argv, log, name="recchaos", group=True).start()
    finally:
        signal.signal(signal.SIGINT, previous)


def _output(proc: ManagedProcess) -> str:
    assert proc.log is not None
    return proc.log.read_text(errors="replace")[-3000:]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _started_pids(run_dir: Path) -> list[int]:
    """Every PID the run started: the cluster's components, the proxy, the watchdog."""
    pids = []
    for name in ("cluster/manifest.json", "cluster/components.json"):
        path = run_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            pids += [c["pid"] for c in data.get("components", []) if c.get("pid")]
            pids += [data[k] for k in ("proxy_pid", "redis_pid") if data.get(k)]
    return pids


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _only_run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _fault_applied(out: Path) -> bool:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    journal = dirs[0] / "faults.journal" if dirs else None
    return bool(journal and journal.exists() and '"applied"' in journal.read_text())


def _wait_for(predicate, timeout_s: float, what: str, proc: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.exited() or time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s} s; {proc.tail_text(40)}")
        time.sleep(0.1)


def test_whole_run_writes_a_complete_record_and_leaves_nothing(tmp_path):
    with _recchaos(tmp_path / "recchaos.log", "run", str(SCENARIO), "--out", str(tmp_path),
                   "--no-progress") as proc:  # fmt: skip
        code = proc.wait(RUN_TIMEOUT_S)
    out = _output(proc)
    assert code in (0, 1, 3), out
    run_dir = _only_run_dir(tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete", out
    assert record["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert record["seed"] == 11
    assert record["replay"].startswith("recchaos run ") and "--seed 11" in record["replay"]
    [kill] = record["timeline"]
    assert kill["kind"] == "kill" and kill["target"] == "shard-0-primary"
    assert kill["verified"], kill
    assert kill["heal_ns"] > kill["inject_ns"]
    assert (run_dir / "load" / "requests.npy").exists()
    details = json.loads((run_dir / "details.json").read_text())
    assert details["unaccounted"] == []
    assert details["tier_cross_check"]["agree"] is True, details["tier_cross_check"]
    assert _wait_gone(_started_pids(run_dir), 10) == []


def test_sigkill_of_the_harness_leaves_the_watchdog_to_clean_up(tmp_path):
    with _recchaos(tmp_path / "recchaos.log", "run", str(SCENARIO), "--out", str(tmp_path),
                   "--no-progress") as proc:  # fmt: skip
        _wait_for(lambda: _fault_applied(tmp_path), 180, "the kill fault being applied", proc)
        run_dir = _only_run_dir(tmp_path)
        pids = _started_pids(run_dir)
        assert pids
        proc.signal(signal.SIGKILL)
        proc.wait(10)
        assert _wait_gone(pids, 30) == [], (run_dir / "watchdog.log").read_text()[-2000:]
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "killed", record["status"]  # closed by the watchdog
        assert record["ended_wall"] and any("killed:" in e for e in record["errors"])


def test_ctrl_c_heals_stops_and_writes_a_partial_record(tmp_path):
    with _recchaos(tmp_path / "recchaos.log", "run", str(SCENARIO), "--out", str(tmp_path),
                   "--no-progress") as proc:  # fmt: skip
        # Mid-load with the kill active (4 s into 12 s of load), so there is a fault to heal.
        _wait_for(lambda: _fault_applied(tmp_path), 180, "the kill fault being applied", proc)
        run_dir = _only_run_dir(tmp_path)
        pids = _started_pids(run_dir)
        proc.signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 130, _output(proc)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "incomplete"
    assert any("interrupted" in e for e in record["errors"]), record["errors"]
    journal = (run_dir / "faults.journal").read_text()
    healed = [json.loads(line) for line in journal.splitlines() if '"type":"heal"' in line]
    assert healed and all(h["ok"] for h in healed), journal[-2000:]  # the active kill healed
    assert _wait_gone(pids, 10) == []


def test_bad_scenario_exits_2_naming_file_field_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.read_text().replace("rate: 100", "rate: -5"))
    with _recchaos(
        tmp_path / "recchaos.log", "run", str(bad), "--out", str(tmp_path / "runs")
    ) as proc:
        code = proc.wait(60)
    out = _output(proc)
    assert code == 2, out
    assert str(bad) in out and "load[0].rate" in out and "-5" in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
