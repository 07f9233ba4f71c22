"""The gateway's HTTP API: routes, request validation and JSON answers, over any service.

Status codes, consistently: 400 for bytes that are not a JSON document (or not HTTP), 422 for
well-formed JSON with a wrong type or value (booleans and floats are not integers), 413 for a body
over 64 KiB, 404 for an unknown path, 405 for a wrong method (with ``Allow``). Every 4xx body is
``{"error": message, "field": name, "allowed": what would be accepted}``. Unknown JSON fields are
ignored, so clients may add their own (a trace id, a scenario tag).

A recommend request first passes the overload gate (``overload.py``) when there is one: a
request that queued too long before its handler started gets a fast 503 with ``Retry-After``
(``"field": "load"``) before its body is even parsed.

The service behind it is anything with ``recommend(user_id, k, request_id, arrival)``, ``readiness()``
and ``metrics_text()`` (``service.RecommendService``; a fake in the HTTP tests).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from typing import Any, Protocol

from system_under_test.balancer import parse_request_start
from system_under_test.gateway.http import Request, Response, json_response
from system_under_test.gateway.overload import OverloadGate

log = logging.getLogger("gateway.api")

K_DEFAULT, K_MIN, K_MAX = 10, 1, 100
USER_ID_MAX = 2**63 - 1
ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/recommend": ("POST",),
    "/healthz": ("GET",),
    "/readyz": ("GET",),
    "/metrics": ("GET",),
}
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


# The longest time a request may have spent in the balancer for its X-Request-Start to count:
# beyond it the header is taken as wrong (another clock, or a client's own) and ignored.
MAX_CARRIED_S = 1.0


def arrival_of(request: Request) -> float | None:
    """When the request's deadline starts (``time.monotonic()``): when the balancer received it
    (its ``X-Request-Start``, so time spent there and in a retry counts), else when the gateway
    read its first byte."""
    arrival = request.received_at or None
    started = parse_request_start(request.headers.get("x-request-start"))
    if arrival is None or started is None:
        return arrival
    started_mono = started + (time.monotonic() - time.time())
    carried = arrival - started_mono
    if not 0.0 <= carried <= MAX_CARRIED_S:
        return arrival
    return started_mono


class ApiError(Exception):
    """A request the API rejects; becomes ``{"error", "field", "allowed"}`` with ``status``."""

    def __init__(self, status: int, error: str, field: str, allowed: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.allowed = status, error, field, allowed

    def response(self, headers: list[tuple[str, str]] | None = None) -> Response:
        return json_response(
            self.status,
            {"error": self.error, "field": self.field, "allowed": self.allowed},
            headers,
        )


class RecommendResult(Protocol):
    tier: str
    payload: dict[str, Any]


class Service(Protocol):
    async def recommend(
        self, user_id: int, k: int, request_id: str, arrival: float | None = None
    ) -> RecommendResult: ...

    async def readiness(self) -> tuple[bool, dict[str, Any]]: ...

    def metrics_text(self) -> str: ...

    def count_http_error(self, status: int) -> None: ...


def _int_field(data: dict[str, Any], name: str, low: int, high: int, allowed: Any) -> int:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(
            422,
            f"{name} must be an integer, got {type(value).__name__} {json.dumps(value)[:40]}",
            name,
            allowed,
        )
    if not low <= value <= high:
        raise ApiError(422, f"{name} = {value} is out of range", name, allowed)
    return value


def parse_recommend(body: bytes) -> tuple[int, int]:
    """``(user_id, k)`` from a recommend body, or ApiError naming the offending field."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(
            400,
            f"malformed JSON: {exc}"[:200],
            "body",
            'a JSON object like {"user_id": 42, "k": 10}',
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            422,
            f"body must be a JSON object, got {type(data).__name__}",
            "body",
            'a JSON object like {"user_id": 42, "k": 10}',
        )
    if "user_id" not in data:
        raise ApiError(422, "user_id is missing", "user_id", "integer >= 0")
    user_id = _int_field(data, "user_id", 0, USER_ID_MAX, "integer >= 0")
    k = K_DEFAULT
    if "k" in data:
        k = _int_field(data, "k", K_MIN, K_MAX, [K_MIN, K_MAX])
    return user_id, k


class GatewayApp:
    """Routes requests to the service; the HTTP server's handler."""

    def __init__(self, service: Service, gate: OverloadGate | None = None) -> None:
        self.service, self.gate = service, gate
        if gate is not None:
            s = gate.settings
            retry = str(s.retry_after_s)
            self._shed_headers = [("Retry-After", retry)]
            self._shed_body = json.dumps(
                {
                    "error": f"the gateway is past capacity: this request queued longer than "
                    f"{s.target_s * 1000:g} ms (or {s.interval_s * 1000:g} ms at any load) "
                    f"before it could start; retry after {retry} s",
                    "field": "load",
                    "allowed": f"a queueing delay of at most {s.target_s * 1000:g} ms",
                },
                separators=(",", ":"),
            ).encode()
        self._ids = itertools.count(1)
        self._id_prefix = f"gw{os.getpid():x}-"

    def request_id(self, request: Request) -> str:
        given = request.headers.get("x-request-id")
        if given and _REQUEST_ID.fullmatch(given):
            return given
        return f"{self._id_prefix}{next(self._ids)}"

    async def __call__(self, request: Request) -> Response:
        rid = self.request_id(request)
        headers = [("X-Request-Id", rid)]
        methods = ROUTES.get(request.path)
        try:
            if methods is None:
                raise ApiError(404, f"unknown path {request.path[:100]!r}", "path", sorted(ROUTES))
            if request.method not in methods:
                headers.append(("Allow", ", ".join(methods)))
                raise ApiError(
                    405,
                    f"method {request.method} is not allowed on {request.path}",
                    "method",
                    list(methods),
                )
            resp = await self._route(request, rid, headers)
        except ApiError as exc:
            self.service.count_http_error(exc.status)
            log.debug("request %s rejected: %s %s", rid, exc.status, exc.error)
            return exc.response(headers)
        return resp

    async def _route(self, request: Request, rid: str, headers: list[tuple[str, str]]) -> Response:
        if request.path == "/v1/recommend":
            arrival = arrival_of(request)
            if self.gate is not None:
                source = "gateway" if arrival == (request.received_at or None) else "balancer"
                arrival, _, admitted = self.gate.check(arrival, source)
                if not admitted:
                    headers.extend(self._shed_headers)
                    return Response(503, self._shed_body, headers=headers)
            user_id, k = parse_recommend(request.body)
            result = await self.service.recommend(user_id, k, rid, arrival)
            headers.append(("X-Recchaos-Tier", result.tier))
            return json_response(200, result.payload, headers)
        if request.path == "/healthz":
            return json_response(200, {"alive": True}, headers)
        if request.path == "/readyz":
            ready, detail = await self.service.readiness()
            return json_response(200 if ready else 503, {"ready": ready, **detail}, headers)
        text = self.service.metrics_text().encode()
        return Response(200, text, "text/plain; version=0.0.4; charset=utf-8", headers)
