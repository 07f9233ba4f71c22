"""The scheduler line scripts/test.sh prints (harness/process/machine.py), on made-up trees."""

from __future__ import annotations

from pathlib import Path

from harness.process.machine import cpu_cgroup, describe


def test_the_cpu_controller_is_found_in_v1_and_v2_cgroup_files():
    assert cpu_cgroup("4:memory:/x\n1:cpu,cpuacct:/job/7\n0::/\n") == ("v1", "/job/7")
    assert cpu_cgroup("0::/system.slice/ci.service\n") == ("v2", "/system.slice/ci.service")
    assert cpu_cgroup("garbage\n") is None


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_job_in_its_own_cgroup_reports_that_cgroups_real_time_budget(tmp_path: Path):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "sys/kernel/sched_rt_runtime_us", "950000\n")
    write(proc / "sys/kernel/sched_rt_period_us", "1000000\n")
    write(proc / "self/cgroup", "2:cpu:/ci/job\n")
    write(root / "cpu/ci/job/cpu.rt_runtime_us", "10000\n")
    write(root / "cpu/ci/job/cpu.rt_period_us", "1000000\n")
    line = describe(proc, root)
    assert "real-time budget 950000 us per 1000000 us" in line
    assert "CPU cgroup /ci/job (v1), its real-time budget 10000 us per 1000000 us" in line
    assert "no autogroup of its own" in line


def test_the_root_cgroup_with_an_autogroup(tmp_path: Path):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "self/cgroup", "0::/\n")
    write(proc / "self/autogroup", "/autogroup-5 nice 0\n")
    line = describe(proc, root)
    assert "CPU cgroup / (v2)" in line and "autogroup /autogroup-5 nice 0" in line
    assert "real-time budget unreadable" in line  # said, not guessed
