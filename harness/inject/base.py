"""The one protocol every fault mechanism implements, the context injectors run in, and the
helpers that apply, verify, record and always heal them.

An :class:`Injector` is built by :func:`make_injector` from a fault kind, a target component and
parameters: the fault registry (:data:`harness.model.fault_kinds.FAULT_KINDS`) names the factory
for the context's backend and the parameters, which arrive complete and validated. It can
``apply()`` the fault, ``verify()`` that the fault took effect (evidence, not hope: a process state,
a packet counter, a proxy counter, a fault-point counter), ``heal()`` it (idempotent; harmless on a
fault that was never or only half applied) and describe its heal as pure data, ``heal_action()``,
that :func:`execute_heal_action` (and so the watchdog process) can run without the injector.

:class:`FaultStack` is what a runner uses: it journals each fault before it is applied, records
its timeline entry (the run record's :class:`~harness.model.record.FaultEvent`) with monotonic
and wall times, and in ``heal_all`` heals every fault in reverse order, recording a failed heal
and still running the others.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness.auth import manifest_token_file, read_token_file
from harness.model.errors import HarnessError, Inconclusive, Problem, RecchaosError, UsageError
from harness.model.fault_kinds import FAULT_KINDS, unsupported_reason
from harness.model.faults import read_params
from harness.model.record import FaultEvent

if TYPE_CHECKING:
    from harness.inject.journal import Journal


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
    start_time: float | None = None  # seconds since the epoch, as the manifest recorded it

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
            start_time=_seconds(d.get("start_time")),
        )


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_manifest_components(path: str | os.PathLike[str]) -> dict[str, Component]:
    data = json.loads(Path(path).read_text())
    return {c["name"]: Component.from_manifest(c) for c in data.get("components", [])}


@dataclass(frozen=True)
class InjectContext:
    """What injectors need to know about the run, and the one hook they call back.

    ``components`` by name (the manifest's, plus any the runner adds such as ``redis``);
    ``proxy_url`` the fault proxy's control URL and ``routes`` the proxy route of each component
    (default: the component's own name); ``token_file`` the 0600 file holding the control token
    the servers' fault points and the proxy require (:mod:`harness.auth`; a manifest's
    ``control_token_file``), read at each use and named in heal actions, so the watchdog reads
    it there too; ``restart(name) -> new pid`` brings a component back
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
    token_file: Path | None = None
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
        manifest's ``backend``, ``docker_host`` and ``network`` keys choose the injectors, and
        its ``control_token_file`` is where the control token is read."""
        if isinstance(manifest, Mapping):
            data = manifest
        else:
            kwargs.setdefault("manifest_path", Path(manifest))
            data = json.loads(Path(manifest).read_text())
        comps = {c["name"]: Component.from_manifest(c) for c in data.get("components", [])}
        for key in ("backend", "docker_host", "network"):
            if data.get(key):
                kwargs.setdefault(key, data[key])
        token_file = manifest_token_file(data, kwargs.get("manifest_path"))
        if token_file is not None:
            kwargs.setdefault("token_file", token_file)
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
            # A new process: the recorded start time was the old one's.
            comp = Component(**{**asdict(comp), "pid": self._pids[name], "start_time": None})
        return comp

    def set_pid(self, name: str, pid: int) -> None:
        self._pids[name] = pid

    def route(self, name: str) -> str:
        return self.routes.get(name, name)

    def token(self) -> str | None:
        """The control token (read from ``token_file`` now), or None without a token file.
        Raises :class:`harness.auth.TokenError` naming the file when it cannot be used."""
        return read_token_file(self.token_file) if self.token_file is not None else None

    def token_action(self) -> dict[str, str]:
        """What a heal action needs to present the token: where to read it."""
        return {"token_file": str(self.token_file)} if self.token_file is not None else {}

    def proxy(self) -> Any:
        """A client of the fault proxy's control API (``ProxyClient``) with the token."""
        if self.proxy_client is not None:
            return self.proxy_client
        if not self.proxy_url:
            kinds = [k.name for k in FAULT_KINDS.values() if k.mechanism == "proxy"]
            raise UsageError(
                f"no fault proxy in this run (proxy_url is unset): {', '.join(kinds)} faults"
                " need the target started with its proxy"
            )
        from harness.proxy.client import ProxyClient

        return ProxyClient(self.proxy_url, token=self.token())

    def short_run_id(self) -> str:
        """8 hex digits naming this run's chains and cgroups (iptables chain names are short):
        a hash of the run id and this process, so two runs of one scenario and seed at once
        (the same run id's tail) never share a name."""
        digest = hashlib.blake2b(f"{self.run_id}:{os.getpid()}".encode(), digest_size=4)
        return digest.hexdigest()

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

KINDS: tuple[str, ...] = tuple(FAULT_KINDS)


def complete_params(kind: str, target: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters of ``kind``, checked against the fault registry, defaults filled in.

    Raises :class:`UsageError` naming the fault, the parameter, the value and what is allowed.
    """
    problems: list[Problem] = []
    out = read_params(kind, dict(params or {}), "params", problems)
    if problems:
        text = "; ".join(p.describe() for p in problems)
        known = ", ".join(FAULT_KINDS[kind].params) or "none"
        raise UsageError(f"{kind}({target}): {text} (parameters of {kind}: {known})")
    return dict(out)


def make_injector(
    kind: str, target: str, params: Mapping[str, Any] | None, ctx: InjectContext
) -> Injector:
    """The injector the fault registry names for ``kind`` on the context's backend, given
    complete, validated parameters. A kind the backend cannot run gives an injector whose
    ``apply()`` raises :class:`FaultUnsupported`. Raises :class:`UsageError` naming what is
    wrong with the kind, the target or the parameters."""
    if kind not in FAULT_KINDS:
        raise UsageError(
            f"unknown fault kind {kind!r} (target {target!r}); allowed: {', '.join(KINDS)}"
        )
    if target not in ctx.components:
        known = ", ".join(ctx.components) or "(none)"
        raise UsageError(
            f"{kind}({target}): no component {target!r} in this target; known: {known}"
        )
    clean = complete_params(kind, target, params)
    backend = FAULT_KINDS[kind].backends.get(ctx.backend)
    if backend is None:
        return Unsupported(kind, target, clean, ctx, unsupported_reason(kind, ctx.backend))
    injector: Injector = load_factory(backend.injector)(kind, target, clean, ctx)
    return injector


def load_factory(name: str) -> Callable[..., Any]:
    """The object a ``"module:name"`` string names (the registry's injectors)."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


class Unsupported(BaseInjector):
    """A kind the context's backend has no mechanism for: ``apply`` raises FaultUnsupported."""

    def __init__(
        self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext, reason: str
    ) -> None:
        super().__init__(kind, target, params, ctx)
        self.reason = reason

    def apply(self) -> None:
        raise FaultUnsupported(self.kind, self.target, self.reason)

    def verify(self) -> tuple[bool, str]:
        return False, "not applied"

    def heal(self) -> None:
        pass

    def heal_action(self) -> dict[str, Any]:
        return dict(NO_ACTION)


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
HEAL_ACTIONS: tuple[str, ...] = ("none", *_ACTIONS)
"""Every heal action :func:`execute_heal_action` runs (the names the fault registry lists)."""


def execute_heal_action(action: Mapping[str, Any]) -> str:
    """Run one heal action (idempotent); returns what was done. Raises HealError on failure."""
    name = action.get("action")
    if name == "none":
        return "nothing to do"
    if name not in _ACTIONS:
        raise HealError(f"unknown heal action {name!r}; allowed: {', '.join(HEAL_ACTIONS)}")
    module, func = _ACTIONS[str(name)]
    result: str = getattr(importlib.import_module(module), func)(action)
    return result


# -- recording ------------------------------------------------------------------------------------


@dataclass
class StackedFault:
    """One fault on a :class:`FaultStack`: its injector, where it came from (``faults[2]``), its
    journal id, its timeline entry once it is in effect (the run record's
    :class:`~harness.model.record.FaultEvent`, times relative to the stack's origin), the
    latest evidence, and what went wrong applying or healing it."""

    injector: Injector
    origin: str = ""
    uid: str = ""
    event: FaultEvent | None = None
    verify_note: str = ""
    apply_error: str = ""
    heal_error: str = ""
    heal_ran: bool = False

    @property
    def label(self) -> str:
        return f"{self.injector.kind}({self.injector.target})"

    @property
    def verified(self) -> bool:
        return self.event is not None and self.event.verified

    @property
    def healed(self) -> bool:
        return self.heal_ran and not self.heal_error

    @property
    def active(self) -> bool:
        """In effect, and no heal has run yet."""
        return self.event is not None and not self.heal_ran


_uids = itertools.count(1)


def safe_verify(injector: Injector) -> tuple[bool, str]:
    """``verify()``, with an exception turned into "not verified" and its message."""
    try:
        ok, note = injector.verify()
        return bool(ok), note
    except Exception as exc:
        return False, f"verify failed: {type(exc).__name__}: {exc}"


class FaultStack:
    """The faults of one run: each journaled before it is applied, recorded with its inject and
    heal times (monotonic nanoseconds since ``origin_ns``, the run's origin, and wall seconds),
    healed on schedule, and all healed at the end in reverse order by ``heal_all`` or on leaving
    the ``with`` block, a failed heal recorded and the others still run. Without a journal of its
    own, each fault is journaled in its context's journal (``InjectContext.journal``)."""

    def __init__(self, journal: Journal | None = None, origin_ns: int = 0) -> None:
        self.journal = journal
        self.origin_ns = origin_ns
        self.entries: list[StackedFault] = []
        self._lock = threading.Lock()

    @property
    def events(self) -> list[FaultEvent]:
        """The timeline: every fault that took effect, as the run record holds it."""
        with self._lock:
            return [e.event for e in self.entries if e.event is not None]

    def _journal(self, injector: Injector) -> Journal | None:
        if self.journal is not None:
            return self.journal
        return getattr(getattr(injector, "ctx", None), "journal", None)

    def apply(self, injector: Injector, origin: str = "") -> StackedFault:
        """Journal, apply and verify; the fault is on the stack (and will be healed) even if
        apply fails. A fault that fails half-way is healed at once and raises
        :class:`InjectError` (or the :class:`FaultUnsupported` / :class:`UsageError` /
        :class:`HarnessError` it raised)."""
        entry = StackedFault(injector, origin, uid=f"{os.getpid()}-{next(_uids)}")
        with self._lock:
            self.entries.append(entry)
        journal = self._journal(injector)
        if journal is not None:
            journal.record_apply(entry.uid, injector, stage="apply")
        # The fault's time is when applying began: it may take effect anywhere inside the call
        # (a `docker kill` returned 230-270 ms after its container died), and a request sent
        # meanwhile belongs to the fault's window, not to the steady state before it.
        inject_ns, inject_wall = time.monotonic_ns() - self.origin_ns, time.time()
        try:
            injector.apply()
        except BaseException as exc:
            entry.apply_error = f"{type(exc).__name__}: {exc}"
            self._heal(entry, verify_first=False)
            if isinstance(exc, RecchaosError) or not isinstance(exc, Exception):
                raise
            raise InjectError(f"applying {entry.label} failed: {entry.apply_error}") from exc
        if journal is not None:
            journal.record_apply(entry.uid, injector, stage="applied")
        verified, entry.verify_note = safe_verify(injector)
        params = dict(injector.params)
        entry.event = FaultEvent(
            injector.kind, injector.target, params, origin, inject_ns, inject_wall,
            verified=verified, note=entry.verify_note,
        )  # fmt: skip
        return entry

    def heal(self, injector: Injector) -> StackedFault:
        """Heal one fault now (its scheduled end); the error, if any, is in ``heal_error``."""
        for entry in list(self.entries):
            if entry.injector is injector:
                return self._heal(entry)
        raise ValueError(f"{injector!r} is not on this stack")

    def _heal(self, entry: StackedFault, verify_first: bool = True) -> StackedFault:
        """Heal; a failure is recorded (``heal_error``), never raised. An unverified fault is
        verified once more first: proxy, packet and fault-point counters only move once traffic
        has passed. A fault healed successfully is left alone (its heal time stays the one of
        its scheduled end); a failed heal is tried again."""
        if entry.healed:
            return entry
        if verify_first and entry.event is not None and not entry.event.verified:
            verified, entry.verify_note = safe_verify(entry.injector)
            entry.event = replace(entry.event, verified=verified, note=entry.verify_note)
        try:
            entry.injector.heal()
            entry.heal_error = ""
        except Exception as exc:
            entry.heal_error = f"{type(exc).__name__}: {exc}"
        entry.heal_ran = True
        heal_ns, heal_wall = time.monotonic_ns() - self.origin_ns, time.time()
        if entry.event is not None:
            notes = [
                entry.verify_note,
                f"heal failed: {entry.heal_error}" if entry.heal_error else "",
            ]
            note = "; ".join(n for n in notes if n)
            entry.event = replace(entry.event, heal_ns=heal_ns, heal_wall=heal_wall, note=note)
        journal = self._journal(entry.injector)
        if journal is not None:
            journal.record_heal(entry.uid, ok=not entry.heal_error, error=entry.heal_error)
        return entry

    def heal_all(self) -> list[str]:
        """Heal every fault in reverse order, each even if another failed; returns the errors
        (``"kind(target): message"``), one per failed heal, to be recorded as infrastructure
        errors."""
        with self._lock:
            entries = list(self.entries)
        errors = []
        for entry in reversed(entries):
            if self._heal(entry).heal_error:
                errors.append(f"{entry.label}: {entry.heal_error}")
        return errors

    def __enter__(self) -> FaultStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.heal_all()
