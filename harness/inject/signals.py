"""Process faults by signal: ``kill`` (SIGKILL), ``terminate`` (SIGTERM, SIGKILL after
``grace_s``), ``freeze`` (SIGSTOP, healed by SIGCONT) and ``restart`` (SIGKILL, then the
context's restart hook after ``delay_s``).

A process is touched only when it is the one the manifest names: its ``/proc/PID/cmdline`` must
be the manifest's command (or, for a server that retitles itself such as redis-server, start with
the command's program and run that executable), or, for a process that replaced itself with
another program (``serve-lb`` becomes HAProxy by ``exec``), it must have started when the
manifest's ``start_time`` says; from then on it is identified by PID *and* start time
(``/proc/PID/stat`` field 22), so a reused PID is never signalled.

Evidence: ``freeze`` shows state ``T`` in ``/proc/PID/stat``; ``kill``/``terminate``/``restart``
show the old process gone (or a zombie) and, after a restart, the new PID alive.
A killed or terminated component is brought back by its heal (the restart hook); its heal
action for the watchdog is nothing: teardown stops what is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.inject.base import (
    NO_ACTION,
    BaseInjector,
    Component,
    HealError,
    InjectContext,
    InjectError,
)

POLL_S = 0.01
SAME_START_S = 0.005  # start times are kernel ticks (10 ms): equal within this is the same one


def read_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, or None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def started_at(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (boot time plus its start in clock
    ticks, as psutil's ``create_time`` and so the launcher's manifest compute it)."""
    stat = read_stat(pid)
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return None if stat is None else boot + stat[1] / os.sysconf("SC_CLK_TCK")


def read_cmdline(pid: int) -> list[str] | None:
    """The arguments, empty ones included (``--save ""``); the NUL padding a retitled server
    leaves after its title is not an argument."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    args = raw.rstrip(b"\0")
    return [part.decode(errors="replace") for part in args.split(b"\0")] if args else []


def _started_as_recorded(comp: Component) -> bool:
    """``comp``'s PID started when the manifest says (the same process, whatever it runs now)."""
    if comp.pid is None or comp.start_time is None:
        return False
    start = started_at(comp.pid)
    return start is not None and abs(start - comp.start_time) <= SAME_START_S


def runs_command(pid: int, command: Sequence[str]) -> bool:
    """True when ``pid`` is alive (not a zombie) and runs ``command``."""
    stat = read_stat(pid)
    cmdline = read_cmdline(pid)
    if stat is None or stat[0] in "ZX" or not cmdline or not command:
        return False
    if cmdline == list(command):
        return True
    # A retitled server (redis-server shows "redis-server 127.0.0.1:PORT"): same program file.
    program = os.path.basename(command[0])
    if len(cmdline) != 1 or os.path.basename(cmdline[0].split()[0]) != program:
        return False
    try:
        exe = os.path.realpath(f"/proc/{pid}/exe")
    except OSError:
        return False
    wanted = shutil.which(command[0]) or command[0]
    return exe == os.path.realpath(wanted)


@dataclass(frozen=True)
class ProcessRef:
    """One process, identified by PID and start time (immune to PID reuse)."""

    pid: int
    starttime: int

    @classmethod
    def of_pid(cls, pid: int) -> ProcessRef | None:
        stat = read_stat(pid)
        if stat is None or stat[0] in "ZX":
            return None
        return cls(pid, stat[1])

    @classmethod
    def of_component(cls, comp: Component, label: str) -> ProcessRef:
        """The component's process; raises InjectError if it is not running its command."""
        if comp.pid is None:
            raise InjectError(f"{label}: {comp.name} has no PID (is it running?)")
        if comp.command and not (
            runs_command(comp.pid, comp.command) or _started_as_recorded(comp)
        ):
            found = read_cmdline(comp.pid)
            raise InjectError(
                f"{label}: PID {comp.pid} is not {comp.name} any more (it runs "
                f"{' '.join(found) if found else 'nothing'}; the manifest's command is "
                f"{' '.join(comp.command)}); not signalling it"
            )
        ref = cls.of_pid(comp.pid)
        if ref is None:
            raise InjectError(f"{label}: {comp.name} (PID {comp.pid}) is not running")
        return ref

    def state(self) -> str | None:
        """The state letter while this very process exists (``Z`` for a zombie), else None."""
        stat = read_stat(self.pid)
        if stat is None or stat[1] != self.starttime:
            return None
        return stat[0]

    def alive(self) -> bool:
        state = self.state()
        return state is not None and state not in "ZX"

    def kill_in_background(self, label: str) -> str:
        """SIGKILL this process after :func:`into_background`; returns what that took effect
        ("" when it was gone first); InjectError when it exited before the SIGKILL."""
        moved = into_background(self.pid) if self.alive() else ""
        if not self.send(signal.SIGKILL):
            raise InjectError(f"{label}: PID {self.pid} exited before SIGKILL")
        return moved

    def send(self, sig: int) -> bool:
        """Signal this process if it still exists; False when it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def wait_stopped(self, timeout_s: float) -> str | None:
        """Poll until the process is stopped (``T``, or ``t`` when traced) or gone; returns the
        last state (None: gone)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state()
            if state is None or state in "TtZX" or time.monotonic() > deadline:
                return state
            time.sleep(POLL_S)

    def wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return True

    def to_action(self, action: str) -> dict[str, Any]:
        return {"action": action, "pid": self.pid, "starttime": self.starttime}


# The autogroup nice a victim's session gets before its SIGKILL: weight 15 against a serving
# session's 1024, as a starting server's (system_under_test/runtime.py).
DYING_AUTOGROUP_NICE = 19


def into_background(pid: int) -> str:
    """Move ``pid`` to SCHED_IDLE (every thread) and, where it leads its session, its autogroup
    to nice 19, before it is SIGKILLed; returns what took effect, for the evidence.

    A SIGKILLed process frees its memory before it closes its files (the kernel's ``do_exit``:
    ``exit_mm`` before ``exit_files``), so a torch server keeps its sockets open, unanswering,
    for the whole teardown, and that teardown runs at the process's own priority. Ten at once
    took the CPU from the processes still serving on this 2-core machine. On separate machines
    each teardown would run on its own CPU: in the background it takes only what the serving
    processes leave. Best effort: without privilege the kernel takes one autogroup change a
    tenth of a second host wide, and a process that could not be moved is killed anyway."""
    moved = 0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return "gone"
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            moved += 1
        except OSError:  # a thread that ended meanwhile, or no permission
            continue
    group = "autogroup unchanged"
    try:
        if os.getsid(pid) == pid:
            Path(f"/proc/{pid}/autogroup").write_text(str(DYING_AUTOGROUP_NICE))
            group = f"autogroup nice {DYING_AUTOGROUP_NICE}"
    except OSError:
        pass
    return f"{moved} of {len(tids)} threads SCHED_IDLE, {group}"


def execute_sigcont(action: Mapping[str, Any]) -> str:
    """Heal action ``sigcont``: SIGCONT the process if it is still the one that was stopped."""
    ref = ProcessRef(int(action["pid"]), int(action["starttime"]))
    if ref.send(signal.SIGCONT):
        return f"SIGCONT sent to PID {ref.pid}"
    return f"PID {ref.pid} is gone; nothing to continue"


class FreezeInjector(BaseInjector):
    """``freeze``: SIGSTOP; verified by state ``T``; healed by SIGCONT."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.ref: ProcessRef | None = None
        self.stopped = False

    def _ref(self) -> ProcessRef:
        if self.ref is None:
            self.ref = ProcessRef.of_component(self.ctx.component(self.target), self.label)
        return self.ref

    def apply(self) -> None:
        ref = self._ref()
        self.stopped = True
        if not ref.send(signal.SIGSTOP):
            raise InjectError(f"{self.label}: PID {ref.pid} exited before SIGSTOP")

    def verify(self) -> tuple[bool, str]:
        if self.ref is None or not self.stopped:
            return False, "not applied"
        state = self.ref.wait_stopped(1.0)
        if state in ("T", "t"):
            return True, f"PID {self.ref.pid} is in state {state} (stopped) per /proc/PID/stat"
        return False, f"PID {self.ref.pid} is in state {state or 'gone'}, not T (stopped)"

    def heal(self) -> None:
        if self.ref is not None and self.stopped:  # never continue what we did not stop
            execute_sigcont(self.ref.to_action("sigcont"))

    def heal_action(self) -> dict[str, Any]:
        try:
            return self._ref().to_action("sigcont")
        except Exception:  # the process is not there (any more): nothing to continue
            return dict(NO_ACTION)


def _restart(ctx: InjectContext, name: str, label: str) -> int:
    if ctx.restart is None:
        raise HealError(
            f"{label}: cannot bring {name} back: the run gave no restart hook (InjectContext"
            ".restart); the component stays down"
        )
    pid = int(ctx.restart(name))
    ctx.set_pid(name, pid)
    return pid


class KillInjector(BaseInjector):
    """``kill`` (SIGKILL) and ``terminate`` (SIGTERM, then SIGKILL after ``grace_s``);
    verified by the process being gone; healed by the restart hook."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.ref: ProcessRef | None = None
        self.new_pid: int | None = None
        self.background = ""
        self._timer: threading.Timer | None = None

    def apply(self) -> None:
        self.ref = ProcessRef.of_component(self.ctx.component(self.target), self.label)
        if self.kind == "terminate":
            self.ref.send(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.ref.send(signal.SIGTERM)
            grace = float(self.params["grace_s"])
            self._timer = threading.Timer(grace, self.ref.send, (signal.SIGKILL,))
            self._timer.daemon = True
            self._timer.start()
        else:
            self.background = self.ref.kill_in_background(self.label)

    def verify(self) -> tuple[bool, str]:
        if self.ref is None:
            return False, "not applied"
        # terminate: wait out the grace (at most 2 s) plus the second a SIGKILL may take to
        # land on a busy machine, so a kill sent at the end of a short grace is seen
        wait = 1.0 if self.kind == "kill" else min(float(self.params["grace_s"]), 2.0) + 1.0
        if self.ref.wait_gone(wait):
            moved = f"; before SIGKILL: {self.background}" if self.background else ""
            return True, f"PID {self.ref.pid} is gone (or a zombie) per /proc{moved}"
        return False, f"PID {self.ref.pid} still runs (state {self.ref.state()})"

    def heal(self) -> None:
        if self.ref is None or self.new_pid is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        if not self.ref.wait_gone(0.0):  # still shutting down: it must go before a restart
            self.ref.send(signal.SIGKILL)
            if not self.ref.wait_gone(5.0):
                raise HealError(f"{self.label}: PID {self.ref.pid} survived SIGKILL for 5 s")
        self.new_pid = _restart(self.ctx, self.target, self.label)

    def heal_action(self) -> dict[str, Any]:
        return dict(NO_ACTION)  # a dead process needs no heal; teardown stops a restarted one


class RestartInjector(BaseInjector):
    """``restart``: SIGKILL, then the restart hook after ``delay_s`` (in a thread, so the
    schedule goes on); verified by the old PID gone and, once restarted, the new one alive.
    The heal makes sure the restart has happened."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.ref: ProcessRef | None = None
        self.new_pid: int | None = None
        self.error: str = ""
        self.background = ""
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def apply(self) -> None:
        self.ref = ProcessRef.of_component(self.ctx.component(self.target), self.label)
        self.background = self.ref.kill_in_background(self.label)
        self._timer = threading.Timer(float(self.params["delay_s"]), self._bring_back)
        self._timer.daemon = True
        self._timer.start()

    def _bring_back(self) -> None:
        with self._lock:
            if self.new_pid is not None or self.ref is None:
                return
            try:
                self.ref.wait_gone(5.0)
                self.new_pid = _restart(self.ctx, self.target, self.label)
                self.error = ""
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"

    def verify(self) -> tuple[bool, str]:
        if self.ref is None:
            return False, "not applied"
        if not self.ref.wait_gone(1.0):
            return False, f"PID {self.ref.pid} still runs (state {self.ref.state()})"
        note = f"old PID {self.ref.pid} is gone"
        if self.background:
            note += f" (before SIGKILL: {self.background})"
        if self.new_pid is not None:
            new = ProcessRef.of_pid(self.new_pid)
            note += f"; restarted as PID {self.new_pid} ({'alive' if new else 'not running'})"
        elif self.error:
            note += f"; restart failed: {self.error}"
        return True, note

    def heal(self) -> None:
        if self.ref is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._bring_back()
        if self.new_pid is None:
            raise HealError(f"{self.label}: restart failed: {self.error}")

    def heal_action(self) -> dict[str, Any]:
        return dict(NO_ACTION)
