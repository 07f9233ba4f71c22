"""Hostile scenario files through the real entry points: ``recchaos scenarios validate``,
``scenarios show`` and ``run`` (each a child process whose peak RSS and wall time are measured
from a small parent process), and the pytest plugin's collection of a scenarios directory.

The four files: billion laughs (3.4 billion strings from 300 bytes of anchors), 20 MB of text, 250
levels of nesting, and a FIFO nobody writes to. Each must exit 2 with the reason and no
traceback, in under 2 s of CPU and 200 MB, and in no more wall time than twice a valid file's
(plus 1 s). These are resource bounds (a rejected file must cost about
an interpreter start), not latency figures: without the limits the same files took 229 s and
5.8 GB, 147 s and 2.5 GB, a RecursionError, and forever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MAX_CPU_S = 2.0
MAX_RSS_MB = 200.0
HANG_S = 30.0  # a child still running after this is killed and the test fails

REASONS = {
    "laughs.yaml": "got more than 20,000 values",
    "big.yaml": "allowed: at most 1,048,576 bytes (1 MiB)",
    "deep.yaml": "got more than 32 nested levels",
    "fifo.yaml": "got a FIFO (named pipe); allowed: a regular file",
}


@dataclass(frozen=True)
class Finished:
    code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    output: str


# A tiny parent for the measured command. Linux starts a child's peak RSS (``ru_maxrss``) at its
# parent's high-water mark (fork copies the memory map, exec records the old map's peak), so a
# command forked from this test process, which has held torch, would report 400+ MB before it
# did anything. Forked from this fresh interpreter instead, it starts from a few MB, and
# ``wait4`` gives its own CPU time and peak RSS.
MEASURE = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status),
               "cpu_s": usage.ru_utime + usage.ru_stime,
               "peak_rss_mb": usage.ru_maxrss / 1024}, f)
"""


def measured(argv: list[str], cwd: Path, out: Path) -> Finished:
    """Run ``argv`` to its end and return its exit code, wall time, and its own CPU time and
    peak RSS (measured by ``MEASURE``: this command only, not the test process or other children)."""
    usage_file = out.with_suffix(".usage.json")
    usage_file.unlink(missing_ok=True)
    with open(out, "wb") as sink:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", MEASURE, str(usage_file), *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            pytest.fail(f"{argv} still running after {HANG_S} s:\n{out.read_text()[-2000:]}")
        wall = time.monotonic() - started
    assert proc.returncode == 0, f"the measuring parent failed: {out.read_text()[-2000:]}"
    usage = json.loads(usage_file.read_text())
    text = out.read_text(errors="replace")
    return Finished(usage["code"], wall, usage["cpu_s"], usage["peak_rss_mb"], text)


def write_hostile(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    laughs = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (directory / "laughs.yaml").write_text("\n".join(laughs) + "\n")
    with open(directory / "big.yaml", "w") as f:  # a scenario with a 20 MB description
        f.write((REPO / "scenarios" / "steady_state.yaml").read_text())
        f.write("\nsecond_description: |\n")
        f.writelines(["  " + "x" * 98 + "\n"] * (20 * 1024 * 1024 // 100))
    (directory / "deep.yaml").write_text("a: " + "[" * 250 + "]" * 250 + "\n")
    os.mkfifo(directory / "fifo.yaml")
    return [directory / name for name in REASONS]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_hostile(tmp_path_factory.mktemp("hostile") / "scenarios")


@pytest.mark.parametrize("command", [["scenarios", "validate"], ["scenarios", "show"], ["run"]])
def test_each_hostile_file_exits_2_quickly_and_small(hostile, command, tmp_path):
    # Wall time is judged against the same command on a valid scenario, measured beside it: on
    # a busy machine both slow down alike, while a hang (the FIFO) or a costly parse does not.
    valid = REPO / "scenarios" / "steady_state.yaml"
    reference = measured(
        [sys.executable, "-m", "harness.cli", "scenarios", "validate", str(valid)],
        REPO,
        tmp_path / "reference.txt",
    )
    assert reference.code == 0, reference
    max_wall_s = 2 * reference.wall_s + 1.0
    for path in hostile:
        argv = [sys.executable, "-m", "harness.cli", *command, str(path)]
        if command == ["run"]:
            argv += ["--out", str(tmp_path / "runs")]
        got = measured(argv, REPO, tmp_path / "output.txt")
        # the load average tells a busy machine (wall >> cpu) from a costly file (cpu high)
        where = f"recchaos {' '.join(command)} {path.name}: {got}; load {os.getloadavg()}"
        assert got.code == 2, where
        assert REASONS[path.name] in got.output, where
        assert "Traceback" not in got.output, where
        assert got.cpu_s < MAX_CPU_S, where
        assert got.wall_s < max_wall_s, f"{where}; a valid file took {reference.wall_s:.2f} s"
        assert got.peak_rss_mb < MAX_RSS_MB, where
    assert not (tmp_path / "runs").exists(), "a refused scenario must not start a run"


def test_the_pytest_plugin_reports_each_as_a_collection_error(hostile, tmp_path):
    project = hostile[0].parent.parent
    (project / "pytest.ini").write_text("[pytest]\nchaos_scenarios = scenarios\n")
    got = measured(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "scenarios"],
        project,
        tmp_path / "output.txt",
    )
    assert got.code == 2, got  # collection errors; the FIFO is not a file pytest collects
    for name in ("laughs.yaml", "big.yaml", "deep.yaml"):
        assert f"ERROR scenarios/{name}" in got.output, got.output[-3000:]
        assert REASONS[name] in got.output, got.output[-3000:]
    assert "fifo.yaml" not in got.output
    assert "RecursionError" not in got.output and "MemoryError" not in got.output
    assert got.peak_rss_mb < MAX_RSS_MB, got
