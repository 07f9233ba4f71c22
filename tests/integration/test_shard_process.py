"""Real shard and region processes (``python -m system_under_test serve-*``, tiny preset).

Each process is started with its log in a temporary file, waited for (bounded) until its ready
line, and always killed and reaped; a failing test prints the process's last log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from system_under_test import protocol, sharding
from system_under_test.auth import TOKEN_VARIABLE, new_token
from system_under_test.process import ManagedProcess, StartError
from system_under_test.shard_server import ShardService, ShardTables, serve

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
READY = re.compile(r" ready .*\bport=(\d+)")
TOKEN = new_token()  # every server of this module requires it for its control op


@dataclass
class Server:
    proc: ManagedProcess
    log: Path
    port: int = 0

    def tail(self, lines: int = 25) -> str:
        return self.proc.tail(lines)


def spawn(args: list[str], log: Path) -> Server:
    log.unlink(missing_ok=True)  # the ready line searched for must be this process's
    argv = [sys.executable, "-m", "system_under_test", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), TOKEN_VARIABLE: TOKEN}
    return Server(ManagedProcess(argv, log, name=log.stem, env=env, cwd=REPO).start(), log)


def wait_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> None:
    def ready() -> bool:
        match = READY.search(server.log.read_text(errors="replace"))
        server.port = int(match.group(1)) if match else 0
        return match is not None

    try:
        server.proc.wait_ready(ready, timeout_s, "its ready line", interval_s=0.05)
    except StartError as exc:
        pytest.fail(str(exc))


@contextlib.contextmanager
def running(commands: dict[str, list[str]], log_dir: Path) -> Iterator[dict[str, Server]]:
    """Start every command at once (start-up is mostly importing torch), wait for all; stop
    and reap every one at the end."""
    servers: dict[str, Server] = {}
    try:
        for name, args in commands.items():
            servers[name] = spawn(args, log_dir / f"{name}.log")
        for server in servers.values():
            wait_ready(server)
        yield servers
    except BaseException:
        for name, server in servers.items():
            print(f"--- last lines of {name} ({server.log}):\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        for server in servers.values():
            server.proc.stop(grace_s=0.0)  # SIGKILL: what a test leaves is not graceful work


def shard_args(shard: int, shards: int, role: str, artifacts: Path) -> list[str]:
    return [
        "serve-shard", "--shard", str(shard), "--shards", str(shards), "--role", role,
        "--host", "127.0.0.1", "--port", "0", "--preset", "tiny", "--artifacts", str(artifacts),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def artifact_root(tiny_artifacts: Path) -> Path:
    return tiny_artifacts.parent  # servers find <root>/<version>/ themselves


@pytest.fixture(scope="module")
def cluster(artifact_root: Path, tmp_path_factory) -> Iterator[dict[str, Server]]:
    commands = {
        "shard-0": shard_args(0, 2, "primary", artifact_root),
        "shard-1": shard_args(1, 2, "primary", artifact_root),
        "region": ["serve-region", "--host", "127.0.0.1", "--port", "0", "--preset", "tiny",
                   "--artifacts", str(artifact_root)],
    }  # fmt: skip
    with running(commands, tmp_path_factory.mktemp("logs")) as servers:
        yield servers


def run(coro, timeout_s: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def full_tables(tiny_artifacts: Path) -> tuple[np.ndarray, np.ndarray]:
    import torch

    state = torch.load(tiny_artifacts / "full.pt", map_location="cpu", weights_only=True)
    return state["user_emb.weight"].numpy(), state["item_emb.weight"].numpy()


def test_shards_serve_correct_lookups_and_retrieval(cluster, tiny_artifacts):
    users, items = full_tables(tiny_artifacts)
    n_shards = 2
    bounds = sharding.item_bounds(len(items), n_shards)
    clients = [protocol.Client("127.0.0.1", cluster[f"shard-{s}"].port) for s in range(n_shards)]

    async def scenario():
        for s, c in enumerate(clients):
            ping = (await c.call("ping", 2.0)).header
            assert ping["shard"] == s and ping["role"] == "primary"
            assert ping["items"] == [int(bounds[s]), int(bounds[s + 1])]
            assert ping["n_users"] == len(sharding.user_rows_of_shard(len(users), s, n_shards))
        # User rows, one bag per id.
        for s, c in enumerate(clients):
            ids = sharding.user_rows_of_shard(len(users), s, n_shards)[::37]
            reply = await c.call("lookup", 2.0, {"table": "user"}, {"ids": ids})
            np.testing.assert_array_equal(reply.tensors["sums"], users[ids])
        # A history bag split over both shards: partial sums add up to the whole bag's mean.
        history = np.array([3, 1500, 7, 1999, 12], np.int64)
        owner = sharding.item_shard(history, bounds)
        query = users[5]
        sums, counts, cand_ids, cand_scores = 0, 0, [], []
        for s, c in enumerate(clients):
            mine = history[owner == s]
            reply = await c.call(
                "retrieve", 2.0, {"top_n": 50},
                {"query": query, "bag_ids": mine, "bag_offsets": np.zeros(1, np.int64)},
            )  # fmt: skip
            sums = sums + reply.tensors["bag_sums"]
            counts = counts + reply.tensors["bag_counts"]
            cand_ids.append(reply.tensors["ids"])
            cand_scores.append(reply.tensors["scores"])
            np.testing.assert_array_equal(reply.tensors["emb"], items[reply.tensors["ids"]])
        np.testing.assert_allclose(
            sums[0] / counts[0], items[history].mean(0), rtol=1e-5, atol=1e-6
        )
        ids, scores = np.concatenate(cand_ids), np.concatenate(cand_scores)
        best = ids[np.argsort(-scores, kind="stable")[:50]]
        expect = np.argsort(-(items @ query), kind="stable")[:50]
        assert set(best.tolist()) == set(expect.tolist())
        for c in clients:
            await c.close()

    run(scenario())


def raw_exchange(port: int, frame: bytes) -> tuple[dict | None, bool]:
    """Send raw bytes; return the first reply header (or None) and whether the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(frame)
        data = b""
        closed = False
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            data += chunk
            if len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
                break
    if len(data) < 8:
        return None, closed
    return protocol.decode_body(data[4:]).header, closed


def test_malformed_frames_and_bad_ops_do_not_kill_the_server(cluster):
    port = cluster["shard-0"].port
    # Header length larger than the frame.
    header, closed = raw_exchange(port, struct.pack(">II", 8, 1000) + b"\0" * 4)
    assert header is not None and header["code"] == "bad_frame"
    # A frame longer than the limit.
    header, _ = raw_exchange(port, struct.pack(">I", protocol.MAX_FRAME + 1))
    assert header is not None and header["code"] == "bad_frame"
    # A tensor that runs past the frame's end.
    head = msgpack.packb({"id": 9, "op": "lookup", "table": "user", "t": [["ids", "i64", [5]]]})
    header, _ = raw_exchange(
        port, struct.pack(">II", 4 + len(head) + 8, len(head)) + head + bytes(8)
    )
    assert header is not None and header["code"] == "bad_frame"
    # An expired deadline is answered without computing.
    expired = protocol.encode({"id": 5, "op": "retrieve", "deadline": time.time() - 1})
    header, closed = raw_exchange(port, expired)
    assert header is not None and header["code"] == "deadline_exceeded" and not closed
    # Not msgpack at all, then a connection dropped mid-frame.
    header, closed = raw_exchange(port, struct.pack(">II", 8, 4) + b"\xc1\xc1\xc1\xc1")
    assert (header is None and closed) or (header is not None and header["code"] == "bad_frame")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack(">I", 100) + b"\0\0")

    async def scenario():
        client = protocol.Client("127.0.0.1", port)
        bad = [
            ("bogus", {}, {}, "bad_op"),
            ("lookup", {"table": "nope"}, {"ids": np.array([0])}, "bad_request"),
            ("lookup", {"table": "user"}, {"ids": np.array([1])}, "not_owned"),
            ("lookup", {"table": "item"}, {"ids": np.array([0.5])}, "bad_request"),
            ("retrieve", {"top_n": "x"}, {"query": np.zeros(16, np.float32)}, "bad_request"),
            ("retrieve", {"top_n": 5}, {"query": np.zeros((2, 2), np.float32)}, "bad_request"),
        ]
        for op, fields, tensors, code in bad:
            with pytest.raises(protocol.RemoteError) as info:
                await client.call(op, 2.0, fields, tensors)
            assert info.value.code == code, (op, fields, str(info.value))
        ping = await client.call("ping", 2.0)
        await client.close()
        return ping

    assert run(scenario()).header["shard"] == 0
    assert cluster["shard-0"].proc.alive()


def test_fault_points_are_switched_over_the_wire(cluster):
    port = cluster["shard-1"].port

    async def scenario():
        client = protocol.Client("127.0.0.1", port)
        ids = {"ids": np.array([1, 3], np.int64)}
        try:
            fields = {"faults": {"error_rate": 0.5, "seed": 1}, "token": TOKEN}
            reply = await client.call("control", 2.0, fields)
            assert reply.header["faults"]["error_rate"] == 0.5
            outcomes = []
            for rid in range(40):
                try:
                    await client.call("lookup", 2.0, {"table": "user", "rid": f"r{rid}"}, ids)
                    outcomes.append(True)
                except protocol.RemoteError as exc:
                    assert exc.code == "injected"
                    outcomes.append(False)
            reply = await client.call("control", 2.0, {"clear": True, "token": TOKEN})
            assert reply.header["injected"]["error"] == outcomes.count(False) > 0
            assert outcomes.count(True) > 0
            await client.call("lookup", 2.0, {"table": "user"}, ids)
        finally:
            await client.call("control", 2.0, {"clear": True, "token": TOKEN})
            await client.close()

    run(scenario())


@pytest.mark.parametrize("name", ["shard-0", "region"])
def test_control_without_the_token_is_refused_over_the_wire(cluster, name):
    """A missing, wrong or mistyped token: ``unauthorized``, no fault set, a log line each."""
    server = cluster[name]
    refusals = [
        {"faults": {"error_rate": 1.0}},
        {"faults": {"error_rate": 1.0}, "token": "0" * len(TOKEN)},
        {"faults": {"error_rate": 1.0}, "token": TOKEN[:-1]},
        {"faults": {"error_rate": 1.0}, "token": 12345},
        {"clear": True, "token": None},
    ]

    async def scenario():
        client = protocol.Client("127.0.0.1", server.port)
        try:
            for fields in refusals:
                with pytest.raises(protocol.RemoteError) as info:
                    await client.call("control", 2.0, fields)
                assert info.value.code == "unauthorized", (fields, str(info.value))
            report = await client.call("control", 2.0, {"token": TOKEN})
            assert report.header["faults"] is None  # nothing got through
        finally:
            await client.close()

    run(scenario())
    log = server.log.read_text(errors="replace")
    assert log.count("refused control request") >= len(refusals)
    assert TOKEN not in log


def test_region_recommends_k_distinct_ids(cluster):
    async def scenario():
        client = protocol.Client("127.0.0.1", cluster["region"].port)
        ping = (await client.call("ping", 2.0)).header
        assert ping["role"] == "region"
        dense = np.zeros(ping["n_dense"], np.float32)
        for history, k in (([], 10), ([4, 8, 15, 16, 23, 42], 100)):
            reply = await client.call(
                "recommend", 5.0, {"k": k}, {"history": np.array(history, np.int64), "dense": dense}
            )
            ids = reply.tensors["ids"]
            assert ids.shape == (k,) and len(set(ids.tolist())) == k
            assert ((ids >= 0) & (ids < ping["n_items"])).all()
            assert not set(ids.tolist()) & set(history)
        with pytest.raises(protocol.RemoteError, match="bad_request"):
            await client.call("recommend", 2.0, {"k": 0}, {"history": np.zeros(0), "dense": dense})
        await client.close()

    run(scenario())


def test_sigterm_stops_a_shard_promptly(artifact_root, tmp_path):
    with running({"replica": shard_args(1, 2, "replica", artifact_root)}, tmp_path) as servers:
        server = servers["replica"]
        # A client holding an open connection must not keep the server alive.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            start = time.monotonic()
            server.proc.signal(signal.SIGTERM)
            code = server.proc.wait(10)
        assert code == 0, server.tail()
        assert time.monotonic() - start < 5
        assert "stopped" in server.log.read_text()


def test_missing_artifacts_exit_1_with_the_fix(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "system_under_test", *shard_args(0, 2, "primary", tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "python -m system_under_test train --preset tiny" in proc.stderr


def test_serve_keeps_warm_only_while_no_request_comes(caplog):
    """``serve`` runs ``keep_warm`` after each quiet spell of ``keep_warm_s``, and not while
    requests keep coming more often than that."""
    users, items = torch.randn(10, 3), torch.randn(10, 3)
    svc = ShardService(ShardTables.from_full(users, items, 0, 2), "primary", "v1")
    rounds: list[float] = []

    async def scenario():
        stop = asyncio.Event()
        ports: list[int] = []

        def ready(port: int) -> str:
            ports.append(port)
            return f"port={port}"

        server = asyncio.ensure_future(
            serve(svc.respond, "127.0.0.1", 0, stop, logging.getLogger("t"), ready,
                  lambda: rounds.append(time.monotonic()), 0.05)
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while len(rounds) < 3:  # idle: a round each 50 ms
                assert time.monotonic() < deadline, f"{len(rounds)} keep-warm rounds in 10 s"
                await asyncio.sleep(0.01)
            client = protocol.Client("127.0.0.1", ports[0])
            busy_from = time.monotonic()
            n_before = len(rounds)
            sent: list[float] = []
            while time.monotonic() - busy_from < 0.5:  # a request every ~5 ms: never idle
                sent.append(time.monotonic())
                await client.call("ping", 2.0)
                await asyncio.sleep(0.005)
            await client.close()
        finally:
            stop.set()
            await asyncio.wait_for(server, 5)
        # A round while requests come only after a quiet spell of at least 80% of 50 ms (a
        # stalled machine can leave one); the server saw each request after it was sent.
        early = []
        for r in rounds[n_before:]:
            before = [t for t in sent if t < r]
            if before and r - before[-1] < 0.04:
                early.append(round((r - before[-1]) * 1000, 1))
        return len(sent), early

    with caplog.at_level(logging.INFO, logger="t"):
        n_sent, early = asyncio.run(scenario())
    assert n_sent >= 20 and early == [], (n_sent, early)
    # what the rounds cost is logged when the server stops
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kept warm")]
    assert line.startswith(f"kept warm: {len(rounds)} rounds after 0.05 s without a request")


def test_keep_warm_is_put_off_while_the_process_wakes_late(caplog):
    """A round that is due waits while the keep-warm timer wakes the process late (here a
    callback that holds the event loop 20 ms at a time): the log counts the rounds put off."""
    users, items = torch.randn(10, 3), torch.randn(10, 3)
    svc = ShardService(ShardTables.from_full(users, items, 0, 2), "primary", "v1")
    rounds: list[float] = []

    async def scenario():
        stop = asyncio.Event()
        server = asyncio.ensure_future(
            serve(svc.respond, "127.0.0.1", 0, stop, logging.getLogger("t"), lambda p: "",
                  lambda: rounds.append(time.monotonic()), 0.02)
        )  # fmt: skip
        try:
            held_from = time.monotonic()
            while time.monotonic() - held_from < 1.0:  # the loop held 20 ms of every 21
                time.sleep(0.02)
                await asyncio.sleep(0.001)
        finally:
            stop.set()
            await asyncio.wait_for(server, 5)

    with caplog.at_level(logging.INFO, logger="t"):
        asyncio.run(scenario())
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kept warm")]
    put_off = int(line.rsplit("; ", 1)[1].split()[0])
    assert put_off >= 5 and put_off > len(rounds), line
