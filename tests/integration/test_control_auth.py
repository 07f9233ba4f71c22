"""Every control surface of a run refuses whoever lacks its token: the shard servers' ``control``
op, the fault proxy's control API and Redis; an unprivileged local user (``nobody``, through
``setpriv``) can neither read the token nor stop Redis nor set a fault; and the watchdog still
heals a SIGKILLed harness's faults with the token it reads from the run's token file.

Each test starts what it touches (a tiny shard server, a proxy, a redis-server) with a token of
its own and always stops it; the directories are world-traversable on purpose, so that only the
files' own modes keep ``nobody`` out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from children import children

from harness.auth import TOKEN_VARIABLE, new_token, write_token_file
from harness.inject import appfaults
from harness.process import ManagedProcess, ProcessRef, free_port
from harness.proxy.client import ProxyClient, ProxyControlError, ProxyProcess, start_proxy
from harness.sut.redis import RedisServer, redis_available, resp_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
TOKEN = new_token()


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A directory ``nobody`` may enter and list (0755): only a file's mode protects it."""
    path = Path(tempfile.mkdtemp(prefix="recchaos-auth-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def token_file(shared_dir: Path) -> Path:
    return write_token_file(shared_dir / "control.token", TOKEN)


@pytest.fixture(scope="module")
def shard(tiny_artifacts: Path, shared_dir: Path) -> Iterator[tuple[str, int]]:
    """A tiny shard server started with the token in its environment: (address, pid)."""
    port = free_port()
    argv = [sys.executable, "-m", "system_under_test", "serve-shard", "--shard", "0", "--shards",
            "2", "--role", "primary", "--host", "127.0.0.1", "--port", str(port), "--preset",
            "tiny", "--artifacts", str(tiny_artifacts.parent)]  # fmt: skip
    log = shared_dir / "shard.log"
    env = {**os.environ, TOKEN_VARIABLE: TOKEN}
    with ManagedProcess(argv, log, name="shard", cwd=REPO, env=env) as proc:
        proc.wait_ready(lambda: " ready " in log.read_text(errors="replace"), 60, "its ready line")
        yield f"127.0.0.1:{port}", proc.pid


@pytest.fixture(scope="module")
def proxy(shared_dir: Path) -> Iterator[ProxyProcess]:
    routes = {"r": ("127.0.0.1:0", f"127.0.0.1:{free_port()}")}
    with start_proxy(routes, shared_dir / "proxy.log", timeout_s=20, token=TOKEN) as handle:
        yield handle


@pytest.fixture(scope="module")
def redis(shared_dir: Path) -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it as root)")
    workdir = shared_dir / "redis"
    workdir.mkdir(mode=0o755)
    with RedisServer(workdir, password=TOKEN) as server:
        yield server


def redis_exchange(port: int, *commands: tuple[str, ...], timeout_s: float = 2.0) -> list[str]:
    """Send ``commands`` on one connection; the first line of each reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(b"".join(resp_command(*c) for c in commands))
        data = b""
        while data.count(b"\r\n") < len(commands):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return [line.decode() for line in data.split(b"\r\n")[: len(commands)]]


# -- each surface refuses a missing or wrong token ------------------------------------------------


def test_redis_refuses_a_missing_or_wrong_password(redis: RedisServer):
    assert redis_exchange(redis.port, ("PING",))[0].startswith("-NOAUTH")
    assert redis_exchange(redis.port, ("SHUTDOWN", "NOSAVE"))[0].startswith("-NOAUTH")
    assert redis_exchange(redis.port, ("FLUSHALL",))[0].startswith("-NOAUTH")
    wrong = redis_exchange(redis.port, ("AUTH", TOKEN[:-1]), ("CONFIG", "GET", "requirepass"))
    assert wrong[0].startswith("-WRONGPASS") and wrong[1].startswith("-NOAUTH")
    assert redis_exchange(redis.port, ("AUTH", TOKEN), ("PING",)) == ["+OK", "+PONG"]
    assert redis.ping()
    assert redis.pid is not None
    cmdline = Path(f"/proc/{redis.pid}/cmdline").read_bytes().decode()
    assert TOKEN not in cmdline and str(redis.config) in cmdline
    assert redis.config.stat().st_mode & 0o777 == 0o600


def test_the_gateways_redis_client_uses_the_password(redis: RedisServer):
    from system_under_test.gateway.cache import RedisL2

    with_password = RedisL2(redis.url, password=TOKEN)
    without = RedisL2(redis.url, skip_s=0.0)
    try:
        assert with_password.set_many({"auth:k": b"v"}) and with_password.mget(["auth:k"]) == [b"v"]
        assert without.mget(["auth:k"]) is None and without.errors == 1
        assert "Authentication" in without.last_error or "NOAUTH" in without.last_error
    finally:
        with_password.close()
        without.close()


def test_the_proxy_refuses_a_client_without_the_token(proxy: ProxyProcess):
    for token in (None, new_token(), TOKEN[:-1]):
        with pytest.raises(ProxyControlError, match="401"):
            ProxyClient(proxy.control_url, token=token).add_fault("r", "latency", delay_ms=5)
    assert proxy.client.route("r")["faults"] == []


# -- an unprivileged local user ---------------------------------------------------------------------

NOBODY_SCRIPT = """
import json, socket, sys, urllib.error, urllib.request
from harness.inject import appfaults
from harness.sut.redis import resp_command

cfg = json.loads(sys.argv[1])
out = {}

def attempt(name, fn):
    try:
        out[name] = ["ok", str(fn())[:200]]
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc)[:300]]

for name, path in cfg["files"].items():
    attempt("read " + name, lambda path=path: open(path).read())
attempt("control without token", lambda: appfaults.control(cfg["shard"], {"faults": {"error_rate": 1.0}}))
attempt("control with a guess", lambda: appfaults.control(cfg["shard"], {"faults": {"error_rate": 1.0}}, token="0" * 64))
def proxy_fault():
    req = urllib.request.Request(cfg["proxy"] + "/routes/r/faults", data=b'{"kind": "reset"}',
                                 method="POST", headers={"Authorization": "Bearer " + "0" * 64})
    return urllib.request.urlopen(req, timeout=2).status
attempt("proxy fault", proxy_fault)
def redis(*words):
    with socket.create_connection(("127.0.0.1", cfg["redis_port"]), timeout=2) as sock:
        sock.sendall(resp_command(*words))
        return sock.recv(200).decode()
attempt("redis shutdown", lambda: redis("SHUTDOWN", "NOSAVE"))
attempt("redis config", lambda: redis("CONFIG", "SET", "requirepass", "mine"))
print(json.dumps(out))
"""


def run_as_nobody(script: str, arg: Any, timeout_s: float = 30.0) -> dict[str, list[str]]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running a client as nobody needs root and setpriv")
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            sys.executable, "-c", script, json.dumps(arg)]  # fmt: skip
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
           "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd="/", env=env)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_an_unprivileged_user_cannot_stop_redis_or_set_a_fault(
    shard: tuple[str, int], proxy: ProxyProcess, redis: RedisServer, token_file: Path
):
    address, shard_pid = shard
    assert redis.pid is not None
    files = {
        "token file": str(token_file),
        "redis config": str(redis.config),
        "shard environ": f"/proc/{shard_pid}/environ",
        "proxy environ": f"/proc/{proxy.pid}/environ",
    }
    got = run_as_nobody(
        NOBODY_SCRIPT,
        {"files": files, "shard": address, "proxy": proxy.control_url, "redis_port": redis.port},
    )
    for name in files:
        assert got[f"read {name}"][0] == "PermissionError", (name, got[f"read {name}"])
    for name in ("control without token", "control with a guess"):
        assert got[name][0] == "ControlError" and "answered unauthorized" in got[name][1], got
    assert got["proxy fault"][0] == "HTTPError" and "401" in got["proxy fault"][1], got
    for name in ("redis shutdown", "redis config"):  # answered, and refused
        assert got[name][0] == "ok" and got[name][1].startswith("-NOAUTH"), got
    # and nothing changed: Redis answers with the same password, no fault is set anywhere
    assert redis.ping() and redis.proc is not None and redis.proc.alive()
    assert appfaults.control(address, {}, token=TOKEN)["faults"] is None
    assert proxy.client.route("r")["faults"] == []


# -- the watchdog heals with the token from the run's file ------------------------------------

FAKE_HARNESS = """
import json, sys, time
from pathlib import Path
from harness.inject.base import Component, FaultStack, InjectContext, make_injector
from harness.inject.journal import Journal
from harness.watchdog import start_watchdog

cfg = json.loads(Path(sys.argv[1]).read_text())
shard = Component("shard-0-primary", "primary", None, cfg["shard"])
ctx = InjectContext(components={shard.name: shard}, run_id=cfg["run_id"],
                    proxy_url=cfg["proxy"], routes={shard.name: "r"},
                    token_file=Path(cfg["token_file"]))
dog = start_watchdog(cfg["journal"], cfg["manifest"], log_path=cfg["log"], poll_ms=50, grace_s=1.0)
stack = FaultStack(Journal(cfg["journal"], cfg["run_id"]))
stack.apply(make_injector("app_error", shard.name, {"rate": 1.0}, ctx))
stack.apply(make_injector("latency", shard.name, {"delay_ms": 50, "direction": "both"}, ctx))
Path(cfg["ready"]).write_text(json.dumps({"watchdog": dog.proc.pid}))
time.sleep(60)
"""


def test_the_watchdog_heals_with_the_token_file_after_sigkill(
    shard: tuple[str, int], proxy: ProxyProcess, token_file: Path, tmp_path: Path
):
    address, _ = shard
    (tmp_path / "manifest.json").write_text(json.dumps({"components": []}))
    cfg = {
        "shard": address,
        "proxy": proxy.control_url,
        "token_file": str(token_file),
        "run_id": "auth" + os.urandom(3).hex(),
        "journal": str(tmp_path / "faults.jsonl"),
        "manifest": str(tmp_path / "manifest.json"),
        "log": str(tmp_path / "watchdog.log"),
        "ready": str(tmp_path / "ready.json"),
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "fake_harness.py").write_text(FAKE_HARNESS)
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}  # only the file has it
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "watchdog.log"
    with children() as procs:
        harness = procs.spawn(
            [sys.executable, str(tmp_path / "fake_harness.py"), str(tmp_path / "cfg.json")],
            tmp_path / "harness.log", cwd=REPO, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready.json").exists():
            assert harness.alive(), (tmp_path / "harness.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the fake harness was not ready within 30 s"
            time.sleep(0.02)
        watchdog = ProcessRef.of_pid(json.loads((tmp_path / "ready.json").read_text())["watchdog"])
        assert watchdog is not None
        assert appfaults.control(address, {}, token=TOKEN)["faults"]["error_rate"] == 1.0
        assert len(proxy.client.route("r")["faults"]) == 1
        journal = (tmp_path / "faults.jsonl").read_text()
        assert str(token_file) in journal and TOKEN not in journal

        harness.signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while watchdog.alive():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
    text = log.read_text()
    assert appfaults.control(address, {}, token=TOKEN)["faults"] is None, text
    assert proxy.client.route("r")["faults"] == [], text
    assert "healed app_error(shard-0-primary)" in text and "healed latency(" in text, text
    assert TOKEN not in text
