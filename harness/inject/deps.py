"""Dependency outages: ``redis_down`` (the harness-started redis-server) and ``region_down`` (the
degraded region, fallback tier 3), built from the other mechanisms.

``mode`` (a parameter of the kind, see the fault registry) chooses how:

* ``redis_down``: ``kill`` (SIGKILL, healed by the restart hook, which starts redis again on its
  port) or ``stop`` (SIGSTOP, healed by SIGCONT: a hung Redis, found only by timeouts);
* ``region_down``: ``kill`` (as above) or ``blackhole`` (the region's proxy route drops all bytes
  both ways: a region that accepts connections and never answers).

Verification and heal are those of the mechanism used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.inject.base import BaseInjector, InjectContext, Injector
from harness.inject.network import ProxyFaultInjector
from harness.inject.signals import FreezeInjector, KillInjector


class DependencyInjector(BaseInjector):
    """A dependency outage: reports its own kind, delegates to the mechanism's injector."""

    def __init__(
        self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext, inner: Injector
    ) -> None:
        super().__init__(kind, target, params, ctx)
        self.inner = inner

    def apply(self) -> None:
        self.inner.apply()

    def verify(self) -> tuple[bool, str]:
        ok, note = self.inner.verify()
        return ok, f"{self.params['mode']}: {note}"

    def heal(self) -> None:
        self.inner.heal()

    def heal_action(self) -> dict[str, Any]:
        return self.inner.heal_action()


def make_dependency_injector(
    kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext
) -> DependencyInjector:
    mode = params["mode"]
    inner: Injector
    if mode == "kill":
        inner = KillInjector("kill", target, {}, ctx)
    elif mode == "stop":
        inner = FreezeInjector("freeze", target, {}, ctx)
    elif mode == "blackhole":
        inner = ProxyFaultInjector("blackhole", target, {"mode": "drop", "direction": "both"}, ctx)
    else:
        raise ValueError(f"{kind}({target}): mode {mode!r}; allowed: kill, stop, blackhole")
    return DependencyInjector(kind, target, params, ctx, inner)
