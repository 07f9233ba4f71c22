"""The one protocol every fault mechanism implements, the context injectors run in, and the
helpers that apply, verify, record and always heal them.

An :class:`Injector` is built by :func:`make_injector` from a fault kind, a target component and
parameters (the scenario's names, see :data:`harness.model.faults.FAULT_KINDS`). It can
``apply()`` the fault, ``verify()`` that the fault took effect (evidence, not hope: a process state,
a packet counter, a proxy counter, a fault-point counter), ``heal()`` it (idempotent; harmless on a
fault that was never or only half applied) and describe its heal as pure data, ``heal_action()``,
that :func:`execute_heal_action` (and so the watchdog process) can run without the injector.

:class:`FaultStack` is what a runner uses: it journals each fault before it is applied, records a
:class:`FaultEvent` with monotonic and wall times, and in ``heal_all`` heals every fault in
reverse order, recording a failed heal and still running the others.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness.model.errors import HarnessError, Inconclusive, Problem, RecchaosError, UsageError

if TYPE_CHECKING:
    from harness.inject.journal import Journal
    from harness.model.record import FaultEvent as RecordFaultEvent


class FaultUnsupported(Inconclusive):
    """This machine cannot inject the fault (not root, no iptables, no cgroup v1 controller).

    Raised by ``apply()`` before anything is changed; a runner skips the fault and the verdict
    of its windows is INCONCLUSIVE.
    """

    def __init__(self, kind: str, target: str, reason: str) -> None:
        super().__init__(f"{kind}({target}) cannot be injected on this machine: {reason}")
        self.kind = kind
        self.target = target
        self.reason = reason


class InjectError(HarnessError):
    """Applying a fault failed for a reason of the harness or the machine."""


class HealError(HarnessError):
    """Healing a fault failed: the system may still be faulted (an infrastructure error)."""


# -- components and the context ---------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One process of the target, as the cluster manifest names it."""

    name: str
    role: str
    pid: int | None
    address: str
    command: tuple[str, ...] = ()
    shard: int | None = None
    log: str | None = None
    container: str | None = None  # the docker backend's container id
    internal_address: str | None = None  # the address on the containers' network

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @classmethod
    def from_manifest(cls, d: Mapping[str, Any]) -> Component:
        pid = d.get("pid")
        return cls(
            name=str(d["name"]),
            role=str(d.get("role", "")),
            pid=int(pid) if pid else None,
            address=str(d.get("address", "")),
            command=tuple(str(c) for c in d.get("command") or ()),
            shard=d.get("shard"),
            log=d.get("log"),
            container=d.get("container"),
            internal_address=d.get("internal_address"),
        )


def read_manifest_components(path: str | os.PathLike[str]) -> dict[str, Component]:
    data = json.loads(Path(path).read_text())
    return {c["name"]: Component.from_manifest(c) for c in data.get("components", [])}


@dataclass(frozen=True)
class InjectContext:
    """What injectors need to know about the run, and the one hook they call back.

    ``components`` by name (the manifest's, plus any the runner adds such as ``redis``);
    ``proxy_url`` the fault proxy's control URL and ``routes`` the proxy route of each component
    (default: the component's own name); ``restart(name) -> new pid`` brings a component back
    (the runner's supervisor); ``manifest_path``, when given, is re-read for current PIDs.
    Restarts done through an injector are remembered (``set_pid``) for components the manifest
    does not name (redis), so the context is frozen except for the PIDs it tracks.
    """

    components: Mapping[str, Component]
    proxy_url: str | None = None
    routes: Mapping[str, str] = field(default_factory=dict)
    restart: Callable[[str], int] | None = None
    seed: int = 0
    run_id: str = "local"
    journal: Journal | None = None
    manifest_path: Path | None = None
    proxy_client: Any = None
    backend: str = "process"  # "docker": faults go to containers (harness.inject.containers)
    docker_host: str | None = None
    network: str | None = None  # the docker backend's network
    _pids: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _seq: Any = field(default_factory=lambda: itertools.count(1), compare=False, repr=False)

    @classmethod
    def from_manifest(
        cls,
        manifest: str | os.PathLike[str] | Mapping[str, Any],
        extra: Iterable[Component] = (),
        **kwargs: Any,
    ) -> InjectContext:
        """A context over a manifest (a path, re-read for PIDs, or the parsed mapping); the
        manifest's ``backend``, ``docker_host`` and ``network`` keys choose the injectors."""
        if isinstance(manifest, Mapping):
            data = manifest
        else:
            kwargs.setdefault("manifest_path", Path(manifest))
            data = json.loads(Path(manifest).read_text())
        comps = {c["name"]: Component.from_manifest(c) for c in data.get("components", [])}
        for key in ("backend", "docker_host", "network"):
            if data.get(key):
                kwargs.setdefault(key, data[key])
        comps.update({c.name: c for c in extra})
        return cls(components=comps, **kwargs)

    def names(self) -> tuple[str, ...]:
        return tuple(self.components)

    def component(self, name: str) -> Component:
        """The component as it is now (a restart may have changed its PID)."""
        comp = self.components.get(name)
        if comp is None:
            known = ", ".join(self.components) or "(none)"
            raise UsageError(f"no component {name!r} in this target; known: {known}")
        if self.manifest_path is not None:  # the manifest is the truth where it names it
            try:
                fresh = read_manifest_components(self.manifest_path).get(name)
            except (OSError, ValueError, KeyError):
                fresh = None
            if fresh is not None:
                return fresh
        if name in self._pids:
            comp = Component(**{**asdict(comp), "pid": self._pids[name]})
        return comp

    def set_pid(self, name: str, pid: int) -> None:
        self._pids[name] = pid

    def route(self, name: str) -> str:
        return self.routes.get(name, name)

    def proxy(self) -> Any:
        """A client of the fault proxy's control API (``ProxyClient``)."""
        if self.proxy_client is not None:
            return self.proxy_client
        if not self.proxy_url:
            raise UsageError(
                "no fault proxy in this run (proxy_url is unset): latency, bandwidth, "
                "blackhole, reset and slicer faults need the target started with its proxy"
            )
        from harness.inject.proxy_client import ProxyClient

        return ProxyClient(self.proxy_url)

    def short_run_id(self) -> str:
        """At most 8 letters and digits of the run id (iptables chain names are short)."""
        text = re.sub(r"[^A-Za-z0-9]", "", self.run_id)
        return (text[-8:] or "run").lower()

    def next_seq(self) -> int:
        return int(next(self._seq))


# -- the injector protocol -----------------------------------------------------------------------


@runtime_checkable
class Injector(Protocol):
    """One fault on one target. ``heal()`` is idempotent and safe on an unapplied fault."""

    @property
    def kind(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def params(self) -> Mapping[str, Any]: ...

    def apply(self) -> None:
        """Inject the fault. Raises FaultUnsupported (before changing anything) when this
        machine cannot, UsageError for a bad target, HarnessError when the mechanism fails."""
        ...

    def verify(self) -> tuple[bool, str]:
        """(True, evidence) once the fault's effect is observed; (False, why not) otherwise.
        Counter-based evidence needs traffic, so it may only turn true later in the window."""
        ...

    def heal(self) -> None:
        """Undo the fault. Idempotent, harmless on an unapplied or half-applied fault."""
        ...

    def heal_action(self) -> dict[str, Any]:
        """The heal as pure data for :func:`execute_heal_action` (the watchdog's way)."""
        ...


class BaseInjector:
    """Shared state of the injectors: what, where, the context, and the label used in messages."""

    def __init__(
        self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext
    ) -> None:
        self.kind = kind
        self.target = target
        self.params = dict(params)
        self.ctx = ctx

    @property
    def label(self) -> str:
        return f"{self.kind}({self.target})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} {self.params}>"


NO_ACTION: dict[str, Any] = {"action": "none"}


# -- making injectors ---------------------------------------------------------------------------

# kind -> (module, factory); factories take (kind, target, params, ctx).
_FACTORIES: dict[str, tuple[str, str]] = {
    "kill": ("harness.inject.signals", "KillInjector"),
    "terminate": ("harness.inject.signals", "KillInjector"),
    "freeze": ("harness.inject.signals", "FreezeInjector"),
    "restart": ("harness.inject.signals", "RestartInjector"),
    "latency": ("harness.inject.network", "ProxyFaultInjector"),
    "bandwidth": ("harness.inject.network", "ProxyFaultInjector"),
    "blackhole": ("harness.inject.network", "ProxyFaultInjector"),
    "reset": ("harness.inject.network", "ProxyFaultInjector"),
    "slicer": ("harness.inject.network", "ProxyFaultInjector"),
    "partition": ("harness.inject.netfilter", "NetfilterInjector"),
    "packet_loss": ("harness.inject.netfilter", "NetfilterInjector"),
    "cpu_throttle": ("harness.inject.cgroups", "CgroupInjector"),
    "cpu_freeze": ("harness.inject.cgroups", "CgroupInjector"),
    "cgroup_freeze": ("harness.inject.cgroups", "CgroupInjector"),
    "app_error": ("harness.inject.appfaults", "AppFaultInjector"),
    "app_delay": ("harness.inject.appfaults", "AppFaultInjector"),
    "app_nan": ("harness.inject.appfaults", "AppFaultInjector"),
    "app_wrong_shape": ("harness.inject.appfaults", "AppFaultInjector"),
    "redis_down": ("harness.inject.deps", "make_dependency_injector"),
    "region_down": ("harness.inject.deps", "make_dependency_injector"),
    "disconnect": ("harness.inject.containers", "make_disconnect"),
}
# The docker backend (a manifest with "backend": "docker") has one factory for every kind.
_DOCKER_FACTORY = ("harness.inject.containers", "make_container_injector")
KINDS: tuple[str, ...] = tuple(_FACTORIES)

# Kinds known under a second name: the scenario table calls the cgroup freezer ``cpu_freeze``.
_KIND_ALIASES = {"cgroup_freeze": "cpu_freeze"}

# Parameter names accepted besides the scenario's (name -> (scenario name, conversion)).
_PARAM_ALIASES: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "latency": {"ms": ("delay_ms", lambda v: v)},
    "bandwidth": {"bytes_per_s": ("rate_kbps", lambda v: v / 1024 if _is_num(v) else v)},
    "cpu_throttle": {"percent": ("cpu_fraction", lambda v: v / 100 if _is_num(v) else v)},
    "app_error": {"error_rate": ("rate", lambda v: v)},
    "app_delay": {"delay_rate": ("rate", lambda v: v)},
    "app_nan": {"nan_rate": ("rate", lambda v: v)},
    "app_wrong_shape": {"wrong_shape_rate": ("rate", lambda v: v)},
}
# Parameters only the injector layer knows (not in the scenario table): name -> allowed values.
_EXTRA_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "redis_down": {"mode": ("kill", "stop")},
    "region_down": {"mode": ("kill", "blackhole")},
}


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def normalize_params(kind: str, target: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters of ``kind`` with aliases translated, validated, defaults filled in.

    Raises :class:`UsageError` naming the fault, the parameter, the value and what is allowed.
    """
    from harness.model.faults import FAULT_KINDS, read_params

    raw = dict(params or {})
    for alias, (name, conv) in _PARAM_ALIASES.get(kind, {}).items():
        if alias in raw:
            if name in raw:
                raise UsageError(
                    f"{kind}({target}): params gives both {alias!r} and {name!r}; give one"
                )
            raw[name] = conv(raw.pop(alias))
    extra: dict[str, Any] = {}
    for name, allowed in _EXTRA_CHOICES.get(kind, {}).items():
        value = raw.pop(name, allowed[0])
        if value not in allowed:
            raise UsageError(
                f"{kind}({target}): params.{name}: got {value!r}; allowed: one of "
                + ", ".join(allowed)
            )
        extra[name] = value
    problems: list[Problem] = []
    out = read_params(_KIND_ALIASES.get(kind, kind), raw, "params", problems)
    if problems:
        text = "; ".join(p.describe() for p in problems)
        known = list(FAULT_KINDS[_KIND_ALIASES.get(kind, kind)].params)
        known += list(_PARAM_ALIASES.get(kind, {})) + list(_EXTRA_CHOICES.get(kind, {}))
        raise UsageError(
            f"{kind}({target}): {text} (parameters of {kind}: {', '.join(known) or 'none'})"
        )
    return {**out, **extra}


def make_injector(
    kind: str, target: str, params: Mapping[str, Any] | None, ctx: InjectContext
) -> Injector:
    """An injector for ``kind`` on ``target``; raises :class:`UsageError` naming what is wrong."""
    if kind not in _FACTORIES:
        raise UsageError(
            f"unknown fault kind {kind!r} (target {target!r}); allowed: {', '.join(KINDS)}"
        )
    if target not in ctx.components:
        known = ", ".join(ctx.components) or "(none)"
        raise UsageError(
            f"{kind}({target}): no component {target!r} in this target; known: {known}"
        )
    clean = normalize_params(kind, target, params)
    module, factory = _DOCKER_FACTORY if ctx.backend == "docker" else _FACTORIES[kind]
    make = getattr(importlib.import_module(module), factory)
    injector: Injector = make(kind, target, clean, ctx)
    return injector


# -- heal actions: pure data a process without the injector can execute --------------------------

_ACTIONS: dict[str, tuple[str, str]] = {
    "sigcont": ("harness.inject.signals", "execute_sigcont"),
    "iptables_drop_chain": ("harness.inject.netfilter", "execute_drop_chain"),
    "cgroup_remove": ("harness.inject.cgroups", "execute_cgroup_remove"),
    "proxy_clear": ("harness.inject.network", "execute_proxy_clear"),
    "app_clear": ("harness.inject.appfaults", "execute_app_clear"),
    "docker_unpause": ("harness.inject.containers", "execute_unpause"),
    "docker_connect": ("harness.inject.containers", "execute_connect"),
    "docker_cpu_reset": ("harness.inject.containers", "execute_cpu_reset"),
    "docker_netns_drop_chain": ("harness.inject.containers", "execute_netns_drop_chain"),
}


def execute_heal_action(action: Mapping[str, Any]) -> str:
    """Run one heal action (idempotent); returns what was done. Raises HealError on failure."""
    name = action.get("action")
    if name == "none":
        return "nothing to do"
    if name not in _ACTIONS:
        raise HealError(f"unknown heal action {name!r}; allowed: none, {', '.join(_ACTIONS)}")
    module, func = _ACTIONS[str(name)]
    result: str = getattr(importlib.import_module(module), func)(action)
    return result


# -- recording ------------------------------------------------------------------------------------


@dataclass
class FaultEvent:
    """One fault as it happened: times of apply and heal (monotonic ns and wall seconds, taken
    when the fault was in effect and when it was gone), whether its effect was seen, and any
    error of apply or heal."""

    kind: str
    target: str
    params: dict[str, Any]
    origin: str = ""
    uid: str = ""
    inject_mono_ns: int | None = None
    inject_wall: float | None = None
    heal_mono_ns: int | None = None
    heal_wall: float | None = None
    verified: bool = False
    verify_note: str = ""
    apply_error: str = ""
    heal_error: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind}({self.target})"

    @property
    def healed(self) -> bool:
        return self.heal_mono_ns is not None and not self.heal_error

    def to_record(self, origin_mono_ns: int) -> RecordFaultEvent:
        """The run record's timeline entry (times relative to the run's monotonic origin)."""
        from harness.model.record import FaultEvent as RecordFaultEvent

        if self.inject_mono_ns is None or self.inject_wall is None:
            raise ValueError(f"{self.label} was never applied; it has no timeline entry")
        notes = [self.verify_note]
        notes += [f"heal failed: {self.heal_error}"] if self.heal_error else []
        return RecordFaultEvent(
            kind=self.kind,
            target=self.target,
            params=dict(self.params),
            origin=self.origin,
            inject_ns=self.inject_mono_ns - origin_mono_ns,
            inject_wall=self.inject_wall,
            heal_ns=None if self.heal_mono_ns is None else self.heal_mono_ns - origin_mono_ns,
            heal_wall=self.heal_wall,
            verified=self.verified,
            note="; ".join(n for n in notes if n),
        )


_uids = itertools.count(1)


def _journal_of(injector: Injector) -> Journal | None:
    """The journal of the injector's context (a ``FaultStack`` may pass its own instead)."""
    ctx = getattr(injector, "ctx", None)
    return getattr(ctx, "journal", None)


def safe_verify(injector: Injector) -> tuple[bool, str]:
    """``verify()``, with an exception turned into "not verified" and its message."""
    try:
        ok, note = injector.verify()
        return bool(ok), note
    except Exception as exc:
        return False, f"verify failed: {type(exc).__name__}: {exc}"


def apply_and_record(
    injector: Injector,
    journal: Journal | None = None,
    origin: str = "",
    event: FaultEvent | None = None,
) -> FaultEvent:
    """Journal, apply and verify ``injector``; the event says when the fault was in effect.

    A fault that fails half-way is healed at once (recorded in the event) and raises
    :class:`InjectError` (or the :class:`FaultUnsupported` / :class:`UsageError` /
    :class:`HarnessError` it raised); the heal is idempotent, so a later ``heal_all`` is harmless.
    """
    if event is None:
        event = FaultEvent(injector.kind, injector.target, dict(injector.params), origin)
    event.uid = event.uid or f"{os.getpid()}-{next(_uids)}"
    journal = journal if journal is not None else _journal_of(injector)
    if journal is not None:
        journal.record_apply(event.uid, injector, stage="apply")
    try:
        injector.apply()
    except BaseException as exc:
        event.apply_error = f"{type(exc).__name__}: {exc}"
        heal_and_record(injector, event, journal, verify_first=False)
        if isinstance(exc, RecchaosError) or not isinstance(exc, Exception):
            raise
        raise InjectError(f"applying {event.label} failed: {event.apply_error}") from exc
    event.inject_mono_ns, event.inject_wall = time.monotonic_ns(), time.time()
    if journal is not None:
        journal.record_apply(event.uid, injector, stage="applied")
    event.verified, event.verify_note = safe_verify(injector)
    return event


def heal_and_record(
    injector: Injector,
    event: FaultEvent | None = None,
    journal: Journal | None = None,
    verify_first: bool = True,
) -> FaultEvent:
    """Heal one fault; a failure is recorded in the event (``heal_error``), never raised.

    An unverified fault is verified once more first: proxy, packet and fault-point counters
    only move once traffic has passed. A fault already healed successfully is left alone (its
    heal time stays the one of its scheduled end).
    """
    if event is None:
        event = FaultEvent(injector.kind, injector.target, dict(injector.params))
    if event.healed:
        return event
    journal = journal if journal is not None else _journal_of(injector)
    if verify_first and not event.verified and event.inject_mono_ns is not None:
        event.verified, event.verify_note = safe_verify(injector)
    try:
        injector.heal()
        event.heal_error = ""
    except Exception as exc:
        event.heal_error = f"{type(exc).__name__}: {exc}"
    event.heal_mono_ns, event.heal_wall = time.monotonic_ns(), time.time()
    if journal is not None and event.uid:
        journal.record_heal(event.uid, ok=not event.heal_error, error=event.heal_error)
    return event


def heal_all(
    injectors: Iterable[Injector],
    events: Iterable[FaultEvent | None] | None = None,
    journal: Journal | None = None,
) -> list[str]:
    """Heal every injector in reverse order, each even if another failed; returns the errors
    (``"kind(target): message"``), one per failed heal, to be recorded as infrastructure errors."""
    pairs = list(itertools.zip_longest(list(injectors), list(events or ())))
    errors = []
    for injector, event in reversed(pairs):
        if injector is None:
            continue
        done = heal_and_record(injector, event, journal)
        if done.heal_error:
            errors.append(f"{done.label}: {done.heal_error}")
    return errors


class FaultStack:
    """The faults of one run: applied in order, healed on schedule, and all healed at the end
    (in reverse order) by ``heal_all`` or on leaving the ``with`` block. Without a journal of
    its own, each fault is journaled in its context's journal (``InjectContext.journal``)."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self.entries: list[tuple[Injector, FaultEvent]] = []
        self._lock = threading.Lock()

    @property
    def events(self) -> list[FaultEvent]:
        return [e for _, e in self.entries]

    def apply(self, injector: Injector, origin: str = "") -> FaultEvent:
        """Apply and record; the fault is on the stack (and will be healed) even if apply fails."""
        event = FaultEvent(injector.kind, injector.target, dict(injector.params), origin)
        with self._lock:
            self.entries.append((injector, event))
        return apply_and_record(injector, self.journal, origin, event)

    def heal(self, injector: Injector) -> FaultEvent:
        """Heal one fault now (its scheduled end); the error, if any, is in ``heal_error``."""
        for inj, event in self.entries:
            if inj is injector:
                return heal_and_record(inj, event, self.journal)
        raise ValueError(f"{injector!r} is not on this stack")

    def heal_all(self) -> list[str]:
        with self._lock:
            entries = list(self.entries)
        return heal_all([i for i, _ in entries], [e for _, e in entries], self.journal)

    def __enter__(self) -> FaultStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.heal_all()
