"""The stall probe: one real-time process per CPU that notes when the machine ran nothing.

Run by the runner around every load (:func:`stall_probes`); by hand::

    python -m harness.process.stallprobe --cpu 0 --out probe-0.json [--period-ms 2]

Each probe pins itself to its CPU, becomes ``SCHED_FIFO`` at :data:`PROBE_PRIORITY` (above the
load worker's), sleeps ``--period-ms`` at a time and notes every wake-up that came
:data:`~harness.metrics.stalls.DETECT_MS` or more after it was due. A normal-priority process,
however busy, cannot make it late: the kernel hands a real-time task its CPU at once. So a late
wake-up means the CPU ran nothing at all then (the hypervisor did not run it, or the kernel was
busy with what cannot be preempted): a host stall (:mod:`harness.metrics.stalls`). At SIGTERM
it writes what it saw to ``--out`` (JSON, written to a temporary name and renamed, so a reader
finds a whole record or none). Where the probe cannot be real-time (no permission), its record
says so and its wake-ups prove nothing: the runner then takes no stall from it.

It costs about 1.5% of one CPU per probe (a Python wake-up every 2 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.model.stalls import DETECT_MS, HostStall
from harness.process.managed import ManagedProcess, Registry
from harness.process.realtime import RT_PRIORITY, enter_realtime, left_realtime

PROBE_PRIORITY = RT_PRIORITY + 10  # above the load worker and the fault proxy
PERIOD_MS = 2.0
MAX_EVENTS = 100_000  # a record stays small even on a machine that stalls all the time
STOP_WAIT_S = 5.0


def probe(cpu: int, out: Path, period_ms: float, realtime: bool = True) -> int:
    """The probe's loop, until SIGTERM or SIGINT; then its record is written to ``out``."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        os.sched_setaffinity(0, {cpu})
        pinned = True
    except (OSError, ValueError) as exc:
        pinned = False
        print(f"stallprobe: cannot pin to CPU {cpu}: {exc}", file=sys.stderr)
    why_not = enter_realtime(PROBE_PRIORITY) if realtime else "asked not to be (--no-realtime)"
    state = "real-time" if why_not is None else f"not real-time: {why_not}"
    print(f"stallprobe: watching CPU {cpu} every {period_ms:g} ms ({state})", file=sys.stderr)
    sys.stderr.flush()
    period_ns = int(period_ms * 1e6)
    late_ns = int(DETECT_MS * 1e6)
    events: list[tuple[int, int]] = []
    dropped = wakeups = 0
    start = last = time.monotonic_ns()
    while not stop.is_set():
        time.sleep(period_ms / 1e3)
        now = time.monotonic_ns()
        wakeups += 1
        if now - last - period_ns >= late_ns:
            if len(events) < MAX_EVENTS:
                events.append((last + period_ns, now))
            else:
                dropped += 1
        last = now
    left = left_realtime()
    record = {
        "cpu": cpu,
        "pinned": pinned,
        "realtime": why_not is None and not left,
        "why_not_realtime": why_not or (f"left real-time: {left}" if left else None),
        "period_ms": period_ms,
        "detect_ms": DETECT_MS,
        "start_ns": start,
        "end_ns": last,
        "wakeups": wakeups,
        "events": events,
        "dropped": dropped,
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.process.stallprobe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cpu", type=int, required=True, help="the CPU to watch (pinned to it)")
    parser.add_argument("--out", type=Path, required=True, help="where the record goes (JSON)")
    parser.add_argument(
        "--period-ms",
        type=float,
        default=PERIOD_MS,
        help=f"sleep between wake-ups (default {PERIOD_MS:g})",
    )
    parser.add_argument(
        "--no-realtime",
        action="store_true",
        help="stay at normal priority (its record then proves nothing; for tests)",
    )
    args = parser.parse_args(argv)
    if args.cpu not in os.sched_getaffinity(0):
        parser.error(
            f"--cpu {args.cpu}: not one of this process's CPUs {sorted(os.sched_getaffinity(0))}"
        )
    if not 0.1 <= args.period_ms <= DETECT_MS:
        parser.error(f"--period-ms {args.period_ms}: allowed 0.1 to {DETECT_MS} ms")
    return probe(args.cpu, args.out, args.period_ms, realtime=not args.no_realtime)


# -- the runner's side --------------------------------------------------------------------------


@dataclass
class ProbeReport:
    """What the probes saw: the stalls (the monotonic clock, ns) and whether they can be
    trusted (every CPU watched by a real-time probe that left a record)."""

    stalls: tuple[HostStall, ...] = ()
    trusted: bool = False
    cpus: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)

    def relative_to(self, origin_ns: int) -> tuple[HostStall, ...]:
        """The stalls on the request log's clock (ns from the load's origin)."""
        return tuple(
            HostStall(s.cpu, s.start_ns - origin_ns, s.end_ns - origin_ns) for s in self.stalls
        )

    def to_dict(self, origin_ns: int) -> dict[str, Any]:
        return {
            "trusted": self.trusted,
            "cpus": list(self.cpus),
            "notes": list(self.notes),
            "stalls": [s.to_dict() for s in self.relative_to(origin_ns)],
        }


def read_report(paths: dict[int, Path]) -> ProbeReport:
    """The probes' records, one per CPU; a missing or unreadable one makes the report untrusted."""
    report = ProbeReport(cpus=tuple(sorted(paths)))
    trusted = bool(paths)
    stalls: list[HostStall] = []
    for cpu, path in sorted(paths.items()):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            report.notes.append(f"the probe on CPU {cpu} left no record ({exc})")
            trusted = False
            continue
        if not rec.get("realtime") or not rec.get("pinned"):
            why = rec.get("why_not_realtime") or "not pinned to its CPU"
            report.notes.append(f"the probe on CPU {cpu} proves nothing: {why}")
            trusted = False
        if rec.get("dropped"):
            report.notes.append(f"the probe on CPU {cpu} dropped {rec['dropped']} stalls")
        stalls += [HostStall(cpu, int(a), int(b)) for a, b in rec.get("events", [])]
    report.stalls = tuple(sorted(stalls, key=lambda s: s.start_ns))
    report.trusted = trusted
    return report


@contextmanager
def stall_probes(
    out_dir: Path, registry: Registry | None = None, period_ms: float = PERIOD_MS
) -> Iterator[ProbeReport]:
    """One probe per CPU of this process while the block runs; the yielded report is filled in
    when the block ends (the probes stopped, their records read). Probes are always stopped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ProbeReport()
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    paths: dict[int, Path] = {}
    procs: list[ManagedProcess] = []
    try:
        for cpu in sorted(os.sched_getaffinity(0)):
            paths[cpu] = out_dir / f"probe-{cpu}.json"
            paths[cpu].unlink(missing_ok=True)
            argv = [sys.executable, "-m", "harness.process.stallprobe", "--cpu", str(cpu)]
            argv += ["--out", str(paths[cpu]), "--period-ms", str(period_ms)]
            procs.append(
                ManagedProcess(
                    argv,
                    out_dir / f"probe-{cpu}.log",
                    name=f"stall probe {cpu}",
                    env=env,
                    registry=registry,
                ).start()
            )
        yield report
    finally:
        for p in procs:
            p.stop(grace_s=STOP_WAIT_S)
        done = read_report(paths)
        report.stalls, report.trusted, report.cpus = done.stalls, done.trusted, done.cpus
        report.notes[:] = done.notes


if __name__ == "__main__":
    sys.exit(main())
