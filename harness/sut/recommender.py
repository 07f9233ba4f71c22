"""The local recommender as a run's target: started with a fault proxy in front of every shard copy
and the region, restarted on request, and always stopped again.

Start-up goes through the recommender's own command line (``python -m system_under_test up``),
with ``--port`` pinning each component's real port and ``--route`` pointing the gateway at the
proxy's listener for it, so network faults (latency, blackhole, reset, ...) sit between the
gateway and that component. The manifest the recommender writes is the one source of truth for
names, PIDs and commands; a restart updates it in place.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.sut.procs import StartError, free_port, log_tail, tcp_open, wait_until
from harness.sut.redis import RedisServer


@dataclass(frozen=True)
class RecommenderOptions:
    shards: int = 4
    preset: str = "default"
    redis: bool = False
    device: str = "cpu"
    sla_ms: float = 20.0
    artifacts: str | None = None
    proxy: bool = True
    startup_timeout_s: float = 600.0


def _sut_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "system_under_test", *args]


class RecommenderCluster:
    """One run's recommender. Use as a context manager; ``stop()`` is idempotent."""

    def __init__(self, options: RecommenderOptions, workdir: Path, log=print) -> None:
        self.options = options
        self.workdir = workdir
        self.manifest_path = workdir / "manifest.json"
        self.log = log
        self.manifest: dict[str, Any] = {}
        self.redis: RedisServer | None = None
        self.proxy: Any = None
        self.proxy_url: str | None = None
        self._stack = ExitStack()
        self._restarted: list[subprocess.Popen[bytes]] = []
        self._up = False
        self._manifest_lock = threading.Lock()  # restarts run in parallel (a cold start)

    # -- start -------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        copies = [
            f"shard-{i}-{r}" for i in range(self.options.shards) for r in ("primary", "replica")
        ]
        return copies + ["region"]

    def _start_proxy(self, real_ports: dict[str, int]) -> dict[str, str]:
        from harness.proxy.client import start_proxy

        routes = {
            name: (f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}")
            for name, port in real_ports.items()
        }
        self.proxy = self._stack.enter_context(
            start_proxy(routes, self.workdir / "logs" / "proxy.log", timeout_s=20.0)
        )
        self.proxy_url = self.proxy.control_url
        return {name: listen for name, (listen, _) in routes.items()}

    def start(self) -> RecommenderCluster:
        opts = self.options
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            if opts.redis:
                self.redis = self._stack.enter_context(RedisServer(self.workdir / "redis"))
            real_ports = {name: free_port() for name in self._names()}
            routes = self._start_proxy(real_ports) if opts.proxy else {}
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
            args += [f"--port={name}={port}" for name, port in real_ports.items()]
            args += [f"--route={name}={address}" for name, address in routes.items()]
            if opts.artifacts:
                args += ["--artifacts", opts.artifacts]
            if self.redis is not None:
                args += ["--redis", self.redis.url]
            self._run_up(args)
        except BaseException:
            self.stop()
            raise
        return self

    def _run_up(self, args: list[str]) -> None:
        out = self.workdir / "logs" / "sut-up.log"
        self.log(
            f"starting the recommender ({self.options.shards} shards, preset "
            f"{self.options.preset}); log {out}"
        )
        with open(out, "ab") as fh:
            try:
                proc = subprocess.run(
                    _sut_command(*args),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=self.options.startup_timeout_s + 60,
                )
            except subprocess.TimeoutExpired:
                raise StartError(
                    f"`system_under_test up` did not return; log:\n{log_tail(out)}"
                ) from None
        if proc.returncode != 0:
            raise StartError(
                f"`system_under_test up` failed with code {proc.returncode}:\n{log_tail(out, 30)}"
            )
        self.manifest = json.loads(self.manifest_path.read_text())
        self._up = True

    # -- queries -----------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return str(self.manifest["gateway_url"])

    def component(self, name: str) -> dict[str, Any]:
        for comp in self.manifest.get("components", []):
            if comp["name"] == name:
                return dict(comp)
        if name == "redis" and self.redis is not None:
            return {
                "name": "redis",
                "role": "redis",
                "shard": None,
                "pid": self.redis.pid,
                "address": f"127.0.0.1:{self.redis.port}",
                "command": self.redis.command,
            }
        known = [c["name"] for c in self.manifest.get("components", [])]
        raise KeyError(f"no component {name!r} in this cluster; known: {', '.join(known)}")

    # -- supervision -------------------------------------------------------------------------
    def restart(self, name: str, timeout_s: float = 60.0) -> int:
        """Start ``name`` again with its recorded command; return the new PID once it listens.

        As root, the new process starts at nice ``STARTUP_NICE`` and is put back to nice 0 (every
        thread) once it listens. Everything here shares two cores: a start-up (importing torch,
        loading tables: about a core for 1.5 s) at normal priority starved the serving processes
        (p99 24-39 ms in the second after a shard restart, 9-15 ms otherwise), which a deploy
        on its own machine would not do. Without root the priority could not be raised back,
        so the process starts at normal priority.
        """
        if name == "redis" and self.redis is not None:
            self.redis.stop()
            self.redis.start()
            return int(self.redis.pid or 0)
        comp = self.component(name)
        log_path = Path(comp.get("log") or self.workdir / "logs" / f"{name}.log")
        with open(log_path, "ab") as fh:
            proc = subprocess.Popen(
                comp["command"],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._restarted.append(proc)
        niced = _set_nice(proc.pid, STARTUP_NICE) if os.geteuid() == 0 else False
        self._set_pid(name, proc.pid)
        host, port = comp["address"].rsplit(":", 1)
        wait_until(
            lambda: proc.poll() is not None or tcp_open(host, int(port)),
            timeout_s,
            f"{name} listening again on {comp['address']}",
            log=log_path,
        )
        if proc.poll() is not None:
            raise StartError(
                f"{name} exited with code {proc.returncode} on restart:\n{log_tail(log_path)}"
            )
        if niced:
            _set_nice(proc.pid, 0)
        return proc.pid

    def _set_pid(self, name: str, pid: int) -> None:
        with self._manifest_lock:
            for comp in self.manifest["components"]:
                if comp["name"] == name:
                    comp["pid"] = pid
            tmp = self.manifest_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.manifest, indent=2) + "\n")
            os.replace(tmp, self.manifest_path)

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._up:
            self._up = False
            # `down` removes the manifest once everything is stopped; keep what ran for the record.
            (self.workdir / "components.json").write_text(
                json.dumps(
                    {
                        "components": self.manifest.get("components", []),
                        "proxy_pid": self.proxy.pid if self.proxy else None,
                        "redis_pid": self.redis.pid if self.redis else None,
                    },
                    indent=2,
                )
                + "\n"
            )
            out = self.workdir / "logs" / "sut-down.log"
            with open(out, "ab") as fh:
                code = subprocess.run(
                    _sut_command("down", "--manifest", str(self.manifest_path)),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=60,
                ).returncode
            if code != 0:
                self.log(f"warning: `system_under_test down` exited {code}:\n{log_tail(out)}")
        for proc in self._restarted:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)
        self._restarted.clear()
        self._stack.close()

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


STARTUP_NICE = 10  # a restarted component's priority until it listens (as root; see restart)


def _set_nice(pid: int, nice: int) -> bool:
    """Set the nice value of every thread of ``pid`` (Linux's is per thread); False if it is
    gone or the change is not permitted."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return False
    done = False
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            done = True
        except (ProcessLookupError, PermissionError):
            pass
    return done
