"""A generic target: any HTTP service a scenario describes by the commands of its components and
the endpoint to load (:class:`harness.model.target.GenericTarget`).

Each component is started from its command as a :class:`harness.process.ManagedProcess` in a
process group of its own (so a shell script's children are stopped with it), output to
``logs/NAME.log``, registered with the run's watchdog; then the endpoint is polled until it
answers (any status below 500). The manifest it writes has the same keys as the recommender's,
so the process faults (kill, freeze, ...) and the watchdog work on these components too; there
is no fault proxy and nothing to restart.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness.model.target import GenericTarget
from harness.process import ManagedProcess, ProcessRef, Registry, StartError, wait_until

READY_TIMEOUT_S = 60.0


def http_ok(url: str) -> bool:
    """The URL answers with a status below 500."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return 200 <= resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


class GenericCluster:
    """The components of a generic target (a :class:`harness.sut.target.Target`)."""

    options = None  # not the bundled recommender
    proxy_url = None

    def __init__(
        self, spec: GenericTarget, workdir: Path, log=print, registry: Registry | None = None
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.manifest_path = workdir / "manifest.json"
        self.log = log
        self.registry = registry
        self.procs: dict[str, ManagedProcess] = {}
        self._manifest: dict[str, Any] = {}

    @property
    def base_url(self) -> str:
        return self.spec.endpoint.rstrip("/")

    def start(self) -> GenericCluster:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            for name, argv in self.spec.components.items():
                proc = ManagedProcess(
                    argv, logs / f"{name}.log", name=name, registry=self.registry, group=True
                )
                self.procs[name] = proc.start()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._manifest = {
            "gateway_url": self.base_url,
            "components": [self._entry(name, proc) for name, proc in self.procs.items()],
        }
        self.manifest_path.write_text(json.dumps(self._manifest, indent=2) + "\n")
        self.log(f"generic target up: {self.base_url} ({len(self.procs)} components)")
        return self

    def _wait_ready(self) -> None:
        url = self.base_url + (self.spec.ready_path or "/")
        wait_until(lambda: self._answers(url), READY_TIMEOUT_S, f"generic target answering {url}")

    def _answers(self, url: str) -> bool:
        """``url`` answers; StartError (with its log tail) if a component exited first."""
        for name, proc in self.procs.items():
            if proc.exited():
                code = proc.stop()
                raise StartError(
                    f"{name} exited with code {code} before {url} answered; {proc.tail_text()}"
                )
        return http_ok(url)

    def _entry(self, name: str, proc: ManagedProcess) -> dict[str, Any]:
        return {
            "name": name,
            "role": name,
            "shard": None,
            "pid": proc.pid,
            "start_time": proc.ref.create_time if proc.ref is not None else None,
            "address": "",
            "log": str(proc.log),
            "command": list(proc.argv),
        }

    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def component(self, name: str) -> dict[str, Any]:
        for comp in self._manifest.get("components", []):
            if comp["name"] == name:
                return dict(comp)
        raise KeyError(f"no component {name!r} in this target; known: {', '.join(self.procs)}")

    def extra_components(self) -> list[dict[str, Any]]:
        return []

    def restart(self, name: str) -> int:
        raise StartError(f"restarting {name!r} needs the bundled recommender target")

    def extra_pids(self) -> list[tuple[str, ProcessRef]]:
        return []  # every process is a component in the manifest

    def stop(self) -> None:
        """Stop every component (its whole process group), newest first; idempotent."""
        errors = []
        for proc in reversed(list(self.procs.values())):
            try:
                proc.stop()
            except StartError as exc:
                errors.append(str(exc))
        if errors:
            raise StartError("; ".join(errors))

    def __enter__(self) -> GenericCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
