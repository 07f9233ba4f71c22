"""Which process is which: a PID plus its start time, so a reused PID is never signalled.

A :class:`ProcessRef` is what the harness records and hands to another process (the watchdog):
``PID:START`` where START is the process's start time in seconds since the epoch (psutil's
``create_time``, derived from the kernel's start tick, so every reader computes the same value).
A PID that now names another process, or a zombie, is not "alive" and is never signalled.

:func:`stop_processes` stops processes that are not this process's children (so it cannot reap
them): SIGCONT and SIGTERM, SIGKILL after a grace period, and says which it stopped, which it
had to kill and which still run. :func:`tagged_processes` finds every process whose environment
carries a given variable and value: how the watchdog finds what a run started, even processes
started by a child that has since died.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psutil

SAME_START_S = 0.005  # start times are kernel ticks (10 ms): equal within this is the same one
POLL_S = 0.02


@dataclass(frozen=True)
class ProcessRef:
    """One process, identified by PID and start time (immune to PID reuse)."""

    pid: int
    create_time: float

    @classmethod
    def of_pid(cls, pid: int) -> ProcessRef | None:
        """The process ``pid`` names now; None when there is none or it is a zombie."""
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return cls(pid, proc.create_time())
        except psutil.Error:
            return None

    @classmethod
    def parse(cls, text: str) -> ProcessRef:
        """``PID:START`` as written by ``str()``; ValueError naming the text otherwise."""
        pid, sep, start = text.partition(":")
        try:
            if not sep or not pid.isdigit():
                raise ValueError
            return cls(int(pid), float(start))
        except ValueError:
            raise ValueError(f"{text!r} is not PID:START (a PID and a start time)") from None

    def __str__(self) -> str:
        return f"{self.pid}:{self.create_time!r}"

    def process(self) -> psutil.Process | None:
        """The process while ``pid`` still names this very one (a zombie included)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > SAME_START_S:
                return None
            return proc
        except psutil.Error:
            return None

    def state(self) -> str | None:
        """psutil's status (``running``, ``sleeping``, ``stopped``, ``zombie``...) or None."""
        proc = self.process()
        try:
            return proc.status() if proc is not None else None
        except psutil.Error:
            return None

    def alive(self) -> bool:
        """Running, or still exiting: a multi-threaded process whose main thread has gone shows
        as a zombie while its other threads exit, and until the last one has, its sockets (a
        listening port) stay open."""
        state = self.state()
        if state == psutil.STATUS_ZOMBIE:
            return _threads_left(self.pid)
        return state is not None and state != psutil.STATUS_DEAD

    def cmdline(self) -> list[str] | None:
        """Its command line while it exists (None when gone, reused or unreadable)."""
        proc = self.process()
        try:
            return list(proc.cmdline()) if proc is not None else None
        except psutil.Error:
            return None

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if this process still exists; False when it is gone (or was reused)."""
        proc = self.process()
        if proc is None:
            return False
        try:
            proc.send_signal(sig)  # psutil checks the start time again just before sending
            return True
        except psutil.Error:
            return False


@dataclass
class Stopped:
    """What :func:`stop_processes` did: names (with PIDs) it stopped, killed, and left."""

    stopped: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def stop_processes(
    targets: Sequence[tuple[str, ProcessRef]],
    grace_s: float = 5.0,
    kill_wait_s: float = 5.0,
    log: Callable[[str], None] | None = None,
) -> Stopped:
    """SIGCONT + SIGTERM to every live target, SIGKILL to those alive after ``grace_s``, then
    wait up to ``kill_wait_s``. Only processes whose PID and start time still match are touched."""
    out = Stopped()
    live = [(name, ref) for name, ref in _unique(targets) if ref.alive()]
    for name, ref in live:
        if log is not None:
            log(f"stopping {name} (PID {ref.pid}): SIGCONT + SIGTERM")
        ref.signal(signal.SIGCONT)
        ref.signal(signal.SIGTERM)
    _wait_gone([ref for _, ref in live], grace_s)
    for name, ref in live:
        if ref.alive():
            if log is not None:
                log(f"{name} (PID {ref.pid}) ignored SIGTERM for {grace_s:g} s: SIGKILL")
            ref.signal(signal.SIGKILL)
            out.killed.append(f"{name} (PID {ref.pid})")
    _wait_gone([ref for _, ref in live], kill_wait_s)
    for name, ref in live:
        (out.left if ref.alive() else out.stopped).append(f"{name} (PID {ref.pid})")
    return out


def _unique(targets: Iterable[tuple[str, ProcessRef]]) -> list[tuple[str, ProcessRef]]:
    seen: set[int] = {os.getpid()}
    out = []
    for name, ref in targets:
        if ref.pid not in seen:
            seen.add(ref.pid)
            out.append((name, ref))
    return out


def _wait_gone(refs: Sequence[ProcessRef], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(ref.alive() for ref in refs):
        time.sleep(POLL_S)


def tagged_processes(variable: str, value: str) -> list[tuple[str, ProcessRef]]:
    """Every live process (but this one) whose environment has ``variable=value``, named by its
    command line. Processes whose environment cannot be read (another user's) are skipped."""
    found = []
    for proc in psutil.process_iter(["pid", "create_time", "cmdline", "status"]):
        info = proc.info
        if info["pid"] == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(variable) != value:
                continue
        except psutil.Error:
            continue
        ref = ProcessRef(info["pid"], info["create_time"])
        found.append((describe(info["cmdline"] or []), ref))
    return found


def describe(cmdline: Sequence[str]) -> str:
    """A short name for a command line: ``system_under_test serve-shard`` for
    ``python -m system_under_test serve-shard ...``, else the program and its first argument."""
    words = list(cmdline)
    if "-m" in words[:3]:
        i = words.index("-m")
        return " ".join(words[i + 1 : i + 3]) or "python"
    if not words:
        return "(unknown)"
    return " ".join([os.path.basename(words[0]), *words[1:2]])


def _threads_left(pid: int) -> bool:
    """Whether a zombie-looking process still has a thread that has not exited."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X", "x"):
            return True
    return False


_POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE"}


def _stat_fields(pid: int | str) -> list[str] | None:
    """``/proc/PID/stat`` split after the command (which may hold spaces); field 3 is [0]."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def stuck_report(pid: int) -> str:
    """Why a signalled process may not have died yet, for an error message: its state and
    scheduling policy, and every runnable real-time process on the machine (a real-time task
    that never blocks keeps a same-priority one from running at all, even to act on SIGKILL)."""
    fields = _stat_fields(pid)
    if fields is None:
        return "it is gone now"
    state, cpu, rt_prio, policy = fields[0], fields[36], fields[37], int(fields[38])
    try:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read().strip()
    except OSError:
        wchan = ""
    where = f", waiting in {wchan}" if wchan not in ("", "0") else ""
    parts = [
        f"state {state}, {_POLICIES.get(policy, policy)}"
        + (f" {rt_prio}" if policy in (1, 2) else "")
        + f", last on CPU {cpu}{where}"
    ]
    hogs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pid:
            continue
        other = _stat_fields(entry)
        if other is None or int(other[38]) not in (1, 2) or other[0] != "R":
            continue
        cpu_s = (int(other[11]) + int(other[12])) / os.sysconf("SC_CLK_TCK")
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:100]
        except OSError:
            cmd = "?"
        hogs.append(
            f"PID {entry} ({cmd or 'kernel'}: {_POLICIES[int(other[38])]} {other[37]}, {cpu_s:.1f} s CPU)"
        )
    parts.append("runnable real-time processes: " + ("; ".join(hogs) if hogs else "none"))
    return "; ".join(parts)
