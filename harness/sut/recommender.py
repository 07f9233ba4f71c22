"""The local recommender as a run's target: started with a fault proxy in front of every shard copy
and the region, restarted on request, and always stopped again.

Start-up goes through the recommender's own command line (``python -m system_under_test up``),
with ``--port`` pinning each component's real port and ``--route`` pointing the gateways at the
proxy's listener for it, so network faults (latency, blackhole, reset, ...) sit between the
gateways and that component. The manifest the recommender writes is the one source of truth for
names, PIDs, start times and commands; a restart updates it in place.

Every process it starts (Redis, the proxy, ``up`` and through it every component, a restarted
component, ``down``) goes through :class:`harness.process.ManagedProcess` with the run's
registry, so the watchdog knows each one from the moment it exists.

It makes the run's control token (:mod:`harness.auth`) before anything starts, keeps it in
``control.token`` beside the manifest (0600; the manifest's ``control_token_file``, where
injectors and the watchdog read it) and hands it over without a command line: Redis gets it as
its password (a 0600 config file), the proxy, ``up`` and a restarted component in their
environment (``up``'s components inherit it; the gateway as its Redis password).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.auth import TOKEN_FILE_NAME, new_token, token_env, write_token_file
from harness.process import (
    ManagedProcess,
    ProcessRef,
    Registry,
    StartError,
    free_ports,
    listens,
    stop_processes,
    tcp_open,
    wait_until,
)
from harness.sut.redis import RedisServer, parse_address

DOWN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RecommenderOptions:
    """How to run the bundled recommender. ``redis_address``: ``HOST:PORT`` for the Redis the
    harness starts when ``redis`` is set (default: loopback, a free port)."""

    shards: int = 4
    preset: str = "default"
    redis: bool = False
    device: str = "cpu"
    sla_ms: float = 20.0
    artifacts: str | None = None
    proxy: bool = True
    startup_timeout_s: float = 600.0
    redis_address: str | None = None
    # 2 or more: gateway-0 ... behind HAProxy (the component lb), `up`'s default layout;
    # 1: the gateway alone (the component gateway)
    gateways: int = 2
    # more options of `up` (a scenario's target.args), e.g. the balancer's --gateway-maxconn
    up_args: tuple[str, ...] = ()


def _sut_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "system_under_test", *args]


class RecommenderCluster:
    """One run's recommender (a :class:`harness.sut.target.Target`). Use as a context manager;
    ``stop()`` is idempotent."""

    def __init__(
        self,
        options: RecommenderOptions,
        workdir: Path,
        log=print,
        registry: Registry | None = None,
    ) -> None:
        self.options = options
        self.workdir = workdir
        self.manifest_path = workdir / "manifest.json"
        self.log = log
        self.registry = registry
        self._manifest: dict[str, Any] = {}
        self.redis: RedisServer | None = None
        self.proxy: Any = None
        self.proxy_url: str | None = None
        self._stack = ExitStack()
        self._restarted: list[ManagedProcess] = []
        self._up = False
        self._manifest_lock = threading.Lock()  # restarts run in parallel (a cold start)
        self.token = new_token()
        self.token_file = workdir / TOKEN_FILE_NAME

    # -- start -------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        copies = [
            f"shard-{i}-{r}" for i in range(self.options.shards) for r in ("primary", "replica")
        ]
        return copies + ["region"]

    def _start_proxy(self, real_ports: dict[str, int], listen_ports: list[int]) -> dict[str, str]:
        from harness.proxy.client import start_proxy

        routes = {
            name: (f"127.0.0.1:{listen}", f"127.0.0.1:{port}")
            for (name, port), listen in zip(real_ports.items(), listen_ports, strict=True)
        }
        self.proxy = self._stack.enter_context(
            start_proxy(
                routes,
                self.workdir / "logs" / "proxy.log",
                timeout_s=20.0,
                registry=self.registry,
                token=self.token,
            )
        )
        self.proxy_url = self.proxy.control_url
        return {name: listen for name, (listen, _) in routes.items()}

    def start(self) -> RecommenderCluster:
        opts = self.options
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        write_token_file(self.token_file, self.token)
        try:
            if opts.redis:
                self.redis = self._stack.enter_context(self._redis_server())
            names = self._names()
            ports = free_ports(2 * len(names))  # distinct: each component's and its route's
            real_ports = dict(zip(names, ports[: len(names)], strict=True))
            routes = self._start_proxy(real_ports, ports[len(names) :]) if opts.proxy else {}
            args = [
                "up",
                "--shards",
                str(opts.shards),
                "--preset",
                opts.preset,
                "--device",
                opts.device,
                "--sla-ms",
                str(opts.sla_ms),
                "--manifest",
                str(self.manifest_path),
                "--log-dir",
                str(self.workdir / "logs"),
                "--timeout",
                str(opts.startup_timeout_s),
            ]
            args += self._gateway_args()
            args += [f"--port={name}={port}" for name, port in real_ports.items()]
            args += [f"--route={name}={address}" for name, address in routes.items()]
            if opts.artifacts:
                args += ["--artifacts", opts.artifacts]
            if self.redis is not None:
                args += ["--redis", self.redis.url]
            args += list(opts.up_args)
            self._run_up(args)
        except BaseException:
            self.stop()
            raise
        return self

    def _redis_server(self) -> RedisServer:
        workdir = self.workdir / "redis"
        if self.options.redis_address is None:
            return RedisServer(workdir, registry=self.registry, password=self.token)
        host, port = parse_address(self.options.redis_address)
        return RedisServer(workdir, port or None, host, registry=self.registry, password=self.token)

    def component_env(self) -> dict[str, str]:
        """The environment of ``up`` and of a restarted component: this one's, plus the token."""
        return {**os.environ, **token_env(self.token)}

    def _gateway_args(self) -> list[str]:
        """``--gateways N``, always: the layout is the options', whatever ``up``'s default is
        (it was 1 before it became 2). The serving benchmark overrides it for a checkout whose
        ``up`` has no ``--gateways``."""
        return ["--gateways", str(self.options.gateways)]

    def _launcher(self, *args: str) -> tuple[list[str], Path | None]:
        """``system_under_test ARGS`` as a command, and the directory it runs in (None: ours).
        The serving benchmark overrides it to start another checkout's recommender."""
        return _sut_command(*args), None

    def _run_up(self, args: list[str]) -> None:
        """``up`` as a child of ours: every component inherits the registry's environment, so
        the watchdog finds them even if this process or ``up`` dies before the manifest."""
        out = self.workdir / "logs" / "sut-up.log"
        argv, cwd = self._launcher(*args)
        where = f" from {cwd}" if cwd else ""
        self.log(
            f"starting the recommender ({self.options.shards} shards, preset "
            f"{self.options.preset}){where}; log {out}"
        )
        up = ManagedProcess(
            argv,
            out,
            name="launcher",
            env=self.component_env(),
            registry=self.registry,
            cwd=cwd,
        )
        # Interrupted while waiting: stop() stops `up`, which stops what it started (SIGTERM).
        self._stack.enter_context(up)
        code = up.wait(self.options.startup_timeout_s + 60)
        if code != 0:
            raise StartError(f"`system_under_test up` failed with code {code}; {up.tail_text(30)}")
        self._manifest = json.loads(self.manifest_path.read_text())
        self._up = True

    # -- queries -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return str(self._manifest["gateway_url"])

    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def component(self, name: str) -> dict[str, Any]:
        for comp in self._manifest.get("components", []) + self.extra_components():
            if comp["name"] == name:
                return dict(comp)
        known = [c["name"] for c in self._manifest.get("components", [])]
        raise KeyError(f"no component {name!r} in this cluster; known: {', '.join(known)}")

    def extra_components(self) -> list[dict[str, Any]]:
        """Redis, when the harness started one (it is not the recommender's own process)."""
        if self.redis is None:
            return []
        ref = self.redis.ref
        return [
            {
                "name": "redis",
                "role": "redis",
                "shard": None,
                "pid": self.redis.pid,
                "start_time": ref.create_time if ref is not None else None,
                "address": f"{self.redis.host}:{self.redis.port}",
                "command": self.redis.command,
            }
        ]

    def extra_pids(self) -> list[tuple[str, ProcessRef]]:
        found = [("fault proxy", self.proxy.ref if self.proxy else None)]
        found.append(("redis", self.redis.ref if self.redis else None))
        return [(name, ref) for name, ref in found if ref is not None]

    # -- supervision -------------------------------------------------------------------------
    def restart(self, name: str, timeout_s: float = 60.0) -> int:
        """Start ``name`` again with its recorded command; return the new PID once it listens.

        Its start-up runs under SCHED_IDLE and its warm-up at normal priority: the
        recommender's servers do that themselves, whoever starts them
        (system_under_test/runtime.py), so a restart on two shared cores does not starve the
        serving processes.

        A recorded process that still runs (its PID and start time) is stopped first: the
        manifest names one process per component, and one it no longer names would be left.
        """
        if name == "redis" and self.redis is not None:
            self.redis.stop()
            self.redis.start()
            return int(self.redis.pid or 0)
        comp = self.component(name)
        if isinstance(comp.get("pid"), int) and isinstance(comp.get("start_time"), float):
            stop_processes([(name, ProcessRef(comp["pid"], comp["start_time"]))], grace_s=0.0)
        log_path = Path(comp.get("log") or self.workdir / "logs" / f"{name}.log")
        proc = ManagedProcess(
            comp["command"], log_path, name=name, env=self.component_env(), registry=self.registry
        )
        self._restarted.append(proc.start())
        assert proc.ref is not None
        self._set_pid(name, proc.ref)
        host, port = comp["address"].rsplit(":", 1)
        # The new process itself must listen: the old one's socket can outlive its main thread.
        # A refused connect first, though: psutil's socket listing reads every socket of the
        # host, and twelve restarts polling it every 20 ms (cold_start) took 30-70% of a core
        # at normal priority from the one gateway still serving.
        proc.wait_ready(
            lambda: tcp_open(host, int(port), 0.05) and listens(proc.pid, host, int(port)),
            timeout_s,
            f"{name} (PID {proc.pid}) listening again on {host}:{port}",
        )
        return proc.pid

    def _set_pid(self, name: str, ref: ProcessRef) -> None:
        with self._manifest_lock:
            for comp in self._manifest["components"]:
                if comp["name"] == name:
                    comp["pid"], comp["start_time"] = ref.pid, ref.create_time
            tmp = self.manifest_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self._manifest, indent=2) + "\n")
            os.replace(tmp, self.manifest_path)

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        if not self._up and self.manifest_path.exists():
            # Interrupted after `up` wrote the manifest but before we read it.
            self._manifest = json.loads(self.manifest_path.read_text())
            self._up = True
        if self._up:
            self._up = False
            # `down` removes the manifest once everything is stopped; keep what ran for the record.
            (self.workdir / "components.json").write_text(
                json.dumps(
                    {
                        "components": self._manifest.get("components", []),
                        "proxy_pid": self.proxy.pid if self.proxy else None,
                        "redis_pid": self.redis.pid if self.redis else None,
                    },
                    indent=2,
                )
                + "\n"
            )
            self._run_down()
        for proc in self._restarted:
            proc.stop()
        self._restarted.clear()
        self._stack.close()

    def _run_down(self) -> None:
        out = self.workdir / "logs" / "sut-down.log"
        down = ManagedProcess(
            _sut_command("down", "--manifest", str(self.manifest_path)),
            out,
            name="sut down",
            registry=self.registry,
        )
        try:
            code = down.start().wait(DOWN_TIMEOUT_S)
        except StartError as exc:
            self.log(f"warning: {exc}")
            return
        if code != 0:
            self.log(f"warning: `system_under_test down` exited {code}; {down.tail_text()}")

    def __enter__(self) -> RecommenderCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_gateway_ready(url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    wait_until(ready, timeout_s, f"gateway {url}/readyz returning 200", interval_s=0.05)
