"""The unit tier's guard (tests/unit/conftest.py) really refuses processes and network sockets,
with a message that says what the test tried and where it belongs; what stays allowed works."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys

import pytest

PURE = "tests/unit is pure: move this test to tests/integration"


def test_a_child_process_is_refused_naming_the_command():
    with pytest.raises(RuntimeError, match=PURE) as info:
        subprocess.run([sys.executable, "-c", "pass"], timeout=5)
    assert "subprocess.Popen([" in str(info.value) and type(info.value).__name__ == "ImpureUnitTest"
    with pytest.raises(RuntimeError, match="os.fork"):
        os.fork()
    with pytest.raises(RuntimeError, match="os.system"):
        os.system("true")


def test_multiprocessing_is_refused_whatever_its_start_method():
    for method in ("fork", "spawn"):
        proc = multiprocessing.get_context(method).Process(target=print)
        with pytest.raises(RuntimeError, match=PURE):
            proc.start()


def test_a_network_socket_is_refused_loopback_included():
    with (
        socket.socket() as s,
        pytest.raises(RuntimeError, match=r"socket.bind\(\('127.0.0.1', 0\)\)"),
    ):
        s.bind(("127.0.0.1", 0))
    with pytest.raises(RuntimeError, match="socket.connect"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s, pytest.raises(RuntimeError):
        s.sendto(b"x", ("::1", 9))


def test_unix_sockets_and_event_loops_still_work(tmp_path):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"ping")
        assert b.recv(4) == b"ping"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(answer()) == 42
