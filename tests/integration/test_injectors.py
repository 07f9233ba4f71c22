"""Every fault mechanism against real processes: ``sleep`` children, a busy Python loop, an echo
server of our own behind the real fault proxy, a redis-server and a tiny shard server.

Each test starts what it touches and always reaps it; every fault is healed in ``finally``; the
iptables tests assert that ``iptables -S`` after equals before, the cgroup tests that the
cgroup directory is gone. Root-only tests skip with the reason when the machine cannot run them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from children import Children, children

from harness.auth import TOKEN_VARIABLE, new_token, write_token_file
from harness.inject import appfaults, cgroups, netfilter
from harness.inject.base import (
    Component,
    FaultStack,
    FaultUnsupported,
    InjectContext,
    InjectError,
    execute_heal_action,
    make_injector,
)
from harness.inject.signals import ProcessRef, read_stat, started_at
from harness.model.errors import HarnessError
from harness.process import ManagedProcess, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SLEEP = ["sleep", "60"]
BUSY = [sys.executable, "-c", "while True: pass"]
TOKEN = new_token()  # what the proxy and the shard of this module require


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("token") / "control.token", TOKEN)


def state(pid: int) -> str | None:
    stat = read_stat(pid)
    return stat[0] if stat else None


def runs(pid: int, timeout_s: float = 2.0) -> bool:
    """The process exists and is not stopped (it may take a moment to leave state T)."""
    deadline = time.monotonic() + timeout_s
    while state(pid) not in ("S", "R"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def spawn(procs: Children, argv: list[str]) -> ManagedProcess:
    proc = procs.spawn(argv)
    deadline = time.monotonic() + 5
    while (ProcessRef.of_pid(proc.pid) is None or _cmdline(proc.pid) != argv) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.005)  # until exec is done: the manifest's command must be what runs
    return proc


def _cmdline(pid: int) -> list[str]:
    try:
        return [p.decode() for p in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if p]
    except OSError:
        return []


def component(name: str, proc: ManagedProcess, argv: list[str], port: int = 1) -> Component:
    return Component(name, "primary", proc.pid, f"127.0.0.1:{port}", tuple(argv))


def context(*comps: Component, **kw: Any) -> InjectContext:
    return InjectContext(
        components={c.name: c for c in comps}, run_id="test-" + os.urandom(3).hex(), **kw
    )


# -- signals ------------------------------------------------------------------------------------


def test_freeze_is_verified_by_proc_state_and_healed_by_sigcont():
    with children() as procs:
        proc = spawn(procs, SLEEP)
        inj = make_injector("freeze", "victim", {}, context(component("victim", proc, SLEEP)))
        try:
            fault = FaultStack().apply(inj)
            assert fault.verified, fault.verify_note
            assert state(proc.pid) == "T" and "state T" in fault.verify_note
            assert inj.heal_action()["action"] == "sigcont"
        finally:
            inj.heal()
        assert runs(proc.pid)
        inj.heal()  # a second heal is harmless
        assert runs(proc.pid) and proc.alive()


def test_kill_is_verified_and_healed_by_the_restart_hook():
    with children() as procs:
        proc = spawn(procs, SLEEP)

        def restart(name: str) -> int:
            return spawn(procs, SLEEP).pid

        ctx = context(component("victim", proc, SLEEP), restart=restart)
        inj = make_injector("kill", "victim", {}, ctx)
        fault = FaultStack().apply(inj)
        assert fault.verified and "gone" in fault.verify_note
        assert proc.wait(5) == -signal.SIGKILL
        inj.heal()
        inj.heal()
        new_pid = ctx.component("victim").pid
        assert new_pid is not None and new_pid != proc.pid and runs(new_pid) and len(procs) == 2


def test_terminate_sends_sigkill_after_the_grace_time():
    stubborn = [sys.executable, "-c",
                "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                " print('ready', flush=True); time.sleep(60)"]  # fmt: skip
    with children() as procs:
        proc = procs.spawn(stubborn, pipes=True)
        assert proc.popen is not None and proc.popen.stdout is not None
        assert proc.popen.stdout.readline() == b"ready\n"
        ctx = context(
            component("victim", proc, stubborn), restart=lambda n: spawn(procs, SLEEP).pid
        )
        inj = make_injector("terminate", "victim", {"grace_s": 0.2}, ctx)
        stack = FaultStack()
        with stack:
            fault = stack.apply(inj)
            assert fault.verified, fault.verify_note
            assert proc.wait(5) == -signal.SIGKILL
        assert stack.entries[0].healed


def test_restart_kills_then_brings_the_component_back_after_the_delay():
    with children() as procs:
        proc = spawn(procs, SLEEP)
        ctx = context(component("victim", proc, SLEEP), restart=lambda n: spawn(procs, SLEEP).pid)
        inj = make_injector("restart", "victim", {"delay_s": 0.2}, ctx)
        try:
            FaultStack().apply(inj)
            assert proc.wait(5) == -signal.SIGKILL
            deadline = time.monotonic() + 5
            while ctx.component("victim").pid == proc.pid and time.monotonic() < deadline:
                time.sleep(0.02)
            ok, note = inj.verify()
            assert ok and "restarted as PID" in note and "alive" in note, note
        finally:
            inj.heal()
        assert len(procs) == 2  # the heal did not restart it a second time


def test_a_pid_that_runs_another_command_is_never_signalled():
    with children() as procs:
        proc = spawn(procs, SLEEP)
        comp = Component("victim", "primary", proc.pid, "127.0.0.1:1", ("sleep", "61"))
        inj = make_injector("freeze", "victim", {}, context(comp))
        with pytest.raises(InjectError, match="is not victim any more.*not signalling it"):
            FaultStack().apply(inj)
        assert runs(proc.pid)


def test_a_process_that_became_another_program_is_known_by_its_start_time():
    """``serve-lb`` replaces itself with HAProxy (``exec``): its command line is no longer the
    manifest's, and the start time the manifest recorded says it is still the one started."""
    launcher = [sys.executable, "-c", "import os; os.execvp('sleep', ['sleep', '60'])"]
    with children() as procs:
        proc = spawn(procs, SLEEP)  # what the launcher command became
        start = started_at(proc.pid)
        assert start is not None
        same = Component("lb", "lb", proc.pid, "127.0.0.1:1", tuple(launcher), start_time=start)
        inj = make_injector("freeze", "lb", {}, context(same))
        try:
            assert FaultStack().apply(inj).verified
            assert state(proc.pid) == "T"
        finally:
            inj.heal()
        assert runs(proc.pid)
        other = Component(
            "lb", "lb", proc.pid, "127.0.0.1:1", tuple(launcher), start_time=start - 1
        )
        inj = make_injector("freeze", "lb", {}, context(other))
        with pytest.raises(InjectError, match="is not lb any more.*not signalling it"):
            FaultStack().apply(inj)
        assert runs(proc.pid)


# -- iptables -------------------------------------------------------------------------------------


def iptables_rules() -> str:
    return netfilter.iptables("-S").stdout


@pytest.fixture
def netfilter_ok() -> None:
    reason = netfilter.unsupported_reason()
    if reason:
        pytest.skip(reason)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(10)
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def round_trip(port: int, timeout_s: float = 0.5, payload: bytes = b"ping") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(payload)
            return sock.recv(64) == payload
    except OSError:
        return False


@pytest.mark.root
@pytest.mark.parametrize(
    ("kind", "params"), [("partition", {}), ("packet_loss", {"probability": 1.0})]
)
def test_iptables_faults_block_the_port_and_heal_removes_every_rule(netfilter_ok, kind, params):
    before = iptables_rules()
    with echo_server() as port, children() as procs:
        proc = spawn(procs, SLEEP)
        ctx = context(component("server", proc, SLEEP, port))
        inj = make_injector(kind, "server", params, ctx)
        try:
            assert round_trip(port)
            fault = FaultStack().apply(inj)
            assert f"-N {inj.chain}" in iptables_rules()  # type: ignore[attr-defined]
            assert not round_trip(port, timeout_s=0.3)
            ok, note = inj.verify()
            assert ok and "packet(s) dropped" in note, note
            assert fault.event is not None
        finally:
            inj.heal()
        assert iptables_rules() == before
        inj.heal()  # idempotent: the chain is gone already
        assert iptables_rules() == before
        assert round_trip(port)


@pytest.mark.root
def test_a_half_applied_partition_is_healed_at_once(netfilter_ok, monkeypatch):
    before = iptables_rules()
    real = netfilter.iptables
    calls = []

    def flaky(*args: str, check: bool = True) -> Any:
        calls.append(args)
        if args[0] == "-I" and args[1] == "INPUT":  # the chain and one jump exist by now
            raise netfilter.IptablesError("simulated failure")
        return real(*args, check=check)

    monkeypatch.setattr(netfilter, "iptables", flaky)
    with children() as procs:
        proc = spawn(procs, SLEEP)
        inj = make_injector("partition", "server", {}, context(component("server", proc, SLEEP, 9)))
        with pytest.raises(InjectError, match="simulated failure"):
            FaultStack().apply(inj)
    assert ("-I", "OUTPUT", "1", "-o", "lo", "-j", inj.chain) in calls  # type: ignore[attr-defined]
    assert real("-S").stdout == before


# -- cgroups ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.root
def test_cpu_throttle_caps_the_process_and_heal_removes_the_cgroup():
    reason = cgroups.unsupported_reason("cpu")
    if reason:
        pytest.skip(reason)
    with children() as procs:
        proc = spawn(procs, BUSY)
        origin = cgroups.cgroup_of(proc.pid, "cpu")
        inj = make_injector(
            "cpu_throttle", "busy", {"cpu_fraction": 0.1}, context(component("busy", proc, BUSY))
        )
        try:
            fault = FaultStack().apply(inj)
            assert fault.verified and "cpu.cfs_quota_us 10000" in fault.verify_note
            used0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(0.6)
            share = (cpu_seconds(proc.pid) - used0) / (time.monotonic() - t0)
            assert share < 0.3, f"throttled to 10% of a core, it used {share:.0%}"
            path = Path(inj.heal_action()["path"])
            assert path.is_dir() and path.name.startswith("recchaos-")
        finally:
            inj.heal()
        assert not path.exists()
        assert cgroups.cgroup_of(proc.pid, "cpu") == origin
        inj.heal()


@pytest.mark.root
def test_cgroup_freeze_freezes_and_thaws():
    reason = cgroups.unsupported_reason("freezer")
    if reason:
        pytest.skip(reason)
    with children() as procs:
        proc = spawn(procs, BUSY)
        inj = make_injector("cpu_freeze", "busy", {}, context(component("busy", proc, BUSY)))
        try:
            fault = FaultStack().apply(inj)
            assert fault.verified and "FROZEN" in fault.verify_note
            used = cpu_seconds(proc.pid)
            time.sleep(0.2)
            assert cpu_seconds(proc.pid) == used
            path = Path(inj.heal_action()["path"])
        finally:
            inj.heal()
        assert not path.exists()
        used = cpu_seconds(proc.pid)
        time.sleep(0.2)
        assert cpu_seconds(proc.pid) > used


def test_cgroup_faults_are_unsupported_without_root(monkeypatch):
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    with children() as procs:
        proc = spawn(procs, SLEEP)
        inj = make_injector("cpu_freeze", "x", {}, context(component("x", proc, SLEEP)))
        with pytest.raises(FaultUnsupported, match="need root"):
            FaultStack().apply(inj)
        assert runs(proc.pid)


# -- the fault proxy -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int]]:
    from harness.proxy.client import start_proxy

    with echo_server() as port:
        routes = {"echo": ("127.0.0.1:0", f"127.0.0.1:{port}")}
        log = tmp_path_factory.mktemp("proxy") / "proxy.log"
        with start_proxy(routes, log, timeout_s=20, token=TOKEN) as proxy:
            yield proxy, int(proxy.listen["echo"].rpartition(":")[2])


def timed_round_trip(port: int, timeout_s: float = 2.0) -> float | None:
    t0 = time.monotonic()
    return time.monotonic() - t0 if round_trip(port, timeout_s) else None


@pytest.mark.parametrize(
    ("kind", "params", "counter"),
    [
        ("latency", {"delay_ms": 80, "direction": "both"}, "delayed_chunks"),
        ("blackhole", {"mode": "drop"}, "dropped_bytes"),
        ("reset", {}, "resets"),
    ],
)
def test_proxy_faults_are_verified_by_route_counters_and_healed(
    proxied, token_file, kind, params, counter
):
    proxy, port = proxied
    echo = Component("echo", "primary", None, "127.0.0.1:1")
    ctx = context(echo, proxy_url=proxy.control_url, token_file=token_file)
    inj = make_injector(kind, "echo", params, ctx)
    assert timed_round_trip(port) is not None
    try:
        fault = FaultStack().apply(inj)
        assert not fault.verified or kind == "reset"  # no traffic yet (a reset may hit idle ones)
        rtt = timed_round_trip(port, timeout_s=0.5)
        if kind == "latency":
            assert rtt is not None and rtt >= 0.08
        else:
            assert rtt is None
        ok, note = inj.verify()
        assert ok and counter in note, note
        assert inj.heal_action()["fault_id"] == inj.fault_id  # type: ignore[attr-defined]
    finally:
        inj.heal()
    inj.heal()
    assert proxy.client.route("echo")["faults"] == []
    rtt = timed_round_trip(port)
    assert rtt is not None and rtt < 0.08


def test_region_down_as_a_blackhole_goes_through_the_proxy(proxied, token_file):
    proxy, port = proxied
    echo = Component("echo", "region", None, "127.0.0.1:1")
    ctx = context(echo, proxy_url=proxy.control_url, token_file=token_file)
    inj = make_injector("region_down", "echo", {"mode": "blackhole"}, ctx)
    try:
        FaultStack().apply(inj)
        assert not round_trip(port, timeout_s=0.3)
        ok, note = inj.verify()
        assert ok and note.startswith("blackhole: ") and "dropped_bytes" in note
    finally:
        inj.heal()
    assert round_trip(port)


# -- dependencies and fault points -------------------------------------------------------------


def test_redis_down_stop_freezes_the_retitled_redis_server(tmp_path):
    from harness.sut.redis import RedisServer, redis_available

    if not redis_available():
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path / "redis") as redis:
        assert redis.pid is not None
        comp = Component(
            "redis", "redis", redis.pid, f"127.0.0.1:{redis.port}", tuple(redis.command)
        )
        inj = make_injector("redis_down", "redis", {"mode": "stop"}, context(comp))
        try:
            fault = FaultStack().apply(inj)
            assert fault.verified and "state T" in fault.verify_note
            assert not redis.ping()
        finally:
            inj.heal()
        assert redis.ping()


@pytest.fixture(scope="module")
def shard(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Component]:
    port = free_port()
    argv = [sys.executable, "-m", "system_under_test", "serve-shard", "--shard", "0", "--shards",
            "2", "--role", "primary", "--host", "127.0.0.1", "--port", str(port), "--preset",
            "tiny", "--artifacts", str(tiny_artifacts.parent)]  # fmt: skip
    log = tmp_path_factory.mktemp("shard") / "shard.log"
    env = {**os.environ, TOKEN_VARIABLE: TOKEN}
    with ManagedProcess(argv, log, name="shard", cwd=REPO, env=env) as proc:
        proc.wait_ready(lambda: " ready " in log.read_text(errors="replace"), 60, "its ready line")
        yield Component("shard-0-primary", "primary", proc.pid, f"127.0.0.1:{port}", tuple(argv))


def lookup_code(address: str) -> str:
    try:
        appfaults.call(address, "lookup", {"table": "item"})
    except appfaults.ControlError as exc:
        return str(exc).split(" answered ")[1].split(":")[0]
    return "ok"


def report(address: str) -> dict:
    return appfaults.control(address, {}, token=TOKEN)


def test_app_faults_switch_the_shards_fault_points_and_heal_clears_them(shard, token_file):
    ctx = context(shard, seed=3, token_file=token_file)
    error = make_injector("app_error", shard.name, {"rate": 1.0}, ctx)
    delay = make_injector("app_delay", shard.name, {"delay_ms": 30, "rate": 1.0}, ctx)
    stack = FaultStack()
    with stack:
        stack.apply(error)
        stack.apply(delay)  # merged with the error fault, not replacing it
        faults = report(shard.address)["faults"]
        assert faults["error_rate"] == 1.0 and faults["delay_ms"] == 30.0 and faults["seed"] == 3
        t0 = time.monotonic()
        assert lookup_code(shard.address) == "injected"
        assert time.monotonic() - t0 >= 0.03
        ok, note = error.verify()
        assert ok and "error fired on 1 of 1" in note, note
        assert delay.verify()[0]
        stack.heal(delay)
        faults = report(shard.address)["faults"]
        assert faults["error_rate"] == 1.0 and faults["delay_ms"] == 0.0
    assert report(shard.address)["faults"] is None
    assert lookup_code(shard.address) == "bad_request"  # computed again (no ids given)
    assert all(e.healed for e in stack.entries)


def test_heal_actions_read_the_token_from_the_file_they_name(shard, proxied, token_file):
    """What the watchdog runs after the harness died: the action names the token file, never
    the token, and healing works from it alone."""
    proxy, _ = proxied
    ctx = context(
        shard, proxy_url=proxy.control_url, token_file=token_file, routes={shard.name: "echo"}
    )
    app = make_injector("app_error", shard.name, {"rate": 1.0}, ctx)
    net = make_injector("latency", shard.name, {"delay_ms": 50, "direction": "both"}, ctx)
    app.apply()
    net.apply()
    try:
        actions = [app.heal_action(), net.heal_action()]
        assert all(a["token_file"] == str(token_file) for a in actions)
        assert TOKEN not in repr(actions)
        assert report(shard.address)["faults"] is not None
        assert proxy.client.route("echo")["faults"] != []
        for action in actions:
            execute_heal_action(action)
        assert report(shard.address)["faults"] is None
        assert proxy.client.route("echo")["faults"] == []
    finally:
        app.heal()
        net.heal()


def test_injectors_without_the_token_are_refused(shard, proxied):
    """A context with no token file (or a stale one) cannot set a fault on either surface."""
    proxy, _ = proxied
    stale = write_token_file(Path(proxy.log_path).parent / "stale.token", new_token())
    routes = {shard.name: "echo"}
    for ctx in (
        context(shard, proxy_url=proxy.control_url, routes=routes),
        context(shard, proxy_url=proxy.control_url, routes=routes, token_file=stale),
    ):
        with pytest.raises(HarnessError, match="answered unauthorized"):
            FaultStack().apply(make_injector("app_error", shard.name, {"rate": 1.0}, ctx))
        with pytest.raises(HarnessError, match="answered 401"):
            FaultStack().apply(
                make_injector("latency", shard.name, {"delay_ms": 50, "direction": "both"}, ctx)
            )
    assert report(shard.address)["faults"] is None
    assert proxy.client.route("echo")["faults"] == []
