"""End-to-end check of the CUDA path, for a machine that has a GPU.

Starts the recommender twice, once with ``--device cpu`` and once with ``--device cuda``
(shards, region and gateway put their tables and models on the GPU), sends the same requests to
both and checks that every answer is at tier primary and that the top items agree; prints the
per-request latency of both. Exits 0 when the check passes, 1 when it fails, 2 when this machine
has no CUDA device (nothing to check).

    .venv/bin/python benchmarks/cuda_check.py [--preset tiny] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.sut.recommender import RecommenderCluster, RecommenderOptions  # noqa: E402


def ask(url: str, user: int) -> tuple[dict, float]:
    body = json.dumps({"user_id": user, "k": 10}).encode()
    req = urllib.request.Request(
        f"{url}/v1/recommend",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=5) as resp:
        answer = json.loads(resp.read())
    return answer, (time.perf_counter() - t0) * 1000


def serve(device: str, preset: str, users: list[int], work: Path) -> tuple[list[dict], list[float]]:
    options = RecommenderOptions(preset=preset, device=device, proxy=False)
    with RecommenderCluster(options, work / device) as cluster:
        for user in users[:50]:  # warm-up: CUDA context, kernels, caches
            ask(cluster.gateway_url, user)
        answers, times = [], []
        for user in users:
            answer, ms = ask(cluster.gateway_url, user)
            answers.append(answer)
            times.append(ms)
    return answers, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device on this machine: nothing to check")
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    users = list(range(1, args.requests + 1))
    with tempfile.TemporaryDirectory(prefix="recchaos-cuda-") as tmp:
        cpu, cpu_ms = serve("cpu", args.preset, users, Path(tmp))
        gpu, gpu_ms = serve("cuda", args.preset, users, Path(tmp))
    not_primary = sum(a["tier"] != "primary" for a in gpu)
    same_top = sum(a["items"][:5] == b["items"][:5] for a, b in zip(cpu, gpu, strict=True))
    print(f"cpu : p50 {statistics.median(cpu_ms):.2f} ms  max {max(cpu_ms):.2f} ms")
    print(f"cuda: p50 {statistics.median(gpu_ms):.2f} ms  max {max(gpu_ms):.2f} ms")
    print(f"cuda answers not at tier primary: {not_primary} of {len(gpu)}")
    print(f"same top-5 items on cpu and cuda: {same_top} of {len(gpu)}")
    ok = not_primary == 0 and same_top >= 0.95 * len(gpu)
    print("CUDA path: OK" if ok else "CUDA path: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
