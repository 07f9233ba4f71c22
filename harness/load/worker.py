"""The load worker process: one open-loop share of the schedule, sent through the Locust engine.

    python -m harness.load.worker JOB.json [--go-stdin]
    python -m harness.load.worker JOB.json --locust-master HOST:PORT        (Locust worker)
    python -m harness.load.worker JOB.json --locust-master-bind [HOST:]PORT --expect-workers N

This is the only module that imports locust and gevent, and only inside :func:`main` (``import
locust`` monkey-patches the standard library), so importing it elsewhere has no side effect.

Open loop: the schedule fixes every request's intended send time; a dispatcher greenlet waits for
each due time and hands the request to a new greenlet at once, however slow earlier answers are. The
wait is a Linux timerfd (wakes to the microsecond without spinning; see
:mod:`harness.load._timerfd`), or, with ``timer: spin`` / ``sleep``, gevent's millisecond timers.
The worker runs as SCHED_FIFO where permitted (``priority: realtime``, see :func:`apply_priority`):
on a busy 2-core VM that kept send-lag p99 near 0.3 ms where normal priority gave 2-4 ms. At most
``max_in_flight`` requests are outstanding: a request due while the bound is reached is recorded as
a miss (``not_sent``), never sent late. Connections are keep-alive, TCP_NODELAY, opened before the
start, and more are opened on demand (inside the request's service time). Answers are parsed by
geventhttpclient's C parser.

Locust supplies the rest of the engine: the Environment, a runner (local, or a worker of a Locust
master, which then assigns worker indexes and starts all workers together), and its request
event, fired for every request so its statistics and web UI work; its numbers are not used.

Output, in the job's ``output_dir`` (times in ns from the load start, the run's origin):
``requests-<worker>.npy`` (one :data:`~harness.model.requestlog.REQUEST_DTYPE` row per intended
request), ``histograms-<worker>.json`` (response time from the intended send, service time from
the actual send, generator lag; microseconds, 3 significant figures, failures counted) and
``summary-<worker>.json`` (counts, achieved rate, lag, CPU) and, when the job checks answers,
``answers-<worker>.npy`` (the answered item ids, row for row with the log). Each answer's
body is checked when it arrives (:mod:`harness.load.answers`), after its completion time is
taken: a body that fails is the error kind ``bad_answer``, with its validity code, item ids and
cold-start flag in the log. Stdout carries JSON lines: ``ready``,
then ``progress`` every ``progress_interval_s``, then ``done``. On SIGTERM or SIGINT the worker
stops dispatching, gives in-flight requests a short grace, and writes what it has
(``partial: true``): requests in flight are recorded as ``aborted``, requests not yet due are not
in the log (``scheduled`` says how many there were).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections import Counter
from typing import Any

import numpy as np

from harness.load.answers import Checker
from harness.load.results import finite, histograms, summarize, write_json
from harness.load.spec import MASTER_HOST, LoadJob, WorkerShare, parse_master_address, render
from harness.metrics.histogram import LatencyHistogram
from harness.model.requestlog import (
    ANSWER_CODES,
    ERROR_KINDS,
    NOT_CHECKED,
    TIERS,
    empty_answers,
    empty_log,
    error_code,
    write_answers,
    write_log,
)
from harness.process.realtime import enter_realtime, left_realtime

# filled in by _load_gevent(), inside the worker process only
gevent: Any = None
gsocket: Any = None
HTTPSocketResponse: Any = None
HTTPParseError: Any = None
HTTPConnectionClosed: Any = None

DRAIN_GRACE_S = 0.5  # in-flight requests get this long after SIGTERM before they are aborted
START_LEAD_NS = 50_000_000  # a worker that starts itself begins 50 ms after it is ready
SPIN_MARGIN_NS = 2_000_000  # timer: spin sleeps until 2 ms before the due time, then yields
MAX_SLEEP_S = 0.05  # long waits are cut in slices so a stop is noticed
HIGH_NICE = -10

E_OK = 0
E_TIMEOUT = error_code("timeout")
E_CONNECT = error_code("connect")
E_RESET = error_code("reset")
E_STATUS = error_code("http_status")
E_BAD = error_code("bad_response")
E_MISS = error_code("not_sent")
E_OTHER = error_code("other")
E_ABORTED = error_code("aborted")
E_BAD_ANSWER = error_code("bad_answer")
E_SHED = error_code("shed")


def _load_gevent() -> None:
    """Import the engine. ``import locust`` first: it monkey-patches the standard library."""
    global gevent, gsocket, HTTPSocketResponse, HTTPParseError, HTTPConnectionClosed
    import locust  # noqa: F401, I001  (first: it patches what the next imports use)
    import gevent as _gevent
    import gevent.socket as _gsocket
    from geventhttpclient._parser import HTTPParseError as _parse_error
    from geventhttpclient.response import HTTPConnectionClosed as _closed
    from geventhttpclient.response import HTTPSocketResponse as _response

    gevent, gsocket = _gevent, _gsocket
    HTTPSocketResponse, HTTPParseError, HTTPConnectionClosed = _response, _parse_error, _closed


class Pool:
    """Keep-alive connections to one host: idle sockets in a LIFO list, new ones on demand."""

    def __init__(self, host: str, port: int, connect_timeout_s: float) -> None:
        self.host, self.port, self.timeout = host, port, connect_timeout_s
        self.idle: list[Any] = []
        self.opened = 0

    def connect(self) -> Any:
        sock = gsocket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # the request's own gevent.Timeout bounds every wait
        self.opened += 1
        return sock

    def prewarm(self, count: int) -> str | None:
        """Open ``count`` idle connections; the error text if the target does not accept them."""
        try:
            for _ in range(count - len(self.idle)):
                self.idle.append(self.connect())
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def close(self) -> None:
        for sock in self.idle:
            sock.close()
        self.idle.clear()


class Waiter:
    """Waits until an absolute monotonic time inside gevent, by the job's timer method."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.stopping = False
        self._timer: Any = None
        self._watcher: Any = None
        if method == "timerfd":
            from harness.load._timerfd import TimerFd

            self._timer = TimerFd()
            self._watcher = gevent.get_hub().loop.io(self._timer.fd, 1)

    def until(self, due_ns: int) -> None:
        now = time.monotonic_ns()
        if self._timer is not None:
            while now < due_ns and not self.stopping:
                self._timer.arm_at(due_ns)
                gevent.get_hub().wait(self._watcher)
                self._timer.consume()
                now = time.monotonic_ns()
            return
        while now < due_ns and not self.stopping:
            ahead = due_ns - now - (SPIN_MARGIN_NS if self.method == "spin" else 0)
            gevent.sleep(min(ahead / 1e9, MAX_SLEEP_S) if ahead > 0 else 0)
            now = time.monotonic_ns()

    def wake(self) -> None:
        """Interrupt a wait (from a signal handler)."""
        self.stopping = True
        if self._timer is not None:
            self._timer.arm_at(1)

    def close(self) -> None:
        if self._timer is not None:
            self._watcher.close()
            self._timer.close()


class OpenLoop:
    """The open-loop sender and its recording: one row per intended request of this worker."""

    def __init__(self, job: LoadJob, share: WorkerShare, events: Any) -> None:
        self.job, self.share, self.events = job, share, events
        n = len(share)
        self.send = np.full(n, -1, dtype=np.int64)
        self.done = np.full(n, -1, dtype=np.int64)
        self.status = np.zeros(n, dtype=np.int16)
        self.tier = np.full(n, -1, dtype=np.int8)
        self.error = np.zeros(n, dtype=np.int8)
        self.checker = Checker(job.answers) if job.answers is not None else None
        self.answer = np.full(n, NOT_CHECKED, dtype=np.int8)
        self.cold = np.zeros(n, dtype=np.bool_)
        self.items = empty_answers(n, job.answers.width if job.answers is not None else 1)
        self.pool = Pool(job.host, job.port, job.timeout_s)
        self.waiter = Waiter(job.timer)
        self.live_response = LatencyHistogram()
        self.live_lag = LatencyHistogram()
        self.tiers: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.in_flight = 0
        self.dispatched = 0  # rows whose due time was reached: sent or missed
        self.sent = self.answered = self.failed = self.missed = self.shed = 0
        self.start_ns = 0
        self.stop_ns: int | None = None
        self.finished = gevent.event.Event()
        self.idle = gevent.event.Event()
        self.idle.set()
        self.greenlets: set[Any] = set()
        self._host_header = f"{job.host}:{job.port}"
        self._method = job.request.method
        self._name = job.request.path
        self._fixed = None if self._templated() else self._build(-1)

    # request bytes -----------------------------------------------------------------------------
    def _templated(self) -> bool:
        req = self.job.request
        texts = [req.path, req.body or ""] + [v for _, v in req.headers]
        return any("$" in t for t in texts)

    def _build(self, j: int) -> bytes:
        """The request bytes of row ``j`` (-1: a template without placeholders)."""
        share = self.share
        values = (0, 0, 0) if j < 0 else (share.user_ids[j], share.k[j], share.ids[j])
        user_id, k, request_id = (int(v) for v in values)
        path, body, headers = render(self.job.request, user_id, k, request_id, self.job.seed)
        payload = (body or "").encode()
        lines = [f"{self._method} {path} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if payload or self._method != "GET":
            lines.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload

    # the schedule ------------------------------------------------------------------------------
    def run(self, start_ns: int) -> None:
        """Dispatch every row at its due time (runs inside the Locust user's task)."""
        self.start_ns = start_ns
        dues = (self.share.intended_ns + start_ns).tolist()
        limit = self.job.max_in_flight
        until = self.waiter.until
        spawn = gevent.spawn
        for j, due in enumerate(dues):
            if time.monotonic_ns() < due:
                until(due)
            if self.waiter.stopping:
                break
            self.dispatched = j + 1
            if self.in_flight >= limit:
                self.error[j] = E_MISS
                self.missed += 1
                self.errors["not_sent"] += 1
                continue
            self.in_flight += 1
            self.idle.clear()
            data = self._fixed if self._fixed is not None else self._build(j)
            sock = self._send_now(j, data)
            g = spawn(self._request, j, data, sock)
            self.greenlets.add(g)
            g.link(self.greenlets.discard)
        self.finished.set()

    def _send_now(self, j: int, data: bytes) -> Any:
        """Write the request on an idle keep-alive connection from the dispatcher itself, so
        the send time is the wake-up time; None when a connection must be opened first."""
        idle = self.pool.idle
        while idle:
            sock = idle.pop()
            t0 = time.monotonic_ns()
            try:
                sock.sendall(data)  # idle: nothing unanswered on it, the send buffer is empty
            except OSError:
                sock.close()
                continue
            self.send[j] = t0
            self.sent += 1
            return sock
        return None

    def _request(self, j: int, data: bytes, sock: Any) -> None:
        status, tier, err, exc, body = 0, "", E_OTHER, None, b""
        try:
            with gevent.Timeout(self.job.timeout_s):
                status, tier, body, retry_after = self._exchange(j, data, sock)
            if 200 <= status < 300:
                err = E_OK
            else:
                err = E_SHED if status == 503 and retry_after else E_STATUS
        except gevent.Timeout as e:
            err, exc = E_TIMEOUT, e
        except ConnectionRefusedError as e:
            err, exc = E_CONNECT, e
        except (ConnectionResetError, BrokenPipeError, HTTPConnectionClosed) as e:
            err, exc = E_RESET, e
        except HTTPParseError as e:
            err, exc = E_BAD, e
        except gevent.GreenletExit:
            err = E_ABORTED
            raise
        except Exception as e:  # noqa: BLE001 - every failure is recorded, none is lost
            err, exc = (E_CONNECT if isinstance(e, OSError) and not status else E_OTHER), e
        finally:
            self._record(j, status, tier, err, exc, body)

    def _exchange(self, j: int, data: bytes, sock: Any) -> tuple[int, str, bytes, bool]:
        """Read the answer (sending first if the dispatcher could not); a connection the
        server closed while idle is replaced once, by a new one: the other idle connections
        were likely closed by the same idle timeout. The last item: the answer carries
        Retry-After (with a 503: shed by the server's overload control, not failed)."""
        pool = self.pool
        for attempt in (0, 1):
            reused = sock is not None or bool(pool.idle)
            try:
                if sock is None:
                    if self.send[j] < 0:
                        self.send[j] = time.monotonic_ns()
                        self.sent += 1
                    sock = pool.idle.pop() if pool.idle and not attempt else pool.connect()
                    sock.sendall(data)
                resp = HTTPSocketResponse(sock, block_size=16384, method=self._method)
                body = resp.read()
            except (HTTPConnectionClosed, ConnectionResetError, BrokenPipeError):
                if sock is not None:
                    sock.close()
                sock = None
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection
                raise
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
            if resp.should_close():
                sock.close()
            else:
                pool.idle.append(sock)
            tier = resp.get("x-recchaos-tier") or ""
            retry_after = bool(resp.get("retry-after"))
            return resp.status_code, tier if isinstance(tier, str) else tier[-1], body, retry_after
        raise AssertionError("unreachable")

    def _record(self, j: int, status: int, tier: str, err: int, exc: Any, body: bytes) -> None:
        done = time.monotonic_ns()
        t0 = int(self.send[j])
        if err == E_OK and self.checker is not None:
            err, exc = self._check(j, body)
        self.in_flight -= 1
        if err == E_ABORTED:
            self.error[j] = err
            self.failed += 1
            self.errors["aborted"] += 1
        else:
            self.done[j] = done
            self.status[j] = status
            self.error[j] = err
            if tier:
                self.tier[j] = TIERS.index(tier) if tier in TIERS else -1
                self.tiers[tier] += 1
            due = self.start_ns + int(self.share.intended_ns[j])
            if t0 >= 0:
                self.live_lag.record_us(max(t0 - due, 0) // 1000)
            if err == E_OK:
                self.answered += 1
                self.live_response.record_us((done - due) // 1000)
            elif err == E_SHED:  # refused on purpose: its own outcome, not a failure
                self.shed += 1
                self.errors["shed"] += 1
                self.live_response.record_failure()
            else:
                self.failed += 1
                self.errors[ERROR_KINDS[err]] += 1
                self.live_response.record_failure()
            self.events.request.fire(
                request_type=self._method,
                name=self._name,
                response_time=(done - t0) / 1e6,
                response_length=len(body),
                response=None,
                context={},
                exception=exc if exc is not None else (f"HTTP {status}" if err else None),
            )
        if self.in_flight == 0:
            self.idle.set()

    def _check(self, j: int, body: bytes) -> tuple[int, Any]:
        """Check answer ``j`` (after its completion time was taken); its error and why."""
        assert self.checker is not None
        share = self.share
        code, ids, cold = self.checker.check(
            body, int(share.user_ids[j]), int(share.k[j]), int(share.ids[j])
        )
        self.answer[j] = code
        self.cold[j] = cold
        if ids:
            width = self.checker.width
            self.items[j, : min(len(ids), width)] = ids[:width]
        if code:
            return E_BAD_ANSWER, f"bad answer: {ANSWER_CODES[code]}"
        return E_OK, None

    # stopping ----------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.stop_ns is None:
            self.stop_ns = time.monotonic_ns()
        self.waiter.wake()

    def drain(self, timeout_s: float) -> None:
        """Wait for in-flight requests; abort those still out after ``timeout_s``."""
        self.idle.wait(timeout=timeout_s)
        if self.greenlets:
            gevent.killall(list(self.greenlets), block=True, timeout=1.0)

    # reporting ---------------------------------------------------------------------------------
    def progress(self, interval_sent: int, interval_s: float) -> dict[str, Any]:
        resp, lag = self.live_response, self.live_lag
        return {
            "event": "progress",
            "worker": self.job.worker_index,
            "elapsed_s": round((time.monotonic_ns() - self.start_ns) / 1e9, 3),
            "due": self.dispatched,
            "sent": self.sent,
            "answered": self.answered,
            "failed": self.failed,
            "missed": self.missed,
            "shed": self.shed,
            "in_flight": self.in_flight,
            "rate": round(interval_sent / interval_s, 1) if interval_s > 0 else 0.0,
            "p99_ms": finite(resp.percentile_with_errors(99)) if resp.total else None,
            "lag_p99_ms": finite(lag.percentile(99)) if lag.count else None,
            "tiers": dict(self.tiers),
            "errors": dict(self.errors),
        }

    def log(self) -> np.ndarray:
        """The request log of every dispatched row, times relative to the load start."""
        n = self.dispatched
        rows = empty_log(n)
        share = self.share
        rows["id"] = share.ids[:n]
        rows["intended_ns"] = share.intended_ns[:n]
        for col, src in (("send_ns", self.send), ("done_ns", self.done)):
            vals = src[:n]
            rows[col] = np.where(vals >= 0, vals - self.start_ns, -1)
        rows["status"] = self.status[:n]
        rows["tier"] = self.tier[:n]
        # a request greenlet killed before it ran never recorded itself: aborted
        unfinished = (self.error[:n] == E_OK) & (self.done[:n] < 0)
        rows["error_kind"] = np.where(unfinished, E_ABORTED, self.error[:n])
        rows["user_id"] = share.user_ids[:n]
        rows["worker"] = self.job.worker_index
        rows["answer"] = self.answer[:n]
        rows["cold_start"] = self.cold[:n]
        return rows

    def answers(self) -> np.ndarray:
        """The answered item ids of every dispatched row (-1 where none)."""
        return self.items[: self.dispatched]


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def apply_priority(job: LoadJob) -> str:
    """Raise this process's CPU priority as the job asks; returns what was applied and why not.

    Why: on a busy 2-core VM a normal-priority generator waits in the run queue, and its send
    lag p99 reached 1-6 ms; as SCHED_FIFO (priority 10) the bare timerfd wake-up kept p99 near
    0.1 ms under the same load. It never spins with timerfd, so it takes only the CPU it needs
    (and the kernel caps real-time tasks at 95% of a CPU). ``timer: spin`` is never real-time.
    :func:`~harness.process.realtime.enter_realtime` bounds it: a worker that ran a second of
    CPU without blocking goes back to normal priority, and its summary's ``priority`` says so.
    """
    wanted = job.priority
    notes = []
    if wanted == "realtime" and job.timer == "spin":
        wanted = "high"
        notes.append("realtime refused for timer spin (it would hold a CPU)")
    if wanted == "realtime":
        refused = enter_realtime()
        if refused is None:
            return "realtime"
        notes.append(f"realtime refused ({refused})")
        wanted = "high"
    if wanted == "high":
        try:
            os.setpriority(os.PRIO_PROCESS, 0, HIGH_NICE)
            return "high" + (f"; {'; '.join(notes)}" if notes else "")
        except OSError as exc:
            notes.append(f"high refused ({exc})")
    return "normal" + (f"; {'; '.join(notes)}" if notes else "")


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class _Usage:
    def __init__(self) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.user, self.sys, self.wall = r.ru_utime, r.ru_stime, time.monotonic()

    def since(self) -> dict[str, float]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "user_s": r.ru_utime - self.user,
            "sys_s": r.ru_stime - self.sys,
            "wall_s": time.monotonic() - self.wall,
        }


# ---- process ----------------------------------------------------------------------------------


def _user_class(proc: WorkerProcess) -> type:
    """The Locust user: one per worker process, whose single task runs the open-loop schedule."""
    from locust import User, constant, task
    from locust.exception import StopUser

    class OpenLoopUser(User):
        wait_time = constant(0)

        @task
        def open_loop(self) -> None:
            try:
                proc.go.wait()
                engine = proc.engine
                if engine is not None and not engine.waiter.stopping:
                    engine.run(proc.start_ns)
            except Exception as exc:  # noqa: BLE001 - reported in the summary, not lost
                proc.error = f"{type(exc).__name__} in the schedule: {exc}"
                traceback.print_exc()
            finally:
                proc.dispatched.set()
            raise StopUser()

    return OpenLoopUser


def _progress_loop(engine: OpenLoop, interval_s: float, parent: int) -> None:
    """Progress lines; stops the engine once ``parent`` (our parent when the process started)
    is gone."""
    last_sent, last_t = 0, time.monotonic()
    while True:
        gevent.sleep(interval_s)
        if os.getppid() != parent:  # orphaned: whoever started us is gone, stop sending
            engine.stop()
        now = time.monotonic()
        _emit(engine.progress(engine.sent - last_sent, now - last_t))
        last_sent, last_t = engine.sent, now


class StoppedBeforeStart(Exception):
    """A signal came while the worker waited for its start line: nothing was sent."""


def _read_go_line(timeout_s: float) -> int:
    """The driver's start line on stdin: ``{"start_mono_ns": T}``."""
    from gevent.fileobject import FileObjectPosix

    with gevent.Timeout(timeout_s, TimeoutError(f"no start line on stdin within {timeout_s} s")):
        line = FileObjectPosix(sys.stdin.fileno(), "rb", close=False).readline()
    if not line:
        raise EOFError("stdin closed before the start line")
    return int(json.loads(line)["start_mono_ns"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.load.worker", description="Open-loop load worker (Locust engine)."
    )
    p.add_argument("job", help="the LoadJob JSON file")
    p.add_argument(
        "--go-stdin",
        action="store_true",
        help="after 'ready', wait for {\"start_mono_ns\": T} on stdin",
    )
    p.add_argument(
        "--go-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the start line or the master's start (default 60)",
    )
    p.add_argument(
        "--locust-master",
        metavar="HOST:PORT",
        type=_address("--locust-master"),
        help="run as a worker of a Locust master (which starts it and sets its index)",
    )
    p.add_argument(
        "--locust-master-bind",
        type=_address("--locust-master-bind", host_optional=True),
        metavar="[HOST:]PORT",
        help="run as the Locust master of --expect-workers workers (sends nothing), listening "
        f"on HOST:PORT (a bare PORT: {MASTER_HOST}, this machine only; an address of another "
        "interface, or 0.0.0.0, lets workers on other hosts join)",
    )
    p.add_argument(
        "--expect-workers", type=int, default=1, help="workers the master waits for (default 1)"
    )
    args = p.parse_args(argv)
    # Who started us, read now: a parent that died while we started up (the import, the wait for
    # the start) would otherwise go unnoticed, and we would send the whole schedule orphaned.
    args.parent_pid = os.getppid()
    job = LoadJob.read(args.job)
    os.makedirs(job.output_dir, exist_ok=True)
    _load_gevent()
    import gevent.event  # noqa: F401  (the engine's events)

    if args.locust_master_bind is not None:
        from harness.load import _distributed

        host, port = args.locust_master_bind
        return _distributed.run_master(job, port, args.expect_workers, _emit, bind_host=host)
    return _run_worker(job, args)


def _address(option: str, host_optional: bool = False) -> Any:
    """An argparse type: ``(host, port)`` or a usage error naming the option and the value."""

    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_master_address(text, option, host_optional)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _run_worker(job: LoadJob, args: argparse.Namespace) -> int:
    proc = WorkerProcess(job, args)
    try:
        proc.prepare()
        proc.start()
        proc.wait()
    except Exception as exc:  # noqa: BLE001 - write what we have, then fail
        proc.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        if proc.engine is not None:
            proc.engine.stop()
            proc.engine.drain(DRAIN_GRACE_S)
    return proc.finish()


class WorkerProcess:
    """One worker process's life: prepare, start (local or from a Locust master), wait, finish."""

    def __init__(self, job: LoadJob, args: argparse.Namespace) -> None:
        from locust.env import Environment

        self.job, self.args = job, args
        _raise_fd_limit(job.max_in_flight + 256)
        # Applied in prepare(), once the start-up work is done: as SCHED_FIFO from here, that
        # work (the engine, the schedule, the connections, a full collection: 30-50 ms of CPU
        # on this 2-core machine) could not be preempted by the recommender's processes.
        self.priority = "normal (start-up)"
        self.go = gevent.event.Event()
        self.dispatched = gevent.event.Event()
        self.engine: OpenLoop | None = None
        self.start_ns = 0
        self.error: str | None = None
        self.stopped_by: list[int] = []
        self.usage: _Usage | None = None
        self.progress: Any = None
        self.runner: Any = None
        self.go_reader: Any = None  # the greenlet reading the start line (--go-stdin)
        self.env = Environment(user_classes=[_user_class(self)], host=job.target)
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, self.on_signal, sig)

    def on_signal(self, signum: int) -> None:
        self.stopped_by.append(signum)
        if self.engine is not None:
            self.engine.stop()
        self._stop_waiting_for_go()
        self.go.set()

    def _stop_waiting_for_go(self) -> None:
        """Waiting for the start line after a signal: stop waiting now."""
        if self.go_reader is not None and self.stopped_by:
            why = f"stopped by signal {self.stopped_by[-1]} before the start"
            self.go_reader.kill(StoppedBeforeStart(why), block=False)

    def prepare(self) -> None:
        """Join the Locust master if any (it sets our index), open connections, say ready."""
        if self.args.locust_master:
            from harness.load import _distributed

            self.runner, self.job = _distributed.attach_worker(
                self.env, self.job, self.args.locust_master, self
            )
        share = self.job.share()
        engine = self.engine = OpenLoop(self.job, share, self.env.events)
        if self.stopped_by:  # a signal came while we were starting
            engine.stop()
        warm_error = engine.pool.prewarm(self.job.pool_size())
        gc.collect()
        gc.freeze()  # the schedule arrays and the engine are never collected: skip them
        self.priority = apply_priority(self.job)
        _emit(
            {
                "event": "ready",
                "worker": self.job.worker_index,
                "pid": os.getpid(),
                "requests": len(share),
                "connections": len(engine.pool.idle),
                "connect_error": warm_error,
                "priority": self.priority,
            }
        )

    def start(self) -> None:
        """Fix the start time (job, stdin, now, or the master's go message) and go."""
        if self.runner is None:
            self.runner = self.env.create_local_runner()
            if self.job.start_mono_ns is not None:
                self.start_ns = self.job.start_mono_ns
            elif self.args.go_stdin:
                # In a greenlet of its own, so that SIGTERM ends the wait at once (the line
                # could otherwise be waited for up to --go-timeout after the signal).
                self.go_reader = gevent.spawn(_read_go_line, self.args.go_timeout)
                self._stop_waiting_for_go()  # a signal may have come before the wait began
                try:
                    self.start_ns = self.go_reader.get()
                finally:
                    self.go_reader = None
            else:
                self.start_ns = time.monotonic_ns() + START_LEAD_NS
            self.go.set()
            self.runner.start(1, spawn_rate=1)
        elif not self.go.wait(timeout=self.args.go_timeout):
            raise TimeoutError(f"no start from the Locust master within {self.args.go_timeout} s")

    def wait(self) -> None:
        """Until the schedule is dispatched, then until the answers are in (bounded)."""
        engine = self.engine
        assert engine is not None
        self.usage = _Usage()
        self.progress = gevent.spawn(
            _progress_loop, engine, self.job.progress_interval_s, self.args.parent_pid
        )
        deadline_s = self.job.duration_s + self.job.timeout_s + 60
        if not self.dispatched.wait(timeout=deadline_s):
            self.error = f"the schedule did not finish within {deadline_s:.0f} s"
            engine.stop()
        engine.drain(DRAIN_GRACE_S if self.stopped_by else self.job.timeout_s + 1.0)

    def finish(self) -> int:
        """Write the results; tell the Locust master; close everything. The exit code."""
        if self.progress is not None:
            self.progress.kill(block=False)
        cpu = self.usage.since() if self.usage else {"user_s": 0.0, "sys_s": 0.0, "wall_s": 0.0}
        partial = bool(self.stopped_by) or self.error is not None
        left = left_realtime()
        if left:  # the run-away bound took it back to normal priority: the summary says so
            self.priority += f"; left realtime ({left['why']})"
        _finish(self.job, self.engine, cpu, partial, self.error, self.priority)
        code = 0 if self.error is None else 1
        if self.runner is not None:
            _distributed_done(self.runner, self.job, code)
            self.runner.quit()
        if self.engine is not None:
            self.engine.pool.close()
            self.engine.waiter.close()
        return code


def _distributed_done(runner: Any, job: LoadJob, code: int) -> None:
    from locust.runners import WorkerRunner

    if isinstance(runner, WorkerRunner):
        runner.send_message("recchaos_done", {"worker": job.worker_index, "code": code})
        gevent.sleep(0.2)  # let the message leave before the runner quits


def _finish(
    job: LoadJob,
    engine: OpenLoop | None,
    cpu: dict[str, float],
    partial: bool,
    error: str | None,
    priority: str,
) -> None:
    """Write the log, histograms and summary; print the ``done`` line."""
    if engine is None:
        rows, scheduled, start_ns, active_s = empty_log(0), 0, 0, 0.0
    else:
        rows, scheduled, start_ns = engine.log(), len(engine.share), engine.start_ns
        end_ns = (
            engine.stop_ns if partial and engine.stop_ns else start_ns + int(job.duration_s * 1e9)
        )
        active_s = max(end_ns - start_ns, 0) / 1e9 if start_ns else 0.0
    hists = histograms(rows)
    summary = summarize(
        job, rows, hists, scheduled, start_ns, active_s, cpu, partial, error, priority
    )
    if job.answers is not None:
        width = job.answers.width
        answers = engine.answers() if engine is not None else empty_answers(0, width)
        write_answers(job.path("answers-{worker}.npy"), answers)
    write_log(job.path("requests-{worker}.npy"), rows)
    counts = ("intended", "sent", "answered", "failed", "missed", "shed")
    write_json(
        job.path("histograms-{worker}.json"),
        {
            "worker": job.worker_index,
            "unit": "us",
            "significant_figures": 3,
            "counts": {k: summary[k] for k in counts},
            **{name: h.to_dict() for name, h in hists.items()},
        },
    )
    write_json(job.path("summary-{worker}.json"), summary)
    _emit({"event": "done", **summary})


if __name__ == "__main__":
    sys.exit(main())
