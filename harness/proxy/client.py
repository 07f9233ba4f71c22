"""Drive the fault proxy from the harness: a small synchronous client and a process handle.

:class:`ProxyClient` speaks the control API of :mod:`harness.proxy.control` with the
standard library (every call has a timeout and carries the run's control token)::

    client = ProxyClient("http://127.0.0.1:9000", token=TOKEN)
    fid = client.add_fault("shard-0-primary", "latency", "downstream", delay_ms=5, jitter_ms=1)
    client.counters("shard-0-primary")["delayed_chunks"]
    client.remove_fault("shard-0-primary", fid)   # idempotent
    client.clear()                                # every fault on every route

:func:`start_proxy` starts ``python -m harness.proxy`` as a
:class:`~harness.process.ManagedProcess` (its own session; registered with the run's watchdog
when given one; the token in its environment, never on its command line), waits (bounded) until its control API answers, and returns a
:class:`ProxyProcess` context manager that always stops and reaps it (SIGKILL after a timeout).
A proxy that fails to start raises :class:`~harness.process.StartError` with the last lines of
its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.auth import TOKEN_VARIABLE, new_token
from harness.model.errors import HarnessError, UsageError
from harness.process import ManagedProcess, ProcessRef, Registry, StartError
from harness.proxy.config import Address, Route, check_routes, route_from_fields

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 2.0


class ProxyControlError(HarnessError):
    """The proxy's control API could not be reached or answered an unexpected error."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ProxyFaultRejected(UsageError):
    """The proxy rejected a fault spec (HTTP 400); ``problems`` name each field, value, rule."""

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems


class ProxyClient:
    """Synchronous client of one proxy's control API; ``timeout_s`` bounds every call and
    ``token`` (the run's control token) goes with each as ``Authorization: Bearer``."""

    def __init__(
        self, control_url: str, timeout_s: float = DEFAULT_TIMEOUT_S, token: str | None = None
    ) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        url = self.control_url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _http_error(method, url, exc) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProxyControlError(
                f"{method} {url} failed: {reason} (timeout {self.timeout_s:g} s)"
            ) from exc

    def healthz(self) -> dict[str, Any]:
        return dict(self._call("GET", "/healthz"))

    def routes(self) -> list[dict[str, Any]]:
        """Every route: name, listen, upstream, faults, connections and counters."""
        return list(self._call("GET", "/routes")["routes"])

    def route(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/routes/{_quote(name)}"))

    def counters(self, name: str) -> dict[str, int]:
        """``bytes_up``, ``bytes_down``, ``delayed_chunks``, ``dropped_bytes``, ``resets``, ..."""
        return dict(self.route(name)["counters"])

    def add_fault(self, route: str, kind: str, direction: str | None = None, **params: Any) -> str:
        """Apply a fault; returns its id. ``direction`` None: the proxy's default for ``kind``."""
        body: dict[str, Any] = {"kind": kind, **params}
        if direction is not None:
            body["direction"] = direction
        return str(self._call("POST", f"/routes/{_quote(route)}/faults", body)["id"])

    def remove_fault(self, route: str, fault_id: str) -> bool:
        """Clear one fault; False if it was not active (already cleared). Idempotent."""
        path = f"/routes/{_quote(route)}/faults/{_quote(fault_id)}"
        return bool(self._call("DELETE", path)["removed"])

    def clear_route(self, route: str) -> int:
        return int(self._call("DELETE", f"/routes/{_quote(route)}/faults")["cleared"])

    def clear(self) -> int:
        """Clear every fault on every route; returns how many were active. Idempotent."""
        return int(self._call("DELETE", "/faults")["cleared"])


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _http_error(method: str, url: str, exc: urllib.error.HTTPError) -> Exception:
    try:
        body = json.loads(exc.read() or b"null")
    except ValueError:
        body = None
    error = body.get("error", "") if isinstance(body, dict) else ""
    if exc.code == 400 and isinstance(body, dict):
        return ProxyFaultRejected(
            f"fault proxy rejected {method} {url}: {error}", list(body.get("problems", []))
        )
    known = body.get("known") if isinstance(body, dict) else None
    extra = f"; known routes: {', '.join(known)}" if known else ""
    return ProxyControlError(f"{method} {url} answered {exc.code}: {error}{extra}", exc.code, body)


# -- the process -------------------------------------------------------------------------------

Endpoint = str | tuple[str, int]
RouteSpec = tuple[Endpoint, Endpoint]


def build_routes(routes: Mapping[str, RouteSpec]) -> list[Route]:
    """``{name: (listen, upstream)}`` (``"host:port"`` or ``(host, port)``) as checked routes."""
    built = [
        route_from_fields(name, listen, upstream, name)
        for name, (listen, upstream) in routes.items()
    ]
    check_routes(built)
    return built


class ProxyProcess:
    """A running proxy: ``control_url``, ``client``, ``listen`` (route name -> "host:port").

    A context manager; ``stop()`` is idempotent and always reaps the process.
    """

    def __init__(self, proc: ManagedProcess, log_path: Path, ready_path: Path, token: str) -> None:
        self.proc = proc
        self.log_path = log_path
        self.ready_path = ready_path
        self.token = token
        self.control_url = ""
        self.listen: dict[str, str] = {}
        self.client = ProxyClient("http://127.0.0.1:0", token=token)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ref(self) -> ProcessRef | None:
        return self.proc.ref

    def alive(self) -> bool:
        return self.proc.alive()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready_path.exists():
            self._check_running(deadline, timeout_s, "its ready file")
            time.sleep(0.02)
        info = json.loads(self.ready_path.read_text())
        self.control_url, self.listen = info["control_url"], dict(info["routes"])
        self.client = ProxyClient(self.control_url, token=self.token)
        while True:
            try:
                self.client.healthz()
                return
            except ProxyControlError:
                self._check_running(deadline, timeout_s, f"{self.control_url}/healthz")
                time.sleep(0.02)

    def _check_running(self, deadline: float, timeout_s: float, what: str) -> None:
        if self.proc.exited():
            code = self.proc.stop()
            raise StartError(
                f"fault proxy exited with code {code} before {what} was there; "
                f"{self.proc.tail_text()}"
            )
        if time.monotonic() > deadline:
            raise StartError(
                f"fault proxy (pid {self.pid}) not ready ({what}) within "
                f"{timeout_s:.1f} s; {self.proc.tail_text()}"
            )

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGCONT + SIGTERM, SIGKILL after ``timeout_s``; always reaped; returns the exit code."""
        code = self.proc.stop(grace_s=timeout_s, kill_wait_s=timeout_s)
        with contextlib.suppress(FileNotFoundError):
            self.ready_path.unlink()
        return code

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proxy_command(
    routes: list[Route],
    ready_path: Path,
    control_port: int = 0,
    seed: int | None = None,
    parent_pid: int | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "harness.proxy", "--control-port", str(control_port)]
    cmd += ["--ready-file", str(ready_path)]
    cmd += [f"--route={r.name}={r.listen}={r.upstream}" for r in routes]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    return cmd


def start_proxy(
    routes: Mapping[str, RouteSpec],
    log_path: Path | str,
    timeout_s: float = 10.0,
    *,
    control_port: int = 0,
    seed: int | None = None,
    exit_with_parent: bool = True,
    registry: Registry | None = None,
    token: str | None = None,
) -> ProxyProcess:
    """Start one proxy process serving ``routes`` and wait until its control API answers.

    ``routes`` maps a name to ``(listen, upstream)``; a listen port of 0 picks a free port
    (see ``ProxyProcess.listen``). The proxy's output is appended to ``log_path``. With
    ``exit_with_parent`` the proxy stops by itself within a second if this process dies;
    ``registry`` (the run's watchdog) hears of it the moment it exists. ``token``: what its
    control API requires (the run's; default: a new one, ``ProxyProcess.token``).
    """
    token = token or new_token()
    built = build_routes(routes)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ready_path = log_path.with_name(log_path.name + ".ready.json")
    with contextlib.suppress(ProcessLookupError, FileNotFoundError):
        ready_path.unlink()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
        TOKEN_VARIABLE: token,
    }
    proc = ManagedProcess(
        proxy_command(
            built, ready_path, control_port, seed, os.getpid() if exit_with_parent else None
        ),
        log_path,
        name="fault proxy",
        env=env,
        registry=registry,
    )
    handle = ProxyProcess(proc.start(), log_path, ready_path, token)
    try:
        handle.wait_ready(timeout_s)
    except BaseException:
        handle.stop()
        raise
    return handle


__all__ = [
    "Address",
    "ProxyClient",
    "ProxyControlError",
    "ProxyFaultRejected",
    "ProxyProcess",
    "build_routes",
    "start_proxy",
]
