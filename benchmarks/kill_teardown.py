"""What the survivors see when several servers are SIGKILLed at once, and what moving the victims
to the background first (as the kill and restart faults do) changes; on a two-gateway cluster
(``up --gateways 2``).

The kernel frees a killed process's memory (``exit_mmap``) before it closes its files, in the
dying process's own context and at its priority. On this 2-core machine ten torch servers
SIGKILLed at once took both cores for about 50 ms (``perf record -a -g``: unmap_vmas,
free_pages_and_swap_cache), and their sockets stayed open, unanswering, meanwhile.

Each trial starts a cluster, runs two sequential probes (straight to gateway-1, and through the
balancer; one request every 5 ms each, user ids cycling), SIGKILLs gateway-0 alone (``one``) or
gateway-0, the region and every shard copy at once (``ten``), and prints when each victim was gone
from /proc, then the probes' answers in the 300 ms after the kill: how many, how many over 17 ms
(the gateway's deadline) and over 20 ms (the SLA), the worst, and the gateway's own
``timings_ms`` of each answer over 17 ms. ``idle`` first moves every victim to SCHED_IDLE with its
autogroup at nice 19 (``into_background``); ``base`` kills at the victim's own priority. The
watcher and the probes are the only extra load (no tight polling). It times: run it alone.

    flock -x /tmp/recchaos-cpu.lock timeout 900 .venv/bin/python benchmarks/kill_teardown.py \\
        ten:base ten:idle ten:base ten:idle ten:base ten:idle
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.inject.signals import into_background, read_stat

ROOT = Path(__file__).resolve().parents[1]
PROBE_EVERY_S = 0.005
WATCH_EVERY_S = 0.002
AFTER_S = 0.3
DEADLINE_MS = 17.0
SLA_MS = 20.0


def _gone(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is None or stat[0] in "ZX"


def _watch(pids: dict[str, int], t0: float, out: dict[str, float], stop: threading.Event) -> None:
    while not stop.is_set() and len(out) < len(pids) and time.monotonic() - t0 < 3.0:
        for name, pid in pids.items():
            if name not in out and _gone(pid):
                out[name] = (time.monotonic() - t0) * 1000
        time.sleep(WATCH_EVERY_S)


def _probe(address: str, results: list, stop: threading.Event) -> None:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=1.0)
    user = 0
    while not stop.is_set():
        user = (user + 1) % 4000
        body = json.dumps({"user_id": user, "k": 10})
        sent = time.monotonic()
        data = b""
        try:
            conn.request("POST", "/v1/recommend", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            status: object = resp.status
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=1.0)
        results.append((sent, (time.monotonic() - sent) * 1000, status, data))
        time.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - sent)))


def _timings(data: bytes) -> str:
    try:
        answer = json.loads(data)
        stages = answer.get("timings_ms") or {}
        return f"tier {answer.get('tier')}, " + " ".join(f"{k} {v:.1f}" for k, v in stages.items())
    except (ValueError, AttributeError, TypeError):
        return ""


def trial(manifest: Path, which: str, mode: str) -> None:
    comps = {c["name"]: c for c in json.loads(manifest.read_text())["components"]}
    names = ["gateway-0"]
    if which == "ten":
        names += ["region"] + sorted(n for n in comps if n.startswith("shard-"))
    pids = {n: int(comps[n]["pid"]) for n in names}
    stop = threading.Event()
    probes: dict[str, list] = {"gateway-1 direct": [], "through lb": []}
    addresses = {
        "gateway-1 direct": comps["gateway-1"]["address"],
        "through lb": comps["lb"]["address"],
    }
    threads = [
        threading.Thread(target=_probe, args=(addresses[k], v, stop)) for k, v in probes.items()
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    moved = [into_background(pid) for pid in pids.values()] if mode == "idle" else []
    kill_t = time.monotonic()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    gone: dict[str, float] = {}
    watcher = threading.Thread(target=_watch, args=(pids, kill_t, gone, stop))
    watcher.start()
    time.sleep(AFTER_S + 0.05)
    stop.set()
    for t in [watcher, *threads]:
        t.join(3.0)
    print(f"== {which}:{mode}" + (f" ({moved[0]})" if moved else ""))
    print(
        "  gone from /proc after the SIGKILL: "
        + ", ".join(f"{n} {gone.get(n, float('nan')):.0f} ms" for n in names)
    )
    for label, res in probes.items():
        after = [
            (s - kill_t, took, st, d) for s, took, st, d in res if 0 <= s - kill_t + 0.02 < AFTER_S
        ]
        over = [a for a in after if a[1] > DEADLINE_MS or a[2] != 200]
        worst = max((a[1] for a in after), default=float("nan"))
        print(
            f"  {label:16} {len(after)} answers in the {AFTER_S * 1000:.0f} ms after: "
            f"non-200 {sum(1 for a in after if a[2] != 200)}, over {DEADLINE_MS:.0f} ms "
            f"{sum(1 for a in after if a[1] > DEADLINE_MS)}, over {SLA_MS:.0f} ms "
            f"{sum(1 for a in after if a[1] > SLA_MS)}, worst {worst:.1f} ms"
        )
        for at, took, st, data in over:
            print(f"      sent at {at * 1000:+6.1f} ms: {took:5.1f} ms, {st}; {_timings(data)}")


def main(argv: list[str]) -> int:
    trials = [a.split(":") for a in argv] or [["ten", "base"], ["ten", "idle"]]
    for t in trials:
        if len(t) != 2 or t[0] not in ("one", "ten") or t[1] not in ("base", "idle"):
            print(f"error: trial {':'.join(t)!r}; allowed: one|ten:base|idle", file=sys.stderr)
            return 2
    py = sys.executable
    for which, mode in trials:
        with tempfile.TemporaryDirectory(prefix="kill-teardown-") as tmp:
            manifest = Path(tmp) / "manifest.json"
            up = [py, "-m", "system_under_test", "up", "--gateways", "2", "--shards", "4",
                  "--preset", "tiny", "--manifest", str(manifest), "--timeout", "120"]  # fmt: skip
            with open(Path(tmp) / "up.out", "w") as log:
                subprocess.run(
                    up, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=180, check=True
                )
            try:
                time.sleep(2.0)
                trial(manifest, which, mode)
            finally:
                down = [py, "-m", "system_under_test", "down", "--manifest", str(manifest)]
                subprocess.run(down, cwd=ROOT, capture_output=True, timeout=60, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
