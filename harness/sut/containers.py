"""The recommender as Docker containers, one per component, through the ``docker`` Python SDK.

:class:`DockerCluster` is the container counterpart of
:class:`harness.sut.recommender.RecommenderCluster`: it starts every shard copy, the region, the
gateway (and Redis when asked) as containers on a user-defined bridge network of its own, each
component reachable from the others by its name (``shard-0-primary:7000``). The harness reaches
each component at its address on that network (``reach``: ``network``, the default with an
engine on this host: no docker-proxy in front of the gateway) or through a port published on
``127.0.0.1`` only (``published``: an engine elsewhere). It writes the same manifest as
``recchaos sut up`` (name, role, shard, pid, address, command; plus ``container``, the
container id, and top-level ``backend``, ``docker_host`` and ``reach``), so the injectors
(:mod:`harness.inject.containers`) and the watchdog find what they need there. ``pid`` is the host PID of the container's main process (a local engine
only), so even the watchdog's signal-based teardown works if the harness dies.

Two ways to get an image:

* ``image`` (default ``recchaos:latest``, built from ``deploy/Dockerfile``): the project is
  installed in the image; the artifacts are baked in (or mounted, see :class:`DockerOptions`).
* ``host_mounts``: no registry, no build. A minimal root filesystem (empty directories) is
  imported with ``docker import`` and each container runs this host's interpreter, virtual
  environment, repository and artifacts, all bind-mounted read-only at their own paths
  (with ``/usr``, ``/lib``, ``/lib64`` and ``/bin``). Needs the engine on this host.

Every container, the network and an imported image carry the label ``recchaos.cluster=<id>``
(the image: the repository ``<id>``) and are removed by ``stop()`` (idempotent). The cluster id is
registered with the run's watchdog before the first of them exists, and :func:`remove_cluster`
is how the watchdog removes them all if the harness dies. Nothing is published beyond loopback
unless ``RECCHAOS_DOCKER_PUBLISH`` says so.

The run's control token (:mod:`harness.auth`) goes to the containers in their environment: the
shard copies and the region require it for their ``control`` op, Redis writes it to a 0600
config file as its password before it starts (a shell builtin, so it never appears on a command
line) and the gateway sends it as its Redis password. The harness keeps it in ``control.token``
beside the manifest (0600; the manifest's ``control_token_file``).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.auth import (
    REDIS_PASSWORD_VARIABLE,
    TOKEN_FILE_NAME,
    TOKEN_VARIABLE,
    new_token,
    write_token_file,
)
from harness.docker_engine import docker_client, engine_is_local
from harness.model.errors import UsageError
from harness.process import ManagedProcess, ProcessRef, StartError, wait_until
from harness.sut.recommender import RecommenderOptions

INTERNAL_PORT = 7000  # every shard copy and the region listen here, each in its own netns
GATEWAY_PORT = 8080
REDIS_PORT = 6379
LABEL = "recchaos.cluster"
HOST_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
ROOTFS_DIRS = ("tmp", "proc", "sys", "dev", "etc", "run", "root", "var", "work", "opt")
ENV_PREFIX = "RECCHAOS_DOCKER_"
REACH_CHOICES = ("auto", "network", "published")
# Start-up under SCHED_IDLE needs the right to return to normal priority (system_under_test/
# runtime.py); without it a container's start-up competes with the serving containers.
CAPABILITIES = ["SYS_NICE"]


@dataclass(frozen=True)
class DockerOptions:
    """How to run the containers: which image (or the host's interpreter), which engine."""

    image: str = "recchaos:latest"
    python: str = "python"
    host_mounts: bool = False
    docker_host: str | None = None  # None: DOCKER_HOST, else the local socket
    publish: str = "127.0.0.1"
    artifacts: str | None = None  # a host directory mounted read-only (host_mounts: default)
    extra_mounts: tuple[str, ...] = ()
    reach: str = "auto"  # how the harness connects: see REACH_CHOICES and reaches_network()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DockerOptions:
        """Options from ``RECCHAOS_DOCKER_*`` (``IMAGE``, ``PYTHON``, ``HOST_MOUNTS`` 0/1,
        ``PUBLISH``, ``ARTIFACTS``, ``REACH``) and ``DOCKER_HOST``; UsageError names a bad
        value."""
        env = os.environ if env is None else env
        flag = env.get(ENV_PREFIX + "HOST_MOUNTS", "0").strip().lower()
        if flag not in ("0", "1", "false", "true", "no", "yes", ""):
            raise UsageError(
                f"invalid value {flag!r} for {ENV_PREFIX}HOST_MOUNTS from the environment; "
                "allowed: 1 (run the host's interpreter in a minimal imported image) or 0"
            )
        publish = env.get(ENV_PREFIX + "PUBLISH", "127.0.0.1").strip() or "127.0.0.1"
        if publish not in ("127.0.0.1", "::1", "0.0.0.0", "::") and not _is_ip(publish):
            raise UsageError(
                f"invalid value {publish!r} for {ENV_PREFIX}PUBLISH from the environment; "
                "allowed: an IP address of the Docker host (default 127.0.0.1, loopback only)"
            )
        reach = env.get(ENV_PREFIX + "REACH", "").strip().lower() or "auto"
        if reach not in REACH_CHOICES:
            raise UsageError(
                f"invalid value {reach!r} for {ENV_PREFIX}REACH from the environment; allowed: "
                "network (the containers' addresses on the cluster's bridge, no docker-proxy; "
                "needs the engine on this host), published (ports published on "
                f"{ENV_PREFIX}PUBLISH through docker-proxy) or auto (network with a local "
                "engine, else published)"
            )
        return cls(
            image=env.get(ENV_PREFIX + "IMAGE", "").strip() or cls.image,
            python=env.get(ENV_PREFIX + "PYTHON", "").strip() or cls.python,
            host_mounts=flag in ("1", "true", "yes"),
            docker_host=env.get("DOCKER_HOST") or None,
            publish=publish,
            artifacts=env.get(ENV_PREFIX + "ARTIFACTS") or None,
            reach=reach,
        )

    def reaches_network(self) -> bool:
        """Whether the harness connects to the containers' own addresses on the cluster's
        bridge (the engine on this host), not to ports published through docker-proxy."""
        if self.reach == "auto":
            return engine_is_local(self.docker_host)
        return self.reach == "network"


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def minimal_rootfs_tar() -> bytes:
    """A root filesystem of empty directories (and this host's top-level links such as
    ``/lib64 -> usr/lib64``), for ``docker import``: no registry needed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ROOTFS_DIRS:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for top in HOST_DIRS:  # a merged /usr: /bin -> usr/bin and so on, as on this host
            if os.path.islink(top):
                info = tarfile.TarInfo(top.lstrip("/"))
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(top)
                tar.addfile(info)
    return buf.getvalue()


def import_rootfs_image(client: Any, repository: str, tag: str = "latest") -> str:
    """``docker import`` of :func:`minimal_rootfs_tar` as ``repository:tag``; returns the id."""
    client.api.import_image_from_data(minimal_rootfs_tar(), repository=repository, tag=tag)
    return str(client.images.get(f"{repository}:{tag}").id)


def remove_cluster(docker_host: str | None, cluster_id: str) -> tuple[list[str], list[str]]:
    """Remove every container and network labelled ``recchaos.cluster=<cluster_id>`` and every
    image of the repository ``<cluster_id>`` (each even if another failed). Returns what was
    removed (counted by kind) and what could not be."""
    import docker

    client = docker_client(docker_host)
    counts = {"container": 0, "network": 0, "image": 0}
    errors: list[str] = []
    label = f"{LABEL}={cluster_id}"
    try:
        for c in client.containers.list(all=True, filters={"label": label}):
            errors += _removed(lambda c=c: c.remove(force=True), f"container {c.name}", counts)
        for n in client.networks.list(filters={"label": label}):
            errors += _removed(n.remove, f"network {n.name}", counts)
        for image in client.images.list(name=cluster_id):
            remove = lambda i=image: client.images.remove(i.id, force=True)  # noqa: E731
            errors += _removed(remove, f"image {image.id}", counts)
    except docker.errors.DockerException as exc:
        errors.append(f"docker cluster {cluster_id}: {exc}")
    finally:
        client.close()
    removed = [f"{n} {kind}(s)" for kind, n in counts.items() if n]
    return removed, errors


def _removed(remove: Any, what: str, counts: dict[str, int]) -> list[str]:
    import docker

    try:
        remove()
    except docker.errors.NotFound:
        return []
    except docker.errors.DockerException as exc:
        return [f"{what}: {exc}"]
    counts[what.split()[0]] += 1
    return []


def host_mounts(artifacts: Path, extra: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """Read-only binds that let a container run this host's interpreter and project."""
    paths = [d for d in HOST_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    repo = Path(__file__).resolve().parents[2]
    paths += [sys.base_prefix, sys.prefix, str(repo), str(artifacts), *extra]
    out: dict[str, dict[str, str]] = {}
    for p in paths:
        real = os.path.realpath(p)
        if any(real == q or real.startswith(q.rstrip("/") + "/") for q in out):
            continue  # already inside a mounted directory
        out[real] = {"bind": real, "mode": "ro"}
    return out


def read_listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in the network namespace of host PID ``pid``."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Planned:
    """One container to start: the component's manifest entry plus its container settings."""

    name: str
    role: str
    shard: int | None
    port: int
    command: list[str]
    container: Any = field(default=None, repr=False)


class DockerCluster:
    """One run's recommender as containers. Use as a context manager; ``stop()`` is idempotent."""

    backend = "docker"

    def __init__(
        self,
        options: RecommenderOptions,
        docker: DockerOptions,
        workdir: Path,
        log=print,
        registry: Any = None,
    ) -> None:
        """``registry``: the run's watchdog (a :class:`harness.process.Registry` with
        ``add_docker``), told the cluster id before the first container exists."""
        if options.gateways != 1:
            raise UsageError(
                f"gateways={options.gateways} (RecommenderOptions, default 2: the process "
                "backend's layout): the docker backend runs one gateway with no balancer; "
                "pass gateways=1"
            )
        self.options = options
        self.docker = docker
        self.workdir = workdir
        self.manifest_path = workdir / "manifest.json"
        self.log = log
        self.registry = registry
        self.cluster_id = f"recchaos-{secrets.token_hex(4)}"
        self._manifest: dict[str, Any] = {}
        self.proxy = None  # no userspace fault proxy in front of containers
        self.proxy_url: str | None = None
        self.redis = None
        self._client: Any = None
        self._network: Any = None
        self._image: str | None = None
        self._imported: str | None = None
        self._planned: dict[str, Planned] = {}
        self._lock = threading.Lock()
        self.token = new_token()
        self.token_file = workdir / TOKEN_FILE_NAME

    # -- plan ----------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client(self.docker.docker_host)
        return self._client

    def _artifact_root(self) -> Path:
        root = (
            self.docker.artifacts or self.options.artifacts or os.environ.get("RECCHAOS_ARTIFACTS")
        )
        return Path(root or "~/.cache/recchaos/artifacts").expanduser().resolve()

    def _python(self) -> list[str]:
        return [sys.executable if self.docker.host_mounts else self.docker.python]

    def plan(self) -> list[Planned]:
        """The containers in start order (shard copies, region, redis, then the gateway)."""
        o = self.options
        py = self._python() + ["-m", "system_under_test"]
        common = ["--preset", o.preset, "--device", o.device]
        if self.docker.host_mounts or self.docker.artifacts:
            common += ["--artifacts", str(self._artifact_root())]
        out: list[Planned] = []
        for shard in range(o.shards):
            for role in ("primary", "replica"):
                cmd = py + ["serve-shard", "--shard", str(shard), "--shards", str(o.shards)]
                cmd += ["--role", role, "--host", "0.0.0.0", "--port", str(INTERNAL_PORT)]
                out.append(
                    Planned(f"shard-{shard}-{role}", role, shard, INTERNAL_PORT, cmd + common)
                )
        region = py + ["serve-region", "--host", "0.0.0.0", "--port", str(INTERNAL_PORT)]
        out.append(Planned("region", "region", None, INTERNAL_PORT, region + common))
        if o.redis:
            out.append(Planned("redis", "redis", None, REDIS_PORT, redis_command()))
        gw = py + ["serve-gateway", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT)]
        gw += ["--sla-ms", str(o.sla_ms), "--region", f"region:{INTERNAL_PORT}"] + common
        for p in out:
            if p.role in ("primary", "replica"):
                gw += [f"--shard-{p.role}", f"{p.name}:{INTERNAL_PORT}"]
        if o.redis:
            gw += ["--redis", f"redis://redis:{REDIS_PORT}/0"]
        out.append(Planned("gateway", "gateway", None, GATEWAY_PORT, gw))
        return out

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> DockerCluster:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        write_token_file(self.token_file, self.token)
        if self.registry is not None:
            self.registry.add_docker(self.cluster_id, self.docker.docker_host)
        try:
            self._prepare_image()
            self._ensure_artifacts()
            net = f"{self.cluster_id}-net"
            self._network = self.client.networks.create(
                net, driver="bridge", labels={LABEL: self.cluster_id}
            )
            planned = self.plan()
            self.log(
                f"starting the recommender as {len(planned)} containers on network {net} "
                f"(image {self._image}; {self.options.shards} shards, preset "
                f"{self.options.preset})"
            )
            for p in planned[:-1]:
                self._run(p)
            for p in planned[:-1]:
                self._wait_listening(p, self.options.startup_timeout_s)
            self._run(planned[-1])
            self._wait_listening(planned[-1], self.options.startup_timeout_s)
            self._write_manifest(time.monotonic() - t0)
            self._wait_gateway_ready(
                max(self.options.startup_timeout_s - (time.monotonic() - t0), 30)
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_image(self) -> None:
        import docker

        if self.docker.host_mounts:
            if not engine_is_local(self.docker.docker_host):
                raise UsageError(
                    f"{ENV_PREFIX}HOST_MOUNTS=1 mounts this host's interpreter into the "
                    f"containers and needs the engine on this host; DOCKER_HOST is "
                    f"{self.docker.docker_host!r}. Build deploy/Dockerfile and set "
                    f"{ENV_PREFIX}IMAGE instead"
                )
            self._imported = import_rootfs_image(self.client, self.cluster_id, "rootfs")
            self._image = f"{self.cluster_id}:rootfs"
            return
        try:
            self.client.images.get(self.docker.image)
        except docker.errors.ImageNotFound:
            raise UsageError(
                f"image {self.docker.image!r} ({ENV_PREFIX}IMAGE, default recchaos:latest) is "
                "not on the Docker engine: build it with `docker build -f deploy/Dockerfile "
                f"-t {self.docker.image} .` or pull it, or set {ENV_PREFIX}HOST_MOUNTS=1"
            ) from None
        self._image = self.docker.image

    def _ensure_artifacts(self) -> None:
        """Train the preset on the host first (once; cached) when its artifacts are mounted."""
        if not (self.docker.host_mounts or self.docker.artifacts):
            return
        root = self._artifact_root()
        out = self.workdir / "logs" / "train.log"
        cmd = [sys.executable, "-m", "system_under_test", "train", "--preset", self.options.preset]
        train = ManagedProcess(
            cmd + ["--artifacts", str(root)], out, name="train", registry=self.registry
        )
        with train:
            code = train.start().wait(self.options.startup_timeout_s)
        if code != 0:
            raise StartError(f"training the artifacts failed with code {code}; {train.tail_text()}")

    def _container_kwargs(self, p: Planned) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "name": f"{self.cluster_id}-{p.name}",
            "command": p.command,
            "detach": True,
            "labels": {LABEL: self.cluster_id, "recchaos.component": p.name},
            "environment": {"PYTHONUNBUFFERED": "1", "HOME": "/tmp", **self._secrets(p)},
            "network": self._network.name,
            "hostname": p.name,
            "cap_add": CAPABILITIES,
        }
        if not self.docker.reaches_network():
            kw["ports"] = {f"{p.port}/tcp": (self.docker.publish, None)}
        if self.docker.host_mounts:
            kw["volumes"] = host_mounts(self._artifact_root(), self.docker.extra_mounts)
            kw["tmpfs"] = {"/tmp": "rw,size=256m"}
            kw["working_dir"] = "/tmp"
            kw["entrypoint"] = []
        elif self.docker.artifacts:
            root = str(self._artifact_root())
            kw["volumes"] = {root: {"bind": root, "mode": "ro"}}
        return kw

    def _secrets(self, p: Planned) -> dict[str, str]:
        """Who gets the token: the servers (their control op), Redis and the gateway (the
        Redis password); nobody else."""
        if p.role in ("primary", "replica", "region"):
            return {TOKEN_VARIABLE: self.token}
        if p.role == "redis" or (p.role == "gateway" and self.options.redis):
            return {REDIS_PASSWORD_VARIABLE: self.token}
        return {}

    def _run(self, p: Planned) -> None:
        from docker.types import EndpointConfig

        kw = self._container_kwargs(p)
        # On our network only, with the component's name as its DNS alias.
        endpoint = EndpointConfig(self.client.api._version, aliases=[p.name])
        kw["networking_config"] = {self._network.name: endpoint}
        container = self.client.containers.create(self._image, **kw)
        container.start()
        p.container = container
        self._planned[p.name] = p

    def _listening(self, p: Planned) -> bool:
        c = p.container
        c.reload()
        if c.status != "running":
            raise StartError(
                f"{p.name} (container {c.name}) is {c.status} (exit code "
                f"{c.attrs['State'].get('ExitCode')}); last log lines:\n{self.container_log(p.name)}"
            )
        pid = int(c.attrs["State"].get("Pid") or 0)
        if engine_is_local(self.docker.docker_host) and pid:
            return p.port in read_listening_ports(pid)
        probe = f"import socket; socket.create_connection(('127.0.0.1', {p.port}), 1).close()"
        code, _ = c.exec_run(self._python() + ["-c", probe])
        return bool(code == 0)

    def _wait_listening(self, p: Planned, timeout_s: float) -> None:
        wait_until(
            lambda: self._listening(p),
            timeout_s,
            f"{p.name} (container {p.container.name}) listening on port {p.port}",
            interval_s=0.1,
        )
        self.log(f"  ready: {p.name:<18} container {p.container.short_id}")

    def container_log(self, name: str, lines: int = 20) -> str:
        p = self._planned.get(name)
        if p is None or p.container is None:
            return "    | (no container)"
        try:
            text = p.container.logs(tail=lines).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - a log tail must never hide the first error
            return f"    | (no logs: {exc})"
        return "\n".join(f"    | {line}" for line in text.splitlines()) or "    | (empty log)"

    def _component_json(self, p: Planned) -> dict[str, Any]:
        c = p.container
        c.reload()
        return {
            "name": p.name,
            "role": p.role,
            "shard": p.shard,
            "pid": int(c.attrs["State"].get("Pid") or 0) or None,
            "address": self._address(p),
            "internal_address": f"{p.name}:{p.port}",
            "container": c.id,
            "log": f"docker logs {c.name}",
            "command": p.command,
        }

    def _address(self, p: Planned) -> str:
        """Where the harness connects to ``p``: its address on the cluster's bridge (no
        docker-proxy), or the port the engine published for it."""
        attrs = p.container.attrs
        if self.docker.reaches_network():
            ip = attrs["NetworkSettings"]["Networks"][self._network.name]["IPAddress"]
            if not ip:
                raise StartError(
                    f"{p.name} (container {p.container.name}) has no address on "
                    f"{self._network.name}; set {ENV_PREFIX}REACH=published"
                )
            return f"{ip}:{p.port}"
        binding = (attrs["NetworkSettings"]["Ports"] or {}).get(f"{p.port}/tcp") or [{}]
        host_port = binding[0].get("HostPort", "")
        host = self.docker.publish if self.docker.publish not in ("0.0.0.0", "::") else "127.0.0.1"
        if not engine_is_local(self.docker.docker_host):
            host = _remote_host(self.docker.docker_host) or host
        return f"{host}:{host_port}"

    def _write_manifest(self, startup_s: float) -> None:
        comps = [self._component_json(p) for p in self._planned.values()]
        gateway = next(c for c in comps if c["name"] == "gateway")
        self._manifest = {
            "manifest_version": 1,
            "backend": "docker",
            "docker_host": self.docker.docker_host,
            "network": self._network.name,
            "reach": "network" if self.docker.reaches_network() else "published",
            "cluster_id": self.cluster_id,
            "image": self._image,
            "gateway_url": f"http://{gateway['address']}",
            "preset": self.options.preset,
            "shards": self.options.shards,
            "redis": f"redis://redis:{REDIS_PORT}/0" if self.options.redis else None,
            "started_at": time.time(),
            "startup_seconds": round(startup_s, 3),
            "components": comps,
            "control_token_file": str(self.token_file),
        }
        self._save_manifest()

    def _save_manifest(self) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._manifest, indent=2) + "\n")
        os.replace(tmp, self.manifest_path)

    def _wait_gateway_ready(self, timeout_s: float) -> None:
        url = f"{self.gateway_url}/readyz"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        try:
            wait_until(ready, timeout_s, f"gateway {url} returning 200", interval_s=0.1)
        except StartError as exc:
            raise StartError(f"{exc}; gateway log:\n{self.container_log('gateway')}") from None
        self.log(f"recommender up in containers: {self.gateway_url}")

    # -- queries -------------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return str(self._manifest["gateway_url"])

    @property
    def base_url(self) -> str:
        return self.gateway_url

    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def component(self, name: str) -> dict[str, Any]:
        for comp in self._manifest.get("components", []):
            if comp["name"] == name:
                return dict(comp)
        known = [c["name"] for c in self._manifest.get("components", [])]
        raise KeyError(f"no component {name!r} in this cluster; known: {', '.join(known)}")

    def extra_components(self) -> list[dict[str, Any]]:
        return []  # Redis is a container the manifest lists

    def extra_pids(self) -> list[tuple[str, ProcessRef]]:
        return []  # containers go by their label (add_docker), their processes by the manifest

    def container(self, name: str) -> Any:
        return self._planned[name].container

    # -- supervision ---------------------------------------------------------------------------
    def restart(self, name: str, timeout_s: float = 60.0) -> int:
        """Start ``name``'s container again (kept, not re-created: same id, name and network
        alias); return the new host PID once its port listens. The published host port may
        change with a new start, so the manifest is updated with both."""
        p = self._planned.get(name)
        if p is None:
            raise StartError(
                f"no container {name!r} in this cluster; known: {', '.join(self._planned)}"
            )
        c = p.container
        c.reload()
        if c.status == "paused":
            c.unpause()
        c.reload()
        if c.status == "running":
            c.restart(timeout=0)
        else:
            c.start()
        self._wait_listening(p, timeout_s)
        with self._lock:
            fresh = self._component_json(p)
            for comp in self._manifest["components"]:
                if comp["name"] == name:
                    comp.update(fresh)
            if name == "gateway":
                self._manifest["gateway_url"] = f"http://{fresh['address']}"
            self._save_manifest()
        return int(fresh["pid"] or 0)

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Remove every container, the network and an imported image: everything labelled with
        this cluster's id, even one created by a start that was interrupted half-way; the
        manifest is kept as ``components.json`` for the record."""
        if self._manifest:
            (self.workdir / "components.json").write_text(
                json.dumps({"components": self._manifest.get("components", [])}, indent=2) + "\n"
            )
        if self._client is None:
            return
        for name in list(self._planned):
            self._save_log(name)
        _, errors = remove_cluster(self.docker.docker_host, self.cluster_id)
        self._planned.clear()
        self._network = None
        self._imported = None
        self.manifest_path.unlink(missing_ok=True)
        if errors:
            raise StartError("could not remove everything: " + "; ".join(errors))

    def _save_log(self, name: str) -> None:
        try:
            text = self._planned[name].container.logs().decode(errors="replace")
        except Exception:  # noqa: BLE001 - the container may be gone already
            return
        (self.workdir / "logs" / f"{name}.log").write_text(text)

    def __enter__(self) -> DockerCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_command() -> list[str]:
    """Redis with ``RECCHAOS_REDIS_PASSWORD`` as its password: written by the shell's builtin
    ``printf`` to a config file only its owner reads, so no command line ever holds it."""
    script = (
        'umask 077 && printf "requirepass %s\\n" "$RECCHAOS_REDIS_PASSWORD" > /tmp/redis.conf '
        f"&& exec redis-server /tmp/redis.conf --port {REDIS_PORT} --bind 0.0.0.0 "
        "--save '' --appendonly no --dir /tmp"
    )
    return ["sh", "-c", script]


def _remote_host(docker_host: str | None) -> str | None:
    """The host name of a ``tcp://HOST:PORT`` or ``ssh://USER@HOST`` engine address."""
    if not docker_host or "://" not in docker_host:
        return None
    rest = docker_host.split("://", 1)[1]
    rest = rest.rsplit("@", 1)[-1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest
