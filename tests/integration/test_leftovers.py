"""``python -m harness.process.leftovers``: what scripts/test.sh runs after each tier."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psutil


def _leftovers(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.process.leftovers", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_tagged_process_left_running_is_named_stopped_and_fails_the_check() -> None:
    value = uuid.uuid4().hex
    env = {**os.environ, "RECCHAOS_TEST_RUN": value}
    # one that ignores SIGTERM too: it has to be killed
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)",
        ],
        env=env,
        start_new_session=True,
    )
    plain = subprocess.Popen(["sleep", "120"], env=env, start_new_session=True)
    other = subprocess.Popen(["sleep", "120"], env={**os.environ, "RECCHAOS_TEST_RUN": "another"})
    try:
        done = _leftovers(
            f"RECCHAOS_TEST_RUN={value}", "--after", "the unit tier", "--grace-s", "1"
        )
        assert done.returncode == 1, done
        assert "the unit tier left 2 process(es) running" in done.stdout
        assert f"PID {stubborn.pid}" in done.stdout and f"PID {plain.pid}" in done.stdout
        assert "stopped all 2" in done.stdout
        assert stubborn.wait(timeout=10) == -9
        assert plain.wait(timeout=10) == -15
        assert psutil.Process(other.pid).is_running(), "another tag's process was touched"
        again = _leftovers(f"RECCHAOS_TEST_RUN={value}")
        assert again.returncode == 0 and again.stdout == "", again
    finally:
        for proc in (stubborn, plain, other):
            proc.kill()
            proc.wait(timeout=10)


def test_a_tag_without_a_value_is_refused_naming_it() -> None:
    done = _leftovers("RECCHAOS_TEST_RUN")
    assert done.returncode == 2
    assert "'RECCHAOS_TEST_RUN' is not VARIABLE=VALUE" in done.stderr
