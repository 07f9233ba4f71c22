"""The recommender's own process helper: one child process from spawn to reaped, and process
identity by PID plus start time. A copy of the harness's ``harness/process`` (the recommender
never imports the harness), held to the same behaviour by
``tests/integration/test_process_helpers.py``: change both together.

:class:`ManagedProcess` starts a child in a session of its own with its output appended to its
log file, waits for it with a bounded wait that shows the log tail on failure
(:meth:`ManagedProcess.wait_ready`), and stops it with SIGCONT + SIGTERM, SIGKILL after a grace,
always reaping it. :class:`ProcessRef` names a process that is not our child (one a manifest
lists) by PID and start time, so a reused PID is never signalled; :func:`stop_processes` stops
such processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

POLL_S = 0.02
GRACE_S = 5.0  # SIGTERM to SIGKILL
KILL_WAIT_S = 5.0  # after SIGKILL, before giving up on a process that does not die


class StartError(Exception):
    """A process did not come up (or could not be stopped); the message has its last log lines."""


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of ``path``, indented; says so when there is no log."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"    | (no log at {path}: {exc})"
    return "\n".join(f"    | {line}" for line in text[-lines:]) or "    | (empty log)"


SAME_START_S = 0.005  # start times are kernel ticks (10 ms): equal within this is the same one


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


class ManagedProcess:
    """A child process: ``start``, ``wait_ready`` or ``wait``, ``stop`` (idempotent)."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path | None,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        pipes: bool = False,
        group: bool = False,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """``log`` receives stdout and stderr (None: inherit this process's); with ``pipes``
        stdin and stdout are pipes (``popen.stdin``, ``popen.stdout``) and only stderr goes to
        the log. ``group``: signals go to the child's whole process group."""
        self.argv = [str(a) for a in argv]
        self.log = log
        self.name = name or os.path.basename(self.argv[0])
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.pipes = pipes
        self.group = group
        self.pass_fds = tuple(pass_fds)
        self.popen: subprocess.Popen[bytes] | None = None
        self.ref: ProcessRef | None = None

    # -- start -----------------------------------------------------------------------------------
    def start(self) -> ManagedProcess:
        if self.popen is not None:
            return self
        env = self.env
        out: IO[bytes] | None = None
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log, "ab")  # noqa: SIM115 - the child keeps its own descriptor
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if self.pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.pipes else out,
                stderr=out,
                env=env,
                cwd=self.cwd,
                pass_fds=self.pass_fds,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()
        self.ref = _ref_of_child(self.popen.pid)
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    # -- waiting ---------------------------------------------------------------------------------
    def exited(self) -> bool:
        """True once the child has exited; does not reap it (its PID stays ours)."""
        if self.popen is None or self.popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.popen.pid, _PEEK) is not None
        except ChildProcessError:  # reaped elsewhere (Popen's own bookkeeping)
            return True

    def poll(self) -> int | None:
        """The exit code once it has exited (reaping it), else None."""
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and not self.exited()

    def wait_ready(
        self, check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = POLL_S
    ) -> ManagedProcess:
        """Poll ``check`` until true. If the child exits first or ``timeout_s`` passes, stop it
        and raise StartError naming ``what`` with the last lines of its log."""
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.exited():
                code = self.stop()
                raise StartError(
                    f"{self.name} exited with code {code} before {what}; {self.tail_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise StartError(
                    f"{what} not within {timeout_s:.1f} s ({self.name}, PID {self.pid}); "
                    f"{self.tail_text()}"
                )
            time.sleep(interval_s)
        return self

    def wait(self, timeout_s: float) -> int:
        """Wait for the child to exit and return its code; after ``timeout_s`` stop it and
        raise StartError with the last lines of its log."""
        assert self.popen is not None, f"{self.name} was never started"
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise StartError(
                f"{self.name} (PID {self.pid}) did not finish within {timeout_s:.1f} s; "
                f"{self.tail_text()}"
            ) from None

    def tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines) if self.log is not None else "    | (no log file)"

    def tail_text(self, lines: int = 20) -> str:
        return f"last log lines ({self.log}):\n{self.tail(lines)}"

    # -- signals and stop --------------------------------------------------------------------
    def signal(self, sig: int) -> bool:
        """Send ``sig`` (to the group with ``group=True``) while the child is unreaped."""
        if self.popen is None or self.popen.returncode is not None:
            return False
        try:
            if self.group:
                os.killpg(self.popen.pid, sig)
            else:
                os.kill(self.popen.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, grace_s: float = GRACE_S, kill_wait_s: float = KILL_WAIT_S) -> int | None:
        """SIGCONT + SIGTERM, SIGKILL after ``grace_s``; always reaped; returns the exit code
        (None if it was never started). Idempotent. StartError if even SIGKILL did not end it."""
        if self.popen is None:
            return None
        if self.popen.returncode is None:
            if not self.exited():
                self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                self.signal(signal.SIGTERM)
                if not self._wait_exited(grace_s):
                    self.signal(signal.SIGKILL)
                    self._wait_exited(kill_wait_s)
            if self.group:
                self.signal(signal.SIGKILL)  # what is left of the group (the leader holds its id)
            try:
                self.popen.wait(timeout=kill_wait_s)
            except subprocess.TimeoutExpired:
                raise StartError(
                    f"{self.name} (PID {self.pid}) survived SIGKILL for {kill_wait_s:g} s"
                ) from None
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return self.popen.returncode

    def _wait_exited(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.exited():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return True

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self.popen.pid if self.popen is not None else None
        return f"ManagedProcess({self.name!r}, pid={pid}, returncode={self.returncode})"


_PEEK = os.WEXITED | os.WNOHANG | os.WNOWAIT


def _ref_of_child(pid: int) -> ProcessRef:
    """Our child's identity; readable even if it already exited (it stays a zombie until we
    reap it, and a zombie keeps its start time)."""
    try:
        return ProcessRef(pid, psutil.Process(pid).create_time())
    except psutil.Error:  # pragma: no cover - an unreaped child always has a /proc entry
        return ProcessRef(pid, 0.0)


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
