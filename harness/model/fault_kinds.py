"""The fault registry: one record per fault kind, the only place a kind is defined.

A :class:`FaultKind` says what the kind does and what heals it, its parameters (:class:`Param`:
type and limits in the converter, the default, the meaning), and per backend (``process`` or
``docker``) the components it may hit and the injector that applies it (:class:`Backend`).
Scenario validation (:mod:`harness.model.faults`), ``make_injector``
(:mod:`harness.inject.base`), the fault proxy's fault specs (:mod:`harness.proxy.config`) and
the fault tables of ``docs/scenario-format.md`` (:mod:`harness.model.fault_table`) all read it.
Adding a kind is one record here plus its injector.

Injectors are named as ``"module:factory"`` strings, so this pure model never imports the
side-effect layer; a factory is called as ``factory(kind, target, params, ctx)`` with complete,
validated parameters. A kind that has no entry for a backend cannot run there: validation offers
it no component, and its injector refuses with ``FaultUnsupported``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.model.target import BACKENDS, RecommenderTarget, Target
from harness.model.validate import REQUIRED, Conv, choice, integer, number


@dataclass(frozen=True)
class Param:
    """One parameter: what is allowed (the converter's text states type and limits), the
    default (``REQUIRED``: none, the scenario must give it) and what it means."""

    conv: Conv
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class ComponentSet:
    """A set of a target's components that faults may hit; ``needs`` says, for messages, what
    a target without any of them lacks; ``default`` is the component a fault targets when the
    scenario names none."""

    doc: str
    members: Callable[[Target], tuple[str, ...]]
    needs: str
    default: str | None = None


def _recommender(target: Target) -> tuple[str, ...]:
    return target.component_names() if isinstance(target, RecommenderTarget) else ()


def _named(name: str) -> Callable[[Target], tuple[str, ...]]:
    return lambda target: (name,) if name in target.component_names() else ()


COMPONENT_SETS: dict[str, ComponentSet] = {
    "any": ComponentSet("any component", lambda t: t.component_names(), "a component"),
    "proxied": ComponentSet(
        "shard copies, `region`",
        lambda t: t.proxied(),
        "the recommender target with its fault proxy (proxy: true, the default; not docker)",
    ),
    "shards": ComponentSet("shard copies", lambda t: t.shard_copies(), "the recommender target"),
    "recommender": ComponentSet("recommender components", _recommender, "the recommender target"),
    "redis": ComponentSet(
        "`redis` (default)", _named("redis"), "the recommender target with redis: true", "redis"
    ),
    "region": ComponentSet(
        "`region` (default)", _named("region"), "the recommender target", "region"
    ),
}


@dataclass(frozen=True)
class Backend:
    """How a kind runs on one backend: the component set (a key of :data:`COMPONENT_SETS`) it
    may hit, its injector factory (``"module:name"``), and the heal actions its injector
    journals for the watchdog (``none``: nothing to undo; the run restarts or tears down)."""

    targets: str
    injector: str
    heal_actions: tuple[str, ...]


MECHANISMS: dict[str, str] = {
    "signal": "signals to the component's process",
    "proxy": "the userspace fault proxy",
    "iptables": "iptables rules",
    "cgroup": "cgroup v1 controllers",
    "fault_point": "the fault points in the shard servers",
    "dependency": "an outage of a dependency",
    "docker": "the docker network",
}
"""What each mechanism works through, for messages ("latency faults go through ...")."""

Rule = Callable[[Mapping[str, Any], float | None], tuple[str, str] | None]
"""A rule across parameters (and the fault's ``duration_s``, None when unknown or ``heal: end``):
returns the offending parameter and what it allows, or None when the parameters are fine."""


@dataclass(frozen=True)
class FaultKind:
    """Everything about one fault kind (see the module docstring)."""

    name: str
    mechanism: str  # a key of MECHANISMS
    does: str
    heal: str
    backends: Mapping[str, Backend]
    params: Mapping[str, Param] = field(default_factory=dict)
    takes_down: bool = False  # the component does not answer while the fault lasts
    root: bool = False
    rule: Rule | None = None

    def check(self, params: Mapping[str, Any], duration_s: float | None) -> tuple[str, str] | None:
        return None if self.rule is None else self.rule(params, duration_s)

    def defaults(self) -> dict[str, Any]:
        """Every parameter that has a default, with it."""
        return {name: p.default for name, p in self.params.items() if not p.required}


# -- parameters shared by several kinds -----------------------------------------------------------

_RATE = Param(
    number(0, 1, lo_open=True, unit="share of requests"),
    1.0,
    "share of requests the fault point fires on, chosen by a hash of (seed, request id)",
)
_DELAY_MS = Param(number(0, 600_000, lo_open=True, unit="ms"), doc="added delay")
DIRECTIONS = ("upstream", "downstream", "both")
"""The ways through the fault proxy: ``upstream`` is client to server (towards the component),
``downstream`` server to client (its answers)."""
_DIRECTION = Param(
    choice(DIRECTIONS),
    "downstream",
    "the way through the proxy: upstream (towards the component), downstream (its answers) or both",
)


def _jitter_within_delay(
    params: Mapping[str, Any], _duration: float | None
) -> tuple[str, str] | None:
    if params["jitter_ms"] > params["delay_ms"]:  # a delay never goes below zero
        return "jitter_ms", f"a number <= delay_ms ({params['delay_ms']:g})"
    return None


def _restart_within_fault(
    params: Mapping[str, Any], duration: float | None
) -> tuple[str, str] | None:
    if duration is not None and params["delay_s"] > duration:
        return "delay_s", f"a number <= duration_s ({duration:g} s)"
    return None


# -- how each backend runs a family of kinds ------------------------------------------------------

_SIGNALS = "harness.inject.signals"
_CONTAINERS = "harness.inject.containers"
_APP = Backend("shards", "harness.inject.appfaults:AppFaultInjector", ("app_clear",))
_PROXY = Backend("proxied", "harness.inject.network:ProxyFaultInjector", ("proxy_clear",))
_KILL = {
    "process": Backend("any", f"{_SIGNALS}:KillInjector", ("none",)),
    "docker": Backend("any", f"{_CONTAINERS}:ContainerKill", ("none",)),
}
_NETFILTER = {
    "process": Backend(
        "recommender", "harness.inject.netfilter:NetfilterInjector", ("iptables_drop_chain",)
    ),
    "docker": Backend(
        "recommender", f"{_CONTAINERS}:ContainerNetfilter", ("docker_netns_drop_chain",)
    ),
}


_KINDS = (
    FaultKind(
        name="kill",
        mechanism="signal",
        does="SIGKILL (docker: `docker kill`)",
        heal="started again",
        backends=_KILL,
        takes_down=True,
    ),
    FaultKind(
        name="terminate",
        mechanism="signal",
        does="SIGTERM, then SIGKILL after `grace_s`",
        heal="started again",
        backends=_KILL,
        params={
            "grace_s": Param(number(0, 600, unit="s"), 5.0, "time from SIGTERM to SIGKILL"),
        },
        takes_down=True,
    ),
    FaultKind(
        name="freeze",
        mechanism="signal",
        does="SIGSTOP (docker: `docker pause`)",
        heal="SIGCONT (docker: unpause)",
        backends={
            "process": Backend("any", f"{_SIGNALS}:FreezeInjector", ("sigcont",)),
            "docker": Backend("any", f"{_CONTAINERS}:ContainerPause", ("docker_unpause",)),
        },
        takes_down=True,
    ),
    FaultKind(
        name="restart",
        mechanism="signal",
        does="SIGKILL, started again after `delay_s`",
        heal="started again if it is not yet",
        backends={
            "process": Backend("any", f"{_SIGNALS}:RestartInjector", ("none",)),
            "docker": Backend("any", f"{_CONTAINERS}:ContainerRestart", ("none",)),
        },
        params={
            "delay_s": Param(
                number(0, 3600, unit="s"), 1.0, "time from the kill to the start; <= duration_s"
            ),
        },
        takes_down=True,
        rule=_restart_within_fault,
    ),
    FaultKind(
        name="latency",
        mechanism="proxy",
        does="fault proxy: added delay",
        heal="proxy fault removed",
        backends={"process": _PROXY},
        params={
            "delay_ms": _DELAY_MS,
            "jitter_ms": Param(
                number(0, 600_000, unit="ms"), 0.0, "uniform random extra delay; <= delay_ms"
            ),
            "direction": _DIRECTION,
        },
        rule=_jitter_within_delay,
    ),
    FaultKind(
        name="bandwidth",
        mechanism="proxy",
        does="fault proxy: rate limit",
        heal="proxy fault removed",
        backends={"process": _PROXY},
        params={
            "rate_kbps": Param(
                number(0, 10_000_000, lo_open=True, unit="KiB/s"), doc="bytes per second / 1024"
            ),
            "direction": _DIRECTION,
        },
    ),
    FaultKind(
        name="blackhole",
        mechanism="proxy",
        does="fault proxy: accepts, never answers",
        heal="proxy fault removed",
        backends={"process": _PROXY},
        params={
            "mode": Param(
                choice(("drop", "hold")),
                "drop",
                "drop: read and discard; hold: stop forwarding and keep the bytes, like a frozen"
                " peer (they flow on after the heal)",
            ),
            "direction": _DIRECTION,
        },
        takes_down=True,
    ),
    FaultKind(
        name="reset",
        mechanism="proxy",
        does="fault proxy: TCP reset of every connection",
        heal="proxy fault removed",
        backends={"process": _PROXY},
        params={"direction": Param(choice(("both",)), "both", "a reset acts both ways")},
        takes_down=True,
    ),
    FaultKind(
        name="slicer",
        mechanism="proxy",
        does="fault proxy: data cut into small delayed pieces",
        heal="proxy fault removed",
        backends={"process": _PROXY},
        params={
            "average_size": Param(integer(1, 65_536), 64, "mean piece size (bytes)"),
            "size_variation": Param(integer(0, 65_536), 32, "piece sizes vary by up to this"),
            "delay_us": Param(integer(0, 1_000_000), 100, "delay between pieces (microseconds)"),
            "direction": _DIRECTION,
        },
    ),
    FaultKind(
        name="partition",
        mechanism="iptables",
        does="iptables DROP of TCP to and from the component's port",
        heal="rules deleted",
        backends=_NETFILTER,
        takes_down=True,
        root=True,
    ),
    FaultKind(
        name="packet_loss",
        mechanism="iptables",
        does="iptables random drop of TCP to and from the component's port",
        heal="rules deleted",
        backends=_NETFILTER,
        params={
            "probability": Param(
                number(0, 1, lo_open=True, unit="share of packets"), doc="share of packets dropped"
            ),
        },
        root=True,
    ),
    FaultKind(
        name="cpu_throttle",
        mechanism="cgroup",
        does="cgroup v1 CPU quota (docker: `docker update --cpu-quota`)",
        heal="quota removed",
        backends={
            "process": Backend("any", "harness.inject.cgroups:CgroupInjector", ("cgroup_remove",)),
            "docker": Backend("any", f"{_CONTAINERS}:ContainerCpu", ("docker_cpu_reset",)),
        },
        params={
            "cpu_fraction": Param(
                number(0, 1, lo_open=True, unit="share of one core"),
                doc="CPU time allowed per 100 ms period",
            ),
        },
        root=True,
    ),
    FaultKind(
        name="cpu_freeze",
        mechanism="cgroup",
        does="cgroup v1 freezer (docker: `docker pause`)",
        heal="thawed",
        backends={
            "process": Backend("any", "harness.inject.cgroups:CgroupInjector", ("cgroup_remove",)),
            "docker": Backend("any", f"{_CONTAINERS}:ContainerPause", ("docker_unpause",)),
        },
        takes_down=True,
        root=True,
    ),
    FaultKind(
        name="app_error",
        mechanism="fault_point",
        does="fault point in the shard server: an error answer",
        heal="fault point off",
        backends={"process": _APP, "docker": _APP},
        params={"rate": _RATE},
    ),
    FaultKind(
        name="app_delay",
        mechanism="fault_point",
        does="fault point: added handler delay",
        heal="fault point off",
        backends={"process": _APP, "docker": _APP},
        params={"delay_ms": _DELAY_MS, "rate": _RATE},
    ),
    FaultKind(
        name="app_nan",
        mechanism="fault_point",
        does="fault point: NaN in the response",
        heal="fault point off",
        backends={"process": _APP, "docker": _APP},
        params={"rate": _RATE},
    ),
    FaultKind(
        name="app_wrong_shape",
        mechanism="fault_point",
        does="fault point: wrong tensor shape",
        heal="fault point off",
        backends={"process": _APP, "docker": _APP},
        params={"rate": _RATE},
    ),
    FaultKind(
        name="redis_down",
        mechanism="dependency",
        does="Redis (the cache) killed or stopped",
        heal="started again, or SIGCONT",
        backends={
            "process": Backend(
                "redis", "harness.inject.deps:make_dependency_injector", ("none", "sigcont")
            ),
            "docker": Backend(
                "redis", f"{_CONTAINERS}:ContainerDependency", ("none", "docker_unpause")
            ),
        },
        params={
            "mode": Param(
                choice(("kill", "stop")),
                "kill",
                "kill: SIGKILL; stop: SIGSTOP (docker: pause), a hung Redis found only by timeouts",
            ),
        },
        takes_down=True,
    ),
    FaultKind(
        name="region_down",
        mechanism="dependency",
        does="the degraded region (fallback tier 3) killed or cut off",
        heal="started again, or the route restored",
        backends={
            "process": Backend(
                "region", "harness.inject.deps:make_dependency_injector", ("none", "proxy_clear")
            ),
            "docker": Backend(
                "region", f"{_CONTAINERS}:ContainerDependency", ("none", "docker_connect")
            ),
        },
        params={
            "mode": Param(
                choice(("kill", "blackhole")),
                "kill",
                "kill: SIGKILL; blackhole: its proxy route drops every byte both ways, a region"
                " that accepts and never answers (docker: disconnected from the network)",
            ),
        },
        takes_down=True,
    ),
    FaultKind(
        name="disconnect",
        mechanism="docker",
        does="`docker network disconnect` from the cluster's network",
        heal="reconnected with its DNS alias",
        backends={
            "docker": Backend("any", f"{_CONTAINERS}:ContainerDisconnect", ("docker_connect",))
        },
        takes_down=True,
    ),
)

FAULT_KINDS: dict[str, FaultKind] = {k.name: k for k in _KINDS}
"""Every fault kind by name, in the order the docs list them."""


def backend_of(target: Target) -> str:
    """The backend a target runs on (a generic target: its processes)."""
    backend = getattr(target, "backend", "process")
    return backend if backend in BACKENDS else "process"


def allowed_targets(kind: str, target: Target) -> tuple[str, ...]:
    """The components of ``target`` that a fault of ``kind`` may hit."""
    backend = FAULT_KINDS[kind].backends.get(backend_of(target))
    return () if backend is None else COMPONENT_SETS[backend.targets].members(target)


def default_target(kind: str) -> str | None:
    """The component a fault of ``kind`` hits when the scenario names none (e.g. ``redis``)."""
    defaults = {COMPONENT_SETS[b.targets].default for b in FAULT_KINDS[kind].backends.values()}
    return defaults.pop() if len(defaults) == 1 else None


def describe_targets(kind: str, target: Target) -> str:
    """What ``kind`` may hit on ``target``, for messages: the names, or why there are none."""
    names = allowed_targets(kind, target)
    spec = FAULT_KINDS[kind]
    backend = spec.backends.get(backend_of(target))
    if backend is None:
        where = " or ".join(spec.backends)
        return f"no component: {kind} faults need the recommender target with backend: {where}"
    if not names:
        needs = COMPONENT_SETS[backend.targets].needs
        return f"no component of this {target.kind} target ({kind} faults need {needs})"
    if len(names) > 6:
        return f"one of {', '.join(names[:4])}, ..., {names[-1]}"
    return "one of " + ", ".join(names)


def unsupported_reason(kind: str, backend: str) -> str:
    """Why ``kind`` cannot run on ``backend`` (one it has no entry for)."""
    spec = FAULT_KINDS[kind]
    other = next(iter(spec.backends))
    lacks = MECHANISMS[spec.mechanism].removeprefix("the ")
    return (
        f"{kind} needs the {other} backend (--backend {other}); the {backend} backend has no"
        f" {lacks}"
    )
