"""Fault injectors for the docker backend: the same kinds, applied to containers through the
``docker`` SDK (and iptables inside a container's network namespace).

The fault registry (:mod:`harness.model.fault_kinds`) names these injectors for the ``docker``
backend, which :func:`harness.inject.base.make_injector` uses when the manifest says
``"backend": "docker"`` (see :mod:`harness.sut.containers`):

* ``kill``: SIGKILL to the container's main process by its host PID when the engine is on this
  host (checked against the container's cgroup; the fault then starts at once, not after the
  engine's round trip), else ``docker kill``; ``terminate``: SIGTERM, SIGKILL after
  ``grace_s`` (what ``docker stop`` does, without blocking the schedule). Verified by the
  container's state ``exited``; healed by starting the same container again (the context's
  restart hook, which waits until it listens and updates the manifest).
* ``freeze`` and ``cpu_freeze``: ``docker pause`` (the cgroup freezer); verified by state
  ``paused``; healed by ``docker unpause``.
* ``restart``: SIGKILL, then a start after ``delay_s``.
* ``cpu_throttle``: ``docker update --cpu-quota`` (``cpu_fraction`` of one core per 100 ms
  period); verified by the container's HostConfig (and its cgroup's ``cpu.cfs_quota_us`` where
  readable); healed by restoring the quota it had (none: -1).
* ``disconnect``: ``docker network disconnect`` from the cluster's network; verified by the
  container no longer listing that network; healed by reconnecting it with its DNS alias.
* ``partition`` and ``packet_loss``: a ``RECCHAOS-*`` chain in the container's own network
  namespace (``nsenter -t PID -n iptables ...``) dropping TCP to and from the component's port;
  verified by the chain's packet counters; healed by deleting the chain (the namespace, and so
  the rule, also goes with the container). Needs the engine on this host.
* ``redis_down`` / ``region_down``: ``kill`` or ``stop`` (pause) of that container;
  ``region_down`` with ``mode: blackhole`` disconnects it.

Application fault points (``app_*``) are the shard server's own and work unchanged through the
published port (the same injector as on the process backend); the proxy kinds (``latency``, ...)
have no proxy here, so the registry gives them no docker entry and they raise FaultUnsupported.

Each injector only touches the container the manifest names by id. Heal actions for the
watchdog: ``docker_unpause``, ``docker_connect``, ``docker_cpu_reset``,
``docker_netns_drop_chain``.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.docker_engine import docker_client, engine_is_local
from harness.inject.base import (
    NO_ACTION,
    BaseInjector,
    FaultUnsupported,
    HealError,
    InjectContext,
    InjectError,
    Injector,
)
from harness.inject.netfilter import CHAIN_PREFIX, check_chain_name, rule_specs
from harness.inject.signals import ProcessRef

CPU_PERIOD_US = 100_000
POLL_S = 0.02
TIMEOUT_S = 10.0


def _client(docker_host: str | None) -> Any:
    return docker_client(docker_host)


def _is_local(docker_host: str | None) -> bool:
    return engine_is_local(docker_host)


class ContainerInjector(BaseInjector):
    """Shared: the target's container (by the manifest's id) and bounded state polling."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self._container: Any = None

    @property
    def container_id(self) -> str:
        cid = self.ctx.component(self.target).container
        if not cid:
            raise InjectError(
                f"{self.label}: the manifest names no container for {self.target} (is the "
                "target running on the docker backend?)"
            )
        return cid

    def container(self) -> Any:
        if self._container is None:
            self._container = _client(self.ctx.docker_host).containers.get(self.container_id)
        return self._container

    def status(self) -> str:
        c = self.container()
        c.reload()
        return str(c.status)

    def wait_status(self, wanted: tuple[str, ...], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.status()
            if state in wanted or time.monotonic() > deadline:
                return state
            time.sleep(POLL_S)

    def host_process(self) -> ProcessRef | None:
        """The container's main process by the manifest's host PID, when the engine is on this
        host and that PID is still in the container's cgroup (no engine call: a signal sent
        this way takes effect at once, where the engine's API took 50-270 ms on 2 busy cores)."""
        pid = self.ctx.component(self.target).pid
        if not pid or not _is_local(self.ctx.docker_host):
            return None
        try:
            if self.container_id not in Path(f"/proc/{pid}/cgroup").read_text():
                return None  # another process (the PID was reused) or another container
        except OSError:
            return None
        return ProcessRef.of_pid(int(pid))

    def bring_back(self) -> int:
        """Start the container again through the run's restart hook (waits until it listens,
        updates the manifest) or, without one, directly."""
        if self.ctx.restart is not None:
            pid = int(self.ctx.restart(self.target))
            self.ctx.set_pid(self.target, pid)
            return pid
        c = self.container()
        c.start()
        c.reload()
        return int(c.attrs["State"].get("Pid") or 0)


class ContainerKill(ContainerInjector):
    """``kill`` (SIGKILL) and ``terminate`` (SIGTERM, SIGKILL after ``grace_s``)."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.applied = False
        self.new_pid: int | None = None
        self._timer: threading.Timer | None = None

    def apply(self) -> None:
        if self.kind == "kill" and (ref := self.host_process()) is not None:
            self.applied = True  # SIGKILL at once; the engine sees the container exit
            if ref.send(signal.SIGKILL):
                return
        c = self.container()
        if self.status() != "running":
            raise InjectError(f"{self.label}: container {c.name} is {c.status}, not running")
        self.applied = True
        if self.kind == "terminate":
            c.kill("SIGTERM")
            grace = float(self.params["grace_s"])
            self._timer = threading.Timer(grace, self._kill_if_running)
            self._timer.daemon = True
            self._timer.start()
        else:
            c.kill("SIGKILL")

    def _kill_if_running(self) -> None:
        import docker

        try:
            if self.status() == "running":
                self.container().kill("SIGKILL")
        except docker.errors.DockerException:
            pass  # gone already, or the heal got there first

    def verify(self) -> tuple[bool, str]:
        if not self.applied:
            return False, "not applied"
        wait = 2.0 if self.kind == "kill" else min(float(self.params["grace_s"]), 2.0)
        state = self.wait_status(("exited", "dead"), wait)
        c = self.container()
        if state in ("exited", "dead"):
            code = c.attrs["State"].get("ExitCode")
            return True, f"container {c.name} is {state} (exit code {code}) per docker inspect"
        return False, f"container {c.name} is {state}, not exited"

    def heal(self) -> None:
        if not self.applied or self.new_pid is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        if self.status() in ("running", "paused", "restarting"):
            self.container().kill("SIGKILL")
            if self.wait_status(("exited", "dead"), 10.0) not in ("exited", "dead"):
                raise HealError(f"{self.label}: container survived SIGKILL for 10 s")
        self.new_pid = self.bring_back()

    def heal_action(self) -> dict[str, Any]:
        return dict(NO_ACTION)  # a stopped container needs no heal; teardown removes it


class ContainerPause(ContainerInjector):
    """``freeze`` / ``cpu_freeze``: ``docker pause`` (cgroup freezer), healed by unpause."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.paused = False

    def apply(self) -> None:
        self.paused = True
        self.container().pause()

    def verify(self) -> tuple[bool, str]:
        if not self.paused:
            return False, "not applied"
        state = self.wait_status(("paused",), 1.0)
        name = self.container().name
        if state == "paused":
            return True, f"container {name} is paused (cgroup freezer) per docker inspect"
        return False, f"container {name} is {state}, not paused"

    def heal(self) -> None:
        if self.paused:  # never unpause what we did not pause
            execute_unpause(self.heal_action())

    def heal_action(self) -> dict[str, Any]:
        try:
            cid = self.container_id
        except Exception:  # noqa: BLE001 - no container: nothing to unpause
            return dict(NO_ACTION)
        return {"action": "docker_unpause", "docker_host": self.ctx.docker_host, "container": cid}


def execute_unpause(action: Mapping[str, Any]) -> str:
    """Heal action ``docker_unpause``: unpause the container if it is (still) paused."""
    import docker

    try:
        c = _client(action.get("docker_host")).containers.get(str(action["container"]))
    except docker.errors.NotFound:
        return f"container {action['container']} is gone; nothing to unpause"
    if c.status != "paused":
        return f"container {c.name} is {c.status}; nothing to unpause"
    c.unpause()
    return f"container {c.name} unpaused"


class ContainerRestart(ContainerInjector):
    """``restart``: SIGKILL, then a start after ``delay_s`` (in a thread)."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.applied = False
        self.new_pid: int | None = None
        self.error = ""
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def apply(self) -> None:
        self.applied = True
        self.container().kill("SIGKILL")
        self._timer = threading.Timer(float(self.params["delay_s"]), self._bring_back)
        self._timer.daemon = True
        self._timer.start()

    def _bring_back(self) -> None:
        with self._lock:
            if self.new_pid is not None or not self.applied:
                return
            try:
                self.wait_status(("exited", "dead"), 5.0)
                self.new_pid = self.bring_back()
                self.error = ""
            except Exception as exc:  # noqa: BLE001 - reported by verify and heal
                self.error = f"{type(exc).__name__}: {exc}"

    def verify(self) -> tuple[bool, str]:
        if not self.applied:
            return False, "not applied"
        name = self.container().name
        if self.new_pid is not None:
            return True, f"container {name} was killed and started again (PID {self.new_pid})"
        state = self.wait_status(("exited", "dead"), 1.0)
        if state in ("exited", "dead"):
            note = f"; restart failed: {self.error}" if self.error else ""
            return True, f"container {name} is {state} (restart after delay_s){note}"
        return False, f"container {name} is {state}, not exited"

    def heal(self) -> None:
        if not self.applied:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._bring_back()
        if self.new_pid is None:
            raise HealError(f"{self.label}: restart failed: {self.error}")

    def heal_action(self) -> dict[str, Any]:
        return dict(NO_ACTION)


class ContainerCpu(ContainerInjector):
    """``cpu_throttle``: a CFS quota of ``cpu_fraction`` of one core on the container."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.quota = max(1000, int(float(params["cpu_fraction"]) * CPU_PERIOD_US))
        self.before: tuple[int, int] | None = None

    def apply(self) -> None:
        c = self.container()
        c.reload()
        host = c.attrs["HostConfig"]
        self.before = (int(host.get("CpuQuota") or 0), int(host.get("CpuPeriod") or 0))
        c.update(cpu_period=CPU_PERIOD_US, cpu_quota=self.quota)

    def verify(self) -> tuple[bool, str]:
        if self.before is None:
            return False, "not applied"
        c = self.container()
        c.reload()
        quota = int(c.attrs["HostConfig"].get("CpuQuota") or 0)
        cgroup = _cgroup_quota(c.id) if _is_local(self.ctx.docker_host) else None
        note = f"container {c.name}: CpuQuota {quota} us per {CPU_PERIOD_US} us"
        if cgroup is not None:
            note += f"; cgroup cpu.cfs_quota_us {cgroup}"
        ok = quota == self.quota and cgroup in (None, self.quota)
        return ok, note

    def heal(self) -> None:
        if self.before is not None:
            execute_cpu_reset(self.heal_action())

    def heal_action(self) -> dict[str, Any]:
        try:
            cid = self.container_id
        except Exception:  # noqa: BLE001
            return dict(NO_ACTION)
        quota, period = self.before or (0, 0)
        return {
            "action": "docker_cpu_reset",
            "docker_host": self.ctx.docker_host,
            "container": cid,
            "quota": quota,
            "period": period,
        }


def _cgroup_quota(container_id: str) -> int | None:
    for base in ("/sys/fs/cgroup/cpu/docker", "/sys/fs/cgroup/cpu,cpuacct/docker"):
        try:
            return int(Path(base, container_id, "cpu.cfs_quota_us").read_text())
        except (OSError, ValueError):
            continue
    return None


def execute_cpu_reset(action: Mapping[str, Any]) -> str:
    """Heal action ``docker_cpu_reset``: the quota the container had (0 or less: unlimited)."""
    import docker

    try:
        c = _client(action.get("docker_host")).containers.get(str(action["container"]))
    except docker.errors.NotFound:
        return f"container {action['container']} is gone; no quota to reset"
    quota = int(action.get("quota") or 0)
    period = int(action.get("period") or 0) or CPU_PERIOD_US
    c.update(cpu_period=period, cpu_quota=quota if quota > 0 else -1)
    return f"container {c.name}: CPU quota reset to {'none' if quota <= 0 else quota}"


class ContainerDisconnect(ContainerInjector):
    """``disconnect`` (and ``region_down`` with ``mode: blackhole``): off the network."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.network: str | None = None

    def apply(self) -> None:
        net = self.ctx.network
        if not net:
            raise InjectError(f"{self.label}: the manifest names no docker network")
        self.network = net
        _client(self.ctx.docker_host).networks.get(net).disconnect(self.container(), force=True)

    def verify(self) -> tuple[bool, str]:
        if self.network is None:
            return False, "not applied"
        c = self.container()
        c.reload()
        nets = sorted(c.attrs["NetworkSettings"]["Networks"] or {})
        ok = self.network not in nets
        return ok, f"container {c.name} is on networks {nets or 'none'} per docker inspect"

    def heal(self) -> None:
        if self.network is not None:
            execute_connect(self.heal_action())

    def heal_action(self) -> dict[str, Any]:
        try:
            cid = self.container_id
        except Exception:  # noqa: BLE001
            return dict(NO_ACTION)
        return {
            "action": "docker_connect",
            "docker_host": self.ctx.docker_host,
            "container": cid,
            "network": self.network or self.ctx.network,
            "aliases": [self.target],
        }


def execute_connect(action: Mapping[str, Any]) -> str:
    """Heal action ``docker_connect``: reconnect with the DNS alias unless already connected."""
    import docker

    client = _client(action.get("docker_host"))
    try:
        c = client.containers.get(str(action["container"]))
        net = client.networks.get(str(action["network"]))
    except docker.errors.NotFound as exc:
        return f"container or network gone ({exc}); nothing to reconnect"
    if str(action["network"]) in (c.attrs["NetworkSettings"]["Networks"] or {}):
        return f"container {c.name} is on {net.name} already"
    net.connect(c, aliases=list(action.get("aliases") or []))
    return f"container {c.name} reconnected to {net.name}"


def nsenter_iptables(pid: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``iptables ARGS`` in the network namespace of host PID ``pid``, bounded by a timeout."""
    cmd = ["nsenter", "-t", str(pid), "-n", "iptables", "-w", "5", *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InjectError(f"{' '.join(cmd)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise InjectError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


HOOKS = ("INPUT", "OUTPUT")


class ContainerNetfilter(ContainerInjector):
    """``partition`` / ``packet_loss`` inside the container's network namespace."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.chain = check_chain_name(f"{CHAIN_PREFIX}{ctx.short_run_id()}-{ctx.next_seq()}")
        self.ref: ProcessRef | None = None

    def _port(self) -> int:
        internal = self.ctx.component(self.target).internal_address
        return int((internal or self.ctx.component(self.target).address).rpartition(":")[2])

    def apply(self) -> None:
        from harness.inject.netfilter import unsupported_reason

        if not _is_local(self.ctx.docker_host):
            raise FaultUnsupported(
                self.kind,
                self.target,
                f"iptables in a container's network namespace needs the engine on this host "
                f"(DOCKER_HOST is {self.ctx.docker_host!r}); use disconnect instead",
            )
        reason = unsupported_reason()
        if reason:
            raise FaultUnsupported(self.kind, self.target, reason)
        c = self.container()
        c.reload()
        ref = ProcessRef.of_pid(int(c.attrs["State"].get("Pid") or 0))
        if ref is None:
            raise InjectError(f"{self.label}: container {c.name} has no running process")
        self.ref = ref
        probability = self.params["probability"] if self.kind == "packet_loss" else None
        nsenter_iptables(ref.pid, "-N", self.chain)
        for spec in rule_specs(self._port(), probability):
            nsenter_iptables(ref.pid, "-A", self.chain, *spec)
        for hook in HOOKS:
            nsenter_iptables(ref.pid, "-I", hook, "1", "-j", self.chain)

    def verify(self) -> tuple[bool, str]:
        if self.ref is None:
            return False, "not applied"
        out = nsenter_iptables(self.ref.pid, "-n", "-v", "-x", "-L", self.chain).stdout
        packets = sum(
            int(line.split()[0]) for line in out.splitlines()[2:] if line.split()[:1] != []
        )
        note = (
            f"chain {self.chain} in the netns of PID {self.ref.pid} (port {self._port()}): "
            f"{packets} packet(s) dropped"
        )
        return packets > 0, note if packets else note + "; no packet matched yet"

    def heal(self) -> None:
        if self.ref is not None:
            execute_netns_drop_chain(self.heal_action())

    def heal_action(self) -> dict[str, Any]:
        if self.ref is None:
            return dict(NO_ACTION)
        return {**self.ref.to_action("docker_netns_drop_chain"), "chain": self.chain}


def execute_netns_drop_chain(action: Mapping[str, Any]) -> str:
    """Heal action ``docker_netns_drop_chain``: remove the chain and its jumps in the netns of
    the recorded process (only while it is that process; its namespace dies with it)."""
    chain = check_chain_name(str(action["chain"]))
    ref = ProcessRef(int(action["pid"]), int(action["starttime"]))
    if not ref.alive():
        return f"PID {ref.pid} is gone, and its network namespace (and chain {chain}) with it"
    for hook in HOOKS:
        while nsenter_iptables(ref.pid, "-D", hook, "-j", chain, check=False).returncode == 0:
            pass
    if nsenter_iptables(ref.pid, "-S", chain, check=False).returncode != 0:
        return f"chain {chain} is gone from the netns of PID {ref.pid}"
    nsenter_iptables(ref.pid, "-F", chain)
    nsenter_iptables(ref.pid, "-X", chain)
    return f"chain {chain} deleted in the netns of PID {ref.pid}"


class ContainerDependency(BaseInjector):
    """``redis_down`` / ``region_down`` reported under their own kind, by another mechanism."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        mode = params["mode"]
        self.inner: Injector
        if mode == "stop":
            self.inner = ContainerPause("freeze", target, {}, ctx)
        elif mode == "blackhole":
            self.inner = ContainerDisconnect("disconnect", target, {}, ctx)
        else:
            self.inner = ContainerKill("kill", target, {}, ctx)

    def apply(self) -> None:
        self.inner.apply()

    def verify(self) -> tuple[bool, str]:
        ok, note = self.inner.verify()
        return ok, f"{self.params['mode']}: {note}"

    def heal(self) -> None:
        self.inner.heal()

    def heal_action(self) -> dict[str, Any]:
        return self.inner.heal_action()
