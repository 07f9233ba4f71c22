"""Application faults through the fault points inside a shard server (or the region):
``app_error``, ``app_delay``, ``app_nan`` and ``app_wrong_shape``, switched with the ``control``
op of the recommender's framed protocol (docs/protocol.md).

The harness never imports ``system_under_test``, so this module has its own tiny synchronous
client: ``uint32 BE length | uint32 BE header length | msgpack header | payload``, one request
per connection, every socket operation under a timeout. A control request ``{"faults": {...}}``
replaces the server's whole fault map and zeroes its counters, so the faults active on one
address in this process are merged (``seed`` from the context, each fault's rate under the
server's field name) and the merged map is sent on every apply and heal; the last heal sends
``{"clear": true}``. Every control request carries the run's token (the ``token`` field, read
from the context's token file; the heal action names that file, so the watchdog presents the
token too); a server answers ``unauthorized`` without it.

Evidence: the server's ``injected`` counters (``requests``, ``error``, ``delay``, ``nan``,
``wrong_shape``) in a control reply: the fault's own point has fired at least once.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from collections.abc import Mapping
from typing import Any

import msgpack

from harness.auth import read_token_file
from harness.inject.base import BaseInjector, InjectContext
from harness.model.errors import HarnessError, UsageError

MAX_FRAME = 64 << 20
SERVER_ROLES = ("primary", "replica", "region")
TIMEOUT_S = 2.0

# fault kind -> (fault point counter, the server's rate field)
POINTS = {
    "app_error": ("error", "error_rate"),
    "app_delay": ("delay", "delay_rate"),
    "app_nan": ("nan", "nan_rate"),
    "app_wrong_shape": ("wrong_shape", "wrong_shape_rate"),
}


class ControlError(HarnessError):
    """A control request failed: the server could not be reached, or answered an error."""


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def encode_request(op: str, fields: Mapping[str, Any], call_id: int = 1) -> bytes:
    header = msgpack.packb({"id": call_id, "op": op, "deadline": 0, "t": [], **fields})
    body = struct.pack(">I", len(header)) + header
    return struct.pack(">I", len(body)) + body


def call(address: str, op: str, fields: Mapping[str, Any], timeout_s: float = TIMEOUT_S) -> dict:
    """One request to ``address`` (``host:port``); the reply header. Raises ControlError."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(encode_request(op, fields))
            length, head_len = struct.unpack(">II", _recv_exactly(sock, 8))
            if not 4 + head_len <= length <= MAX_FRAME:
                raise ControlError(f"{op} to {address}: bad reply frame (L={length}, H={head_len})")
            rest = _recv_exactly(sock, length - 4)
    except (OSError, ValueError) as exc:
        raise ControlError(f"{op} to {address} failed: {exc} (timeout {timeout_s:g} s)") from exc
    reply = msgpack.unpackb(rest[:head_len])
    if not isinstance(reply, dict):
        raise ControlError(f"{op} to {address}: reply header is not a map: {reply!r}")
    if not reply.get("ok"):
        raise ControlError(f"{op} to {address} answered {reply.get('code')}: {reply.get('error')}")
    return reply


def control(
    address: str,
    fields: Mapping[str, Any],
    timeout_s: float = TIMEOUT_S,
    token: str | None = None,
) -> dict:
    """The ``control`` op: ``{"faults": {...}}``, ``{"clear": True}`` or ``{}`` (just report),
    with ``token`` (the server's control token) in the request's ``token`` field."""
    return call(address, "control", {**fields, "token": token} if token else fields, timeout_s)


def execute_app_clear(action: Mapping[str, Any]) -> str:
    """Heal action ``app_clear``: switch every fault point of the server off, with the token
    read from the action's ``token_file``."""
    token = read_token_file(action["token_file"]) if action.get("token_file") else None
    try:
        reply = control(str(action["address"]), {"clear": True}, token=token)
    except ControlError as exc:
        if isinstance(exc.__cause__, ConnectionRefusedError):
            return f"{action['address']} is not listening; its fault points went with it"
        raise
    return f"fault points cleared on {action['address']} (counters {reply.get('injected')})"


class _Active:
    """The app faults this process has switched on, per address (to merge them)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_address: dict[str, dict[int, dict[str, Any]]] = {}
        self.ids = itertools.count(1)


_ACTIVE = _Active()


def merged_faults(faults: Mapping[int, Mapping[str, Any]], seed: int) -> dict[str, Any]:
    """One fault map for the server out of several faults' fields (later ones win)."""
    out: dict[str, Any] = {"seed": seed}
    for fid in sorted(faults):
        out.update(faults[fid])
    return out


def fault_fields(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The server's fields for one fault kind, from the scenario's parameters."""
    rate = float(params["rate"])
    if kind == "app_delay":
        return {"delay_ms": float(params["delay_ms"]), "delay_rate": rate}
    return {POINTS[kind][1]: rate}


class AppFaultInjector(BaseInjector):
    """One fault point of one server switched on (merged with others on the same server)."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        comp = ctx.component(target)
        if comp.role not in SERVER_ROLES:
            raise UsageError(
                f"{self.label}: fault points live in the shard servers and the region; "
                f"{target} has role {comp.role!r} (allowed: {', '.join(SERVER_ROLES)})"
            )
        self.address = comp.address
        self.point = POINTS[kind][0]
        self.fields = fault_fields(kind, params)
        self.fault_id: int | None = None
        self.reply: dict[str, Any] = {}

    def apply(self) -> None:
        with _ACTIVE.lock:
            active = _ACTIVE.by_address.setdefault(self.address, {})
            self.fault_id = next(_ACTIVE.ids)
            active[self.fault_id] = self.fields
            self.reply = self._control({"faults": merged_faults(active, self.ctx.seed)})

    def _control(self, fields: Mapping[str, Any]) -> dict:
        return control(self.address, fields, token=self.ctx.token())

    def verify(self) -> tuple[bool, str]:
        if self.fault_id is None:
            return False, "not applied"
        reply = self._control({})
        counts = reply.get("injected") or {}
        fired, seen = int(counts.get(self.point, 0)), int(counts.get("requests", 0))
        note = f"{self.target}: fault point {self.point} fired on {fired} of {seen} request(s)"
        if reply.get("faults") is None:
            return False, f"{self.target}: fault points are off (cleared by someone else?)"
        return fired > 0, note

    def heal(self) -> None:
        if self.fault_id is None:
            return
        with _ACTIVE.lock:
            active = _ACTIVE.by_address.get(self.address, {})
            active.pop(self.fault_id, None)
            if active:
                self._control({"faults": merged_faults(active, self.ctx.seed)})
                return
            _ACTIVE.by_address.pop(self.address, None)
            execute_app_clear(self.heal_action())

    def heal_action(self) -> dict[str, Any]:
        return {"action": "app_clear", "address": self.address, **self.ctx.token_action()}
