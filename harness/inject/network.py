"""Network faults through the userspace TCP fault proxy: ``latency``, ``bandwidth``,
``blackhole``, ``reset`` and ``slicer`` on the proxy route in front of a component.

``tc netem`` is not in these kernels, so the proxy (:mod:`harness.proxy.server`, driven with
:class:`harness.proxy.client.ProxyClient`) sits between the gateway and each shard copy
and the region; the route of a component has the component's name unless the context maps it.

Evidence: the route's counters since apply (``delayed_chunks`` for latency, bandwidth, slicer
and a holding blackhole; ``dropped_bytes`` for a dropping blackhole; ``resets`` for reset), so a
fault is verified once traffic has passed through it. Heal: remove this fault by its id
(idempotent; a fault whose id never came back clears its route). Every call carries the run's
control token; the heal action names the token file, where the watchdog reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.auth import read_token_file
from harness.inject.base import NO_ACTION, BaseInjector, InjectContext
from harness.model.errors import UsageError
from harness.model.fault_kinds import FAULT_KINDS


def evidence_counter(kind: str, params: Mapping[str, Any]) -> str:
    """The route counter that moves when a fault of ``kind`` acts on traffic."""
    if kind == "reset":
        return "resets"
    if kind == "blackhole" and params["mode"] == "drop":
        return "dropped_bytes"
    return "delayed_chunks"


def execute_proxy_clear(action: Mapping[str, Any]) -> str:
    """Heal action ``proxy_clear``: remove one fault (or, with no fault id, clear the route),
    with the token read from the action's ``token_file``. A proxy that is not listening any
    more took its faults with it."""
    from harness.proxy.client import ProxyClient, ProxyControlError

    token = read_token_file(action["token_file"]) if action.get("token_file") else None
    url = str(action["url"])
    client = ProxyClient(url, timeout_s=float(action.get("timeout_s", 2.0)), token=token)
    try:
        return clear_fault(client, str(action["route"]), action.get("fault_id"))
    except ProxyControlError as exc:
        reason = getattr(exc.__cause__, "reason", exc.__cause__)
        if exc.status is None and isinstance(reason, ConnectionRefusedError):
            return f"the fault proxy at {url} is not listening; its faults went with it"
        raise


def clear_fault(client: Any, route: str, fault_id: str | None) -> str:
    if fault_id is None:
        return f"cleared {client.clear_route(route)} fault(s) on proxy route {route}"
    removed = client.remove_fault(route, str(fault_id))
    return f"proxy fault {fault_id} on route {route} " + ("removed" if removed else "was gone")


class ProxyFaultInjector(BaseInjector):
    """One fault on one proxy route, passed through with the scenario's parameters."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        if FAULT_KINDS[kind].mechanism != "proxy":
            raise ValueError(f"{kind!r} is not a fault of the proxy (fault registry)")
        if not (ctx.proxy_url or ctx.proxy_client is not None):
            raise UsageError(
                f"{kind}({target}): no fault proxy in this run; network faults need the target "
                "started with its proxy in front (RecommenderOptions.proxy)"
            )
        self.route = ctx.route(target)
        self.fault_id: str | None = None
        self.before: dict[str, int] = {}
        self._attempted = False

    def apply(self) -> None:
        client = self.ctx.proxy()
        self.before = dict(client.counters(self.route))
        params = dict(self.params)
        direction = params.pop("direction")
        self._attempted = True
        self.fault_id = client.add_fault(self.route, self.kind, direction, **params)

    def verify(self) -> tuple[bool, str]:
        if self.fault_id is None:
            return False, "not applied"
        route = self.ctx.proxy().route(self.route)
        active = {f.get("id") for f in route.get("faults", [])}
        if self.fault_id not in active:
            return False, f"fault {self.fault_id} is not active on proxy route {self.route}"
        now = route.get("counters", {})
        key = evidence_counter(self.kind, self.params)
        delta = int(now.get(key, 0)) - int(self.before.get(key, 0))
        traffic = ", ".join(
            f"{k} +{int(now.get(k, 0)) - int(self.before.get(k, 0))}"
            for k in ("bytes_up", "bytes_down")
        )
        note = f"proxy route {self.route}: {key} +{delta} since apply ({traffic})"
        return delta > 0, note if delta > 0 else note + "; no traffic acted on yet"

    def heal(self) -> None:
        if self._attempted:
            clear_fault(self.ctx.proxy(), self.route, self.fault_id)
            if self.fault_id is None:  # a route cleared blindly once is enough
                self._attempted = False

    def heal_action(self) -> dict[str, Any]:
        url = self.ctx.proxy_url or getattr(self.ctx.proxy_client, "control_url", None)
        if not url:
            return dict(NO_ACTION)
        return {
            "action": "proxy_clear",
            "url": url,
            "route": self.route,
            "fault_id": self.fault_id,
            **self.ctx.token_action(),
        }
