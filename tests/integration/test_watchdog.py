"""The watchdog against a harness that dies: a fake harness process applies a freeze (and, as
root, a partition), journals them, starts the watchdog as the runner does, and is SIGKILLed.
The watchdog must continue the frozen process, remove the iptables chain and stop the
manifest's processes (and PIDs added later) within a bounded time, and leave nothing behind.
A normal end ("done") must make it exit without touching anything; without a pipe it watches
the parent's PID and start time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from children import Children, children

from harness.inject import netfilter
from harness.inject.base import Component, FaultStack, InjectContext, make_injector
from harness.inject.journal import Journal, unhealed
from harness.inject.signals import read_stat
from harness.process import ManagedProcess, ProcessRef
from harness.watchdog import start_watchdog

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SLEEP = ["sleep", "60"]
BOUND_S = 8.0  # grace 1 s + SIGKILL wait + polling, with room for a slow VM

FAKE_HARNESS = """
import json, sys, time
from pathlib import Path
from harness.inject.base import Component, FaultStack, InjectContext, make_injector
from harness.inject.journal import Journal
from harness.watchdog import start_watchdog

cfg = json.loads(Path(sys.argv[1]).read_text())
comps = {c["name"]: Component(**{**c, "command": tuple(c["command"])}) for c in cfg["components"]}
ctx = InjectContext(components=comps, run_id=cfg["run_id"])
dog = start_watchdog(cfg["journal"], cfg["manifest"], log_path=cfg["log"], poll_ms=50, grace_s=1.0)
dog.add_pid(cfg["extra_pid"])
stack = FaultStack(Journal(cfg["journal"], cfg["run_id"]))
chains = []
for kind, target in cfg["faults"]:
    inj = make_injector(kind, target, {}, ctx)
    stack.apply(inj)
    chains += [inj.chain] if kind == "partition" else []
Path(cfg["ready"]).write_text(json.dumps({"watchdog": dog.proc.pid, "chains": chains}))
time.sleep(60)
"""


def state(pid: int) -> str | None:
    stat = read_stat(pid)
    return stat[0] if stat else None


def wait_for(check: Any, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            pytest.fail(f"{what} not within {timeout_s} s; watchdog log:\n{tail}")
        time.sleep(0.02)


def spawn(procs: Children, argv: list[str]) -> ManagedProcess:
    proc = procs.spawn(argv)
    wait_for(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0] == argv[0].encode(),
             5, f"{argv} exec'd")  # fmt: skip
    return proc


def comp(name: str, proc: ManagedProcess, port: int = 1) -> dict[str, Any]:
    return {"name": name, "role": "primary", "pid": proc.pid, "address": f"127.0.0.1:{port}",
            "command": SLEEP}  # fmt: skip


def write_manifest(path: Path, comps: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"gateway_url": "http://127.0.0.1:1", "components": comps}))


def test_the_watchdog_heals_and_tears_down_when_the_harness_is_sigkilled(tmp_path):
    partition = netfilter.unsupported_reason() is None
    before = netfilter.iptables("-S").stdout if partition else ""
    with children() as procs:
        victim = spawn(procs, SLEEP)  # frozen; not in the manifest, so it must be continued
        extra = spawn(procs, SLEEP)  # added later through the pipe
        cluster = [spawn(procs, SLEEP) for _ in range(2)]
        manifest = [comp("shard-0-primary", cluster[0], 7001), comp("gateway", cluster[1])]
        write_manifest(tmp_path / "manifest.json", manifest)
        faults = [["freeze", "victim"]] + ([["partition", "shard-0-primary"]] if partition else [])
        cfg: dict[str, Any] = {
            "components": manifest + [comp("victim", victim)],
            "run_id": "wd" + os.urandom(3).hex(),
            "journal": str(tmp_path / "faults.jsonl"),
            "manifest": str(tmp_path / "manifest.json"),
            "log": str(tmp_path / "watchdog.log"),
            "ready": str(tmp_path / "ready.json"),
            "extra_pid": extra.pid,
            "faults": faults,
        }
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        (tmp_path / "fake_harness.py").write_text(FAKE_HARNESS)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        harness = procs.spawn([sys.executable, str(tmp_path / "fake_harness.py"),
                               str(tmp_path / "cfg.json")], cwd=REPO, env=env)  # fmt: skip
        log = tmp_path / "watchdog.log"
        wait_for(lambda: (tmp_path / "ready.json").exists() or harness.exited(), 20,
                 "the fake harness ready", log)  # fmt: skip
        assert harness.alive(), "the fake harness died before it was ready"
        ready = json.loads((tmp_path / "ready.json").read_text())
        watchdog = ProcessRef.of_pid(ready["watchdog"])
        assert watchdog is not None and state(victim.pid) == "T"
        if partition:
            assert f"-N {ready['chains'][0]}" in netfilter.iptables("-S").stdout

        harness.signal(signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: not watchdog.alive(), BOUND_S, "the watchdog finishing", log)
        took = time.monotonic() - t0
        text = log.read_text()

        assert state(victim.pid) in ("S", "R"), text
        for proc in [*cluster, extra]:
            assert proc.wait(1) == -signal.SIGTERM, text
        assert victim.alive()  # not the manifest's: continued, not stopped
        if partition:
            assert netfilter.iptables("-S").stdout == before, text
        assert "healed freeze(victim)" in text, text
        last = text.splitlines()[-1]
        assert "done: healed 2 fault(s)" in last or "done: healed 1 fault(s)" in last, last
        assert "stopped 3 process(es)" in last and last.endswith("could not: nothing"), last
        assert "all clean" not in text
        assert unhealed(cfg["journal"]) != []  # the journal is the dead harness's; left as is
        assert took < BOUND_S


def test_done_makes_the_watchdog_exit_without_action(tmp_path):
    with children() as procs:
        victim, member = spawn(procs, SLEEP), spawn(procs, SLEEP)
        comps = {"victim": Component("victim", "primary", victim.pid, "127.0.0.1:1", tuple(SLEEP))}
        write_manifest(tmp_path / "manifest.json", [comp("gateway", member)])
        journal = Journal(tmp_path / "faults.jsonl")
        log = tmp_path / "watchdog.log"
        dog = start_watchdog(journal.path, tmp_path / "manifest.json", log_path=log, poll_ms=50)
        with FaultStack(journal) as stack:
            stack.apply(make_injector("freeze", "victim", {}, InjectContext(components=comps)))
            assert dog.done(timeout_s=5) == 0
            assert state(victim.pid) == "T" and member.alive()
        assert "ended normally" in log.read_text()
        assert unhealed(journal.path) == []
        dog.done()  # idempotent


def test_without_a_pipe_the_watchdog_watches_the_parents_pid(tmp_path):
    with children() as procs:
        parent, victim, extra = spawn(procs, SLEEP), spawn(procs, SLEEP), spawn(procs, SLEEP)
        comps = {"victim": Component("victim", "primary", victim.pid, "127.0.0.1:1", tuple(SLEEP))}
        journal = Journal(tmp_path / "faults.jsonl")
        stack = FaultStack(journal)
        stack.apply(make_injector("freeze", "victim", {}, InjectContext(components=comps)))
        log = tmp_path / "watchdog.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        dog = procs.spawn(
            [sys.executable, "-m", "harness.watchdog", "--parent", str(parent.pid),
             "--journal", str(journal.path), "--poll-ms", "20", "--log", str(log),
             "--manifest", str(tmp_path / "no-manifest.json"), "--extra-pids", str(extra.pid)],
            cwd=REPO, env=env,
        )  # fmt: skip
        wait_for(lambda: log.exists() and "watching parent" in log.read_text(), 10, "start", log)
        assert state(victim.pid) == "T"
        parent.signal(signal.SIGKILL)  # a zombie until reaped: the watchdog must see it as gone
        assert dog.wait(BOUND_S) == 0, log.read_text()
        assert state(victim.pid) in ("S", "R")
        assert "healed freeze(victim)" in log.read_text()
        assert extra.wait(1) == -signal.SIGTERM
        stack.heal_all()


ORPHANING_HARNESS = """
import json, sys, time
from pathlib import Path
from harness.model.record import RecordFile, RunRecord
from harness.process import ManagedProcess
from harness.watchdog import start_watchdog

cfg = json.loads(Path(sys.argv[1]).read_text())
RecordFile(cfg["record"], RunRecord(scenario={}, seed=1))
dog = start_watchdog(cfg["journal"], cfg["manifest"], log_path=cfg["log"], poll_ms=50,
                     grace_s=1.0, record=cfg["record"])
# A launcher that starts a server in a session of its own and exits before anyone hears of
# the server: only the environment it inherited says whose it is.
launcher = ManagedProcess([sys.executable, "-c", cfg["launcher"], cfg["pidfile"]],
                          Path(cfg["launcher_log"]), name="launcher", registry=dog).start()
assert launcher.wait(10) == 0
Path(cfg["ready"]).write_text(json.dumps({"watchdog": dog.proc.pid}))
time.sleep(60)
"""
LAUNCHER = (
    "import subprocess, sys; p = subprocess.Popen(['sleep', '60'], start_new_session=True); "
    "open(sys.argv[1], 'w').write(str(p.pid))"
)


def test_a_process_started_by_a_dead_child_is_found_by_its_tag_and_the_record_closed(tmp_path):
    cfg = {name: str(tmp_path / name) for name in ("record", "journal", "log", "pidfile",
                                                    "launcher_log", "ready")}  # fmt: skip
    cfg |= {"manifest": str(tmp_path / "no-manifest.json"), "launcher": LAUNCHER}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "fake_harness.py").write_text(ORPHANING_HARNESS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    orphan: ProcessRef | None = None
    with children() as procs:
        harness = procs.spawn([sys.executable, str(tmp_path / "fake_harness.py"),
                               str(tmp_path / "cfg.json")], cwd=REPO, env=env)  # fmt: skip
        log = tmp_path / "log"
        try:
            wait_for(lambda: Path(cfg["ready"]).exists() or harness.exited(), 20,
                     "the fake harness ready", log)  # fmt: skip
            assert harness.alive(), "the fake harness died before it was ready"
            orphan = ProcessRef.of_pid(int(Path(cfg["pidfile"]).read_text()))
            watchdog = ProcessRef.of_pid(json.loads(Path(cfg["ready"]).read_text())["watchdog"])
            assert orphan is not None and watchdog is not None and orphan.alive()
            assert orphan.pid not in [p.pid for p in psutil_children()]  # not ours any more

            harness.signal(signal.SIGKILL)
            wait_for(lambda: not watchdog.alive(), BOUND_S, "the watchdog finishing", log)
            text = log.read_text()
            assert not orphan.alive(), text
            last = text.splitlines()[-1]
            assert f"stopped 1 process(es): sleep 60 (PID {orphan.pid})" in last, last
            assert last.endswith("could not: nothing") and "all clean" not in text, last
            record = json.loads(Path(cfg["record"]).read_text())
            assert record["status"] == "killed" and record["ended_wall"], record
            assert (
                record["errors"][0].startswith("killed: ")
                and "watchdog: done" in record["errors"][1]
            )
        finally:
            if orphan is not None:
                orphan.signal(signal.SIGKILL)


def psutil_children() -> list[Any]:
    import psutil

    return psutil.Process().children(recursive=True)
