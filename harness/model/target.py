"""What a scenario runs against: the bundled recommender, or any HTTP service it can start.

Pure data. A target knows the names of its components (the things faults can hit) and which of
them sit behind the harness's fault proxy. Readers turn parsed YAML into targets and record
problems with their field paths (see :mod:`harness.model.validate`).
"""

from __future__ import annotations

import re
import shlex
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from harness.model.errors import Problem
from harness.model.validate import (
    INVALID,
    Bad,
    Conv,
    Fields,
    any_invalid,
    boolean,
    choice,
    integer,
)
from harness.model.validate import (
    string as string_conv,
)

COMPONENT_PATTERN = r"[a-z0-9][a-z0-9_.-]*"
PRESET_PATTERN = r"[A-Za-z0-9_-]+"
TEMPLATE_FIELDS = ("user_id", "k", "request_id", "seed")
HTTP_METHODS = ("GET", "POST", "PUT")
BACKENDS = ("process", "docker")
MAX_GATEWAYS = 8  # system_under_test/launcher.py's --gateways range
# How many gateways each backend runs when a scenario does not say: local processes run the
# launcher's default layout (gateway-0 and gateway-1 behind HAProxy, the component lb); the
# docker backend runs the gateway alone (it has no balancer).
DEFAULT_GATEWAYS = {"process": 2, "docker": 1}


def default_gateways(backend: str) -> int:
    """The gateways ``backend`` runs when a scenario does not say (:data:`DEFAULT_GATEWAYS`)."""
    return DEFAULT_GATEWAYS.get(backend, 1)


@dataclass(frozen=True)
class RecommenderTarget:
    """The bundled sharded recommender, started by the harness (``python -m system_under_test``)."""

    shards: int = 4
    preset: str = "default"
    redis: bool = True
    args: tuple[str, ...] = ()
    backend: str = "process"  # or "docker": one container per component (docs/docker.md)
    # 2 or more: gateway-0 ... behind HAProxy, the component lb; 1: the gateway alone;
    # 0: the backend's default (DEFAULT_GATEWAYS)
    gateways: int = 0
    # False: a pytest session runs this scenario on a cluster of its own, started for it and
    # stopped after, never on one shared with other scenarios (harness/runner/session.py)
    share: bool = True
    # False: no fault proxy in front of the shard copies and the region (their calls go
    # straight to them): no network fault can be injected there, and no proxy costs CPU
    proxy: bool = True
    kind: str = field(default="recommender", init=False)

    def __post_init__(self) -> None:
        if self.gateways == 0:
            object.__setattr__(self, "gateways", default_gateways(self.backend))

    def gateway_names(self) -> tuple[str, ...]:
        """The entry point's processes: ``gateway``, or ``gateway-0`` ... and the balancer."""
        if self.gateways == 1:
            return ("gateway",)
        return tuple(f"gateway-{i}" for i in range(self.gateways)) + ("lb",)

    def shard_copies(self) -> tuple[str, ...]:
        return tuple(
            f"shard-{i}-{copy}" for i in range(self.shards) for copy in ("primary", "replica")
        )

    def component_names(self) -> tuple[str, ...]:
        return (
            self.shard_copies()
            + self.gateway_names()
            + ("region",)
            + (("redis",) if self.redis else ())
        )

    def proxied(self) -> tuple[str, ...]:
        """Components reached through the userspace fault proxy (latency, bandwidth, ...);
        the docker backend has no proxy, nor a target with ``proxy: false``."""
        if self.backend == "docker" or not self.proxy:
            return ()
        return self.shard_copies() + ("region",)

    def containers(self) -> tuple[str, ...]:
        """Components that run as containers (the docker backend's faults can hit them)."""
        return self.component_names() if self.backend == "docker" else ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "shards": self.shards,
            "preset": self.preset,
            "redis": self.redis,
            "args": list(self.args),
        }
        if self.backend != "process":
            d["backend"] = self.backend
        if self.gateways != default_gateways(self.backend):
            d["gateways"] = self.gateways
        if not self.share:
            d["share"] = False
        if not self.proxy:
            d["proxy"] = False
        return d


@dataclass(frozen=True)
class RequestTemplate:
    """One HTTP request; ``$user_id``, ``$k``, ``$request_id`` and ``$seed`` are filled in."""

    method: str = "GET"
    path: str = "/"
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def render(self, **values: Any) -> tuple[str, str | None]:
        """The path and body for one request (``string.Template`` substitution)."""
        path = string.Template(self.path).substitute(values)
        body = None if self.body is None else string.Template(self.body).substitute(values)
        return path, body

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "body": self.body,
            "headers": dict(self.headers),
        }


@dataclass(frozen=True)
class GenericTarget:
    """Any HTTP service: commands that start named components, an endpoint, a request template."""

    components: dict[str, tuple[str, ...]]
    endpoint: str
    request: RequestTemplate = RequestTemplate()
    ready_path: str | None = None
    kind: str = field(default="generic", init=False)

    def component_names(self) -> tuple[str, ...]:
        return tuple(self.components)

    def shard_copies(self) -> tuple[str, ...]:
        return ()

    def proxied(self) -> tuple[str, ...]:
        return ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "components": {name: list(argv) for name, argv in self.components.items()},
            "endpoint": self.endpoint,
            "request": self.request.to_dict(),
            "ready_path": self.ready_path,
        }


Target = RecommenderTarget | GenericTarget


def read_target(data: Any, path: str, problems: list[Problem]) -> Target | None:
    f = Fields(data, path, problems)
    kind = f.get("kind", choice(("recommender", "generic")))
    if kind == "generic":
        target: Target | None = _read_generic(f)
    elif kind == "recommender":
        target = _read_recommender(f)
    else:
        f.finish(
            (
                "shards",
                "preset",
                "redis",
                "args",
                "backend",
                "gateways",
                "share",
                "proxy",
                "components",
                "endpoint",
                "request",
                "ready_path",
            )
        )
        return None
    f.finish()
    return target


def _argv_conv(what: str, allow_empty: bool = False) -> Conv:
    def check(v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            argv = tuple(shlex.split(v))
        elif isinstance(v, list) and all(isinstance(a, str) for a in v):
            argv = tuple(v)
        else:
            argv = ()
        if not argv and not (allow_empty and v == []):
            raise Bad()
        return argv

    return Conv(what, check)


def _read_recommender(f: Fields) -> RecommenderTarget | None:
    shards = f.get("shards", integer(1, 64), 4)
    preset = f.get(
        "preset", string_conv(PRESET_PATTERN, "a preset name such as default or tiny"), "default"
    )
    redis = f.get("redis", boolean(), True)
    args = f.get("args", _argv_conv("a list of extra command-line arguments", allow_empty=True), ())
    backend = f.get("backend", choice(BACKENDS), "process")
    gateways = f.get("gateways", integer(1, MAX_GATEWAYS), default_gateways(backend))
    share = f.get("share", boolean(), True)
    proxy = f.get("proxy", boolean(), True)
    if any_invalid(shards, preset, redis, args, backend, gateways, share, proxy):
        return None
    if gateways > 1 and backend != "process":
        f.add(
            "gateways",
            gateways,
            f"1 with backend {backend!r} (HAProxy in front of several gateways runs with the "
            "process backend only)",
        )
        return None
    return RecommenderTarget(
        shards=shards,
        preset=preset,
        redis=redis,
        args=args,
        backend=backend,
        gateways=gateways,
        share=share,
        proxy=proxy,
    )


def _read_generic(f: Fields) -> GenericTarget | None:
    comps = _read_components(f)
    endpoint = f.get("endpoint", Conv("an http:// or https:// URL with a host", _check_url))
    request = _read_request(f.raw("request", {}), f.at("request"), f.problems)
    ready = f.get("ready_path", string_conv(r"/\S*", "a path starting with /"), None)
    if any_invalid(comps, endpoint, request, ready):
        return None
    return GenericTarget(components=comps, endpoint=endpoint, request=request, ready_path=ready)


def _read_components(f: Fields) -> Any:
    raw = f.raw("components")
    allowed = "a mapping of component name to the command that starts it"
    if not isinstance(raw, dict) or not raw:
        return f.add("components", raw, allowed)
    out = []
    names = Fields(raw, f.at("components"), f.problems)
    cmd = _argv_conv("a command line (a string or a list of strings)")
    for name in raw:
        if not isinstance(name, str) or not re.fullmatch(COMPONENT_PATTERN, name):
            names.add(str(name), name, f"a component name matching {COMPONENT_PATTERN}")
            continue
        argv = names.get(name, cmd)
        if argv is not INVALID:
            out.append((name, argv))
    return dict(out) if len(out) == len(raw) else INVALID


def _check_url(v: Any) -> str:
    if not isinstance(v, str):
        raise Bad()
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Bad()
    return v.rstrip("/")


def _template(where: str) -> Conv:
    allowed = f"a {where} template using only " + ", ".join(f"${n}" for n in TEMPLATE_FIELDS)

    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise Bad()
        tpl = string.Template(v)
        if not tpl.is_valid():
            raise Bad("write a literal $ as $$")
        unknown = [n for n in tpl.get_identifiers() if n not in TEMPLATE_FIELDS]
        if unknown:
            raise Bad(f"unknown placeholder ${unknown[0]}")
        return v

    return Conv(allowed, check)


def _read_request(data: Any, path: str, problems: list[Problem]) -> Any:
    f = Fields(data, path, problems)
    method = f.get("method", choice(HTTP_METHODS), "GET")
    req_path = f.get("path", _template("path"), "/")
    body = f.get("body", _template("body"), None)
    headers = f.get("headers", Conv("a mapping of header name to string value", _check_headers), ())
    f.finish()
    if not f.ok or any_invalid(method, req_path, body, headers):
        return INVALID
    if not req_path.startswith("/"):
        return f.add("path", req_path, "a path starting with /")
    return RequestTemplate(method=method, path=req_path, body=body, headers=headers)


def _check_headers(v: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(v, tuple):
        return v
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise Bad()
    return tuple(sorted(v.items()))


__all__ = ["GenericTarget", "RecommenderTarget", "RequestTemplate", "Target", "read_target"]
