"""Bounded waits for something the harness started: poll until ready, show the log tail if not.

Also the two socket checks every launcher needs: a free loopback port and "does it listen".
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from harness.model.errors import HarnessError


class StartError(HarnessError):
    """Something the harness started did not come up; the message carries its last log lines."""


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: all held open while they are picked (one at a time, the
    kernel may hand the same port out again once it is closed)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of ``path``, indented; says so when there is no log."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"    | (no log at {path}: {exc})"
    return "\n".join(f"    | {line}" for line in text[-lines:]) or "    | (empty log)"


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    interval_s: float = 0.02,
    log: Path | None = None,
) -> None:
    """Poll ``check`` until it is true; raise StartError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            tail = f"; last log lines ({log}):\n{log_tail(log)}" if log else ""
            raise StartError(f"{what} not within {timeout_s:.1f} s{tail}")
        time.sleep(interval_s)


def listens(pid: int, host: str, port: int) -> bool:
    """Whether process ``pid`` itself has a listening TCP socket on ``host:port``.

    A restart's readiness must not be "the port accepts": a killed multi-threaded process shows
    as a zombie (its main thread gone) while its other threads still exit and its listening
    socket still queues connections. A restart that took that for the new process returned
    before the new one listened, and the next request was reset when the old socket closed.
    """
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    wanted = {host, "0.0.0.0", "::"}
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.laddr.ip in wanted
        for c in conns
    )


def tcp_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts connections on ``host:port``. A connection to itself (the
    kernel gave it ``port`` as its own while nothing listened there) is not one, and closing it
    at once frees the port for the server about to bind it."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            return sock.getsockname() != sock.getpeername()
    except OSError:
        return False
