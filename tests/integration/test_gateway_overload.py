"""Overload control on a real gateway: flooded far past capacity, it sheds with fast 503s and
serves the rest in time, where the same flood on a gateway that never sheds makes every answer
late.

The reference is measured in the same test: one gateway started with ``--no-shed`` and one with
the default overload control, on the same shards, each flooded by the harness's own open-loop
load worker with the same schedule (a light phase, the flood, a light phase). Latency-sensitive:
run under the exclusive CPU lock (``flock -x /tmp/recchaos-cpu.lock``).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cluster import Cluster, start_cluster
from test_gateway_limits import gateway

from harness.load import LoadResult, run_load
from harness.load.spec import LoadJob
from harness.model.load import LoadPhase, RequestMix
from harness.model.requestlog import error_code, succeeded

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SLA_MS = 20.0
SHED = error_code("shed")
LIGHT_RATE, LIGHT_S = 100.0, 2.0
# Far past the capacity of the tiny preset with its load generator on the same 2 cores.
FLOOD_RATE, FLOOD_S = 2500.0, 3.0
MIX = RequestMix(zipf_exponent=1.1, users=500, k=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_artifacts: Path) -> Iterator[Cluster]:
    with start_cluster(tmp_path_factory.mktemp("overload-cluster"), shards=2) as c:
        yield c


def flood(port: int, out: Path) -> LoadResult:
    job = LoadJob(
        target=f"http://127.0.0.1:{port}",
        phases=(
            LoadPhase("before", LIGHT_RATE, LIGHT_S, MIX),
            LoadPhase("flood", FLOOD_RATE, FLOOD_S, MIX),
            LoadPhase("after", LIGHT_RATE, LIGHT_S, MIX),
        ),
        seed=7,
        output_dir=str(out),
        max_in_flight=2048,
    )
    return run_load(job, timeout_s=90)


def phase(log: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    t = log["intended_ns"]
    return log[(t >= start_s * 1e9) & (t < end_s * 1e9)]


def outcome(rows: np.ndarray) -> dict[str, float]:
    ok = succeeded(rows)
    shed = rows["error_kind"] == SHED
    served_ms = (rows["done_ns"][ok] - rows["intended_ns"][ok]) / 1e6
    rejected_ms = (rows["done_ns"][shed] - rows["send_ns"][shed]) / 1e6
    return {
        "n": len(rows),
        "served": int(ok.sum()),
        "shed": int(shed.sum()),
        "failed": int(len(rows) - ok.sum() - shed.sum()),
        "served_p50": float(np.percentile(served_ms, 50)) if len(served_ms) else np.inf,
        "served_p99": float(np.percentile(served_ms, 99)) if len(served_ms) else np.inf,
        "shed_p99": float(np.percentile(rejected_ms, 99)) if len(rejected_ms) else np.nan,
        "goodput": float((served_ms <= SLA_MS).sum()),
    }


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_flooded_gateway_sheds_fast_and_serves_the_rest_in_time(cluster, tmp_path):
    flood_window = (LIGHT_S, LIGHT_S + FLOOD_S)
    results = {}
    for name, options in (("no-shed", ("--no-shed",)), ("shed", ())):
        with gateway(cluster, tmp_path, *options) as gw:
            res = flood(gw.port, tmp_path / name)
            log = res.log
            results[name] = {
                "before": outcome(phase(log, 0, LIGHT_S)),
                "flood": outcome(phase(log, *flood_window)),
                # the last second: the gateway had a second to recover from the flood
                "after": outcome(phase(log, LIGHT_S + FLOOD_S + 1.0, 2 * LIGHT_S + FLOOD_S)),
                "metric_shed": metric(gw.port, "recchaos_shed_total"),
                "metric_queued": metric(gw.port, "recchaos_queue_delay_seconds_count"),
                "log": gw.tail(),
            }
    ref, got = results["no-shed"], results["shed"]
    report = "\n".join(
        f"{name} {ph}: {r[ph]}"
        for name, r in results.items()
        for ph in ("before", "flood", "after")
    )
    # the reference really was past capacity: late answers, and nothing shed
    assert ref["flood"]["shed"] == 0 and ref["metric_shed"] == 0, report
    assert ref["flood"]["served_p99"] > SLA_MS, f"the flood did not overload the gateway\n{report}"
    # at light load nothing is shed, before or after the flood
    for ph in ("before", "after"):
        assert got[ph]["shed"] == 0 and got[ph]["failed"] == 0, report
        assert got[ph]["served_p99"] <= SLA_MS, report
    flooded = got["flood"]
    assert flooded["shed"] > 0, report
    # every shed request is one the gateway counted, and every recommend request's delay too
    assert got["metric_shed"] == flooded["shed"], report
    assert got["metric_queued"] >= got["before"]["n"] + flooded["n"] * 0.5, report
    # a rejection costs a fraction of an answer: fast next to the reference's answers
    assert flooded["shed_p99"] < ref["flood"]["served_p50"] / 2, report
    # the served answers are in time, where the reference's were not, and no fewer are
    assert flooded["served_p99"] < ref["flood"]["served_p99"] / 2, report
    assert flooded["goodput"] >= ref["flood"]["goodput"], report
