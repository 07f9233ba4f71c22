"""The stall probe, as real processes: a probe that does not run for a while records that spell
(SIGSTOP stands in for a CPU that ran nothing), the runner's probes leave one trusted record per
CPU and no process, and a probe that is not real-time is never trusted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.process import ManagedProcess, wait_until
from harness.process.stallprobe import read_report, stall_probes

REPO = Path(__file__).resolve().parents[2]
realtime = pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root")


def probe(tmp_path: Path, *extra: str) -> tuple[ManagedProcess, Path]:
    out = tmp_path / "probe-0.json"
    cpu = min(os.sched_getaffinity(0))
    argv = [sys.executable, "-m", "harness.process.stallprobe", "--cpu", str(cpu)]
    proc = ManagedProcess([*argv, "--out", str(out), *extra], tmp_path / "probe.log", cwd=REPO)
    proc.start()
    log = tmp_path / "probe.log"
    wait_until(lambda: "stallprobe: watching" in log.read_text(), 10.0, "the probe to start")
    time.sleep(0.2)
    return proc, out


@realtime
def test_a_spell_in_which_the_probe_could_not_run_is_recorded_as_a_stall(tmp_path):
    proc, out = probe(tmp_path)
    assert os.sched_getscheduler(proc.pid) == os.SCHED_FIFO
    proc.signal(signal.SIGSTOP)
    time.sleep(0.05)
    proc.signal(signal.SIGCONT)
    time.sleep(0.1)
    assert proc.stop() == 0
    report = read_report({min(os.sched_getaffinity(0)): out})
    assert report.trusted and report.notes == []
    assert any(s.ms >= 40 for s in report.stalls), report.stalls
    record = json.loads(out.read_text())
    assert record["realtime"] and record["pinned"] and record["wakeups"] > 100
    assert not list(tmp_path.glob("*.tmp"))  # written whole, under its own name


def test_a_probe_that_is_not_real_time_is_never_trusted(tmp_path):
    proc, out = probe(tmp_path, "--no-realtime")
    assert proc.stop() == 0
    report = read_report({min(os.sched_getaffinity(0)): out})
    assert not report.trusted
    assert report.notes == [
        f"the probe on CPU {min(os.sched_getaffinity(0))} proves nothing: asked not to be"
        " (--no-realtime)"
    ]


def test_a_missing_record_makes_the_report_untrusted(tmp_path):
    report = read_report({0: tmp_path / "never-written.json"})
    assert not report.trusted and report.notes[0].startswith("the probe on CPU 0 left no record")


@realtime
def test_the_runner_probes_watch_every_cpu_and_leave_nothing_running(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with stall_probes(tmp_path / "host") as report:
        time.sleep(0.5)
        probes = [p for p in psutil.Process().children() if p.pid not in before]
        assert len(probes) == len(os.sched_getaffinity(0))
    assert report.trusted and report.notes == []
    assert report.cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in probes)
    assert sorted(f.name for f in (tmp_path / "host").glob("*.json")) == [
        f"probe-{c}.json" for c in report.cpus
    ]


def test_a_cpu_outside_the_affinity_is_refused_naming_it(tmp_path):
    bad = max(os.sched_getaffinity(0)) + 1000
    argv = [sys.executable, "-m", "harness.process.stallprobe", "--cpu", str(bad)]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path / "x.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"--cpu {bad}: not one of this process's CPUs" in done.stderr
