"""The framed protocol's client and server on real loopback sockets: pipelined calls, remote
errors, a dead peer, and a silent connection dropped and dialled again."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest

from harness.process.readiness import tcp_open
from system_under_test import protocol
from system_under_test.protocol import self_connected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_a_connection_silent_past_the_stale_limit_is_dropped_and_dialled_again():
    """A peer that accepted but answers nothing (a partition, a frozen process): giving up a call
    on it drops the connection once it has been silent past the limit, and the next call dials a
    new one; a peer that answers other calls keeps its connection."""

    async def scenario():
        conns: list[asyncio.StreamWriter] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conns.append(writer)
            await reader.read()  # hold the connection, never answer

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = protocol.Client("127.0.0.1", port, "silent")
        got: list[object] = []
        first = client.send("x", 1.0, None, None, lambda m, e: got.append(e))
        await asyncio.sleep(0.01)
        assert client.connected and not client.abandon(first, stale_after_s=0.5)
        second = client.send("x", 1.0, None, None, lambda m, e: got.append(e))
        await asyncio.sleep(0.06)
        assert client.abandon(second, stale_after_s=0.05)  # silent 60 ms > 50 ms: dropped
        assert not client.connected and got == []  # abandoned calls get no callback
        with pytest.raises(protocol.Timeout):
            await client.call("x", 0.05)
        assert len(conns) == 2  # the next call dialled a new connection
        server.close()
        await client.close()

        # An answering peer: calls out for longer than the limit, but one answered just now.
        server = await protocol.start_server(_echo, "127.0.0.1", port)
        live = protocol.Client("127.0.0.1", port, "echo")
        answered = asyncio.Event()
        live.send("sleep", 1.0, {"s": 0.2}, None, lambda m, e: answered.set())
        slow = live.send("sleep", 1.0, {"s": 0.3}, None, lambda m, e: None)
        await asyncio.wait_for(answered.wait(), 5)
        assert not live.abandon(slow, stale_after_s=0.15)
        assert live.connected
        await live.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_connection_to_itself_is_recognised_as_none():
    # What the kernel does when a client polls a loopback port in the ephemeral range before
    # the server listens and is given that port as its own: the two ends meet. Made on purpose
    # here (bind, then connect to the bound port); the client and tcp_open refuse it.
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.connect(("127.0.0.1", port))
        assert self_connected(s)
    finally:
        s.close()
    server = socket.create_server(("127.0.0.1", 0))
    try:
        peer = socket.create_connection(server.getsockname(), timeout=2)
        assert not self_connected(peer)
        assert tcp_open(*server.getsockname())
        peer.close()
    finally:
        server.close()
    assert not self_connected(None)

    class Closed:  # uvloop's socket of a transport closed already: descriptor -1
        def getsockname(self):
            raise ValueError("negative file descriptor")

        getpeername = getsockname

    assert not self_connected(Closed())
    gone = socket.socket()
    gone.close()
    assert not self_connected(gone)


def test_an_unexpected_error_while_connecting_still_answers_the_waiting_call(monkeypatch):
    """Whatever goes wrong while connecting, a call sent meanwhile gets its outcome at once
    (Unavailable), never silence until its caller's deadline: a ValueError from a closed
    socket once left calls without an answer and the gateway waiting on them."""

    def broken(sock):
        raise ValueError("negative file descriptor")

    async def scenario():
        server = await protocol.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = protocol.Client("127.0.0.1", port, "echo")
        monkeypatch.setattr(protocol, "self_connected", broken)
        got: list[object] = []
        done = asyncio.Event()
        client.send("x", 5.0, None, None, lambda m, e: (got.append(e), done.set()))
        await asyncio.wait_for(done.wait(), 2.0)
        assert isinstance(got[0], protocol.Unavailable) and "negative file descriptor" in str(
            got[0]
        )
        monkeypatch.undo()
        reply = await client.call("again", 1.0)  # and the next call connects
        assert reply.header["echo"] == "again"
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 20))
