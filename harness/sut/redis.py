"""A redis-server the harness starts for a run (or a test): no persistence, always reaped.

It binds to ``127.0.0.1`` on a free port unless given an address (``--redis-address`` /
``RECCHAOS_REDIS_ADDRESS``, see :func:`parse_address`). It keeps its command line as started
(``--set-proc-title no``): the watchdog and the signal faults recognise it by that command line
and find it by the environment it was started with, which a retitling server overwrites.

It requires a password (the run's control token, or a new one): every command but ``AUTH`` is
refused until a client authenticates, so another local user cannot read the cache, flush it or
``SHUTDOWN`` the server. The password is in a config file only its owner can read (0600, in the
work directory), never on the command line, which every local user can read.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from harness.auth import REDIS_PASSWORD_VARIABLE, new_token, write_token_file
from harness.process import ManagedProcess, ProcessRef, Registry, StartError, free_port


def resp_command(*words: str) -> bytes:
    """One command in the Redis protocol (RESP), as bytes to send."""
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; PORT 0 picks a free one) as (host, port);
    ValueError naming the text and what is allowed otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"{text!r} is not HOST:PORT with PORT 0-65535 (0: a free port), e.g. 127.0.0.1:6390"
        )
    return host, int(port)


class RedisServer:
    """A redis-server child on ``host:port`` (default: loopback, a free port) that requires
    ``password`` (default: a new one). ``url`` has no password in it: clients pass
    ``password`` (the gateway gets it as ``RECCHAOS_REDIS_PASSWORD``). ``stop()`` is idempotent;
    ``start()`` again after it starts a fresh one on the same port with the same password."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        registry: Registry | None = None,
        password: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.registry = registry
        self.password = password or new_token()
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"redis://{url_host}:{self.port}/0"
        self.log = workdir / f"redis-{self.port}.log"
        self.config = workdir / f"redis-{self.port}.conf"
        self.proc: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def ref(self) -> ProcessRef | None:
        return self.proc.ref if self.proc is not None else None

    @property
    def command(self) -> list[str]:
        return [
            "redis-server",
            str(self.config),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--set-proc-title",
            "no",
            "--dir",
            str(self.workdir),
        ]

    def ping(self) -> bool:
        """AUTH with the password, then PING: True when both are answered OK."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                sock.sendall(resp_command("AUTH", self.password) + resp_command("PING"))
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                return reply == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False

    def write_config(self) -> Path:
        """The 0600 config file that holds the password (``requirepass``)."""
        if any(c in self.password for c in '\r\n" '):
            raise ValueError("a Redis password must not contain spaces, quotes or line breaks")
        return write_token_file(self.config, f"requirepass {self.password}")

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        if not redis_available():
            raise StartError("redis-server is not installed (scripts/setup.sh installs it as root)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.proc = ManagedProcess(self.command, self.log, name="redis", registry=self.registry)
        self.proc.start().wait_ready(
            self.ping, timeout_s, f"redis-server on {self.host}:{self.port} answering PING"
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def client_env(self) -> dict[str, str]:
        """What a gateway needs in its environment to use this Redis."""
        return {REDIS_PASSWORD_VARIABLE: self.password}

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
