"""The watchdog: a separate process that heals, tears down and closes the record if the harness dies.

The runner starts it first, before anything else of the run exists, with :func:`start_watchdog`
(in a session of its own, so a Ctrl-C to the runner's terminal does not reach it), keeping the
write end of a pipe::

    python -m harness.watchdog --parent PID --parent-start START --journal PATH \\
        [--manifest PATH] [--record PATH] [--tag TAG] [--pipe-fd FD] \\
        [--extra-pids PID[:START] ...] [--poll-ms 100] [--grace-s 5] [--log PATH]

How it knows every process of the run from the moment it exists: every process the run starts
carries ``RECCHAOS_WATCHDOG_TAG=TAG`` in its environment (:attr:`WatchdogHandle.env`; the
managed-process helper puts it there), and a process inherits its parent's environment, so the
recommender's launcher and every component it starts carry it too, before the harness has heard
of them. That is what survives a SIGKILL of either parent: a process group or a session is
left by any child that starts its own (each component does, to outlive the launcher), and a
parent-death signal would stop the components when the launcher exits normally; the environment
goes with the process, whoever its parent is now. The watchdog finds the tagged processes by
reading ``/proc/PID/environ`` (only processes of this user can be read; a run's processes are).
Besides, each process the harness starts itself is registered by PID and start time right after
the spawn (``pid PID START NAME`` on the pipe), the manifest's components are stopped when a
manifest exists, and a docker cluster is registered by its label before its first container
exists (``docker CLUSTER_ID HOST``) and removed by that label.

It waits for one of: ``done`` on the pipe (a normal end: exit, touching nothing); the pipe's end
of file, or the parent gone (its PID and start time, polled every ``--poll-ms``: PID reuse cannot
fool it), which mean the harness died, even by SIGKILL. Then it marks the run record ``killed``
with the time, runs every heal action the fault journal (:mod:`harness.inject.journal`) lists as
unhealed, newest first, each even if another failed; stops every process it knows (SIGCONT and
SIGTERM, SIGKILL after ``--grace-s``; only processes whose PID and start time still match) until
a fresh look finds none left; removes the registered docker clusters; and ends with one line
saying what it healed, stopped and removed, where it looked, and what it could not do. It exits
1 if anything failed or survived.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from harness.process import ManagedProcess, ProcessRef, StartError
from harness.process.identity import Stopped, stop_processes, tagged_processes

if TYPE_CHECKING:  # imported when needed: the watchdog starts before every run
    from harness.model.record import RunRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
TAG_VARIABLE = "RECCHAOS_WATCHDOG_TAG"
STOP_ROUNDS = 3  # a launcher stopped mid-start may spawn once more before its SIGTERM lands


@dataclass
class Teardown:
    """What the watchdog did after the harness died; :meth:`line` is its final log line."""

    healed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    looked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        stopped = ", ".join(self.stopped) if self.stopped else "none"
        parts = [
            f"healed {len(self.healed)} fault(s)",
            f"stopped {len(self.stopped)} process(es): {stopped}",
        ]
        if self.removed:
            parts.append(f"removed {', '.join(self.removed)}")
        parts.append(f"looked at {', '.join(self.looked) or 'nothing'}")
        could_not = "; ".join(self.problems) if self.problems else "nothing"
        head = f"done with {len(self.problems)} problem(s)" if self.problems else "done"
        return f"{head}: {'; '.join(parts)}; could not: {could_not}"


@dataclass
class Watchdog:
    parent: ProcessRef | None
    journal: Path
    manifest: Path | None = None
    record: Path | None = None
    tag: str | None = None
    pipe_fd: int | None = None
    extra: dict[int, tuple[str, ProcessRef]] = field(default_factory=dict)
    docker: dict[str, str | None] = field(default_factory=dict)  # cluster id -> engine
    poll_s: float = 0.1
    grace_s: float = 5.0
    out: IO[str] = sys.stderr
    killed_note: str = "killed"  # what close_record wrote: said again if the record is rewritten
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
            data = os.read(self.pipe_fd, 65536)
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
        done = False
        for raw in lines:
            words = raw.decode(errors="replace").split()
            if words == ["done"]:
                done = True
            elif words[:1] == ["pid"] and len(words) >= 3:
                self._add_pid(words)
            elif words[:1] == ["docker"] and len(words) == 3:
                self.docker[words[1]] = None if words[2] == "-" else words[2]
                self.log(f"watching docker cluster {words[1]} on {words[2]}")
            else:
                self.log(f"ignored a line it does not understand: {raw[:200]!r}")
        return done

    def _add_pid(self, words: list[str]) -> None:
        try:
            ref = ProcessRef.parse(f"{words[1]}:{words[2]}")
        except ValueError as exc:
            self.log(f"ignored {' '.join(words)!r}: {exc}")
            return
        name = " ".join(words[3:]) or f"pid {ref.pid}"
        if self.extra.get(ref.pid, ("", None))[1] != ref:  # registering twice is harmless
            self.log(f"watching {name} (PID {ref.pid})")
        self.extra[ref.pid] = (name, ref)

    # -- acting ----------------------------------------------------------------------------------
    def heal(self, report: Teardown) -> None:
        from harness.inject.base import execute_heal_action
        from harness.inject.journal import unhealed

        pending = unhealed(self.journal)
        self.log(f"{len(pending)} unhealed fault(s) in {self.journal}")
        for item in reversed(pending):
            label = f"{item.get('kind')}({item.get('target')}) [{item.get('uid')}]"
            action = item.get("heal_action") or {"action": "none"}
            try:
                self.log(f"healed {label}: {execute_heal_action(action)}")
                report.healed.append(label)
            except Exception as exc:  # noqa: BLE001 - every other heal still runs
                report.problems.append(f"heal {label}: {exc}")
                self.log(f"FAILED to heal {label} with {action}: {type(exc).__name__}: {exc}")

    def targets(self, report: Teardown) -> list[tuple[str, ProcessRef]]:
        """Every live process of the run it can find now: the manifest's, the registered ones
        and those carrying the tag."""
        found = self._manifest_targets(report) + list(self.extra.values())
        if self.tag:
            try:
                found += tagged_processes(TAG_VARIABLE, self.tag)
            except Exception as exc:  # noqa: BLE001 - say so; never claim it looked
                report.problems.append(f"look for processes tagged {self.tag}: {exc}")
        return [(name, ref) for name, ref in found if ref.pid != os.getpid() and ref.alive()]

    def _manifest_targets(self, report: Teardown) -> list[tuple[str, ProcessRef]]:
        if self.manifest is None:
            return []
        if not self.manifest.exists():
            return []  # the cluster had not written one yet (or `down` removed it)
        try:
            comps = json.loads(self.manifest.read_text()).get("components", [])
        except (OSError, ValueError, AttributeError) as exc:
            report.problems.append(f"read the manifest {self.manifest}: {exc}")
            return []
        found = []
        for comp in reversed(comps):
            ref = manifest_ref(comp)
            if ref is not None:
                found.append((str(comp.get("name")), ref))
        return found

    def stop(self, report: Teardown) -> None:
        """Stop what it finds, and look again: a launcher stopped while starting the cluster may
        have spawned one more component before it got SIGTERM."""
        left: list[str] = []
        for _ in range(STOP_ROUNDS):
            live = self.targets(report)
            if not live:
                left = []
                break
            done: Stopped = stop_processes(live, self.grace_s, log=self.log)
            report.stopped += done.stopped
            left = done.left
        else:
            left = [f"{name} (PID {ref.pid})" for name, ref in self.targets(report)]
        report.problems += [f"stop {name}" for name in left]

    def remove_containers(self, report: Teardown) -> None:
        for cluster_id, host in self.docker.items():
            from harness.sut.containers import remove_cluster

            try:
                removed, errors = remove_cluster(host, cluster_id)
            except Exception as exc:  # noqa: BLE001 - the other clusters still go
                removed, errors = [], [f"{type(exc).__name__}: {exc}"]
            report.removed += removed
            report.problems += [f"remove {error}" for error in errors]
            self.log(f"docker cluster {cluster_id}: removed {', '.join(removed) or 'nothing'}")

    def close_record(self, status_note: str) -> None:
        """Mark a still-running record ``killed`` now (a finished one is left as it is)."""
        if self.record is None:
            return
        from harness.model.record import read_record, write_record

        if not self.record.exists():
            self.log(f"no run record at {self.record}: the harness died before writing it")
            self.record = None
            return
        self.killed_note = status_note
        try:
            rec = read_record(self.record)
            if rec.status != "running":
                self.log(f"the run record is already {rec.status}: left as it is")
                self.record = None  # nothing more to add to it
                return
            write_record(self.record, self._killed(rec))
            self.log(f"marked the run record killed: {self.record}")
        except Exception as exc:  # noqa: BLE001 - the teardown matters more than the record
            self.log(f"could not mark the run record killed ({self.record}): {exc}")
            self.record = None

    def _killed(self, rec: RunRecord) -> RunRecord:
        """``rec`` (a running RunRecord) marked killed, now, with the note of why."""
        return replace(
            rec, status="killed", ended_wall=time.time(), errors=(*rec.errors, self.killed_note)
        )

    def add_to_record(self, line: str) -> None:
        if self.record is None:
            return
        from harness.model.record import read_record, write_record

        try:
            rec = read_record(self.record)
            if rec.status == "running":  # written again since close_record: the death stands
                self.log(f"the run record said running again after it was marked killed: {line}")
                rec = self._killed(rec)
            write_record(self.record, replace(rec, errors=(*rec.errors, f"watchdog: {line}")))
        except Exception as exc:  # noqa: BLE001
            self.log(f"could not add the teardown to the run record: {exc}")

    def looked_at(self) -> list[str]:
        where = [f"the fault journal {self.journal}"]
        if self.manifest is not None:
            where.append(f"the manifest {self.manifest}")
        where.append(f"{len(self.extra)} registered PID(s)")
        where.append(
            f"every process tagged {TAG_VARIABLE}={self.tag}"
            if self.tag
            else "no tagged processes (no --tag: children of a dead child are not found)"
        )
        where += [f"docker label of cluster {cid}" for cid in self.docker]
        return where

    def run(self) -> int:
        self.log(f"watching parent {self.parent.pid if self.parent else '(gone)'}")
        why = self.wait()
        if why is None:
            self.log("the run ended normally: exiting without action")
            return 0
        died = datetime.now(UTC).isoformat(timespec="seconds")
        self.log(f"{why}: healing and tearing down")
        self.close_record(f"killed: {why} at {died}; the watchdog healed and tore down the run")
        report = Teardown()
        self.heal(report)
        self.stop(report)
        self.remove_containers(report)
        report.looked = self.looked_at()
        line = report.line()
        self.add_to_record(line)
        self.log(line)
        return 1 if report.problems else 0


def manifest_ref(comp: Mapping[str, object]) -> ProcessRef | None:
    """The live process a manifest entry names: by PID and start time, or (a manifest without
    start times) by PID and its command; None when it is gone or the PID was reused."""
    from harness.inject.signals import runs_command

    pid, start, command = comp.get("pid"), comp.get("start_time"), comp.get("command")
    if not isinstance(pid, int) or pid <= 0:
        return None
    if isinstance(start, int | float):
        ref = ProcessRef(pid, float(start))
        return ref if ref.alive() else None
    if isinstance(command, list) and command and runs_command(pid, command):
        return ProcessRef.of_pid(pid)
    return None


def _pid_arg(text: str) -> tuple[int, float | None]:
    pid_text, _, start_text = text.partition(":")
    try:
        if not pid_text.isdigit():
            raise ValueError
        return int(pid_text), float(start_text) if start_text else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not PID or PID:START") from None


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
        "--parent-start",
        type=float,
        default=None,
        help="its start time (seconds since the epoch, psutil's create_time; default: read now)",
    )
    p.add_argument("--journal", type=Path, required=True, help="the run's fault journal")
    p.add_argument("--manifest", type=Path, default=None, help="the cluster manifest")
    p.add_argument("--record", type=Path, default=None, help="run.json, marked killed")
    p.add_argument(
        "--tag", default=None, help=f"the value of {TAG_VARIABLE} the run's processes carry"
    )
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
        metavar="PID[:START]",
        help="more processes to stop (start time default: read now)",
    )
    p.add_argument("--poll-ms", type=float, default=100.0)
    p.add_argument("--grace-s", type=float, default=5.0, help="SIGTERM to SIGKILL (default 5)")
    p.add_argument("--log", type=Path, default=None, help="append the log here (default stderr)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe or the parent's death count
    if args.parent_start is not None:
        parent: ProcessRef | None = ProcessRef(args.parent, args.parent_start)
    else:
        parent = ProcessRef.of_pid(args.parent)
    extra: dict[int, tuple[str, ProcessRef]] = {}
    for pid, start in args.extra_pids:
        ref = ProcessRef(pid, start) if start is not None else ProcessRef.of_pid(pid)
        if ref is not None:
            extra[pid] = (f"pid {pid}", ref)
    out: IO[str] = open(args.log, "a") if args.log else sys.stderr  # noqa: SIM115
    dog = Watchdog(
        parent,
        args.journal,
        manifest=args.manifest,
        record=args.record,
        tag=args.tag,
        pipe_fd=_usable_fd(args.pipe_fd, out),
        extra=extra,
        poll_s=args.poll_ms / 1000,
        grace_s=args.grace_s,
        out=out,
    )
    return dog.run()


# -- the runner's side -------------------------------------------------------------------------


class WatchdogHandle:
    """The runner's end, a :class:`harness.process.Registry`: ``env`` for every process the run
    starts, ``add_process``/``add_pid``/``add_docker`` as they appear, ``done()`` at a normal
    end."""

    def __init__(self, proc: ManagedProcess, write_fd: int, tag: str) -> None:
        self.proc = proc
        self._fd = write_fd
        self.tag = tag

    @property
    def env(self) -> Mapping[str, str]:
        return {TAG_VARIABLE: self.tag}

    def _send(self, line: str) -> None:
        if self._fd >= 0:
            os.write(self._fd, line.encode())  # one short write: atomic on a pipe

    def add_process(self, name: str, ref: ProcessRef) -> None:
        words = " ".join(name.split())[:120]
        self._send(f"pid {ref.pid} {ref.create_time!r} {words}\n")

    def add_pid(self, pid: int, name: str = "") -> None:
        ref = ProcessRef.of_pid(pid)
        if ref is not None:
            self.add_process(name or f"pid {pid}", ref)

    def add_docker(self, cluster_id: str, docker_host: str | None) -> None:
        """Before the cluster's first container exists: remove everything labelled with it."""
        self._send(f"docker {cluster_id} {docker_host or '-'}\n")

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
            return self.proc.wait(timeout_s)
        except StartError:
            return self.proc.returncode

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
    record: str | os.PathLike[str] | None = None,
) -> WatchdogHandle:
    """Start the watchdog for this process; keep the handle, pass it as the registry of every
    process the run starts, and call ``done()`` at the end."""
    me = ProcessRef.of_pid(os.getpid())
    assert me is not None
    tag = os.urandom(8).hex()
    read_fd, write_fd = os.pipe()  # both non-inheritable: only the watchdog gets the read end
    cmd = [sys.executable, "-m", "harness.watchdog", "--parent", str(me.pid)]
    cmd += ["--parent-start", repr(me.create_time), "--journal", os.fspath(journal)]
    cmd += ["--pipe-fd", str(read_fd), "--poll-ms", str(poll_ms), "--grace-s", str(grace_s)]
    cmd += ["--tag", tag]
    if manifest is not None:
        cmd += ["--manifest", os.fspath(manifest)]
    if record is not None:
        cmd += ["--record", os.fspath(record)]
    extra = [r for r in (ProcessRef.of_pid(p) for p in extra_pids) if r is not None]
    if extra:
        cmd += ["--extra-pids", *(str(r) for r in extra)]
    if log_path is not None:
        cmd += ["--log", os.fspath(log_path)]
    env = {k: v for k, v in os.environ.items() if k != TAG_VARIABLE}  # not its own target
    env["PYTHONPATH"] = _pythonpath()
    proc = ManagedProcess(
        cmd,
        Path(log_path) if log_path is not None else None,
        name="watchdog",
        env=env,
        pass_fds=(read_fd,),
    )
    try:
        proc.start()
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return WatchdogHandle(proc, write_fd, tag)


def _pythonpath() -> str:
    parts = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


if __name__ == "__main__":
    sys.exit(main())
