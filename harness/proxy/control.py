"""The fault proxy's control API: a tiny HTTP/1.1 JSON server on the proxy's own event loop.

One request per connection (``Connection: close``), bounded header and body sizes, and a read
timeout, so a stuck or hostile client cannot stall the proxy. Every endpoint but ``/healthz``
requires the run's token (:mod:`harness.auth`) as ``Authorization: Bearer TOKEN``, compared in
constant time; a missing or wrong one is answered 401 and logged with the client's address.
Endpoints::

    GET    /healthz                      {"ok": true, "pid": ..., "routes": N, "uptime_s": ...}
    GET    /routes                       every route: listen, upstream, faults, connections,
                                         counters (bytes_up, bytes_down, delayed_chunks,
                                         dropped_bytes, resets, upstream_errors, ...)
    GET    /routes/NAME                  one route
    POST   /routes/NAME/faults           {"kind": ..., "direction": ..., params...} -> 201 {"id"}
    DELETE /routes/NAME/faults/ID        -> {"removed": true|false} (idempotent)
    DELETE /routes/NAME/faults           clear one route -> {"cleared": n}
    DELETE /faults                       clear every route -> {"cleared": n}

A bad fault spec answers 400 with ``problems``: the field, the value and what is allowed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from harness.auth import token_matches
from harness.proxy.config import ProxyConfigError, parse_fault

if TYPE_CHECKING:
    from harness.proxy.server import Proxy

log = logging.getLogger("recchaos.proxy")
OPEN_PATHS = ("/healthz",)  # liveness only: ok, pid, route count, uptime

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT_S = 5.0
_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
}


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body


def bad_request(field: str, value: object, allowed: str) -> HttpError:
    text = f"{field}: got {value!r}; allowed: {allowed}"
    return HttpError(
        400,
        {
            "error": text,
            "problems": [{"field": field, "value": value, "allowed": allowed, "hint": ""}],
        },
    )


async def start_control(
    proxy: Proxy, host: str, port: int, token: str
) -> tuple[asyncio.AbstractServer, str]:
    """Listen for control requests that carry ``token``; returns the server and its base URL."""
    api = ControlApi(proxy, token)
    server = await asyncio.start_server(api.handle, host, port, limit=MAX_HEAD)
    bound = server.sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return server, f"http://{shown}:{bound}"


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    """Method, path, headers (names lower-cased) and body of one request; raises HttpError on
    a malformed one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(413, {"error": f"request head over {MAX_HEAD} bytes"}) from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise bad_request("(request line)", lines[0], "METHOD PATH HTTP/1.1")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise bad_request("Content-Length", length_text, "a non-negative integer")
    length = int(length_text)
    if length > MAX_BODY:
        raise HttpError(413, {"error": f"body of {length} bytes; at most {MAX_BODY}"})
    body = await reader.readexactly(length) if length else b""
    return parts[0].upper(), parts[1], headers, body


class ControlApi:
    """Routes control requests that carry the token to the
    :class:`~harness.proxy.server.Proxy`."""

    def __init__(self, proxy: Proxy, token: str) -> None:
        if not token:
            raise ValueError("the control API needs a token (RECCHAOS_CONTROL_TOKEN)")
        self.proxy = proxy
        self._token = token
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, target, headers, body = await asyncio.wait_for(
                read_request(reader), READ_TIMEOUT_S
            )
            self.authorize(method, target, headers, writer.get_extra_info("peername"))
            status, payload = self.dispatch(method, target, body)
        except HttpError as exc:
            status, payload = exc.status, exc.body
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception as exc:  # a bug here must not take the data plane down
            status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(payload, separators=(",", ":")).encode()
        reason = _REASONS.get(status, "")
        challenge = "WWW-Authenticate: Bearer\r\n" if status == 401 else ""
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{challenge}"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        try:
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def authorize(self, method: str, target: str, headers: dict[str, str], peer: Any) -> None:
        """Raise 401 unless the request carries the token (``/healthz`` needs none)."""
        if urlsplit(target).path.rstrip("/") in OPEN_PATHS:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token_matches(self._token, given.strip()):
            return
        self.refused += 1
        why = "no Authorization header" if "authorization" not in headers else "a wrong token"
        log.warning(
            "refused %s %s from %s: %s (%d refused so far)",
            method,
            target[:200],
            _peer_text(peer),
            why,
            self.refused,
        )
        raise HttpError(
            401,
            {
                "error": f"{why}: the control API needs 'Authorization: Bearer TOKEN' with the "
                "run's control token"
            },
        )

    def dispatch(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = [unquote(p) for p in urlsplit(target).path.split("/") if p]
        from harness.proxy.server import UnknownRoute

        try:
            return self._route_request(method, parts, body)
        except UnknownRoute as exc:
            raise HttpError(404, {"error": f"no route {exc.name!r}", "known": exc.known}) from None

    def _route_request(self, method: str, parts: list[str], body: bytes) -> tuple[int, dict]:
        proxy = self.proxy
        match parts:
            case ["healthz"]:
                _allow(method, "GET")
                return 200, {
                    "ok": True,
                    "pid": os.getpid(),
                    "routes": len(proxy.routes),
                    "uptime_s": round(time.monotonic() - proxy.started, 3),
                }
            case ["routes"]:
                _allow(method, "GET")
                return 200, proxy.snapshot()
            case ["routes", name]:
                _allow(method, "GET")
                return 200, proxy.route(name).snapshot()
            case ["routes", name, "faults"]:
                _allow(method, "POST", "DELETE")
                if method == "DELETE":
                    proxy.route(name)
                    return 200, {"cleared": proxy.clear(name)}
                return self._add_fault(name, body)
            case ["routes", name, "faults", fid]:
                _allow(method, "DELETE")
                return 200, {"removed": proxy.remove_fault(name, fid)}
            case ["faults"]:
                _allow(method, "DELETE")
                return 200, {"cleared": proxy.clear()}
        raise HttpError(404, {"error": f"no endpoint /{'/'.join(parts)}"})

    def _add_fault(self, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        self.proxy.route(name)  # 404 before 400
        try:
            spec = json.loads(body or b"null")
        except ValueError as exc:
            raise bad_request(
                "(body)", body[:200].decode("utf-8", "replace"), f"a JSON object ({exc})"
            ) from None
        if not isinstance(spec, dict):
            raise bad_request("(body)", spec, 'a JSON object {"kind": ..., "direction": ...}')
        try:
            fault = parse_fault(spec)
        except ProxyConfigError as exc:
            raise HttpError(400, exc.to_json()) from None
        fid = self.proxy.add_fault(name, fault)
        return 201, {"id": fid, "route": name, **fault.to_dict()}


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "an unknown peer")


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(
            405, {"error": f"method {method} not allowed here", "allowed": list(allowed)}
        )
