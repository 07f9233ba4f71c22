"""What one load worker must do: a :class:`LoadJob`, pure data with a JSON round trip.

The harness's main process builds a job (target URL, request template, phases, seed, bounds),
the driver (:mod:`harness.load.driver`) writes one copy per worker process, and the worker
(:mod:`harness.load.worker`) reads it back. Worker ``i`` of ``n`` takes every ``n``-th intended
request of the one seeded schedule (:func:`harness.model.schedule.request_schedule`), so any
number of workers, local or in Locust's distributed mode, sends exactly the single-process
schedule between them. Nothing here reads a clock or imports locust.
"""

from __future__ import annotations

import json
import math
import os
import string
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from harness.load.answers import AnswerCheck
from harness.model.errors import Problem, UsageError
from harness.model.load import LoadPhase, RequestMix
from harness.model.schedule import request_schedule
from harness.model.target import HTTP_METHODS, RequestTemplate

TIMERS = ("timerfd", "spin", "sleep")
PRIORITIES = ("realtime", "high", "normal")
JOB_VERSION = 1

RECOMMENDER_REQUEST = RequestTemplate(
    method="POST",
    path="/v1/recommend",
    body='{"user_id": $user_id, "k": $k}',
    headers=(("Content-Type", "application/json"), ("X-Request-Id", "$request_id")),
)
"""The bundled recommender's request; ``X-Request-Id`` is the request's schedule position,
which the shard servers' fault points hash together with the seed."""


MASTER_HOST = "127.0.0.1"  # the Locust master's default bind: loopback only


def parse_master_address(text: str, option: str, host_optional: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; with ``host_optional`` a bare ``PORT`` means
    :data:`MASTER_HOST`) as ``(host, port)``; ValueError naming ``option``, the text and what
    is allowed."""
    raw = text.strip()
    host, sep, port = raw.rpartition(":")
    if not sep and host_optional:
        host, port = MASTER_HOST, raw
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        form = "[HOST:]PORT" if host_optional else "HOST:PORT"
        raise ValueError(
            f"{option} {text!r} is not {form} with PORT 1-65535, e.g. 10.0.0.1:5557"
            + (f" (a bare PORT binds {MASTER_HOST})" if host_optional else "")
        )
    return host, int(port)


def connect_host(bind_host: str) -> str:
    """The address a worker on this host dials for a master bound to ``bind_host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": MASTER_HOST}.get(bind_host, bind_host)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LoadJobError(UsageError):
    """A load job that cannot run: names the field, the value and what is allowed."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [p.describe() for p in problems]
        head = f"invalid load job ({source})"
        super().__init__(
            f"{head}: {lines[0]}" if len(lines) == 1 else "\n  ".join([head + ":", *lines])
        )


@dataclass(frozen=True)
class LoadJob:
    """One worker's orders. Times are seconds unless named ``_ns``; rates are requests/s."""

    target: str  # base URL, e.g. http://127.0.0.1:8080
    phases: tuple[LoadPhase, ...]
    seed: int
    output_dir: str
    request: RequestTemplate = RECOMMENDER_REQUEST
    worker_index: int = 0
    worker_count: int = 1
    max_in_flight: int = 512  # above this many outstanding requests a due request is a miss
    timeout_s: float = 2.0  # per request, connect included
    connections: int = 0  # keep-alive connections opened before the start; 0: sized from the rate
    timer: str = "timerfd"  # how the generator waits for a due time, see TIMERS
    priority: str = "realtime"  # the worker's CPU priority, see PRIORITIES (falls back if refused)
    progress_interval_s: float = 1.0
    start_mono_ns: int | None = None  # CLOCK_MONOTONIC time of offset 0; None: told at start
    answers: AnswerCheck | None = None  # how to check each answer's body; None: not checked
    version: int = field(default=JOB_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))
        problems = _problems(self)
        if problems:
            raise LoadJobError("LoadJob", problems)

    # derived, pure ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return urlsplit(self.target).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.target)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def duration_s(self) -> float:
        return float(sum(p.duration_s for p in self.phases))

    @property
    def peak_rate(self) -> float:
        """Requests/s this worker sends in its busiest phase."""
        top = max((p.rate for p in self.phases), default=0.0)
        return top / self.worker_count

    def pool_size(self) -> int:
        """Connections to open before the start: enough for 20 ms of answers at the peak rate."""
        if self.connections:
            return min(self.connections, self.max_in_flight)
        return max(2, min(self.max_in_flight, math.ceil(self.peak_rate * 0.02) + 2))

    def for_worker(self, index: int, count: int) -> LoadJob:
        return replace(self, worker_index=index, worker_count=count)

    def share(self) -> WorkerShare:
        """This worker's rows of the seeded schedule (ids are positions in the whole schedule)."""
        return worker_share(self.phases, self.seed, self.worker_index, self.worker_count)

    def path(self, name: str) -> Path:
        """An output file of this worker: ``requests-<worker>.npy`` and friends."""
        return Path(self.output_dir) / name.format(worker=self.worker_index)

    # JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["phases"] = [p.to_dict() for p in self.phases]
        d["request"] = self.request.to_dict()
        d["answers"] = self.answers.to_dict() if self.answers is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> LoadJob:
        if not isinstance(data, dict):
            raise LoadJobError(source, [Problem("", data, "a JSON object")])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LoadJobError(
                source,
                [Problem(unknown[0], data[unknown[0]], "one of " + ", ".join(sorted(known)))],
            )
        try:
            d = dict(data)
            d["phases"] = tuple(_phase(p) for p in d.get("phases", ()))
            if "request" in d:
                d["request"] = _request(d["request"])
            if d.get("answers") is not None:
                d["answers"] = AnswerCheck.from_dict(d["answers"])
            return cls(**d)
        except LoadJobError as exc:
            raise LoadJobError(source, list(exc.problems)) from None
        except (TypeError, KeyError, ValueError) as exc:
            raise LoadJobError(source, [Problem("", data, f"a load job ({exc})")]) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> LoadJob:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoadJobError(source, [Problem("", text[:60], f"JSON ({exc})")]) from None
        return cls.from_dict(data, source)

    def write(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> LoadJob:
        return cls.from_json(Path(path).read_text(), os.fspath(path))


@dataclass(frozen=True, eq=False)
class WorkerShare:
    """The rows of the schedule one worker sends, in intended order."""

    ids: np.ndarray  # int64 positions in the whole schedule
    intended_ns: np.ndarray  # int64 offsets from the load start
    user_ids: np.ndarray  # int64
    k: np.ndarray  # int32
    total: int  # rows in the whole schedule (all workers)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def worker_share(phases: tuple[LoadPhase, ...], seed: int, index: int, count: int) -> WorkerShare:
    """Worker ``index`` of ``count`` takes rows index, index + count, ... of the schedule."""
    sched = request_schedule(phases, seed)
    pick = slice(index, None, count)
    ids = np.arange(len(sched), dtype=np.int64)[pick]
    return WorkerShare(
        ids, sched.intended_ns[pick], sched.user_ids[pick], sched.k[pick], len(sched)
    )


def render(
    template: RequestTemplate, user_id: int, k: int, request_id: int, seed: int
) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
    """Path, body and headers of one request (``$user_id``, ``$k``, ``$request_id``, ``$seed``)."""
    values = {"user_id": user_id, "k": k, "request_id": request_id, "seed": seed}
    path, body = template.render(**values)
    headers = tuple(
        (name, value if "$" not in value else _substitute(value, values))
        for name, value in template.headers
    )
    return path, body, headers


def _substitute(text: str, values: dict[str, Any]) -> str:
    return string.Template(text).safe_substitute(values)


def _phase(d: Any) -> LoadPhase:
    mix = d.get("mix", {})
    return LoadPhase(
        d["name"],
        float(d["rate"]),
        float(d["duration_s"]),
        RequestMix(**mix) if isinstance(mix, dict) else mix,
    )


def _request(d: Any) -> RequestTemplate:
    if isinstance(d, RequestTemplate):
        return d
    headers = d.get("headers") or {}
    pairs = headers.items() if isinstance(headers, dict) else (tuple(h) for h in headers)
    return RequestTemplate(
        d.get("method", "GET"),
        d.get("path", "/"),
        d.get("body"),
        tuple((str(k), str(v)) for k, v in pairs),
    )


def _problems(job: LoadJob) -> list[Problem]:
    out: list[Problem] = []

    def need(ok: bool, name: str, allowed: str, hint: str = "") -> None:
        if not ok:
            out.append(Problem(name, getattr(job, name), allowed, hint))

    parts = urlsplit(job.target) if isinstance(job.target, str) else None
    need(
        parts is not None and parts.scheme == "http" and bool(parts.hostname),
        "target",
        "an http:// base URL with a host, such as http://127.0.0.1:8080",
    )
    need(isinstance(job.seed, int) and job.seed >= 0, "seed", "an integer >= 0")
    need(
        bool(job.phases)
        and all(isinstance(p, LoadPhase) and p.rate >= 0 and p.duration_s > 0 for p in job.phases),
        "phases",
        "at least one LoadPhase with rate >= 0 and duration_s > 0",
    )
    need(
        isinstance(job.worker_count, int) and job.worker_count >= 1,
        "worker_count",
        "an integer >= 1",
    )
    need(
        isinstance(job.worker_index, int) and 0 <= job.worker_index < max(job.worker_count, 1),
        "worker_index",
        f"an integer in [0, worker_count={job.worker_count})",
    )
    need(
        isinstance(job.max_in_flight, int) and job.max_in_flight >= 1,
        "max_in_flight",
        "an integer >= 1",
    )
    need(isinstance(job.timeout_s, int | float) and job.timeout_s > 0, "timeout_s", "seconds > 0")
    need(
        isinstance(job.connections, int) and job.connections >= 0,
        "connections",
        "an integer >= 0 (0: sized from the rate)",
    )
    need(job.timer in TIMERS, "timer", "one of " + ", ".join(TIMERS))
    need(job.priority in PRIORITIES, "priority", "one of " + ", ".join(PRIORITIES))
    need(
        isinstance(job.progress_interval_s, int | float) and job.progress_interval_s > 0,
        "progress_interval_s",
        "seconds > 0",
    )
    need(
        job.start_mono_ns is None or (isinstance(job.start_mono_ns, int) and job.start_mono_ns > 0),
        "start_mono_ns",
        "None or a positive time.monotonic_ns() reading",
    )
    need(isinstance(job.output_dir, str) and bool(job.output_dir), "output_dir", "a directory path")
    need(
        job.version == JOB_VERSION,
        "version",
        f"{JOB_VERSION}",
        "the job was written by another recchaos version",
    )
    if job.answers is not None:
        if not isinstance(job.answers, AnswerCheck):
            out.append(Problem("answers", job.answers, "None or an AnswerCheck"))
        else:
            out += [Problem(*p) for p in job.answers.problems()]
    req = job.request
    if not isinstance(req, RequestTemplate):
        out.append(Problem("request", req, "a RequestTemplate"))
    else:
        if req.method not in HTTP_METHODS:
            out.append(Problem("request.method", req.method, "one of " + ", ".join(HTTP_METHODS)))
        if not req.path.startswith("/"):
            out.append(Problem("request.path", req.path, "a path starting with /"))
        try:
            render(req, 0, 1, 0, 0)
        except (KeyError, ValueError) as exc:
            out.append(
                Problem(
                    "request",
                    req.to_dict(),
                    "templates using only $user_id, $k, $request_id, $seed",
                    f"bad placeholder {exc}",
                )
            )
    return out


__all__ = [
    "PRIORITIES",
    "RECOMMENDER_REQUEST",
    "TIMERS",
    "LoadJob",
    "LoadJobError",
    "WorkerShare",
    "render",
    "worker_share",
]
