"""The framed shard protocol: codec, a pipelined asyncio client and a small asyncio server.

Every process of the recommender that is reached over TCP (shard copies, the degraded region)
speaks this protocol; it is specified for other tools in ``docs/protocol.md``. numpy only, no torch:
tensors travel as raw little-endian bytes and are decoded without a copy.

One frame::

    uint32 big-endian  L   number of bytes that follow this field
    uint32 big-endian  H   length of the header
    H bytes                msgpack map (the header)
    L - 4 - H bytes        payload: the tensors' raw bytes, concatenated in header order

The header's ``"t"`` entry lists the tensors as ``[name, dtype, shape]`` with dtype ``"f32"`` or
``"i64"``. Requests carry ``"id"`` (matched by the response), ``"op"`` and ``"deadline"`` (absolute
Unix time in seconds; 0 for none). Responses carry ``"id"`` and ``"ok"``; failures add ``"code"``
and ``"error"``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

log = logging.getLogger("protocol")

MAX_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">II")
_DTYPES: dict[str, np.dtype[Any]] = {"f32": np.dtype("<f4"), "i64": np.dtype("<i8")}
_NAMES = {v: k for k, v in _DTYPES.items()}
# Past this many unsent bytes the peer is not reading (frozen or wedged): fail fast instead of
# queueing more work behind it.
WRITE_BUFFER_LIMIT = 1024 * 1024
# A connection silent this long while calls were out is presumed dead when one of them is given
# up (``Client.abandon``): far above any answer time of a live peer (the SLA is 20 ms), and
# below the breaker's probe interval (0.5 s), so a healed partition is found by the next probe.
STALE_AFTER_S = 0.2

Tensors = dict[str, np.ndarray]


def self_connected(sock: Any) -> bool:
    """Whether a connected TCP socket is connected to itself.

    Connecting to a loopback port in the ephemeral range where nothing listens can succeed:
    when the kernel picks that same port as the connection's own, the two ends meet (TCP's
    simultaneous open). Such a connection answers nothing, and while it lives the port cannot
    be bound: a launcher polling a shard's port before the shard listened took the port from
    the shard (``address already in use``) that way. A connection to itself is no connection.
    """
    try:
        return sock is not None and sock.getsockname() == sock.getpeername()
    except (OSError, ValueError):  # closed already: uvloop's socket of a closed transport has
        return False  # descriptor -1, and asking it for its name raises ValueError


class ProtocolError(Exception):
    """A frame that does not follow the protocol."""


class CallError(Exception):
    """A call did not produce an answer. ``kind`` says why, for metrics and tier decisions."""

    kind = "error"


class Unavailable(CallError):
    kind = "unavailable"


class Timeout(CallError):
    kind = "timeout"


class RemoteError(CallError):
    kind = "remote"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.detail = message


@dataclass
class Message:
    header: dict[str, Any]
    tensors: Tensors = field(default_factory=dict)


_F32, _I64 = _DTYPES["f32"], _DTYPES["i64"]
_PACK = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_HLEN = struct.Struct(">I")


def encode(header: Mapping[str, Any], tensors: Mapping[str, np.ndarray] | None = None) -> bytes:
    """One frame. Arrays are converted to f32 / i64 little-endian if they are not already."""
    specs = []
    parts: list[Any] = [b"", b""]
    size = 0
    if tensors:
        for name, arr in tensors.items():
            if type(arr) is not np.ndarray:
                arr = np.asarray(arr)
            dt = _F32 if arr.dtype.kind == "f" else _I64
            if arr.dtype != dt or not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr, dtype=dt)  # keeps 0-d shapes
            specs.append([name, _NAMES[dt], list(arr.shape)])
            parts.append(arr.data if arr.ndim else arr.tobytes())
            size += arr.nbytes
    head = _PACK({**header, "t": specs})
    parts[0] = _LEN.pack(4 + len(head) + size, len(head))
    parts[1] = head
    return b"".join(parts)  # one copy of each tensor's bytes


def decode_body(body: bytes | memoryview) -> Message:
    """Decode everything after the length field of a frame. Tensors are read-only views."""
    if len(body) < 4:
        raise ProtocolError(f"frame of {len(body)} bytes is shorter than its header length field")
    (hlen,) = _HLEN.unpack_from(body, 0)
    if 4 + hlen > len(body):
        raise ProtocolError(f"header length {hlen} exceeds frame length {len(body)}")
    try:
        header = msgpack.unpackb(body[4 : 4 + hlen], raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    specs = header.pop("t", [])
    if not specs:
        return Message(header, {})
    try:
        return Message(header, _decode_tensors(specs, body, 4 + hlen))
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed tensor list {specs!r}: {exc}") from None


def _decode_tensors(specs: Any, body: bytes | memoryview, offset: int) -> Tensors:
    tensors: Tensors = {}
    view = memoryview(body)
    end = len(view)
    for spec in specs:
        name, dtype_name, shape = spec
        count = 1
        for d in shape:
            if not isinstance(d, int) or d < 0:
                raise ProtocolError(f"tensor {name!r}: shape {shape} must be non-negative integers")
            count *= d
        dt = _DTYPES.get(dtype_name)
        if dt is None:
            raise ProtocolError(f"tensor {name!r}: dtype {dtype_name!r} not in {sorted(_DTYPES)}")
        nbytes = count * dt.itemsize
        if offset + nbytes > end:
            raise ProtocolError(f"tensor {name!r} of shape {shape} runs past the frame end")
        arr = np.frombuffer(view, dtype=dt, count=count, offset=offset)
        tensors[name] = arr if len(shape) == 1 else arr.reshape(shape)
        offset += nbytes
    return tensors


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# Unread bytes a server connection buffers while a delayed request holds it, before it stops
# reading (the client's write buffer then fills, and it fails fast: WRITE_BUFFER_LIMIT).
_READ_BUFFER_LIMIT = 256 * 1024


class _FramedProtocol(asyncio.Protocol):
    """Splits a byte stream into frame bodies and hands each to ``_frame``, in order.

    A body that arrived whole in one read is passed as a view of that read (no copy); one that
    spanned reads is copied out of the buffer once. ``_hold`` (set by a subclass) stops the
    splitting until ``_drain`` is called again.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._hold = False
        self._closed = False
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True

    def _frame(self, body: bytes | memoryview) -> None:
        raise NotImplementedError

    def _too_large(self, length: int) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._buf:
            self._buf += data
            self._drain()
            return
        n, pos = len(data), 0
        view = memoryview(data)
        while not self._hold and n - pos >= 4:
            (length,) = _HLEN.unpack_from(data, pos)
            if length > MAX_FRAME:
                self._too_large(length)
                return
            end = pos + 4 + length
            if end > n:
                break
            self._frame(view[pos + 4 : end])
            if self._closed:
                return
            pos = end
        if pos < n:
            self._buf += view[pos:]
            self._backpressure()

    def _drain(self) -> None:
        """Hand over the complete frames in the buffer (until held or closed)."""
        buf = self._buf
        pos = 0
        while not self._hold and not self._closed and len(buf) - pos >= 4:
            (length,) = _HLEN.unpack_from(buf, pos)
            if length > MAX_FRAME:
                self._too_large(length)
                return
            end = pos + 4 + length
            if end > len(buf):
                break
            body = bytes(memoryview(buf)[pos + 4 : end])
            pos = end
            self._frame(body)
        if self._closed:
            return
        if pos:
            del buf[:pos]
        self._backpressure()

    def _backpressure(self) -> None:
        if self.transport is None:
            return
        if len(self._buf) > _READ_BUFFER_LIMIT:
            if not self._paused:
                self._paused = True
                self.transport.pause_reading()
        elif self._paused:
            self._paused = False
            self.transport.resume_reading()


def _deliver(callback: Callable[[Message | None, CallError | None], None], msg, exc) -> None:
    try:
        callback(msg, exc)
    except Exception:  # noqa: BLE001 - a caller's bug must not kill the connection
        log.exception("protocol callback failed")


class _ClientProtocol(_FramedProtocol):
    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    def _frame(self, body: bytes | memoryview) -> None:
        try:
            msg = decode_body(body)
        except ProtocolError as exc:
            self._abort(f"protocol error: {exc}")
            return
        client = self.client
        callback = client._pending.pop(msg.header.get("id", -1), None)
        # heard from the peer: it is alive; still waiting only if calls are still out
        client._waiting_since = time.monotonic() if client._pending else None
        if callback is None:
            return  # an answer nobody waits for any more (timed out, hedged loser)
        header = msg.header
        if header.get("ok", False):
            _deliver(callback, msg, None)
        else:
            err = RemoteError(str(header.get("code", "error")), str(header.get("error", "")))
            _deliver(callback, None, err)

    def _too_large(self, length: int) -> None:
        self._abort(f"protocol error: frame of {length} bytes exceeds the limit of {MAX_FRAME}")

    def _abort(self, reason: str) -> None:
        self._closed = True
        self.client._drop(self, reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.client._drop(self, "connection closed by peer")


# A call's outcome: (message, None) on success, (None, error) otherwise.
Callback = Callable[[Message | None, CallError | None], None]


class Client:
    """One persistent connection to one peer; pipelined calls matched by id.

    Connects lazily and again after a loss, so a restarted peer is reachable on the next call.
    A dead peer fails a call at once (connection refused); a frozen one only by the caller's
    timeout, which is why every call takes one.

    A connection that has heard nothing for ``STALE_AFTER_S`` while calls were out is presumed
    dead when a call on it is given up (``abandon``), and dropped: the next call dials afresh.
    A partition heals for a new connection at once, while TCP would go on retransmitting into
    the old one with exponential backoff (measured: 2 s after a 4 s partition before the old
    connection carried an answer again). A merely slow peer still answers something within
    that time at any useful load, so it keeps its connection.

    Two interfaces: ``await call(...)`` (a timeout of its own), and ``send(...)`` with a callback
    and no timer at all, for a caller that keeps its own deadline (the gateway's shard calls):
    no task, no future; the callback runs when the answer is read, or with the error when the
    connection fails (never from inside ``send``). ``abandon(call_id)`` drops a call whose
    answer is no longer wanted (timed out, or a hedge that lost).
    """

    def __init__(self, host: str, port: int, name: str = "") -> None:
        self.host, self.port, self.name = host, port, name or f"{host}:{port}"
        self._ids = itertools.count(1)
        self._pending: dict[int, Callback] = {}
        self._proto: _ClientProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # monotonic time since when calls have been out and nothing was heard; None: not waiting
        self._waiting_since: float | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def _connect(self, timeout_s: float) -> None:
        if self._connecting is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._connecting), timeout_s)
            except TimeoutError:
                raise Timeout(
                    f"{self.name}: connect took longer than {timeout_s * 1000:.1f} ms"
                ) from None
            return
        loop = asyncio.get_running_loop()
        connecting = self._connecting = loop.create_future()
        try:
            try:
                transport, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _ClientProtocol(self), self.host, self.port),
                    timeout_s,
                )
            except TimeoutError:  # before OSError: a subclass of it
                raise Timeout(
                    f"{self.name}: connect took longer than {timeout_s * 1000:.1f} ms"
                ) from None
            except OSError as exc:
                raise Unavailable(f"{self.name}: connect failed: {exc}") from None
            if self_connected(transport.get_extra_info("socket")):
                transport.close()
                raise Unavailable(
                    f"{self.name}: connect failed: nothing listens on {self.host}:{self.port},"
                    " and the kernel gave this connection that port as its own (a self-connect)"
                )
            self._proto, self._transport = proto, transport  # type: ignore[assignment]
            connecting.set_result(None)
        except BaseException as exc:
            if not connecting.done():
                connecting.set_exception(
                    exc if isinstance(exc, CallError) else Unavailable(f"{self.name}: {exc!r}")
                )
                connecting.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._connecting = None

    def _drop(self, proto: _ClientProtocol, reason: str) -> None:
        if proto is not self._proto:
            return
        transport = self._transport
        self._proto = self._transport = None
        self._waiting_since = None
        if transport is not None:
            transport.close()
        pending, self._pending = self._pending, {}
        for callback in pending.values():
            _deliver(callback, None, Unavailable(f"{self.name}: {reason}"))

    def send(
        self,
        op: str,
        timeout_s: float,
        fields: Mapping[str, Any] | None,
        tensors: Mapping[str, np.ndarray] | None,
        callback: Callback,
    ) -> int:
        """Send one request; ``callback`` gets its outcome. Returns the call id."""
        call_id = next(self._ids)
        self._pending[call_id] = callback
        if self.connected:
            self._write(call_id, op, timeout_s, fields, tensors)
        else:
            task = asyncio.get_running_loop().create_task(
                self._connect_and_write(call_id, op, timeout_s, fields, tensors, time.monotonic())
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return call_id

    def abandon(self, call_id: int, stale_after_s: float | None = None) -> bool:
        """Drop a call: its answer, if one comes, is discarded and its callback never runs.

        If the connection has heard nothing for ``stale_after_s`` (default ``STALE_AFTER_S``)
        while calls were out, it is presumed dead and closed too: its other calls fail with
        :class:`Unavailable` and the next call connects again. Returns True when it closed.
        """
        self._pending.pop(call_id, None)
        since, proto = self._waiting_since, self._proto
        if since is None or proto is None:
            return False
        silent = time.monotonic() - since
        if silent <= (STALE_AFTER_S if stale_after_s is None else stale_after_s):
            return False
        log.warning(
            "%s: nothing heard for %.0f ms: dropping the connection", self.name, silent * 1e3
        )
        self._drop(proto, f"nothing heard for {silent * 1e3:.0f} ms: connection presumed dead")
        return True

    def _write(
        self,
        call_id: int,
        op: str,
        timeout_s: float,
        fields: Mapping[str, Any] | None,
        tensors: Mapping[str, np.ndarray] | None,
    ) -> None:
        transport = self._transport
        assert transport is not None
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self._fail_soon(
                call_id, Unavailable(f"{self.name}: peer is not reading (write buffer full)")
            )
            return
        header = {"id": call_id, "op": op, "deadline": time.time() + timeout_s}
        if fields:
            header.update(fields)
        try:
            frame = encode(header, tensors)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpackable field: this call's error
            self._fail_soon(call_id, CallError(f"{self.name}: cannot encode {op}: {exc!r}"))
            return
        transport.write(frame)
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()

    def _fail_soon(self, call_id: int, exc: CallError) -> None:
        callback = self._pending.pop(call_id, None)
        if callback is not None:
            asyncio.get_running_loop().call_soon(_deliver, callback, None, exc)

    async def _connect_and_write(
        self,
        call_id: int,
        op: str,
        timeout_s: float,
        fields: Mapping[str, Any] | None,
        tensors: Mapping[str, np.ndarray] | None,
        start: float,
    ) -> None:
        try:
            await self._connect(timeout_s)
        except Exception as exc:  # noqa: BLE001 - every waiting call gets its outcome
            callback = self._pending.pop(call_id, None)
            if callback is not None:
                failed = (
                    exc
                    if isinstance(exc, CallError)
                    else Unavailable(f"{self.name}: connect failed: {exc!r}")
                )
                _deliver(callback, None, failed)
            if not isinstance(exc, CallError):
                log.error("%s: connect failed unexpectedly", self.name, exc_info=exc)
            return
        if call_id not in self._pending:
            return  # forgotten while connecting
        remaining = timeout_s - (time.monotonic() - start)
        if remaining <= 0 or not self.connected:
            callback = self._pending.pop(call_id)
            why: CallError = (
                Timeout(f"{self.name}: no time left for {op} after connecting")
                if remaining <= 0
                else Unavailable(f"{self.name}: connection closed while connecting")
            )
            _deliver(callback, None, why)
            return
        self._write(call_id, op, remaining, fields, tensors)

    async def call(
        self,
        op: str,
        timeout_s: float,
        fields: Mapping[str, Any] | None = None,
        tensors: Mapping[str, np.ndarray] | None = None,
    ) -> Message:
        """Send one request and wait at most ``timeout_s`` for its answer."""
        if timeout_s <= 0:
            raise Timeout(f"{self.name}: no time left for {op}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()

        def done(msg: Message | None, exc: CallError | None) -> None:
            if not fut.done():
                if exc is None:
                    fut.set_result(msg)  # type: ignore[arg-type]
                else:
                    fut.set_exception(exc)

        call_id = self.send(op, timeout_s, fields, tensors, done)
        timer = loop.call_later(
            timeout_s,
            done,
            None,
            Timeout(f"{self.name}: no answer to {op} within {timeout_s * 1000:.1f} ms"),
        )
        try:
            return await fut
        finally:
            timer.cancel()
            self.abandon(call_id)

    async def close(self) -> None:
        if self._proto is not None:
            self._drop(self._proto, "client closed")
        for task in list(self._tasks):
            task.cancel()


# A handler answers a request with (reply fields, reply tensors), or with an awaitable of that
# (the server then finishes it in a task, and the frames behind it on that connection wait).
Reply = tuple[dict[str, Any], Tensors]
Handler = Callable[[Message], "Reply | Awaitable[Reply]"]


def error_frame(call_id: Any, code: str, message: str) -> bytes:
    return encode({"id": call_id, "ok": False, "code": code, "error": message})


class _ServerProtocol(_FramedProtocol):
    """Answers the frames of one connection in order, one at a time.

    A handler that answers at once (a tuple) is answered inside ``data_received``: no task, no
    coroutine. One that returns an awaitable (a fault point's delay) is finished in a task while
    the frames behind it wait in the buffer (reading stops past ``_READ_BUFFER_LIMIT``). Expired
    requests are answered ``deadline_exceeded`` without computing.
    """

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        # Answers made while one read's frames are handled, sent together by one write: a
        # pipelining client (the gateway under load) costs one send per read, not per call.
        self._batch: list[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        self._batch = []
        try:
            super().data_received(data)
        finally:
            self._flush()

    def _drain(self) -> None:
        if self._batch is not None:  # inside data_received: flushed there
            super()._drain()
            return
        self._batch = []
        try:
            super()._drain()
        finally:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def _write(self, frame: bytes) -> None:
        if self._batch is not None:
            self._batch.append(frame)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def _too_large(self, length: int) -> None:
        self._bad_frame(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")

    def _bad_frame(self, message: str) -> None:
        self._write(error_frame(None, "bad_frame", message))
        self._flush()  # the answers before it, and it, go out before the close
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def _frame(self, body: bytes | memoryview) -> None:
        try:
            msg = decode_body(body)
        except ProtocolError as exc:
            self._bad_frame(str(exc))
            return
        header = msg.header
        call_id = header.get("id")
        try:
            deadline = header.get("deadline") or 0
            if deadline and time.time() > deadline:
                self._write(error_frame(call_id, "deadline_exceeded", "expired before start"))
                return
            result = self.handler(msg)
            if not isinstance(result, tuple):
                self._hold = True
                task = asyncio.get_running_loop().create_task(self._finish(call_id, result))
                task.add_done_callback(_log_task_error)
                return
            frame = encode({"id": call_id, "ok": True, **result[0]}, result[1])
        except RemoteError as exc:
            frame = error_frame(call_id, exc.code, exc.detail)
        except Exception as exc:  # noqa: BLE001 - a bad request must not kill the server
            frame = error_frame(call_id, "internal", f"{type(exc).__name__}: {exc}")
        self._write(frame)

    async def _finish(self, call_id: Any, pending: Awaitable[Reply]) -> None:
        try:
            fields, tensors = await pending
            frame = encode({"id": call_id, "ok": True, **fields}, tensors)
        except RemoteError as exc:
            frame = error_frame(call_id, exc.code, exc.detail)
        except Exception as exc:  # noqa: BLE001
            frame = error_frame(call_id, "internal", f"{type(exc).__name__}: {exc}")
        self._write(frame)
        self._hold = False
        if not self._closed:
            self._drain()


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("request task failed", exc_info=task.exception())


async def start_server(handler: Handler, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _ServerProtocol(handler), host, port, reuse_address=True, backlog=1024
    )
