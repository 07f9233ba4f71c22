"""Demo of the recommender: ``up``, a few requests at each tier, ``down`` (always).

Kills one primary to show the replica tier serving, then prints the answers. Everything it starts
is stopped on exit, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MANIFEST = Path(".sut/demo-manifest.json")


def sut(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "system_under_test", *args], check=True)


def recommend(url: str, user_id: int, k: int = 5) -> dict:
    req = urllib.request.Request(f"{url}/v1/recommend", method="POST",
                                 data=json.dumps({"user_id": user_id, "k": k}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def main() -> int:
    preset = os.environ.get("RECCHAOS_PRESET", "default")
    sut("up", "--preset", preset, "--manifest", str(MANIFEST))
    try:
        manifest = json.loads(MANIFEST.read_text())
        url = manifest["gateway_url"]
        for user in (1, 2, 3):
            answer = recommend(url, user)
            print(f"user {user}: tier={answer['tier']} items={answer['items']}")
        victim = next(c for c in manifest["components"] if c["name"] == "shard-0-primary")
        os.kill(victim["pid"], signal.SIGKILL)
        print(f"killed {victim['name']} (pid {victim['pid']})")
        time.sleep(0.2)
        for user in (4, 8, 12):  # users on shard 0 (id mod 4 == 0)
            answer = recommend(url, user)
            print(f"user {user}: tier={answer['tier']} items={answer['items']}")
    finally:
        sut("down", "--manifest", str(MANIFEST))
    return 0


if __name__ == "__main__":
    sys.exit(main())
