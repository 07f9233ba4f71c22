"""The watchdog: a separate process that heals and tears down if the harness dies.

The runner starts it (in a session of its own, so a Ctrl-C to the runner's terminal does not
reach it) with :func:`start_watchdog`, keeping the write end of a pipe::

    python -m harness.watchdog --parent PID --journal PATH --manifest PATH \\
        [--pipe-fd FD] [--extra-pids PID[:STARTTIME] ...] [--poll-ms 100] [--grace-s 5]

It waits for one of: ``done`` on the pipe (a normal end: exit, touching nothing); the pipe's
end of file, or the parent gone (its PID and start time, polled every ``--poll-ms``: PID reuse
cannot fool it), which mean the harness died, even by SIGKILL. Then it runs every heal action
the fault journal (:mod:`harness.inject.journal`) lists as unhealed, newest first, each even if
another failed; then stops every process the manifest names (only while it still runs the
manifest's command) and every extra PID (only while its start time is the recorded one):
SIGCONT and SIGTERM, SIGKILL after ``--grace-s``. It logs each step and exits (1 if anything
failed or survived). The runner may add PIDs later by writing ``pid PID STARTTIME`` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from harness.inject.base import execute_heal_action
from harness.inject.journal import unhealed
from harness.inject.signals import ProcessRef, runs_command

REPO_ROOT = Path(__file__).resolve().parents[1]
KILL_WAIT_S = 5.0


@dataclass
class Target:
    """A process to stop: by manifest command (name, pid, command) or by start time."""

    name: str
    pid: int
    command: tuple[str, ...] = ()
    ref: ProcessRef | None = None

    def ours(self) -> bool:
        if self.command:
            return runs_command(self.pid, self.command)
        return self.ref is not None and self.ref.alive()


@dataclass
class Watchdog:
    parent: ProcessRef | None
    journal: Path
    manifest: Path | None
    pipe_fd: int | None = None
    extra: list[Target] = field(default_factory=list)
    poll_s: float = 0.1
    grace_s: float = 5.0
    out: IO[str] = sys.stderr
    _buffer: bytes = b""

    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.out.write(f"{stamp} watchdog[{os.getpid()}]: {text}\n")
        self.out.flush()

    # -- waiting --------------------------------------------------------------------------------
    def wait(self) -> str | None:
        """Block until trouble; returns why (None: told that the run ended normally)."""
        while True:
            if self.parent is None or not self.parent.alive():
                # What the harness wrote before dying still counts ("done", "pid" lines).
                return None if self._read_pipe(0.0, drain=True) == "done" else "the harness is gone"
            if self.pipe_fd is None:
                time.sleep(self.poll_s)
                continue
            got = self._read_pipe(self.poll_s)
            if got == "done":
                return None
            if got == "eof":
                return "the harness's pipe closed without 'done'"

    def _read_pipe(self, timeout_s: float, drain: bool = False) -> str:
        """Read what the pipe has: ``done``, ``eof``, or ``""`` (nothing decisive yet)."""
        while self.pipe_fd is not None:
            readable, _, _ = select.select([self.pipe_fd], [], [], timeout_s)
            if not readable:
                return ""
            data = os.read(self.pipe_fd, 4096)
            if not data:
                return "eof"
            if self._lines(data):
                return "done"
            if not drain:
                return ""
        return ""

    def _lines(self, data: bytes) -> bool:
        """Handle complete lines; True when one of them is ``done``."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            words = raw.decode(errors="replace").split()
            if words == ["done"]:
                return True
            if len(words) == 3 and words[0] == "pid" and (words[1] + words[2]).isdigit():
                ref = ProcessRef(int(words[1]), int(words[2]))
                self.extra.append(Target(f"pid {ref.pid}", ref.pid, ref=ref))
                self.log(f"watching extra PID {ref.pid}")
        return False

    # -- acting ----------------------------------------------------------------------------------
    def heal(self) -> list[str]:
        errors = []
        pending = unhealed(self.journal)
        self.log(f"{len(pending)} unhealed fault(s) in {self.journal}")
        for item in reversed(pending):
            label = f"{item.get('kind')}({item.get('target')}) [{item.get('uid')}]"
            action = item.get("heal_action") or {"action": "none"}
            try:
                self.log(f"healed {label}: {execute_heal_action(action)}")
            except Exception as exc:
                errors.append(f"{label}: {exc}")
                self.log(f"FAILED to heal {label} with {action}: {type(exc).__name__}: {exc}")
        return errors

    def targets(self) -> list[Target]:
        found: list[Target] = []
        if self.manifest is not None:
            try:
                data = json.loads(self.manifest.read_text())
            except (OSError, ValueError) as exc:
                self.log(f"no manifest to stop ({self.manifest}: {exc})")
                data = {}
            for comp in reversed(data.get("components", [])):
                if comp.get("pid") and comp.get("command"):
                    found.append(Target(comp["name"], int(comp["pid"]), tuple(comp["command"])))
        return found + self.extra

    def stop(self) -> list[str]:
        live = [t for t in self.targets() if t.pid not in (os.getpid(),) and t.ours()]
        for t in live:
            self.log(f"stopping {t.name} (PID {t.pid}): SIGCONT + SIGTERM")
            for sig in (signal.SIGCONT, signal.SIGTERM):
                _signal(t.pid, sig)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and any(t.ours() for t in live):
            time.sleep(0.02)
        for t in live:
            if t.ours():
                self.log(f"{t.name} (PID {t.pid}) ignored SIGTERM for {self.grace_s:g} s: SIGKILL")
                _signal(t.pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and any(t.ours() for t in live):
            time.sleep(0.02)
        return [f"{t.name} (PID {t.pid}) still runs" for t in live if t.ours()]

    def run(self) -> int:
        self.log(f"watching parent {self.parent.pid if self.parent else '(gone)'}")
        why = self.wait()
        if why is None:
            self.log("the run ended normally: exiting without action")
            return 0
        self.log(f"{why}: healing and tearing down")
        problems = self.heal() + self.stop()
        for problem in problems:
            self.log(f"problem: {problem}")
        self.log("done" + (f" with {len(problems)} problem(s)" if problems else ", all clean"))
        return 1 if problems else 0


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _pid_arg(text: str) -> tuple[int, int | None]:
    pid_text, _, start_text = text.partition(":")
    if not pid_text.isdigit() or not (start_text.isdigit() or not start_text):
        raise argparse.ArgumentTypeError(f"{text!r} is not PID or PID:STARTTIME")
    return int(pid_text), int(start_text) if start_text else None


def _extra_target(pid: int, starttime: int | None) -> Target | None:
    ref = ProcessRef(pid, starttime) if starttime is not None else ProcessRef.of_pid(pid)
    return Target(f"pid {pid}", pid, ref=ref) if ref is not None else None


def _usable_fd(fd: int | None, log: IO[str]) -> int | None:
    if fd is None:
        return None
    try:
        os.fstat(fd)
        return fd
    except OSError as exc:
        log.write(f"watchdog: --pipe-fd {fd} is unusable ({exc}); watching the parent's PID\n")
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m harness.watchdog", description=__doc__.split("\n")[0]
    )
    p.add_argument("--parent", type=int, required=True, help="PID of the harness to watch")
    p.add_argument(
        "--parent-starttime",
        type=int,
        default=None,
        help="its start time (/proc/PID/stat field 22; default: read now)",
    )
    p.add_argument("--journal", type=Path, required=True, help="the run's fault journal")
    p.add_argument("--manifest", type=Path, default=None, help="the cluster manifest")
    p.add_argument(
        "--pipe-fd",
        type=int,
        default=None,
        help="read end of the harness's pipe: 'done' ends quietly, EOF means death",
    )
    p.add_argument(
        "--extra-pids",
        nargs="*",
        type=_pid_arg,
        default=[],
        metavar="PID[:STARTTIME]",
        help="more processes to stop (start time default: read now)",
    )
    p.add_argument("--poll-ms", type=float, default=100.0)
    p.add_argument("--grace-s", type=float, default=5.0, help="SIGTERM to SIGKILL (default 5)")
    p.add_argument("--log", type=Path, default=None, help="append the log here (default stderr)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe or the parent's death count
    if args.parent_starttime is not None:
        parent: ProcessRef | None = ProcessRef(args.parent, args.parent_starttime)
    else:
        parent = ProcessRef.of_pid(args.parent)
    extra = [t for t in (_extra_target(*p) for p in args.extra_pids) if t is not None]
    out: IO[str] = open(args.log, "a") if args.log else sys.stderr  # noqa: SIM115
    pipe_fd = _usable_fd(args.pipe_fd, out)
    dog = Watchdog(
        parent,
        args.journal,
        args.manifest,
        pipe_fd,
        extra,
        args.poll_ms / 1000,
        args.grace_s,
        out,
    )
    return dog.run()


# -- the runner's side -------------------------------------------------------------------------


class WatchdogHandle:
    """The runner's end: ``add_pid`` to watch more processes, ``done()`` at a normal end."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int) -> None:
        self.proc = proc
        self._fd = write_fd

    def _send(self, line: str) -> None:
        if self._fd >= 0:
            os.write(self._fd, line.encode())

    def add_pid(self, pid: int) -> None:
        ref = ProcessRef.of_pid(pid)
        if ref is not None:
            self._send(f"pid {ref.pid} {ref.starttime}\n")

    def done(self, timeout_s: float = 5.0) -> int | None:
        """Tell the watchdog the run ended normally; it exits without action. Idempotent."""
        if self._fd >= 0:
            try:
                self._send("done\n")
            except OSError:
                pass
            os.close(self._fd)
            self._fd = -1
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=timeout_s)

    def __enter__(self) -> WatchdogHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()


def start_watchdog(
    journal: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None = None,
    extra_pids: Sequence[int] = (),
    log_path: str | os.PathLike[str] | None = None,
    poll_ms: float = 100.0,
    grace_s: float = 5.0,
) -> WatchdogHandle:
    """Start the watchdog for this process; keep the handle and call ``done()`` at the end."""
    me = ProcessRef.of_pid(os.getpid())
    assert me is not None
    read_fd, write_fd = os.pipe()  # both non-inheritable: only the watchdog gets the read end
    cmd = [
        sys.executable,
        "-m",
        "harness.watchdog",
        "--parent",
        str(me.pid),
        "--parent-starttime",
        str(me.starttime),
        "--journal",
        os.fspath(journal),
        "--pipe-fd",
        str(read_fd),
        "--poll-ms",
        str(poll_ms),
        "--grace-s",
        str(grace_s),
    ]
    if manifest is not None:
        cmd += ["--manifest", os.fspath(manifest)]
    extra = [ProcessRef.of_pid(p) for p in extra_pids]
    if any(extra):
        cmd += ["--extra-pids", *(f"{r.pid}:{r.starttime}" for r in extra if r is not None)]
    if log_path is not None:
        cmd += ["--log", os.fspath(log_path)]
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    try:
        proc = subprocess.Popen(
            cmd,
            pass_fds=(read_fd,),
            start_new_session=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if log_path is None else subprocess.DEVNULL,
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return WatchdogHandle(proc, write_fd)


def _pythonpath() -> str:
    parts = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


if __name__ == "__main__":
    sys.exit(main())
