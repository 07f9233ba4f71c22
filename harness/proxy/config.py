"""Routes and fault specs of the userspace TCP fault proxy: pure parsing, validation and the
per-direction shaping that a set of active faults adds up to.

The proxy (:mod:`harness.proxy.server`) and its client (:mod:`harness.proxy.client`)
share these readers, so a bad route or fault is reported the same way from the command line,
from a routes file and from the control API: the field, the value found and what is allowed
(:class:`harness.model.errors.Problem`). The proxy's fault kinds, their parameters, limits and
defaults are the fault registry's (:data:`harness.model.fault_kinds.FAULT_KINDS`, the kinds whose
mechanism is the proxy), so a scenario's validated params pass through unchanged; the proxy adds
one unit of its own, ``bytes_per_s`` as an alternative to ``rate_kbps``.

Nothing here opens a socket or reads a clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from harness.model.errors import Problem, UsageError
from harness.model.fault_kinds import FAULT_KINDS as REGISTRY
from harness.model.fault_kinds import FaultKind, Param
from harness.model.validate import INVALID, Bad, Conv, Fields, choice, number

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_ALLOWED = "a name of letters, digits, '_', '.' or '-' (at most 64, not starting with '_.-')"


class ProxyConfigError(UsageError):
    """A route or fault spec is invalid; carries every problem found."""

    def __init__(self, where: str, problems: Iterable[Problem]):
        self.where = where
        self.problems = tuple(problems)
        text = "; ".join(p.describe() for p in self.problems)
        super().__init__(f"{where}: {text}" if where else text)

    def to_json(self) -> dict[str, Any]:
        return {
            "error": str(self),
            "problems": [
                {
                    "field": p.field,
                    "value": _jsonable(p.value),
                    "allowed": p.allowed,
                    "hint": p.hint,
                }
                for p in self.problems
            ],
        }


def _jsonable(value: object) -> object:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


# -- addresses and routes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


ADDRESS_ALLOWED = "HOST:PORT with a port from 0 to 65535 (0: any free port, listen side only)"


def parse_address(text: object, *, allow_zero: bool) -> Address:
    """``"127.0.0.1:8080"`` (or a ``(host, port)`` pair) as an :class:`Address`; raises Bad."""
    if isinstance(text, list | tuple) and len(text) == 2:
        text = f"{text[0]}:{text[1]}"
    if not isinstance(text, str) or ":" not in text:
        raise Bad()
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit():
        raise Bad()
    port = int(port_text)
    if port > 65535 or (port == 0 and not allow_zero):
        raise Bad("port 0 is allowed only on the listen side" if port == 0 else "")
    return Address(host, port)


def _address_conv(allow_zero: bool) -> Conv:
    allowed = ADDRESS_ALLOWED if allow_zero else "HOST:PORT with a port from 1 to 65535"
    return Conv(allowed, lambda v: parse_address(v, allow_zero=allow_zero))


def _name_conv() -> Conv:
    def check(v: Any) -> str:
        if not isinstance(v, str) or not _NAME.fullmatch(v):
            raise Bad()
        return v

    return Conv(NAME_ALLOWED, check)


@dataclass(frozen=True)
class Route:
    """One listener of the proxy: connections to ``listen`` are forwarded to ``upstream``."""

    name: str
    listen: Address
    upstream: Address

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "listen": str(self.listen), "upstream": str(self.upstream)}


def route_from_fields(name: object, listen: object, upstream: object, path: str) -> Route:
    problems: list[Problem] = []
    f = Fields({"name": name, "listen": listen, "upstream": upstream}, path, problems)
    route_name = f.get("name", _name_conv())
    lis = f.get("listen", _address_conv(allow_zero=True))
    ups = f.get("upstream", _address_conv(allow_zero=False))
    if problems:
        raise ProxyConfigError("", problems)
    return Route(route_name, lis, ups)


def parse_route_arg(text: str, path: str = "--route") -> Route:
    """``NAME=LISTEN_HOST:LISTEN_PORT=UPSTREAM_HOST:UPSTREAM_PORT`` as a :class:`Route`."""
    parts = text.split("=")
    if len(parts) != 3:
        allowed = "NAME=LISTEN_HOST:LISTEN_PORT=UPSTREAM_HOST:UPSTREAM_PORT"
        raise ProxyConfigError("", [Problem(path, text, allowed)])
    return route_from_fields(parts[0], parts[1], parts[2], path)


def parse_routes_json(data: object, where: str = "routes file") -> list[Route]:
    """``{"NAME": {"listen": "H:P", "upstream": "H:P"}, ...}`` (optionally under ``"routes"``)."""
    if isinstance(data, Mapping) and set(data) == {"routes"}:
        data = data["routes"]
    if not isinstance(data, Mapping) or not data:
        allowed = 'a non-empty mapping {"NAME": {"listen": "HOST:PORT", "upstream": "HOST:PORT"}}'
        raise ProxyConfigError(where, [Problem("(file)", data, allowed)])
    routes: list[Route] = []
    problems: list[Problem] = []
    for name, spec in data.items():
        f = Fields(spec, str(name), problems)
        listen, upstream = f.raw("listen"), f.raw("upstream")
        f.finish()
        if not f.ok:
            continue
        try:
            routes.append(route_from_fields(name, listen, upstream, str(name)))
        except ProxyConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ProxyConfigError(where, problems)
    return routes


def check_routes(routes: list[Route]) -> None:
    """Names and non-zero listen addresses must be unique; there must be at least one route."""
    problems: list[Problem] = []
    if not routes:
        problems.append(Problem("routes", [], "at least one --route or a --routes-file"))
    seen_names: set[str] = set()
    seen_listen: dict[Address, str] = {}
    for route in routes:
        if route.name in seen_names:
            problems.append(Problem(f"{route.name}.name", route.name, "a name used once"))
        seen_names.add(route.name)
        if route.listen.port and route.listen in seen_listen:
            other = seen_listen[route.listen]
            problems.append(
                Problem(
                    f"{route.name}.listen",
                    str(route.listen),
                    f"an address no other route listens on ({other} does)",
                )
            )
        seen_listen[route.listen] = route.name
    if problems:
        raise ProxyConfigError("routes", problems)


# -- fault specs -------------------------------------------------------------------------------


_ABSENT = INVALID  # an optional parameter that was not given; left out of the params


def _proxy_params(kind: FaultKind) -> dict[str, Param]:
    """The registry's parameters of a proxy kind as the control API takes them: ``direction``
    is read on its own, and a rate may come in the proxy's unit (give exactly one)."""
    params = {name: p for name, p in kind.params.items() if name != "direction"}
    if kind.name == "bandwidth":
        params["rate_kbps"] = replace(params["rate_kbps"], default=_ABSENT)
        params["bytes_per_s"] = Param(number(0, 1e10, lo_open=True, unit="bytes/s"), _ABSENT)
    return params


_KINDS: dict[str, dict[str, Param]] = {
    name: _proxy_params(kind) for name, kind in REGISTRY.items() if kind.mechanism == "proxy"
}
FAULT_KINDS = tuple(_KINDS)


def _direction(kind: str) -> Param:
    return REGISTRY[kind].params["direction"]


@dataclass(frozen=True)
class ProxyFault:
    """One validated fault: ``kind`` on ``direction`` with its parameters (defaults filled in)."""

    kind: str
    direction: str
    params: dict[str, Any] = field(default_factory=dict)

    def applies_to(self, direction: str) -> bool:
        return self.direction in (direction, "both")

    def describe(self) -> str:
        params = " ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(self.params.items())
        )
        return f"kind={self.kind} direction={self.direction}" + (f" {params}" if params else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "direction": self.direction, "params": dict(self.params)}


def parse_fault(body: object) -> ProxyFault:
    """A fault spec ``{"kind": ..., "direction": ..., params...}``; raises ProxyConfigError.

    Parameters may also be nested under ``"params"`` (the form ``GET /routes`` shows).
    """
    problems: list[Problem] = []
    if isinstance(body, Mapping) and isinstance(body.get("params"), Mapping):
        nested = dict(body["params"])
        clash = sorted(set(nested) & (set(body) - {"params"}))
        body = {**{k: v for k, v in body.items() if k != "params"}, **nested}
        for key in clash:
            problems.append(Problem(key, body[key], "given once (top level or under params)"))
    f = Fields(body, "", problems)
    kind = f.get("kind", choice(FAULT_KINDS))
    if kind is INVALID:  # the other keys cannot be judged without a kind
        raise ProxyConfigError("fault", problems)
    direction = f.get("direction", _direction(kind).conv, _direction(kind).default)
    params = {name: f.get(name, p.conv, p.default) for name, p in _KINDS[kind].items()}
    f.finish()
    params = {k: v for k, v in params.items() if v is not INVALID}
    if kind == "bandwidth":
        _check_one_rate(body, problems)
    if problems:
        raise ProxyConfigError("fault", problems)
    return ProxyFault(kind, direction, params)


def _check_one_rate(body: object, problems: list[Problem]) -> None:
    given = body if isinstance(body, Mapping) else {}
    rates = [k for k in ("rate_kbps", "bytes_per_s") if k in given]
    if len(rates) != 1:
        value = {k: given[k] for k in rates} or None
        problems.append(
            Problem("rate_kbps", value, "exactly one of rate_kbps (KiB/s) or bytes_per_s")
        )


# -- what the active faults add up to, per direction --------------------------------------------


@dataclass(frozen=True)
class Shaping:
    """The effect of every active fault on one direction of a route.

    Latency faults add up; the lowest bandwidth wins; the newest slicer wins; a blackhole in
    ``drop`` mode wins over ``hold``.
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    rate_bps: float | None = None
    slice_size: int = 0
    slice_variation: int = 0
    slice_delay_s: float = 0.0
    blackhole: str | None = None

    @property
    def shapes(self) -> bool:
        return bool(self.delay_s or self.jitter_s or self.rate_bps or self.slice_size)


def bytes_per_s(params: Mapping[str, Any]) -> float:
    if "bytes_per_s" in params:
        return float(params["bytes_per_s"])
    return float(params["rate_kbps"]) * 1024.0


def shaping_for(faults: Iterable[ProxyFault], direction: str) -> Shaping | None:
    """The :class:`Shaping` of ``faults`` (in the order added) on ``direction``; None: no fault.

    ``reset`` is a whole-connection fault and is not part of the shaping.
    """
    s: dict[str, Any] = {}
    for fault in faults:
        if not fault.applies_to(direction) or fault.kind == "reset":
            continue
        p = fault.params
        if fault.kind == "latency":
            s["delay_s"] = s.get("delay_s", 0.0) + p["delay_ms"] / 1e3
            s["jitter_s"] = s.get("jitter_s", 0.0) + p["jitter_ms"] / 1e3
        elif fault.kind == "bandwidth":
            s["rate_bps"] = min(s.get("rate_bps") or float("inf"), bytes_per_s(p))
        elif fault.kind == "slicer":
            s.update(
                slice_size=p["average_size"],
                slice_variation=p["size_variation"],
                slice_delay_s=p["delay_us"] / 1e6,
            )
        elif fault.kind == "blackhole":
            s["blackhole"] = "drop" if "drop" in (s.get("blackhole"), p["mode"]) else "hold"
    return Shaping(**s) if s else None
