"""CPU faults with cgroup v1 (root only): ``cpu_throttle`` (a CFS quota of ``cpu_fraction`` of
one core) and ``cpu_freeze`` (the freezer controller).

On these machines cgroup v1 quota and freezer work and cgroup v2 ``cpu.max`` does not, so only
v1 hierarchies are used: a fresh cgroup ``recchaos-<short run id>-<n>`` is made at the top of the
controller's hierarchy, configured, and the target process is moved into it (all its threads:
``cgroup.procs``). The heal (also the watchdog's ``cgroup_remove`` action) thaws a freezer
cgroup, moves every process in it back to where the target came from (or to the hierarchy's
root), and removes the directory; it is idempotent and only touches ``recchaos-*`` cgroups.

Evidence: the target's PID listed in the cgroup's ``cgroup.procs`` with the quota set (plus
``nr_throttled`` from ``cpu.stat``), or ``freezer.state`` reading ``FROZEN``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.inject.base import (
    BaseInjector,
    FaultUnsupported,
    HealError,
    InjectContext,
    InjectError,
)
from harness.inject.signals import ProcessRef

PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
NAME_PREFIX = "recchaos-"
CONTROLLERS = {"cpu_throttle": "cpu", "cpu_freeze": "freezer"}
FREEZE_TIMEOUT_S = 5.0


def v1_mount(controller: str, mounts: str | None = None) -> Path | None:
    """Where the cgroup v1 hierarchy holding ``controller`` is mounted, or None."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "cgroup" and controller in parts[3].split(","):
            return Path(parts[1])
    return None


def unsupported_reason(controller: str) -> str | None:
    """Why a cgroup v1 ``controller`` fault cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return f"cgroup faults need root (running as uid {os.geteuid()})"
    mount = v1_mount(controller)
    if mount is None:
        return (
            f"no cgroup v1 hierarchy with the {controller} controller is mounted (cgroup v2 "
            "cpu.max does not work on these machines, so it is not used)"
        )
    needed = "cpu.cfs_quota_us" if controller == "cpu" else "cgroup.procs"
    if not (mount / needed).exists():
        return f"{mount} has no {needed} (is {controller} control on in this kernel?)"
    return None


def cgroup_of(pid: int, controller: str) -> str | None:
    """The v1 cgroup path (relative to its hierarchy) of ``pid`` for ``controller``."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


def procs_in(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def check_cgroup_path(path: Path) -> Path:
    if not path.name.startswith(NAME_PREFIX) or not str(path).startswith("/sys/fs/cgroup/"):
        raise HealError(f"refusing to touch cgroup {path}: only {NAME_PREFIX}* cgroups are ours")
    return path


def remove_cgroup(path: Path, origin: str | None, controller: str) -> str:
    """Thaw, move every process back to ``origin`` (or the root), remove. Idempotent."""
    check_cgroup_path(path)
    if not path.exists():
        return f"cgroup {path} is gone"
    if controller == "freezer":
        _write(path / "freezer.state", "THAWED")
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while (path / "freezer.state").read_text().strip() != "THAWED":
            if time.monotonic() > deadline:
                raise HealError(f"cgroup {path} did not thaw within {FREEZE_TIMEOUT_S:g} s")
            time.sleep(0.01)
    root = path.parent
    back = root / origin.lstrip("/") if origin else root
    if not (back / "cgroup.procs").exists():
        back = root
    moved = 0
    for attempt in range(50):
        pids = procs_in(path)
        for pid in pids:
            try:
                _write(back / "cgroup.procs", str(pid))
                moved += 1
            except ProcessLookupError:
                pass
            except OSError:
                _write(root / "cgroup.procs", str(pid))  # the origin may be gone or refuse it
                moved += 1
        try:
            path.rmdir()
            return f"cgroup {path} removed ({moved} process(es) moved back to {back})"
        except FileNotFoundError:
            return f"cgroup {path} is gone"
        except OSError as exc:  # EBUSY while a process is still leaving
            if attempt == 49:
                raise HealError(f"cannot remove cgroup {path}: {exc}") from exc
            time.sleep(0.02)
    return f"cgroup {path} removed"


def execute_cgroup_remove(action: Mapping[str, Any]) -> str:
    """Heal action ``cgroup_remove``."""
    origin = action.get("origin")
    return remove_cgroup(Path(str(action["path"])), origin, str(action["controller"]))


class CgroupInjector(BaseInjector):
    """``cpu_throttle`` and ``cpu_freeze`` of the target process."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.controller = CONTROLLERS[kind]
        self.name = f"{NAME_PREFIX}{ctx.short_run_id()}-{ctx.next_seq()}"
        self.path: Path | None = None
        self.origin: str | None = None
        self.ref: ProcessRef | None = None
        self.quota_us = (
            max(MIN_QUOTA_US, int(float(params["cpu_fraction"]) * PERIOD_US))
            if self.controller == "cpu"
            else 0
        )

    def apply(self) -> None:
        reason = unsupported_reason(self.controller)
        if reason:
            raise FaultUnsupported(self.kind, self.target, reason)
        mount = v1_mount(self.controller)
        assert mount is not None
        self.ref = ProcessRef.of_component(self.ctx.component(self.target), self.label)
        self.origin = cgroup_of(self.ref.pid, self.controller)
        self.path = mount / self.name
        self.path.mkdir()
        if self.controller == "cpu":
            _write(self.path / "cpu.cfs_period_us", str(PERIOD_US))
            _write(self.path / "cpu.cfs_quota_us", str(self.quota_us))
        _write(self.path / "cgroup.procs", str(self.ref.pid))
        if self.controller == "freezer":
            _write(self.path / "freezer.state", "FROZEN")
            deadline = time.monotonic() + FREEZE_TIMEOUT_S
            while self.freezer_state() != "FROZEN":
                if time.monotonic() > deadline:
                    raise InjectError(
                        f"{self.label}: cgroup {self.path} is {self.freezer_state()}, not FROZEN, "
                        f"after {FREEZE_TIMEOUT_S:g} s"
                    )
                time.sleep(0.01)

    def freezer_state(self) -> str:
        assert self.path is not None
        return (self.path / "freezer.state").read_text().strip()

    def verify(self) -> tuple[bool, str]:
        if self.path is None or self.ref is None:
            return False, "not applied"
        if self.ref.pid not in procs_in(self.path):
            return False, f"PID {self.ref.pid} is not in {self.path}/cgroup.procs"
        where = f"PID {self.ref.pid} is in {self.path}"
        if self.controller == "freezer":
            state = self.freezer_state()
            return state == "FROZEN", f"{where}; freezer.state {state}"
        quota = int((self.path / "cpu.cfs_quota_us").read_text())
        stat = dict(
            line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line
        )
        note = (
            f"{where}; cpu.cfs_quota_us {quota} of period {PERIOD_US}; "
            f"nr_throttled {stat.get('nr_throttled', '?')}"
        )
        return quota == self.quota_us, note

    def heal(self) -> None:
        if self.path is not None:
            remove_cgroup(self.path, self.origin, self.controller)

    def heal_action(self) -> dict[str, Any]:
        mount = v1_mount(self.controller) or Path("/sys/fs/cgroup") / self.controller
        return {
            "action": "cgroup_remove",
            "path": str(self.path or mount / self.name),
            "controller": self.controller,
            "origin": self.origin,
            "pids": [self.ref.pid] if self.ref else [],
        }
