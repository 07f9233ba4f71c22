"""``up`` and ``down``: start every process of the recommender, wait until it serves, stop it all.

``up`` trains (or reuses) the artifacts, starts 2 x S shard copies, the degraded region, the
gateways ``gateway-0`` ... ``gateway-N-1`` (``--gateways N``, default 2) and HAProxy in front of
them, the component ``lb``, which ``gateway_url`` names (``balancer.py``); ``--gateways 1`` starts
the gateway alone, the component ``gateway``, with no balancer. Each runs as a separate process
in a session of its own (so it outlives ``up`` and a terminal's Ctrl-C); ``up`` waits until each
answers (bounded; on a timeout it shows the failing component's last log lines and stops
everything it started), then writes the manifest. Until the manifest is written
``up`` owns its children: SIGTERM, SIGINT or SIGHUP stops every one started so far, and ``up``
exits with 128 + the signal's number. Every child inherits ``up``'s environment, so a tool that
starts ``up`` can find them all by a variable it sets, even if ``up`` itself is SIGKILLed.
``down`` stops the processes a manifest names, checking first that each PID is still the process
that was started (its start time, or its command line in a manifest without start times).

The manifest is a public interface read by other tools; its keys stay stable::

    {"gateway_url": "http://127.0.0.1:PORT",
     "components": [{"name": "shard-0-primary", "role": "primary", "shard": 0,
                     "pid": 1234, "start_time": 1733469553.12, "address": "127.0.0.1:PORT",
                     "log": PATH, "command": [...]}, ...],
     ...}

``start_time`` is the process's start in seconds since the epoch (psutil's ``create_time``).
``control_token_file`` names the file (mode 0600, beside the manifest) holding the token the
servers' ``control`` op requires: the one ``up`` was given in ``RECCHAOS_CONTROL_TOKEN``, or a
new one; every component gets it in its environment (``auth.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from system_under_test.auth import ensure_token, token_path
from system_under_test.probe import http_get, ping
from system_under_test.process import (
    ManagedProcess,
    ProcessRef,
    StartError,
    stop_processes,
)
from system_under_test.runtime import KEEP_WARM_S, keep_warm_problem

DEFAULT_MANIFEST = Path(".sut/manifest.json")
MANIFEST_VERSION = 1
MAX_GATEWAYS = 8
DEFAULT_GATEWAYS = 2  # two gateways behind HAProxy: no single gateway is a point of failure
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class LaunchError(StartError):
    """A component did not start or did not become ready."""


class Interrupted(BaseException):
    """``up`` was told to stop (SIGTERM, SIGINT, SIGHUP) before the cluster was up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Component:
    name: str
    role: str
    shard: int | None
    address: str
    command: list[str]
    log: Path
    proc: ManagedProcess | None = field(default=None, repr=False)
    pid: int | None = None
    start_time: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "shard": self.shard,
            "pid": self.pid,
            "start_time": self.start_time,
            "address": self.address,
            "log": str(self.log),
            "command": self.command,
        }


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: all held open while they are picked (one at a time, the
    kernel may hand the same port out again once it is closed)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# Options of `up` passed on to `serve-lb` as they are (the balancer's own defaults otherwise),
# each checked by balancer.check_limits.
LB_OPTIONS = ("server-timeout-ms", "gateway-maxconn", "queue-timeout-ms", "max-queue")


def _gateways(args: argparse.Namespace) -> int:
    return int(getattr(args, "gateways", DEFAULT_GATEWAYS) or DEFAULT_GATEWAYS)


def gateway_names(count: int) -> list[str]:
    """``gateway`` alone (no balancer), or ``gateway-0`` ... behind the balancer ``lb``."""
    return ["gateway"] if count == 1 else [f"gateway-{i}" for i in range(count)]


def front_names(count: int) -> list[str]:
    """The components clients reach first: the gateways, and ``lb`` when there are several."""
    return gateway_names(count) + (["lb"] if count > 1 else [])


def plan_cluster(args: argparse.Namespace, log_dir: Path) -> list[Component]:
    """The processes to start, with their ports chosen now (loopback by default)."""
    py = [sys.executable, "-m", "system_under_test"]
    common = ["--preset", args.preset, "--device", args.device]
    if args.artifacts:
        common += ["--artifacts", str(args.artifacts)]
    # the shard copies' and the region's (the gateways do not take it)
    backend = list(common)
    if getattr(args, "keep_warm_ms", None) is not None:
        backend += ["--keep-warm-ms", f"{args.keep_warm_ms:g}"]
    host = args.host
    ports: dict[str, int] = dict(args.port_plan or {})
    names = [f"shard-{i}-{r}" for i in range(args.shards) for r in ("primary", "replica")]
    missing = [n for n in [*names, "region", *front_names(_gateways(args))] if not ports.get(n)]
    ports.update(zip(missing, free_ports(len(missing), host), strict=True))
    comps: list[Component] = []
    for shard in range(args.shards):
        for role in ("primary", "replica"):
            name = f"shard-{shard}-{role}"
            port = ports[name]
            cmd = (
                py
                + [
                    "serve-shard",
                    "--shard",
                    str(shard),
                    "--shards",
                    str(args.shards),
                    "--role",
                    role,
                    "--host",
                    host,
                    "--port",
                    str(port),
                ]
                + backend
            )
            comps.append(
                Component(name, role, shard, f"{host}:{port}", cmd, log_dir / f"{name}.log")
            )
    region_port = ports["region"]
    comps.append(
        Component(
            "region",
            "region",
            None,
            f"{host}:{region_port}",
            py + ["serve-region", "--host", host, "--port", str(region_port)] + backend,
            log_dir / "region.log",
        )
    )
    # --route lets a tool put something (a fault proxy) between the gateway and a component.
    routes: dict[str, str] = dict(args.routes or {})
    gw_args = [
        "--sla-ms",
        str(args.sla_ms),
        "--region",
        routes.get("region", f"{host}:{region_port}"),
    ]
    gw_args += common
    for comp in comps:
        if comp.role in ("primary", "replica"):
            gw_args += [f"--shard-{comp.role}", routes.get(comp.name, comp.address)]
    if args.redis:
        gw_args += ["--redis", args.redis]
    gateways = []
    for name in gateway_names(_gateways(args)):
        gw_cmd = py + ["serve-gateway", "--host", host, "--port", str(ports[name])] + gw_args
        address = f"{host}:{ports[name]}"
        gateways.append(Component(name, "gateway", None, address, gw_cmd, log_dir / f"{name}.log"))
    comps += gateways
    if len(gateways) > 1:
        lb_cmd = py + ["serve-lb", "--host", host, "--port", str(ports["lb"])]
        lb_cmd += [f"--gateway={gw.address}" for gw in gateways]
        lb_cmd += ["--config", str(log_dir / "haproxy.cfg")]
        for option in LB_OPTIONS:
            value = getattr(args, option.replace("-", "_"), None)
            if value is not None:
                lb_cmd += [f"--{option}", str(value)]
        comps.append(
            Component("lb", "lb", None, f"{host}:{ports['lb']}", lb_cmd, log_dir / "lb.log")
        )
    return comps


def spawn(comp: Component, env: dict[str, str] | None = None) -> None:
    """Start ``comp`` in a session of its own (it outlives ``up``), output to its log."""
    comp.proc = ManagedProcess(comp.command, comp.log, name=comp.name, env=env).start()
    assert comp.proc.ref is not None
    comp.pid, comp.start_time = comp.proc.pid, comp.proc.ref.create_time


def is_ready(comp: Component) -> bool:
    _STOPS.check()  # each poll is a step: a stop signal whose raise was lost ends the wait
    if comp.role in ("gateway", "lb"):
        return http_get(f"http://{comp.address}/readyz", 1.0) is None
    return asyncio.run(ping(comp.address, 1.0)) is None


def wait_ready(comps: list[Component], timeout_s: float, log=print) -> None:
    """Poll each component in start order until it answers, all within ``timeout_s``; fail
    fast (LaunchError with its last log lines) if one exits first."""
    deadline = time.monotonic() + timeout_s
    for comp in comps:
        assert comp.proc is not None, f"{comp.name} was never started"
        try:
            comp.proc.wait_ready(
                lambda c=comp: is_ready(c),  # type: ignore[misc]
                max(deadline - time.monotonic(), 0.0),
                f"{comp.name} ready on {comp.address} (--timeout {timeout_s:g} s)",
                interval_s=0.05,
            )
        except StartError as exc:
            raise LaunchError(str(exc)) from None
        log(f"  ready: {comp.name:<18} {comp.address}  pid {comp.pid}")


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LaunchError(f"no manifest at {path} (--manifest); is the cluster up?") from None
    except json.JSONDecodeError as exc:
        raise LaunchError(f"manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("components"), list):
        raise LaunchError(f"manifest {path} has no 'components' list")
    return data


def component_ref(comp: dict[str, Any]) -> ProcessRef | None:
    """The live process a manifest entry names: by PID and start time, or (a manifest without
    start times) by PID and the exact command line; None when it is gone or was reused."""
    pid = comp.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    start = comp.get("start_time")
    if isinstance(start, int | float):
        ref = ProcessRef(pid, float(start))
        return ref if ref.alive() else None
    found = ProcessRef.of_pid(pid)
    if found is None or found.cmdline() != list(comp.get("command") or []):
        return None
    return found


def _stop_started(comps: list[Component]) -> None:
    """Stop every component started so far, newest first (each one reaped)."""
    for comp in reversed(comps):
        if comp.proc is not None:
            try:
                comp.proc.stop()
            except StartError as exc:
                print(f"warning: {exc}", file=sys.stderr)


class _StopRequests:
    """While the cluster starts, SIGTERM, SIGINT and SIGHUP raise :class:`Interrupted`: at once,
    or right after a step that must not be cut in half (a spawn, writing the manifest), so no
    child is started without a handle to stop it. Only the first counts: a second signal cannot
    cut the clean-up short. The signal is also kept, and every step checks it (:meth:`check`):
    Python drops an exception raised while a weakref callback or a ``__del__`` runs (it prints
    "Exception ignored in" and goes on), so a raise alone can be lost. :meth:`release` ends the
    ownership: the cluster is up."""

    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        self.pending = signum
        if not self.deferring:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop signal came, even one whose raise was lost."""
        if self.pending is not None:
            raise Interrupted(self.pending)

    @contextmanager
    def owning_children(self) -> Iterator[None]:
        self.pending = None
        self._previous = {sig: signal.signal(sig, self.handle) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.check()
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        self.check()


_STOPS = _StopRequests()


def _spawn_owned(comp: Component) -> None:
    with _STOPS.deferred():
        spawn(comp)


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=int, default=4, help="number of shards (default 4)")
    parser.add_argument(
        "--manifest",
        type=Path,
        default=DEFAULT_MANIFEST,
        help=f"where to write the manifest (default {DEFAULT_MANIFEST})",
    )
    parser.add_argument(
        "--redis",
        default=None,
        help="redis://HOST:PORT for the L2 cache and "
        "feature store (default: none, everything in process)",
    )
    parser.add_argument(
        "--gateways",
        type=int,
        default=DEFAULT_GATEWAYS,
        help=f"gateway processes (default {DEFAULT_GATEWAYS}): 2 or more are gateway-0 ... behind "
        "HAProxy, the component lb, which gateway_url names; 1 is the gateway alone, the "
        "component gateway, with no balancer",
    )
    parser.add_argument(
        "--server-timeout-ms",
        type=int,
        default=None,
        help="with 2 or more gateways: how long HAProxy gives a gateway to answer before it "
        "sends the request to another (default: serve-lb's, 10; 20 with --gateway-maxconn)",
    )
    parser.add_argument(
        "--gateway-maxconn",
        type=int,
        default=None,
        help="with --gateways 2 or more: requests HAProxy gives one gateway at a time; the rest "
        "wait at the balancer (default: no limit; 2 measured best past capacity)",
    )
    parser.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=None,
        help="with --gateways 2 or more: how long a request waits at HAProxy for a gateway with "
        "room before it is answered 503 with Retry-After (default: serve-lb's, 5)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="with --gateways 2 or more: a request that finds this many waiting at HAProxy is "
        "answered 503 with Retry-After at once; 0: none waits, a request that finds every "
        "gateway full is answered so at once (default: serve-lb's, 0)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default="default", help="data/model preset (default, tiny)")
    parser.add_argument("--artifacts", type=Path, default=None, help="artifact cache directory")
    parser.add_argument(
        "--keep-warm-ms",
        type=float,
        default=None,
        help="each shard copy and the region run their serving path once after this long without"
        f" a request (default {KEEP_WARM_S * 1000:g}; 0: never)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="component logs (default: logs/ beside the manifest)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--sla-ms", type=float, default=20.0)
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for the cluster to be ready (default 180)",
    )
    parser.add_argument(
        "--port",
        dest="port_plan",
        action="append",
        type=_name_port,
        metavar="NAME=PORT",
        help="listen port of a component (default: a free one)",
    )
    parser.add_argument(
        "--route",
        dest="routes",
        action="append",
        type=_name_address,
        metavar="NAME=HOST:PORT",
        help="address the gateway uses for a component (e.g. a fault proxy)",
    )


def _name_port(text: str) -> tuple[str, int]:
    name, sep, port = text.partition("=")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PORT with PORT in 1-65535")
    return name, int(port)


def _name_address(text: str) -> tuple[str, str]:
    name, sep, address = text.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=HOST:PORT")
    return name, address


def validate_up(args: argparse.Namespace) -> str | None:
    if not 1 <= args.shards <= 64:
        return f"--shards {args.shards} is out of range; allowed: 1 to 64"
    if not 1 <= args.gateways <= MAX_GATEWAYS:
        return f"--gateways {args.gateways} is out of range; allowed: 1 to {MAX_GATEWAYS}"
    from system_under_test.balancer import check_limits

    given = {o: getattr(args, o.replace("-", "_"), None) for o in LB_OPTIONS}
    problem = check_limits(
        given["server-timeout-ms"],
        given["gateway-maxconn"],
        given["queue-timeout-ms"],
        given["max-queue"],
    )
    if problem:
        return problem
    for option, value in given.items():
        if value is not None and args.gateways == 1:
            return (
                f"--{option} {value} is HAProxy's, and --gateways 1 starts none; "
                "allowed with --gateways 2 or more"
            )
    if args.gateways > 1 and shutil.which("haproxy") is None:
        return (
            f"--gateways {args.gateways} (default {DEFAULT_GATEWAYS}) needs HAProxy in front of "
            "the gateways, and haproxy is not installed; scripts/setup.sh installs Debian's "
            "haproxy (or use --gateways 1: the gateway alone, no balancer)"
        )
    if args.sla_ms <= 0:
        return f"--sla-ms {args.sla_ms} must be positive"
    kw = getattr(args, "keep_warm_ms", None)
    problem = keep_warm_problem(kw) if kw is not None else None
    if problem:
        return problem
    if args.redis and not args.redis.startswith(("redis://", "unix://")):
        return f"--redis {args.redis!r} must be a URL like redis://127.0.0.1:6379/0"
    if args.timeout <= 0:
        return f"--timeout {args.timeout} must be positive"
    from system_under_test.config import PRESETS

    names = {f"shard-{i}-{r}" for i in range(args.shards) for r in ("primary", "replica")}
    for name, _ in list(args.port_plan or []) + list(args.routes or []):
        front = front_names(args.gateways)
        if name not in names | {"region", *front}:
            return (
                f"component {name!r} in --port/--route is unknown; allowed: shard-I-primary, "
                f"shard-I-replica (I < {args.shards}), region, {', '.join(front)}"
            )

    if args.preset not in PRESETS:
        return f"--preset {args.preset!r} is unknown; allowed: {', '.join(sorted(PRESETS))}"
    return None


def start(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Start the cluster, wait until ready, write and return the manifest."""
    from system_under_test.artifacts import ensure_artifacts, load_metadata

    t0 = time.monotonic()
    if args.manifest.exists():
        existing = json.loads(args.manifest.read_text() or "{}")
        alive = [c["name"] for c in existing.get("components", []) if component_ref(c)]
        if alive:
            raise LaunchError(
                f"manifest {args.manifest} names running components ({', '.join(alive)});"
                f" run `down --manifest {args.manifest}` first or pass another --manifest"
            )
    art_dir = ensure_artifacts(args.preset, args.artifacts, log=log)
    meta = load_metadata(art_dir)
    log_dir = args.log_dir or args.manifest.parent / "logs"
    comps = plan_cluster(args, log_dir)
    ensure_token(token_path(args.manifest))  # in the environment every component inherits
    log(f"starting {len(comps)} processes (model {meta['version']}, logs in {log_dir})")
    wrote = False
    try:
        # In stages, each one's dependencies ready first: the servers the gateways call, the
        # gateways, then the balancer in front of them.
        for stage in _stages(comps):
            for comp in stage:
                _spawn_owned(comp)
            wait_ready(stage, max(args.timeout - (time.monotonic() - t0), 5.0), log)
        manifest = _manifest(args, comps, meta, log_dir, time.monotonic() - t0)
        with _STOPS.deferred():
            write_manifest(args.manifest, manifest)
            wrote = True
            _STOPS.release()  # the cluster is up: from here on it outlives `up`
    except BaseException:
        _stop_started(comps)
        if wrote:
            args.manifest.unlink(missing_ok=True)
        raise
    return manifest


def _stages(comps: list[Component]) -> list[list[Component]]:
    order = ("gateway", "lb")
    stages = [[c for c in comps if c.role not in order]]
    stages += [[c for c in comps if c.role == role] for role in order]
    return [stage for stage in stages if stage]


def entry_point(comps: list[Component]) -> Component:
    """The component clients call: the balancer where there is one, else the gateway."""
    fronts = [c for c in comps if c.role == "lb"] or [c for c in comps if c.role == "gateway"]
    return fronts[0]


def _manifest(
    args: argparse.Namespace,
    comps: list[Component],
    meta: dict[str, Any],
    log_dir: Path,
    startup_s: float,
) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "gateway_url": f"http://{entry_point(comps).address}",
        "model_version": meta["version"],
        "preset": args.preset,
        "n_users": meta["data"]["n_users"],
        "n_items": meta["data"]["n_items"],
        # What answers are checked against: users it knows (others get a cold start) and the
        # item ids it may answer ([0, catalogue)).
        "population": meta["data"]["n_users"],
        "catalogue": meta["data"]["n_items"],
        "shards": args.shards,
        "gateways": _gateways(args),
        "redis": args.redis,
        "log_dir": str(log_dir),
        "started_at": time.time(),
        "startup_seconds": round(startup_s, 3),
        "components": [c.to_json() for c in comps],
        "routes": dict(args.routes or {}),
        "control_token_file": str(token_path(args.manifest)),
    }


def stop(manifest_path: Path, timeout_s: float = 10.0, log=print) -> list[str]:
    """Stop every live process the manifest names (SIGKILL after ``timeout_s``); returns those
    still running. The manifest is removed once nothing is left."""
    data = read_manifest(manifest_path)
    targets = []
    for comp in reversed(data["components"]):
        ref = component_ref(comp)
        if ref is not None:
            targets.append((str(comp.get("name")), ref))
    left = stop_processes(targets, timeout_s, log=lambda line: log(f"  {line}")).left
    if not left:
        manifest_path.unlink(missing_ok=True)
        token_path(manifest_path).unlink(missing_ok=True)
    return left


def main_up(argv: list[str]) -> int:
    from system_under_test.__main__ import prog

    parser = argparse.ArgumentParser(
        prog=f"{prog()} up", description="Start the recommender cluster."
    )
    add_up_arguments(parser)
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log as they happen
    problem = validate_up(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        with _STOPS.owning_children():
            manifest = start(args)
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"{exc}: stopped every process started so far", file=sys.stderr)
        return 128 + exc.signum
    print(
        f"cluster up in {manifest['startup_seconds']:.1f} s: {manifest['gateway_url']} "
        f"(manifest {args.manifest})"
    )
    return 0


def main_down(argv: list[str]) -> int:
    from system_under_test.__main__ import prog

    parser = argparse.ArgumentParser(
        prog=f"{prog()} down", description="Stop every process a manifest names."
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait after SIGTERM before SIGKILL (default 10)",
    )
    args = parser.parse_args(argv)
    try:
        left = stop(args.manifest, args.timeout)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if left:
        print(f"error: still running after SIGKILL: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"cluster down ({args.manifest})")
    return 0
