"""One child process the harness starts, from spawn to reaped, as a context manager.

::

    with ManagedProcess(argv, log_path, name="redis", registry=watchdog) as proc:
        proc.wait_ready(lambda: tcp_open(host, port), 10.0, "redis answering on its port")
        ...
    # stopped (SIGCONT + SIGTERM, SIGKILL after the grace) and reaped, whatever happened

The child runs in a session of its own (a Ctrl-C on the harness's terminal does not reach it;
the harness decides when it stops), with stdin closed (or a pipe), its output appended to its
log file. A :class:`Registry` hears of it the moment it exists: its environment carries the
registry's variables (inherited by everything it starts) and its PID plus start time are
registered right after the spawn. While the child is unreaped its PID cannot be reused, so
signalling it (or its process group, with ``group=True``) is always safe; it is reaped only in
:meth:`ManagedProcess.poll`, :meth:`ManagedProcess.wait` and :meth:`ManagedProcess.stop`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

import psutil

from harness.process.identity import ProcessRef, stuck_report
from harness.process.readiness import StartError, log_tail

POLL_S = 0.02
GRACE_S = 5.0  # SIGTERM to SIGKILL
KILL_WAIT_S = 5.0  # after SIGKILL, before giving up on a process that does not die


class Registry(Protocol):
    """Who must know every process a run starts, from the moment it exists (the watchdog)."""

    @property
    def env(self) -> Mapping[str, str]:
        """Variables every started process carries; its own children inherit them."""
        ...

    def add_process(self, name: str, ref: ProcessRef) -> None: ...


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
        registry: Registry | None = None,
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
        self.registry = registry
        self.pipes = pipes
        self.group = group
        self.pass_fds = tuple(pass_fds)
        self.popen: subprocess.Popen[bytes] | None = None
        self.ref: ProcessRef | None = None

    # -- start -----------------------------------------------------------------------------------
    def start(self) -> ManagedProcess:
        if self.popen is not None:
            return self
        env = {**self.env, **(self.registry.env if self.registry is not None else {})}
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
        if self.registry is not None:
            self.registry.add_process(self.name, self.ref)
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
                    f"{self.name} (PID {self.pid}) survived SIGKILL for {kill_wait_s:g} s: "
                    f"{stuck_report(self.pid)}"
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
