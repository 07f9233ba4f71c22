"""Guards tripping on real targets, through ``recchaos run``.

On the recommender (``tests/data/guard_trip.yaml``): its entry point, the balancer ``lb``,
frozen at 4 s makes every request fail (each times out after 2 s), the error-ratio guard trips,
and the halt heals the freeze and a shard latency fault at once (each heal within 1 s of the
trip, measured from the monotonic trip and heal times in run.json) and never applies the kill
planned for 11 s; the halt
is in run.json and report.html, and the verdict is FAIL. On a generic target (the stub server,
frozen): the health guard trips when ``/healthz`` stops answering. Nothing is left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness.process import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "data" / "guard_trip.yaml"
TAG = "RECCHAOS_TEST_TAG"


def recchaos(*args: str, tag: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real CLI; every process it starts inherits ``TAG=tag`` (to find leftovers by)."""
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, TAG: tag},
    )


def tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``TAG=tag``."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def left_running(tag: str, timeout_s: float = 10.0) -> list[int]:
    """Tagged processes still alive after ``timeout_s`` (a watchdog may take a moment)."""
    deadline = time.monotonic() + timeout_s
    while (found := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def run_dir_of(proc: subprocess.CompletedProcess[str]) -> Path:
    tail = (proc.stdout + proc.stderr)[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("run record: ")]
    assert lines, tail
    return Path(lines[-1].removeprefix("run record: ")).parent


def test_an_error_ratio_guard_halts_a_real_run_and_heals_within_a_second(tmp_path):
    tag = uuid.uuid4().hex
    proc = recchaos("run", str(SCENARIO), "--out", str(tmp_path), "--no-progress", tag=tag)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 1, tail  # FAIL: the guard tripped
    run_dir = run_dir_of(proc)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete" and record["verdict"] == "FAIL", tail
    halt = record["halt"]
    assert halt is not None, tail
    assert (halt["guard"], halt["kind"]) == ("guards[0]", "error_ratio")
    assert halt["value"] > 0.5 and halt["trip_ns"] > 4_000_000_000  # after the freeze at 4 s
    assert halt["not_applied"] == ["kill(shard-0-primary) at 11 s"]
    by_label = {f"{e['kind']}({e['target']})": e for e in record["timeline"]}
    assert sorted(by_label) == ["freeze(lb)", "latency(shard-1-replica)"]  # no kill
    assert sorted(halt["healed"]) == sorted(by_label)
    for label, event in by_label.items():
        assert event["inject_ns"] < halt["trip_ns"], label
        late_ms = (event["heal_ns"] - halt["trip_ns"]) / 1e6
        assert 0 <= late_ms <= 1000, f"{label} healed {late_ms:.1f} ms after the trip"
    guard = [c for c in record["checks"] if c["metric"] == "guard"]
    assert [c["verdict"] for c in guard] == ["FAIL"]
    assert guard[0]["message"].startswith("guard error ratio above 0.5 for 1 s (guards[0])")

    report = recchaos("report", str(run_dir), tag=tag, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    html = (run_dir / "report.html").read_text()
    assert "HALTED by a guard" in html and "halt (guards[0])" in html
    assert "kill(shard-0-primary) at 11 s" in html
    assert left_running(tag) == []


STUB_SCENARIO = """\
name: health_guard
seed: 5
target:
  kind: generic
  components:
    api: [{python}, -m, harness.load.stub, --port, "{port}", --service-ms, "1"]
  endpoint: http://127.0.0.1:{port}
  request: {{method: GET, path: /item}}
  ready_path: /healthz
warmup_s: 1
settle_s: 1
load:
  - {{name: main, rate: 50, duration_s: 8}}
faults:
  - {{kind: freeze, target: api, at_s: 3, heal: end}}
guards:
  - {{kind: health, path: /healthz, for_s: 1, timeout_ms: 200, every_s: 0.25}}
slos:
  - {{metric: error_ratio, at_most: 0}}
evidence: {{min_samples: 20}}
"""


def test_a_health_guard_halts_a_run_when_healthz_stops_answering(tmp_path):
    tag = uuid.uuid4().hex
    scenario = tmp_path / "health_guard.yaml"
    scenario.write_text(STUB_SCENARIO.format(python=sys.executable, port=free_port()))
    proc = recchaos("run", str(scenario), "--out", str(tmp_path / "runs"), "--no-progress", tag=tag)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 1, tail
    record = json.loads((run_dir_of(proc) / "run.json").read_text())
    halt = record["halt"]
    assert halt is not None and halt["kind"] == "health", tail
    assert (
        "GET /healthz failed" in halt["evidence"] and "no answer within 200 ms" in halt["evidence"]
    )
    [freeze] = record["timeline"]
    assert freeze["inject_ns"] < halt["trip_ns"]
    # the freeze at 3 s, then probes that fail for 1 s: tripped within about 1.5 s of the inject
    assert halt["trip_ns"] - freeze["inject_ns"] < 2_500_000_000, halt
    assert (freeze["heal_ns"] - halt["trip_ns"]) / 1e6 <= 1000
    assert left_running(tag) == []
