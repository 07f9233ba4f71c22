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
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

MAX_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">II")
_DTYPES: dict[str, np.dtype[Any]] = {"f32": np.dtype("<f4"), "i64": np.dtype("<i8")}
_NAMES = {v: k for k, v in _DTYPES.items()}
# Past this many unsent bytes the peer is not reading (frozen or wedged): fail fast instead of
# queueing more work behind it.
WRITE_BUFFER_LIMIT = 1024 * 1024

Tensors = dict[str, np.ndarray]


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


def encode(header: Mapping[str, Any], tensors: Mapping[str, np.ndarray] | None = None) -> bytes:
    """One frame. Arrays are converted to f32 / i64 little-endian if they are not already."""
    specs = []
    chunks = []
    for name, arr in (tensors or {}).items():
        arr = np.asarray(arr)
        dt = _DTYPES["f32"] if arr.dtype.kind == "f" else _DTYPES["i64"]
        arr = np.asarray(arr, dtype=dt, order="C")  # keeps 0-d shapes
        specs.append([name, _NAMES[dt], list(arr.shape)])
        chunks.append(arr.tobytes())
    head = msgpack.packb({**header, "t": specs}, use_bin_type=True)
    payload = b"".join(chunks)
    return _LEN.pack(4 + len(head) + len(payload), len(head)) + head + payload


def decode_body(body: bytes) -> Message:
    """Decode everything after the length field of a frame."""
    if len(body) < 4:
        raise ProtocolError(f"frame of {len(body)} bytes is shorter than its header length field")
    (hlen,) = struct.unpack_from(">I", body, 0)
    if 4 + hlen > len(body):
        raise ProtocolError(f"header length {hlen} exceeds frame length {len(body)}")
    try:
        header = msgpack.unpackb(body[4 : 4 + hlen], raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    specs = header.pop("t", [])
    try:
        return Message(header, _decode_tensors(specs, body, 4 + hlen))
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed tensor list {specs!r}: {exc}") from None


def _decode_tensors(specs: Any, body: bytes, offset: int) -> Tensors:
    tensors: Tensors = {}
    view = memoryview(body)
    for spec in specs:
        name, dtype_name, shape = spec
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise ProtocolError(f"tensor {name!r}: shape {shape} must be non-negative integers")
        dt = _DTYPES.get(dtype_name)
        if dt is None:
            raise ProtocolError(f"tensor {name!r}: dtype {dtype_name!r} not in {sorted(_DTYPES)}")
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * dt.itemsize
        if offset + nbytes > len(body):
            raise ProtocolError(f"tensor {name!r} of shape {shape} runs past the frame end")
        tensors[name] = np.frombuffer(view[offset : offset + nbytes], dtype=dt).reshape(shape)
        offset += nbytes
    return tensors


async def read_frame(reader: asyncio.StreamReader) -> Message:
    head = await reader.readexactly(4)
    (length,) = struct.unpack(">I", head)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")
    return decode_body(await reader.readexactly(length))


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Client:
    """One persistent connection to one peer; pipelined calls matched by id.

    Connects lazily and again after a loss, so a restarted peer is reachable on the next call.
    A dead peer fails a call at once (connection refused); a frozen one only by the caller's
    timeout, which is why every call takes one.
    """

    def __init__(self, host: str, port: int, name: str = "") -> None:
        self.host, self.port, self.name = host, port, name or f"{host}:{port}"
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self) -> None:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                raise Unavailable(f"{self.name}: connect failed: {exc}") from None
            set_nodelay(writer)
            self._writer = writer
            self._reader_task = loop.create_task(self._read_loop(reader, writer))
            self._connecting.set_result(None)
        except BaseException as exc:
            self._connecting.set_exception(exc)
            self._connecting.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._connecting = None

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = "connection closed by peer"
        try:
            while True:
                msg = await read_frame(reader)
                fut = self._pending.pop(msg.header.get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
        finally:
            self._drop(writer, reason)

    def _drop(self, writer: asyncio.StreamWriter, reason: str) -> None:
        if self._writer is writer:
            self._writer = None
        writer.close()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(Unavailable(f"{self.name}: {reason}"))

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
        start = time.monotonic()
        if not self.connected:
            await asyncio.wait_for(self._connect(), timeout_s)
        writer = self._writer
        assert writer is not None
        if writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            raise Unavailable(f"{self.name}: peer is not reading (write buffer full)")
        call_id = next(self._ids)
        remaining = timeout_s - (time.monotonic() - start)
        header = {"id": call_id, "op": op, "deadline": time.time() + remaining, **(fields or {})}
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        writer.write(encode(header, tensors))
        try:
            msg = await asyncio.wait_for(fut, remaining)
        except TimeoutError:
            raise Timeout(f"{self.name}: no answer to {op} within {timeout_s * 1000:.1f} ms") from None
        finally:
            self._pending.pop(call_id, None)
        if not msg.header.get("ok", False):
            raise RemoteError(str(msg.header.get("code", "error")), str(msg.header.get("error", "")))
        return msg

    async def close(self) -> None:
        if self._writer is not None:
            self._drop(self._writer, "client closed")
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, Exception):
                pass


Handler = Callable[[Message], Awaitable[tuple[dict[str, Any], Tensors]]]


def error_frame(call_id: Any, code: str, message: str) -> bytes:
    return encode({"id": call_id, "ok": False, "code": code, "error": message})


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Answer frames from one connection in order. Expired requests are not computed."""
    set_nodelay(writer)
    try:
        while True:
            try:
                msg = await read_frame(reader)
            except ProtocolError as exc:
                writer.write(error_frame(None, "bad_frame", str(exc)))
                break
            call_id = msg.header.get("id")
            deadline = msg.header.get("deadline") or 0
            if deadline and time.time() > deadline:
                writer.write(error_frame(call_id, "deadline_exceeded", "expired before start"))
                continue
            try:
                fields, tensors = await handler(msg)
            except RemoteError as exc:
                writer.write(error_frame(call_id, exc.code, exc.detail))
                continue
            except Exception as exc:  # noqa: BLE001 - a bad request must not kill the server
                writer.write(error_frame(call_id, "internal", f"{type(exc).__name__}: {exc}"))
                continue
            writer.write(encode({"id": call_id, "ok": True, **fields}, tensors))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def start_server(handler: Handler, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(
        lambda r, w: serve_connection(r, w, handler), host, port, reuse_address=True
    )
