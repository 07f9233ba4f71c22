"""Runs load worker processes for the harness's main process and merges what they record.

:func:`run_load` writes one :class:`~harness.load.spec.LoadJob` per worker, starts
``python -m harness.load.worker`` for each as a :class:`~harness.process.ManagedProcess` (its
own process group, stderr to a file, registered with the run's watchdog when given one), waits
(bounded) until every worker is ready, hands them one common start time on stdin, relays their
progress lines, and enforces a timeout: on expiry or on any exception the workers get SIGTERM
(they write partial results), then SIGKILL, and every child is reaped. It then merges the
workers' request logs, histograms (exactly: counts add) and summaries into ``requests.npy``,
``histograms.json`` and ``summary.json`` in the job's output directory, and, when the job checks
answers, the workers' answered item ids into ``answers.npy`` (row for row with ``requests.npy``).

With ``mode="locust"`` the same workers run under a Locust master process (Locust's distributed
mode; the master assigns worker indexes and sends the start), which is how several machines
share a load: ``master_bind`` (``HOST:PORT``, default loopback and a free port) is where the
master listens, and ``local_workers`` of the ``workers`` are started here; the others join from
other hosts (``python -m harness.load.worker JOB --locust-master HOST:PORT``, with the job the
driver writes as ``job-remote.json``) and write their files there, to be copied into the output
directory before the merge (:func:`merge_load`, which the driver calls itself and which can be
called again once the files are in). Nothing here imports locust.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from harness.load.results import HISTOGRAMS, merge_summaries, write_json
from harness.load.spec import (
    MASTER_HOST,
    LoadJob,
    connect_host,
    host_port,
    parse_master_address,
)
from harness.metrics.histogram import LatencyHistogram
from harness.model.errors import HarnessError
from harness.model.requestlog import (
    merge_answers,
    merge_logs,
    read_answers,
    read_log,
    write_answers,
    write_log,
)
from harness.process import ManagedProcess, Registry, StartError, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0  # importing locust and opening connections
START_LEAD_NS = 100_000_000  # the common start is this far after the last worker is ready
TERM_GRACE_S = 5.0  # after SIGTERM, before SIGKILL

log = logging.getLogger("recchaos.load")
Progress = Callable[[dict[str, Any]], None]
Lines = queue.Queue[tuple[str, "dict[str, Any] | None"]]


class LoadError(HarnessError):
    """The load generator itself failed (a worker crashed, never became ready, wrote nothing)."""


@dataclass
class LoadResult:
    """The merged outcome of one load run; times in the log are ns from ``start_mono_ns``."""

    output_dir: Path
    start_mono_ns: int
    log: np.ndarray
    histograms: dict[str, LatencyHistogram]
    summary: dict[str, Any]
    worker_summaries: list[dict[str, Any]]
    partial: bool = False
    errors: tuple[str, ...] = ()
    files: dict[str, Path] = field(default_factory=dict)
    answers: np.ndarray | None = None  # item ids, row for row with ``log``; None: not checked

    @property
    def response(self) -> LatencyHistogram:
        """Response time from the intended send (the SLA metric); failures and misses counted."""
        return self.histograms["response"]

    @property
    def service(self) -> LatencyHistogram:
        return self.histograms["service"]

    @property
    def lag(self) -> LatencyHistogram:
        return self.histograms["lag"]

    def unaccounted(self) -> list[str]:
        """Why some intended request is not accounted for; empty when every one is."""
        s, log = self.summary, self.log
        out = []
        shed = s.get("shed", 0)
        if s["intended"] != s["answered"] + s["failed"] + s["missed"] + shed:
            out.append(
                f"intended {s['intended']} != answered {s['answered']} + failed "
                f"{s['failed']} + missed {s['missed']} + shed {shed}"
            )
        if log.shape[0] != s["intended"]:
            out.append(f"the log has {log.shape[0]} rows for {s['intended']} intended requests")
        if np.unique(log["id"]).shape[0] != log.shape[0]:
            out.append("request ids repeat in the log")
        if not self.partial and log.shape[0] != s["scheduled"]:
            out.append(f"a complete run logged {log.shape[0]} of {s['scheduled']} scheduled")
        if not self.partial and not np.array_equal(np.sort(log["id"]), np.arange(s["scheduled"])):
            out.append("the logged ids are not exactly the schedule's positions")
        return out


@dataclass
class _Proc:
    name: str
    proc: ManagedProcess
    reader: threading.Thread
    ready: bool = False
    done: dict[str, Any] | None = None

    def tail(self, n: int = 25) -> str:
        return self.proc.tail(n)


def run_load(
    job: LoadJob,
    timeout_s: float,
    on_progress: Progress | None = None,
    *,
    workers: int = 1,
    mode: str = "local",
    registry: Registry | None = None,
    master_bind: str | None = None,
    local_workers: int | None = None,
) -> LoadResult:
    """Run ``job`` split over ``workers`` processes; return the merged result.

    ``timeout_s`` bounds the whole call (start-up included); on expiry the workers are stopped
    (within ``TERM_GRACE_S`` more) and the result is partial. ``on_progress`` gets each
    worker's progress line (a dict with ``worker``, ``elapsed_s``, ``rate``, ``p99_ms``,
    ``tiers``, ``errors``, ...). ``registry`` (the run's watchdog) hears of every worker as it
    starts. Raises :class:`LoadError` when a worker fails without leaving a result.

    Locust mode only: ``master_bind`` is the master's ``HOST:PORT`` (default 127.0.0.1 and a
    free port: this machine only); ``local_workers`` (default: all) are started here, and the
    master waits for the rest to join from elsewhere.
    """
    if mode not in ("local", "locust"):
        raise ValueError(f"mode must be 'local' or 'locust', got {mode!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    local = workers if local_workers is None else local_workers
    if mode == "local" and (master_bind is not None or local != workers):
        raise ValueError("master_bind and local_workers are for mode='locust' only")
    if not 0 <= local <= workers:
        raise ValueError(f"local_workers must be 0..{workers} (workers), got {local_workers}")
    master = parse_master_address(master_bind, "master_bind") if master_bind else None
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for pattern in ("requests-*.npy", "answers-*.npy", "histograms-*.json", "summary-*.json"):
        for stale in out.glob(pattern):  # an earlier run's: never merge those
            stale.unlink()
    deadline = time.monotonic() + timeout_s
    procs: list[_Proc] = []
    errors: list[str] = []
    lines: Lines = queue.Queue()
    start_ns = 0
    try:
        procs = _spawn(job, out, workers, mode, lines, registry, master, local)
        if mode == "locust":
            go = None  # the Locust master starts the workers and prints the start time
        elif job.start_mono_ns is not None:
            go = lambda: job.start_mono_ns  # noqa: E731 - the workers start by themselves
        else:
            go = lambda: _go(procs)  # noqa: E731
        start_ns = _supervise(procs, go, deadline, on_progress, errors, lines)
    finally:
        _reap(procs, errors, lines)
    return _merge(job, out, workers, procs, start_ns, errors)


def _spawn(
    job: LoadJob,
    out: Path,
    workers: int,
    mode: str,
    lines: Lines,
    registry: Registry | None,
    master: tuple[str, int] | None = None,
    local: int | None = None,
) -> list[_Proc]:
    procs: list[_Proc] = []
    extra: list[str] = []

    def start(name: str, job_path: Path, args: list[str]) -> None:
        procs.append(_start(name, job_path, out, args, lines, registry))

    if mode == "locust":
        host, port = master or (MASTER_HOST, free_port())
        master_job = job.for_worker(0, workers)
        master_args = ["--locust-master-bind", host_port(host, port)]
        master_args += ["--expect-workers", str(workers)]
        master_job.write(out / "job-remote.json")  # what a worker elsewhere runs (see above)
        start("master", master_job.write(out / "job-master.json"), master_args)
        extra = ["--locust-master", host_port(connect_host(host), port)]
    for i in range(workers if local is None else local):
        wjob = job.for_worker(i, workers)
        args = extra or (["--go-stdin"] if job.start_mono_ns is None else [])
        start(f"worker-{i}", wjob.write(out / f"job-{i}.json"), args)
    return procs


def _start(
    name: str,
    job_path: Path,
    out: Path,
    args: list[str],
    lines: Lines,
    registry: Registry | None,
) -> _Proc:
    stderr_path = out / f"{name}.stderr"
    stderr_path.unlink(missing_ok=True)  # this run's stderr only
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = ManagedProcess(
        [sys.executable, "-m", "harness.load.worker", str(job_path), *args],
        stderr_path,
        name=f"load {name}",
        env=env,
        cwd=REPO_ROOT,
        registry=registry,
        pipes=True,
        group=True,
    ).start()
    assert proc.popen is not None and proc.popen.stdout is not None
    reader = threading.Thread(
        target=_read_lines,
        args=(name, proc.popen.stdout, lines),
        name=f"load-{name}-stdout",
        daemon=True,
    )
    reader.start()
    return _Proc(name, proc, reader)


def _read_lines(name: str, stream: IO[bytes], lines: Lines) -> None:
    for raw in stream:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue  # not ours (a library printing): the stderr file has the diagnostics
        if isinstance(obj, dict):
            lines.put((name, obj))
    lines.put((name, None))


def _supervise(
    procs: list[_Proc],
    go: Callable[[], int | None] | None,
    deadline: float,
    on_progress: Progress | None,
    errors: list[str],
    lines: Lines,
) -> int:
    """Relay lines until every process has ended; returns the common start time.

    ``go`` starts the workers once all are ready and returns the start time (None: the
    Locust master does it and reports the time in its ``go`` line).
    """
    start_ns = 0
    ready_by = time.monotonic() + READY_TIMEOUT_S
    open_streams = {p.name: p for p in procs}
    while open_streams:
        now = time.monotonic()
        if now > deadline:
            errors.append(
                f"load did not finish within its timeout; workers stopped "
                f"({', '.join(sorted(open_streams))} still running)"
            )
            return start_ns
        if not start_ns and now > ready_by:
            late = [p.name for p in procs if not p.ready]
            raise LoadError(
                f"{', '.join(late)} not ready within {READY_TIMEOUT_S:.0f} s:\n"
                + "\n".join(f"  {p.name} stderr:\n{p.tail()}" for p in procs if not p.ready)
            )
        try:
            name, obj = lines.get(timeout=min(0.2, max(deadline - now, 0.01)))
        except queue.Empty:
            continue
        proc = open_streams.get(name)
        if proc is None:
            continue
        if obj is None:
            del open_streams[name]
            try:
                code = proc.proc.wait(TERM_GRACE_S)
            except StartError:
                raise LoadError(
                    f"{name} closed its stdout but did not exit; its stderr:\n{proc.tail()}"
                ) from None
            if proc.done is None and code != 0:
                raise LoadError(
                    f"{name} exited with code {code} before finishing; its stderr:\n{proc.tail()}"
                )
            continue
        event = obj.get("event")
        if event == "ready":
            proc.ready = True
            if go is not None and all(p.ready for p in procs) and not start_ns:
                start_ns = go() or 0
        elif event == "go":
            start_ns = int(obj["start_mono_ns"])
        elif event == "progress" and on_progress is not None:
            _call_listener(on_progress, obj)
        elif event == "done":
            proc.done = obj
            if obj.get("error"):
                errors.append(f"{name}: {obj['error']}")
            if obj.get("start_mono_ns"):
                start_ns = start_ns or int(obj["start_mono_ns"])
        elif event == "error":
            errors.append(f"{name}: {obj.get('error')}")
    return start_ns


def _call_listener(on_progress: Progress, line: dict[str, Any]) -> None:
    """A failing progress listener is logged and skipped: it must not stop the load."""
    try:
        on_progress(line)
    except Exception:  # noqa: BLE001
        log.exception("progress listener %r failed on %s; continuing", on_progress, line)


def _go(procs: list[_Proc]) -> int:
    start_ns = time.monotonic_ns() + START_LEAD_NS
    line = (json.dumps({"start_mono_ns": start_ns}) + "\n").encode()
    for p in procs:
        stdin = p.proc.popen.stdin if p.proc.popen is not None else None
        if stdin is not None:
            try:
                stdin.write(line)
                stdin.flush()
            except OSError:
                pass  # the worker is gone; its exit is reported by _supervise
    return start_ns


def _reap(procs: list[_Proc], errors: list[str], lines: Lines) -> None:
    """Stop what still runs (EOF on stdin, SIGTERM, SIGKILL after a grace); wait for all.
    SIGTERM goes to every worker at once (each writes its partial results meanwhile)."""
    for p in procs:
        if p.proc.popen is not None:
            _close(p.proc.popen.stdin)  # a worker waiting for its start line sees EOF and exits
    alive = [p for p in procs if not p.proc.exited()]
    for p in alive:
        p.proc.signal(signal.SIGTERM)
    end = time.monotonic() + TERM_GRACE_S
    for p in alive:
        while not p.proc.exited() and time.monotonic() < end:
            time.sleep(0.02)
        if not p.proc.exited():
            errors.append(f"{p.name} ignored SIGTERM for {TERM_GRACE_S:.0f} s; killed")
    for p in procs:
        p.proc.stop(grace_s=0.0, kill_wait_s=TERM_GRACE_S)  # SIGKILL what is left; reap all
        p.reader.join(timeout=2.0)  # the pipe is at EOF once the process is gone
    by_name = {p.name: p for p in procs}
    while not lines.empty():  # 'done' lines written while the workers were being stopped
        name, obj = lines.get_nowait()
        if obj is not None and obj.get("event") == "done" and name in by_name:
            by_name[name].done = obj


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:
            pass


def merge_load(job: LoadJob, output_dir: str | os.PathLike[str], workers: int) -> LoadResult:
    """Merge the files workers ``0..workers-1`` left in ``output_dir`` (workers on other hosts:
    once their files are copied in) into ``requests.npy``, ``histograms.json`` and
    ``summary.json``; LoadError naming a missing file."""
    return _merge(job, Path(output_dir), workers, [], 0, [])


def _merge(
    job: LoadJob, out: Path, workers: int, procs: list[_Proc], start_ns: int, errors: list[str]
) -> LoadResult:
    logs, hists, summaries = [], {name: [] for name in HISTOGRAMS}, []  # type: ignore[var-annotated]
    answers: list[np.ndarray] = []
    kinds = [("requests", "npy"), ("histograms", "json"), ("summary", "json")]
    if job.answers is not None:
        kinds.append(("answers", "npy"))
    for i in range(workers):
        paths = [out / f"{kind}-{i}.{ext}" for kind, ext in kinds]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            tails = "\n".join(f"  {p.name} stderr:\n{p.tail()}" for p in procs)
            raise LoadError(
                f"worker {i} left no {', '.join(missing)} in {out} (a worker on another host "
                f"writes them there: copy them in, then call merge_load):\n{tails}"
            )
        logs.append(read_log(paths[0]))
        if job.answers is not None:
            answers.append(read_answers(paths[3], logs[-1].shape[0]))
        encoded = json.loads(paths[1].read_text())
        for name in HISTOGRAMS:
            hists[name].append(LatencyHistogram.from_dict(encoded[name]))
        summaries.append(json.loads(paths[2].read_text()))
    log = merge_logs(logs)
    merged = {name: LatencyHistogram.merge_all(hs) for name, hs in hists.items()}
    partial = any(s["partial"] for s in summaries) or bool(errors)
    summary = merge_summaries(summaries, merged)
    summary["partial"] = partial
    summary["errors_text"] = list(errors)
    start_ns = start_ns or int(summaries[0].get("start_mono_ns") or 0)
    summary["start_mono_ns"] = start_ns
    files = {
        "requests": out / "requests.npy",
        "histograms": out / "histograms.json",
        "summary": out / "summary.json",
    }
    merged_answers = None
    if job.answers is not None:
        merged_answers = merge_answers(logs, answers)
        files["answers"] = out / "answers.npy"
        write_answers(files["answers"], merged_answers)
    write_log(files["requests"], log)
    write_json(
        files["histograms"],
        {"unit": "us", "significant_figures": 3, **{n: h.to_dict() for n, h in merged.items()}},
    )
    write_json(files["summary"], summary)
    return LoadResult(
        out,
        start_ns,
        log,
        merged,
        summary,
        summaries,
        partial,
        tuple(errors),
        files,
        merged_answers,
    )
