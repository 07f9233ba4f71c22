"""Calibration of the open-loop load generator against the stub server (real processes).

* a constant 2 ms service adds 2 ms (plus the stub's own measured lateness) to the round trip
  measured just before against the same stub answering at once, and every intended request is
  accounted for;
* a 1 s freeze at 200 requests/s gives the coordinated-omission-corrected percentiles that
  theory predicts for that freeze window, with the run's own requests before the freeze as the
  service time (a closed-loop tool such as Locust alone reports a few
  milliseconds at p99 for the same freeze: its users stop sending while they wait);
* hey (Debian's package, an independent tool sending at a fixed rate), on the same stub and at
  the same time, agrees on p50 and p95 within 10%;
* Locust's distributed mode (a master and two workers) splits the schedule exactly, and the
  merged histograms give exactly the percentiles of the union of the workers' raw request logs;
* keep-alive connections a server closed while idle are replaced, and no request fails;
* a worker stopped by SIGTERM leaves a partial but valid log (in-flight requests ``aborted``,
  requests due while the in-flight bound was reached ``not_sent``).

Every process is started with a bounded wait for its ready line and always reaped; a failing
test shows the worker's stderr tail.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.load import LoadJob, LoadResult, run_load
from harness.load.results import histograms
from harness.load.spec import worker_share
from harness.metrics.histogram import LatencyHistogram
from harness.model.load import LoadPhase, RequestMix
from harness.model.requestlog import ERROR_KINDS, TIERS, read_log
from harness.model.target import RequestTemplate
from harness.process import ManagedProcess, free_port
from harness.process.realtime import RT_PRIORITY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STUB_READY_S = 20.0
REQUEST = RequestTemplate(
    "POST",
    "/v1/recommend",
    '{"user_id": $user_id, "k": $k}',
    (("Content-Type", "application/json"),),
)


# ---- helpers --------------------------------------------------------------------------------


def read_json_line(proc: ManagedProcess, timeout_s: float, what: str) -> dict:
    """The next JSON line on the child's stdout (``pipes=True``); AssertionError with its log
    tail when none comes within ``timeout_s``."""
    assert proc.popen is not None and proc.popen.stdout is not None
    ready, _, _ = select.select([proc.popen.stdout], [], [], timeout_s)
    if not ready:
        raise AssertionError(f"{what}: no line within {timeout_s} s; {proc.tail_text()}")
    line = proc.popen.stdout.readline()
    if not line:
        raise AssertionError(f"{what}: exited ({proc.poll()}) without a line; {proc.tail_text()}")
    return json.loads(line)


class Stub:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def control(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body or {}).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method="POST" if data is not None else "GET"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    argv = [sys.executable, "-m", "harness.load.stub", "--port", "0", "--service-ms", "2",
            "--tier", "primary", "--realtime", "--parent-pid", str(os.getpid())]  # fmt: skip
    log = tmp_path_factory.mktemp("stub") / "stub.stderr"
    with ManagedProcess(argv, log, name="stub", cwd=REPO, pipes=True) as proc:
        yield Stub(read_json_line(proc, STUB_READY_S, "stub")["port"])


@pytest.fixture
def configured(stub: Stub) -> Iterator[Stub]:
    stub.control("/_stub/config", {"service_ms": 2, "tier": "primary", "status": 200})
    yield stub
    stub.control("/_stub/config", {"service_ms": 2, "tier": "primary", "status": 200})


def make_job(stub: Stub, out: Path, rate: float, seconds: float, **kw) -> LoadJob:
    mix = RequestMix(zipf_exponent=1.1, users=10_000, k=10)
    return LoadJob(
        target=stub.url,
        phases=(LoadPhase("steady", rate, seconds, mix),),
        seed=42,
        output_dir=str(out),
        request=REQUEST,
        **kw,
    )


def stderr_tails(out: Path) -> str:
    parts = []
    for path in sorted(out.glob("*.stderr")):
        lines = path.read_text(errors="replace").splitlines()[-25:]
        parts.append(f"{path.name}:\n" + "\n".join(f"    | {x}" for x in lines))
    return "\n".join(parts) or "(no worker stderr files)"


def check_accounted(res: LoadResult, out: Path) -> None:
    problems = res.unaccounted()
    assert not problems, f"{problems}\n{stderr_tails(out)}"


# ---- tests ----------------------------------------------------------------------------------


def round_trip(stub: Stub, out: Path) -> LoadResult:
    """The reference, measured in the test that uses it: the same load against the stub answering
    at once, so its service time is this machine's HTTP round trip right now."""
    stub.control("/_stub/config", {"service_ms": 0})
    ref = run_load(make_job(stub, out, rate=200, seconds=2.0), timeout_s=40, workers=2)
    check_accounted(ref, out)
    return ref


def spread_ms(h: LatencyHistogram) -> float:
    return h.percentile(75) - h.percentile(25)


def test_constant_2ms_service_adds_2ms_to_the_round_trip(configured: Stub, tmp_path: Path):
    """No fixed bound: the median service time must be the round trip measured just before
    (service 0 ms) plus the stub's 2 ms plus how late the stub itself sent (its timer's wake-up,
    reported by /_stub/stats), within the spreads (p25 to p75) of the two runs: answers that
    overlap more (2 ms each) cost the client a little more per request than the reference's."""
    ref = round_trip(configured, tmp_path / "ref")
    configured.control("/_stub/config", {"service_ms": 2})
    job = make_job(configured, tmp_path, rate=200, seconds=3.0)
    progress: list[dict] = []
    res = run_load(job, timeout_s=40, on_progress=progress.append, workers=2)
    check_accounted(res, tmp_path)
    s = res.summary
    assert (s["intended"], s["answered"], s["failed"], s["missed"]) == (600, 600, 0, 0), s
    late_ms = configured.control("/_stub/stats")["late_us"]["p50"] / 1000
    for name in ("service", "response"):
        base, got = getattr(ref, name), getattr(res, name)
        want = base.percentile(50) + 2.0 + late_ms
        tolerance = spread_ms(base) + spread_ms(got)  # two medians, each as sure as its spread
        assert abs(got.percentile(50) - want) <= tolerance, (
            f"{name} p50 {got.percentile(50):.3f} ms; want the round trip "
            f"{base.percentile(50):.3f} ms + 2 ms + the stub's lateness {late_ms:.3f} ms "
            f"= {want:.3f} ms within the two runs' spreads {tolerance:.3f} ms"
        )
    assert s["tiers"] == {"primary": 600}
    assert np.all(res.log["tier"] == TIERS.index("primary"))
    # the seeded mix: the logged users are the schedule's, in schedule order
    share = worker_share(job.phases, job.seed, 0, 1)
    assert np.array_equal(res.log["user_id"], share.user_ids)
    assert np.array_equal(res.log["intended_ns"], share.intended_ns)
    assert {p["worker"] for p in progress} == {0, 1} and all("p99_ms" in p for p in progress)
    # merging is exact: the merged histograms are those of the merged log
    assert histograms(res.log) == res.histograms


def co_corrected_latencies(
    rate: float, seconds: float, service_s: float, f0: float, f1: float
) -> np.ndarray:
    """What an ideal open-loop client measures from the intended send, with a freeze [f0, f1)."""
    t = np.arange(int(round(rate * seconds))) / rate
    done = t + service_s
    arrived_in_freeze = (t >= f0) & (t < f1)
    due_in_freeze = (t < f0) & (done > f0)
    done = np.where(arrived_in_freeze, f1 + service_s, done)
    done = np.where(due_in_freeze, np.maximum(done, f1), done)
    return done - t


def unfrozen_response_ms(res: LoadResult, t0_s: float, t1_s: float) -> np.ndarray:
    """Response times (ms) of the answered requests intended in [t0_s, t1_s) of the run."""
    log = res.log
    t = log["intended_ns"] / 1e9  # the schedule's offsets from the run's start
    ok = (log["error_kind"] == ERROR_KINDS.index("")) & (t >= t0_s) & (t < t1_s)
    assert ok.sum() >= 100, f"only {ok.sum()} requests in [{t0_s}, {t1_s}) s"
    return (log["done_ns"][ok] - log["intended_ns"][ok]) / 1e6


def test_freeze_gives_the_coordinated_omission_corrected_p99(configured: Stub, tmp_path: Path):
    rate, seconds, freeze_s, service_s = 200.0, 6.0, 1.0, 0.002
    job = make_job(configured, tmp_path, rate=rate, seconds=seconds, max_in_flight=1024)
    window: dict = {}

    def freeze_once(line: dict) -> None:
        if not window and line["elapsed_s"] >= 1.5:
            window.update(configured.control("/_stub/freeze", {"ms": freeze_s * 1000}))

    res = run_load(job, timeout_s=40, on_progress=freeze_once)
    check_accounted(res, tmp_path)
    assert window, "the freeze was never triggered"
    f0 = (window["start_ns"] - res.start_mono_ns) / 1e9
    f1 = (window["end_ns"] - res.start_mono_ns) / 1e9
    assert 1.0 < f0 < seconds - freeze_s - 1.0, (f0, f1)
    s = res.summary
    assert (s["answered"], s["missed"]) == (s["intended"], 0), s
    # The reference, from this run: the requests the freeze did not touch (before it, and after
    # its backlog is answered) took 2 ms plus this machine's round trip. The theory adds the
    # freeze's delays to those measured times (cycled over the run), and p50 may differ from it
    # by their spread (p25 to p75). Both sides of the freeze, not only before it: p50 is mostly
    # the untouched requests of the whole run, and the round trip drifts within a run (a CI
    # failure: 2.36 ms median in the second before the freeze, 2.45-2.68 ms in its last 2.5 s;
    # measured p50 2.50 ms against 2.37 ms from the first second alone).
    untouched = np.concatenate(
        [unfrozen_response_ms(res, 0.5, f0 - 0.05), unfrozen_response_ms(res, f1 + 0.5, seconds)]
    )
    spread = float(np.percentile(untouched, 75) - np.percentile(untouched, 25))
    delays = co_corrected_latencies(rate, seconds, 0.0, f0, f1) * 1000
    theory = delays + np.resize(untouched, delays.shape)
    for q, tol_ms in ((50, spread), (99, 25.0), (99.9, 25.0)):
        want = float(np.percentile(theory, q, method="inverted_cdf"))
        got = res.response.percentile(q)
        assert abs(got - want) <= tol_ms, f"p{q}: measured {got:.1f} ms, theory {want:.1f} ms"
    # the closed-form version: p99 = F - 1% of the run + service (the freeze holds > 1%)
    assert res.response.percentile(99) == pytest.approx(
        (freeze_s - 0.01 * seconds + service_s) * 1000, abs=25.0
    )
    assert res.response.max_ms == pytest.approx((f1 - f0 + service_s) * 1000, abs=25.0)


def _realtime_ok() -> bool:
    try:
        return subprocess.run(["chrt", "-f", "10", "true"], timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


REALTIME_OK = _realtime_ok()

# The independent tool: hey (github.com/rakyll/hey) as Debian ships it, built by Debian from
# source (package hey, installed by scripts/setup.sh). Each hey worker sends on a fixed ticker;
# a request whose answer came before the next tick leaves the rate untouched, so with each
# worker's interval (HEY_WORKERS / rate: 67 ms here) far above the 10 ms answers it sends
# open-loop at the rate asked, which the test checks from hey's own per-request log. One process
# per worker, started 1/rate apart, spreads the sends instead of firing the workers together.
HEY_WORKERS = 10
HEY_EXIT_S = 5.0
"""What a hey may run past its ``-z`` duration before the real-time bound kills it."""
HEY_CSV_HEADER = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,"


def hey_binary() -> str | None:
    return shutil.which("hey")


def hey_not_debians(binary: str) -> str | None:
    """Why ``binary`` is not Debian's hey as the package shipped it, or None."""
    owner = subprocess.run(
        ["dpkg-query", "-S", os.path.realpath(binary)], capture_output=True, text=True, timeout=30
    )
    if owner.returncode != 0 or not owner.stdout.startswith("hey:"):
        return f"{binary} is not from the Debian package hey: {owner.stdout}{owner.stderr}"
    verify = subprocess.run(["dpkg", "--verify", "hey"], capture_output=True, text=True, timeout=30)
    if verify.returncode != 0 or verify.stdout.strip():
        return f"dpkg --verify hey: the installed files differ from the package:\n{verify.stdout}"
    return None


def hey_argv(url: str, rate_per_worker: float, seconds: float) -> list[str]:
    hey = hey_binary()
    assert hey
    body = json.dumps({"user_id": 1, "k": 10})
    # Real time as our worker is, and bounded: hey is a Go program, and Go ignores the SIGXCPU of
    # RLIMIT_RTTIME's soft limit, so the bound is the hard one alone, where the kernel kills. It
    # must not cut the run it was asked for (a CI run had one of the ten heys killed at the 3 s our
    # own instruments use, with nothing on its stderr), so it is the run's length plus the exit:
    # a hey that is still running without blocking after that is killed, and finish_hey kills
    # every hey that outlives the test in any case.
    bound_us = int((seconds + HEY_EXIT_S) * 1e6)
    bound = f"--rttime={bound_us}:{bound_us}"
    return [
        *(["prlimit", bound, "chrt", "-f", str(RT_PRIORITY)] if REALTIME_OK else []),
        hey,
        *("-c", "1", "-q", f"{rate_per_worker:g}", "-z", f"{seconds:g}s", "-o", "csv"),
        *("-m", "POST", "-T", "application/json", "-d", body, f"{url}/v1/recommend"),
    ]


def hey_death(proc: subprocess.Popen[str]) -> str:
    if proc.returncode == -signal.SIGKILL and REALTIME_OK:
        return (
            ": SIGKILL; under SCHED_FIFO most likely the kernel's RLIMIT_RTTIME hard bound: a thread"
            f" of it ran {proc.args[1].split(':')[1]} us without blocking once"
        )
    return ""


def start_hey(url: str, rate: int, seconds: float, workdir: Path) -> list[subprocess.Popen[str]]:
    argv = hey_argv(url, rate / HEY_WORKERS, seconds)
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(HEY_WORKERS):
            with open(workdir / f"hey-{i}.csv", "w") as out:
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdout=out,
                        stderr=subprocess.PIPE,
                        stdin=subprocess.DEVNULL,
                        text=True,
                    )
                )
            time.sleep(1 / rate)  # spreads the workers' tickers over one interval
    except BaseException:
        stop_hey(procs)
        raise
    return procs


def stop_hey(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


def finish_hey(procs: list[subprocess.Popen[str]], timeout_s: float, workdir: Path) -> np.ndarray:
    """Every answered request's time in ms (hey's response-time: send to last byte)."""
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            assert proc.returncode == 0, (
                f"hey failed ({proc.returncode}{hey_death(proc)}):\n{err[-2000:]}"
            )
    finally:
        stop_hey(procs)
    times, statuses = [], []
    for i in range(HEY_WORKERS):
        lines = (workdir / f"hey-{i}.csv").read_text().splitlines()
        assert lines and lines[0].startswith(HEY_CSV_HEADER), lines[:2]
        for line in lines[1:]:
            fields = line.split(",")
            times.append(float(fields[0]) * 1000)
            statuses.append(fields[6])
    assert set(statuses) == {"200"}, f"hey got answers other than 200: {set(statuses)}"
    return np.array(times)


def test_hey_agrees_on_p50_and_p95(configured: Stub, tmp_path: Path):
    """hey and our worker run at the same time, at the same CPU priority, so that both see the
    same machine: this VM's noise moved p95 by more than 10% between runs taken one after the
    other. The service time is 10 ms so that 10% (1 ms) is above the scheduling noise and
    hey's 0.1 ms resolution."""
    hey = hey_binary()
    if hey is None:
        pytest.skip("hey is not installed (scripts/setup.sh installs the Debian package as root)")
    assert hey_not_debians(hey) is None, hey_not_debians(hey)
    configured.control("/_stub/config", {"service_ms": 10})
    rate, seconds = 150, 3.0
    hey_seconds = seconds + 1.5  # hey starts in ~10 ms, our worker (locust import) in ~1 s
    procs = start_hey(configured.url, rate, hey_seconds, tmp_path)
    try:
        job = make_job(configured, tmp_path / "ours", rate=rate, seconds=seconds)
        ours = run_load(
            replace(job, priority="realtime" if REALTIME_OK else "normal"), timeout_s=40
        )
    finally:
        theirs = finish_hey(procs, 30, tmp_path)
    check_accounted(ours, tmp_path / "ours")
    # open-loop at the rate asked: every tick of every worker sent (a late answer skips a tick)
    assert len(theirs) >= 0.95 * rate * hey_seconds, f"hey sent {len(theirs)} requests"
    for q in (50, 95):
        mine, other = ours.service.percentile(q), float(np.percentile(theirs, q))
        assert mine == pytest.approx(other, rel=0.10), (
            f"p{q}: ours {mine:.3f} ms (service time) vs hey {other:.3f} ms (response-time)"
        )
        assert ours.response.percentile(q) == pytest.approx(other, rel=0.10)


def test_locust_distributed_mode_splits_the_schedule_exactly(configured: Stub, tmp_path: Path):
    job = make_job(configured, tmp_path, rate=150, seconds=2.0)
    res = run_load(job, timeout_s=60, workers=2, mode="locust")
    check_accounted(res, tmp_path)
    assert res.summary["answered"] == 300 and res.summary["workers"] == 2
    for w in (0, 1):  # each worker sent every second request
        assert np.all(res.log["id"][res.log["worker"] == w] % 2 == w)
    check_merged_percentiles_equal_the_raw_logs(res)


def check_merged_percentiles_equal_the_raw_logs(res: LoadResult) -> None:
    """The master's merged histograms hold exactly what the union of the workers' raw request
    logs holds: each latency recorded one by one into a fresh histogram gives the same counts
    and the same percentiles (not approximately: counts add, so nothing may differ)."""
    union = np.concatenate([read_log(res.output_dir / f"requests-{w}.npy") for w in (0, 1)])
    assert union.shape[0] == res.log.shape[0] == res.summary["intended"]
    ok = (union["error_kind"] == ERROR_KINDS.index("")) & (union["done_ns"] >= 0)
    sent = union["send_ns"] >= 0
    starts = {"response": union["intended_ns"], "service": union["send_ns"]}
    failures = {"response": int((~ok).sum()), "service": int((~ok & sent).sum())}
    for name, start in starts.items():
        fresh = LatencyHistogram()
        for done, began in zip(union["done_ns"][ok].tolist(), start[ok].tolist(), strict=True):
            fresh.record_us((done - began) // 1000)
        fresh.record_failure(failures[name])
        merged = res.histograms[name]
        assert (merged.count, merged.failures, merged.overflow) == (
            fresh.count,
            fresh.failures,
            fresh.overflow,
        ), name
        assert merged.count == int(ok.sum()) > 0
        for q in (1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100):
            assert merged.percentile(q) == fresh.percentile(q), (name, q)
            assert merged.percentile_with_errors(q) == fresh.percentile_with_errors(q), (name, q)
        assert merged == fresh, name


def test_sigterm_leaves_a_partial_but_valid_log(configured: Stub, tmp_path: Path):
    job = make_job(configured, tmp_path, rate=200, seconds=20.0, max_in_flight=20)
    job_path = job.write(tmp_path / "job.json")
    argv = [sys.executable, "-m", "harness.load.worker", str(job_path)]
    with ManagedProcess(argv, tmp_path / "worker.stderr", cwd=REPO, pipes=True) as proc:
        lines = []
        deadline = time.monotonic() + 30
        while not any(x.get("event") == "progress" for x in lines):
            assert time.monotonic() < deadline, f"no progress line; {proc.tail_text()}"
            lines.append(read_json_line(proc, 30, "worker"))
        configured.control("/_stub/freeze", {"ms": 1500})
        time.sleep(0.5)  # 20 requests go out and hang, the rest are misses
        proc.signal(signal.SIGTERM)
        code = proc.wait(10)
        assert code == 0, f"exit {code}; {proc.tail_text()}"
    summary = json.loads((tmp_path / "summary-0.json").read_text())
    rows = read_log(tmp_path / "requests-0.npy")
    kinds = {k: int((rows["error_kind"] == i).sum()) for i, k in enumerate(ERROR_KINDS)}
    assert summary["partial"] is True
    assert 0 < summary["intended"] < summary["scheduled"] == 4000
    assert rows.shape[0] == summary["intended"]
    assert np.array_equal(rows["id"], np.arange(rows.shape[0]))  # the due prefix, no gaps
    assert summary["answered"] + summary["failed"] + summary["missed"] == summary["intended"]
    assert kinds["aborted"] == 20 and kinds["not_sent"] == summary["missed"] > 0, kinds
    sent = rows["send_ns"] >= 0
    assert np.all(sent == (rows["error_kind"] != ERROR_KINDS.index("not_sent")))
    finished = rows["done_ns"] >= 0
    assert np.all(finished == (sent & (rows["error_kind"] != ERROR_KINDS.index("aborted"))))
    hist = json.loads((tmp_path / "histograms-0.json").read_text())
    assert hist["response"]["failures"] == kinds["aborted"] + kinds["not_sent"]
    assert not math.isnan(summary["lag_p99_ms"])


def test_failures_are_recorded_never_lost(configured: Stub, tmp_path: Path):
    configured.control("/_stub/config", {"status": 503, "tier": ""})
    res = run_load(make_job(configured, tmp_path / "503", rate=100, seconds=1.0), timeout_s=40)
    check_accounted(res, tmp_path / "503")
    s = res.summary
    assert (s["intended"], s["failed"], s["errors"]) == (100, 100, {"http_status": 100}), s
    assert res.response.count == 0 and res.response.failures == 100
    assert math.isinf(res.response.percentile_with_errors(50))
    dead = Stub(free_port())  # nothing listens there
    res = run_load(make_job(dead, tmp_path / "dead", rate=100, seconds=1.0), timeout_s=40)
    check_accounted(res, tmp_path / "dead")
    assert res.summary["errors"] == {"connect": 100}, res.summary


def test_timeout_stops_the_workers_and_keeps_a_partial_result(configured: Stub, tmp_path: Path):
    job = make_job(configured, tmp_path, rate=100, seconds=30.0)
    started = time.monotonic()
    res = run_load(job, timeout_s=4.0, workers=2)
    assert time.monotonic() - started < 4.0 + 6.0
    check_accounted(res, tmp_path)
    assert res.partial and any("timeout" in e for e in res.errors), res.errors
    assert 0 < res.summary["intended"] < res.summary["scheduled"] == 3000


def test_connections_the_server_closed_while_idle_are_replaced_without_an_error(stub, tmp_path):
    """A server's idle timeout closes every pooled keep-alive connection during a quiet phase;
    the next requests find them closed and must go out on new connections, not fail (a stale
    connection was once replaced by the next pooled one, closed by the same timeout)."""
    mix = RequestMix(zipf_exponent=1.1, users=10_000, k=10)
    stub.control("/_stub/config", {"service_ms": 0, "idle_close_ms": 300})
    try:
        before = stub.control("/_stub/stats")["idle_closed"]
        job = LoadJob(
            target=stub.url,
            phases=(
                LoadPhase("busy", 100, 1.0, mix),
                LoadPhase("quiet", 0, 1.5, mix),  # every pooled connection idles past 300 ms
                LoadPhase("again", 100, 1.0, mix),
            ),
            seed=42,
            output_dir=str(tmp_path),
            request=REQUEST,
        )
        res = run_load(job, timeout_s=40, workers=1)
        closed = stub.control("/_stub/stats")["idle_closed"] - before
    finally:
        stub.control("/_stub/config", {"service_ms": 2, "idle_close_ms": 0})
    check_accounted(res, tmp_path)
    assert closed >= job.pool_size(), f"the stub closed {closed} idle connections"
    kinds = [ERROR_KINDS[k] or "ok" for k in res.log["error_kind"]]
    assert len(kinds) == 200 and set(kinds) == {"ok"}, {k: kinds.count(k) for k in set(kinds)}
