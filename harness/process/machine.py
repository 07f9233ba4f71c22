"""One line that says how this machine schedules the processes a test run starts.

Latency figures depend on it, and two machines with the same kernel can differ: autogroups (the
per-session fair share the recommender's servers use to start in the background) apply only to
processes in the root CPU cgroup and exist only for sessions started since boot (a job whose
line of parents never called setsid shares the default group), and a real-time task in another
cgroup draws on that cgroup's own real-time budget (``cpu.rt_runtime_us`` per
``cpu.rt_period_us``, where the kernel has real-time group scheduling), shared by every
real-time task in it. ``scripts/test.sh`` prints the line
before the first tier, so that a run's log says what it ran on.

    python -m harness.process.machine
"""

from __future__ import annotations

import os
import resource
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_cgroup(proc_cgroup: str) -> tuple[str, str] | None:
    """``(hierarchy, path)`` of the CPU controller in a ``/proc/PID/cgroup`` text: the v1 line
    naming ``cpu`` (``1:cpu,cpuacct:/a``), else the v2 line (``0::/a``); None without either."""
    unified = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "cpu" in controllers.split(","):
            return "v1", path
        if controllers == "":
            unified = ("v2", path)
    return unified


def describe(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> str:
    """CPUs, the kernel's real-time budget, the CPU cgroup with its real-time budget, the
    autogroup and the real-time limits of this process."""
    parts = [f"{os.cpu_count()} CPUs"]
    runtime = _read(proc / "sys/kernel/sched_rt_runtime_us")
    period = _read(proc / "sys/kernel/sched_rt_period_us")
    if runtime is None or period is None:
        parts.append("real-time budget unreadable")
    else:
        parts.append(f"real-time budget {runtime} us per {period} us")
    found = cpu_cgroup(_read(proc / "self/cgroup") or "")
    if found is None:
        parts.append("CPU cgroup unknown")
    else:
        hierarchy, path = found
        # v1 mounts each controller apart; v2 is the root itself, or "unified" beside v1's
        if hierarchy == "v1":
            base = cgroup_root / "cpu"
        elif (cgroup_root / "unified").is_dir():
            base = cgroup_root / "unified"
        else:
            base = cgroup_root
        group = base / path.lstrip("/")
        rt = _read(group / "cpu.rt_runtime_us")
        where = f"CPU cgroup {path} ({hierarchy})"
        if rt is not None:
            where += f", its real-time budget {rt} us per {_read(group / 'cpu.rt_period_us')} us"
        parts.append(where)
    autogroup = _read(proc / "self/autogroup")
    # Empty for a process in the default group (no setsid since boot up its line of parents);
    # the recommender's servers lead sessions of their own and get one each all the same.
    parts.append(f"autogroup {autogroup}" if autogroup else "no autogroup of its own (default)")
    rtprio = resource.getrlimit(resource.RLIMIT_RTPRIO)
    parts.append(f"RLIMIT_RTPRIO {rtprio[0]}/{rtprio[1]}")
    return "; ".join(parts)


if __name__ == "__main__":
    print(f"scheduler: {describe()}")
