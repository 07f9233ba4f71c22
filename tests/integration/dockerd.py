"""A private Docker engine for the tests marked ``docker``: started, checked, and removed again.

:class:`PrivateDockerd` runs Debian's ``dockerd`` as a child in a process group of its own
(a :class:`harness.process.ManagedProcess`),
with its data root, exec root, PID file and socket in a fresh directory, no default bridge
(``--bridge=none``), and hands-off host networking (``--iptables=false --ip-forward=false``):
published ports go through docker-proxy on 127.0.0.1, so the engine needs no host rules.
It waits (bounded) for the socket; if the engine cannot start here, :attr:`failure` says what
failed (the first storage driver that works is used: overlay2, then vfs).

On the way out it removes every container, network and image the engine holds, stops dockerd
and its process group (containerd and the shims: SIGTERM, SIGKILL after a grace period),
unmounts what is left under its directory, removes the directory, and restores the host to what it recorded before:
the network links (a bridge the engine made is deleted), iptables chains named ``DOCKER*``
(and the rules that jump to them, and the FORWARD policy), ``net.ipv4.ip_forward`` and the
cgroups (``/docker`` in each hierarchy, when the engine made it, is removed once empty).
:meth:`leftovers` says what still differs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness.process import ManagedProcess

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(*cmd: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def links() -> set[str]:
    out = _run("ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def cgroups() -> set[str]:
    """The cgroup directories an engine makes, one or two levels below each hierarchy's root:
    ``/ID`` (a container's 64 hex digits), or ``/docker`` and ``/docker/ID``. Nobody else's."""
    out: set[str] = set()
    for pattern in ("*/*/", "*/*/*/"):
        for path in CGROUP_ROOT.glob(pattern):
            if path.name == "docker" or re.fullmatch(r"[0-9a-f]{64}", path.name):
                out.add(str(path).rstrip("/"))
    return out


def docker_rules() -> list[str]:
    """iptables-save lines that mention DOCKER (chains, rules, jumps), filter and nat, plus the
    FORWARD policy (the engine sets it to DROP)."""
    out = []
    for table in ("filter", "nat"):
        proc = _run("iptables-save", "-t", table)
        for line in proc.stdout.splitlines():
            if "DOCKER" in line or line.startswith(":FORWARD"):
                out.append(f"{table}: {line.split(' [')[0]}")
    return out


def remove_docker_rules(before: list[str]) -> None:
    """Remove DOCKER* chains and the jumps to them that were not there ``before``; restore the
    FORWARD policy. Only DOCKER* chains are touched (other tools' rules are left alone)."""
    for table in ("filter", "nat"):
        save = _run("iptables-save", "-t", table).stdout.splitlines()
        for line in save:
            parts = line.split()
            if line.startswith("-A ") and "DOCKER" in line and f"{table}: {line}" not in before:
                chain = parts[1]
                if not chain.startswith("DOCKER"):  # a jump from a built-in chain
                    _run("iptables", "-w", "5", "-t", table, "-D", *parts[1:])
        chains = [
            line[1:].split()[0]
            for line in save
            if line.startswith(":DOCKER") and f"{table}: {line.split(' [')[0]}" not in before
        ]
        for chain in chains:
            _run("iptables", "-w", "5", "-t", table, "-F", chain)
        for chain in chains:
            _run("iptables", "-w", "5", "-t", table, "-X", chain)
    for line in before:
        if line.startswith("filter: :FORWARD"):
            _run("iptables", "-w", "5", "-P", "FORWARD", line.split()[2])


class PrivateDockerd:
    """``with PrivateDockerd() as engine:`` then ``engine.host`` is a ``unix://`` DOCKER_HOST
    (or ``engine.failure`` says why there is none)."""

    def __init__(self, cgroup_parent: str | None = None) -> None:
        """``cgroup_parent``: the engine's ``--cgroup-parent`` (None: its default, ``/docker``
        with cgroup v1 and cgroupfs; benchmarks/docker_backend.py compares it with ``/``)."""
        self.cgroup_parent = cgroup_parent
        self.dir = Path(tempfile.mkdtemp(prefix="rcd-", dir="/tmp"))  # short: socket path limit
        self.proc: ManagedProcess | None = None
        self.failure: str | None = None
        self.driver: str | None = None
        self.log = self.dir / "dockerd.log"
        self._links = links()
        self._rules = docker_rules()
        self._forward = IP_FORWARD.read_text().strip()
        self._cgroups = cgroups()

    @property
    def host(self) -> str:
        return f"unix://{self.dir / 'docker.sock'}"

    def command(self, driver: str) -> list[str]:
        d = self.dir
        return [
            "dockerd",
            f"--data-root={d / 'data'}",
            f"--exec-root={d / 'exec'}",
            f"--pidfile={d / 'dockerd.pid'}",
            f"--host={self.host}",
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            f"--storage-driver={driver}",
        ] + ([f"--cgroup-parent={self.cgroup_parent}"] if self.cgroup_parent else [])

    def start(self) -> PrivateDockerd:
        if shutil.which("dockerd") is None:
            self.failure = "dockerd is not installed (scripts/setup.sh installs docker.io as root)"
            return self
        if os.geteuid() != 0:
            self.failure = f"dockerd needs root (running as uid {os.geteuid()})"
            return self
        tried = []
        for driver in ("overlay2", "vfs"):
            error = self._try(driver)
            if error is None:
                self.driver = driver
                return self
            tried.append(f"--storage-driver={driver}: {error}")
        self.failure = "dockerd did not start: " + "; ".join(tried)
        return self

    def _try(self, driver: str) -> str | None:
        self.proc = ManagedProcess(self.command(driver), self.log, name="dockerd", group=True)
        self.proc.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.exited():
                break
            if self._ping():
                return None
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace").splitlines()[-3:]
        self._stop_daemon()
        return f"no answer on {self.host} within {START_TIMEOUT_S:.0f} s; log: {' | '.join(tail)}"

    def _ping(self) -> bool:
        import docker

        try:
            client = docker.DockerClient(base_url=self.host, version="auto", timeout=5)
        except docker.errors.DockerException:
            return False
        try:
            return bool(client.ping())
        except docker.errors.DockerException:
            return False
        finally:
            client.close()

    # -- teardown ------------------------------------------------------------------------------
    def remove_everything(self) -> list[str]:
        """Remove every container, non-default network and image; what failed."""
        import docker

        errors: list[str] = []
        client = docker.DockerClient(base_url=self.host, version="auto", timeout=60)
        try:
            for c in client.containers.list(all=True):
                try:
                    c.remove(force=True)
                except docker.errors.DockerException as exc:
                    errors.append(f"container {c.name}: {exc}")
            for n in client.networks.list():
                if n.name not in ("bridge", "host", "none"):
                    try:
                        n.remove()
                    except docker.errors.DockerException as exc:
                        errors.append(f"network {n.name}: {exc}")
            for image in client.images.list(all=True):
                try:
                    client.images.remove(image.id, force=True)
                except docker.errors.DockerException as exc:
                    errors.append(f"image {image.id}: {exc}")
        finally:
            client.close()
        return errors

    def counts(self) -> dict[str, int]:
        """Containers, networks (but the engine's own) and images on the engine. Containers are
        listed without inspecting each (``sparse``): one removed meanwhile is not an error."""
        import docker

        client = docker.DockerClient(base_url=self.host, version="auto", timeout=30)
        try:
            return {
                "containers": len(client.containers.list(all=True, sparse=True)),
                "networks": len(
                    [n for n in client.networks.list() if n.name not in ("bridge", "host", "none")]
                ),
                "images": len(client.images.list(all=True)),
            }
        finally:
            client.close()

    def _stop_daemon(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:  # with containerd and the shims, in dockerd's process group
            proc.stop(grace_s=STOP_GRACE_S, kill_wait_s=10.0)

    def _unmount(self) -> None:
        prefix = str(self.dir) + "/"
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)
        ]
        for path in sorted(mounts, key=len, reverse=True):
            _run("umount", "-l", path)

    def stop(self) -> list[str]:
        """Everything removed, the daemon stopped, the host restored; what failed."""
        errors: list[str] = []
        if self.proc is not None and self.proc.alive():
            try:
                errors += self.remove_everything()
            except Exception as exc:  # noqa: BLE001 - still stop the daemon and clean up
                errors.append(f"removing containers, networks, images: {exc}")
        self._stop_daemon()
        self._unmount()
        shutil.rmtree(self.dir, ignore_errors=True)
        for name in links() - self._links:  # a bridge (or veth) the engine left
            if name.startswith(("docker", "br-", "veth")):
                _run("ip", "link", "delete", name)
        remove_docker_rules(self._rules)
        for path in sorted(cgroups() - self._cgroups, key=len, reverse=True):
            try:  # an empty cgroup the engine made (its default parent, /docker)
                Path(path).rmdir()
            except OSError:
                pass  # not empty, or gone: leftovers() says which
        if IP_FORWARD.read_text().strip() != self._forward:
            IP_FORWARD.write_text(self._forward + "\n")
        return errors + self.leftovers()

    def leftovers(self) -> list[str]:
        out = []
        new_links = sorted(
            n for n in links() - self._links if n.startswith(("docker", "br-", "veth"))
        )
        if new_links:
            out.append(f"network links left: {', '.join(new_links)}")
        rules = [r for r in docker_rules() if r not in self._rules]
        if rules:
            out.append(f"iptables left: {rules}")
        if IP_FORWARD.read_text().strip() != self._forward:
            out.append(f"ip_forward is {IP_FORWARD.read_text().strip()}, was {self._forward}")
        if self.dir.exists():
            out.append(f"{self.dir} left")
        new_cgroups = sorted(cgroups() - self._cgroups)
        if new_cgroups:
            out.append(f"cgroups left: {', '.join(new_cgroups)}")
        return out

    def __enter__(self) -> PrivateDockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
