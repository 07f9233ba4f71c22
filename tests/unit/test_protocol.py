"""The framed protocol: codec round-trips and a real client/server pair on loopback."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from system_under_test import protocol


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@given(
    f=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
    i=hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)),
    op=st.text(max_size=10),
)
@settings(max_examples=60, deadline=None)
def test_encode_decode_round_trip(f, i, op):
    frame = protocol.encode({"id": 3, "op": op}, {"f": f, "i": i})
    msg = protocol.decode_body(frame[4:])
    assert msg.header == {"id": 3, "op": op}
    np.testing.assert_array_equal(msg.tensors["f"], f)
    np.testing.assert_array_equal(msg.tensors["i"], i)
    assert msg.tensors["f"].shape == f.shape


def test_truncated_frame_is_a_protocol_error():
    frame = protocol.encode({"id": 1}, {"x": np.ones(4, np.float32)})
    with pytest.raises(protocol.ProtocolError, match="runs past the frame end"):
        protocol.decode_body(frame[4:-3])


async def _echo(msg):
    if msg.header["op"] == "fail":
        raise protocol.RemoteError("bad_request", "asked to fail")
    if msg.header["op"] == "sleep":
        await asyncio.sleep(msg.header["s"])
    return {"echo": msg.header["op"]}, {"x": msg.tensors["x"] * 2} if "x" in msg.tensors else {}


def test_client_server_pipelined_calls_errors_and_dead_peer():
    async def scenario():
        port = _free_port()
        server = await protocol.start_server(_echo, "127.0.0.1", port)
        client = protocol.Client("127.0.0.1", port, "echo")
        xs = [np.arange(n, dtype=np.float32) for n in range(1, 30)]
        replies = await asyncio.gather(*(client.call("x", 1.0, tensors={"x": x}) for x in xs))
        for x, reply in zip(xs, replies, strict=True):
            np.testing.assert_array_equal(reply.tensors["x"], x * 2)
        with pytest.raises(protocol.RemoteError) as info:
            await client.call("fail", 1.0)
        assert info.value.code == "bad_request"
        with pytest.raises(protocol.Timeout):
            await client.call("sleep", 0.02, fields={"s": 0.2})
        server.close()
        await server.wait_closed()
        await client.close()
        start = time.monotonic()
        with pytest.raises(protocol.Unavailable):
            await client.call("x", 1.0)
        refused_ms = (time.monotonic() - start) * 1000
        # A refused connection on loopback fails at once, not by timeout.
        assert refused_ms < 500
        # The same port served again: the client reconnects on its next call.
        server = await protocol.start_server(_echo, "127.0.0.1", port)
        reply = await client.call("again", 1.0)
        assert reply.header["echo"] == "again"
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 20))
