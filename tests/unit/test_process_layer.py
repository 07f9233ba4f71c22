"""The process layer's pure parts: the two copies of the helper expose the same interface, the
watchdog's pipe protocol and final line, the Redis address option, and ``watched`` over a
target (fakes only: no process is started here)."""

from __future__ import annotations

import inspect
import io
import os
from pathlib import Path
from typing import Any

import pytest

import harness.process as harness_process
import system_under_test.process as sut_process
from harness.model.errors import UsageError
from harness.process import ProcessRef
from harness.runner.settings import OPTIONS_BY_NAME, check_redis_address
from harness.runner.target import watched
from harness.sut.redis import parse_address
from harness.watchdog import TAG_VARIABLE, Teardown, Watchdog

SHARED = {
    "ManagedProcess": [
        "start",
        "pid",
        "returncode",
        "exited",
        "poll",
        "alive",
        "wait_ready",
        "wait",
        "tail",
        "tail_text",
        "signal",
        "stop",
    ],
    "ProcessRef": ["of_pid", "parse", "process", "state", "alive", "cmdline", "signal"],
}


def _signature(obj: Any) -> list[tuple[str, str]]:
    if isinstance(obj, property):
        obj = obj.fget
    params = inspect.signature(obj).parameters.values()
    return [(p.name, str(p.default)) for p in params if p.name != "registry"]


@pytest.mark.parametrize("cls", sorted(SHARED))
def test_the_recommender_copy_has_the_harness_interface(cls: str) -> None:
    """The drift test (tests/integration/test_process_helpers.py) runs the same scenarios on
    both; here their signatures must match (the harness's adds only the registry)."""
    ours, theirs = getattr(harness_process, cls), getattr(sut_process, cls)
    assert _signature(ours) == _signature(theirs)
    for name in SHARED[cls]:
        assert _signature(getattr(ours, name)) == _signature(getattr(theirs, name)), name
    for func in ("stop_processes", "log_tail"):
        assert _signature(getattr(harness_process, func)) == _signature(getattr(sut_process, func))


def test_a_process_ref_is_pid_and_start_time_and_parses_back() -> None:
    me = ProcessRef.of_pid(os.getpid())
    assert me is not None and me.alive() and ProcessRef.parse(str(me)) == me
    with pytest.raises(ValueError, match=r"'12x:3' is not PID:START"):
        ProcessRef.parse("12x:3")
    assert not ProcessRef(os.getpid(), me.create_time + 100).alive()


def _watchdog(tmp_path: Path) -> tuple[Watchdog, io.StringIO]:
    out = io.StringIO()
    return Watchdog(None, tmp_path / "journal", out=out), out


def test_the_watchdog_learns_pids_and_docker_clusters_from_pipe_lines(tmp_path) -> None:
    dog, out = _watchdog(tmp_path)
    assert dog._lines(b"pid 123 1733469553.12 fault proxy\ndocker recchaos-ab12 -\npid 9") is False
    assert dog.extra[123] == ("fault proxy", ProcessRef(123, 1733469553.12))
    assert dog.docker == {"recchaos-ab12": None}
    assert dog._lines(b" 1.5 launcher\ngarbage here\ndone\n") is True  # completes "pid 9 ..."
    assert dog.extra[9] == ("launcher", ProcessRef(9, 1.5))
    assert "ignored a line it does not understand: b'garbage here'" in out.getvalue()
    dog._lines(b"pid 7 notatime x\n")
    assert 7 not in dog.extra and "is not PID:START" in out.getvalue()


def test_a_record_written_running_again_after_the_death_is_still_closed_killed(tmp_path) -> None:
    from harness.model.record import RunRecord, read_record, write_record

    path = tmp_path / "run.json"
    write_record(path, RunRecord(scenario={}, seed=1, status="running", errors=("an error",)))
    dog, out = _watchdog(tmp_path)
    dog.record = path
    dog.close_record("killed: the harness is gone at T")
    assert read_record(path).status == "killed"
    write_record(path, RunRecord(scenario={}, seed=1, status="running"))  # the old text again
    dog.add_to_record("done: healed 0 fault(s); could not: nothing")
    rec = read_record(path)
    assert rec.status == "killed" and rec.ended_wall
    assert rec.errors == (
        "killed: the harness is gone at T",
        "watchdog: done: healed 0 fault(s); could not: nothing",
    )
    assert "said running again after it was marked killed" in out.getvalue()


def test_the_final_line_says_what_was_done_and_never_all_clean() -> None:
    report = Teardown(
        healed=["freeze(shard-0-primary) [u1]"],
        stopped=["gateway (PID 10)", "launcher (PID 11)"],
        removed=["3 container(s)", "1 network(s)"],
        looked=["the manifest m.json", f"every process tagged {TAG_VARIABLE}=t"],
    )
    line = report.line()
    assert line.startswith("done: healed 1 fault(s); stopped 2 process(es): gateway (PID 10)")
    assert "removed 3 container(s), 1 network(s)" in line and line.endswith("could not: nothing")
    assert f"looked at the manifest m.json, every process tagged {TAG_VARIABLE}=t" in line
    report.problems.append("stop region (PID 12)")
    line = report.line()
    assert line.startswith("done with 1 problem(s):") and line.endswith(
        "could not: stop region (PID 12)"
    )
    assert "all clean" not in line
    assert "looked at nothing" in Teardown().line()


def test_the_watchdog_says_where_it_did_not_look(tmp_path) -> None:
    dog, _ = _watchdog(tmp_path)
    assert any("no tagged processes" in where for where in dog.looked_at())
    dog.tag = "abc"
    assert f"every process tagged {TAG_VARIABLE}=abc" in dog.looked_at()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:6390", ("127.0.0.1", 6390)), ("[::1]:0", ("::1", 0)), ("redis:1", ("redis", 1))],
)
def test_redis_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["6390", ":6390", "host:", "host:70000", "host:x"])
def test_a_bad_redis_address_is_a_usage_error_naming_value_option_and_form(text: str) -> None:
    with pytest.raises(UsageError) as err:
        check_redis_address(text)
    assert str(err.value) == (
        f"invalid value {text!r} for --redis-address; allowed: HOST:PORT with PORT 0-65535, "
        "e.g. 127.0.0.1:6390"
    )


def test_the_redis_address_option_has_a_pytest_flag_and_an_environment_variable() -> None:
    opt = OPTIONS_BY_NAME["redis_address"]
    assert (opt.cli, opt.pytest, opt.env, opt.ini) == (
        "--redis-address",
        "--chaos-redis-address",
        "RECCHAOS_REDIS_ADDRESS",
        "chaos_redis_address",
    )
    assert opt.parse(" 10.0.0.5:6379 ", "RECCHAOS_REDIS_ADDRESS") == "10.0.0.5:6379"
    with pytest.raises(UsageError, match=r"'nope' for --chaos-redis-address from the env"):
        opt.parse("nope", "the environment")


class FakeTarget:
    def __init__(self) -> None:
        self.stopped = 0

    def extra_pids(self) -> list[tuple[str, ProcessRef]]:
        return [("fault proxy", ProcessRef(42, 1.0))]

    def stop(self) -> None:
        self.stopped += 1


class FakeWatchdog:
    def __init__(self) -> None:
        self.added: list[tuple[str, ProcessRef]] = []

    def add_process(self, name: str, ref: ProcessRef) -> None:
        self.added.append((name, ref))


def test_watched_registers_the_targets_extra_processes_and_always_stops_it() -> None:
    target, dog = FakeTarget(), FakeWatchdog()
    with pytest.raises(RuntimeError), watched(target, dog):  # type: ignore[arg-type]
        assert dog.added == [("fault proxy", ProcessRef(42, 1.0))]
        raise RuntimeError("a run that crashed")
    assert target.stopped == 1


def test_recchaos_run_with_a_bad_redis_address_exits_2_before_starting_anything(
    tmp_path, capsys
) -> None:
    from harness import cli

    scenario = Path(__file__).resolve().parents[1] / "data" / "short_kill.yaml"
    code = cli.main(["run", str(scenario), "--out", str(tmp_path), "--redis-address", "nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert "invalid value 'nope' for --redis-address; allowed: HOST:PORT" in err
    assert list(tmp_path.iterdir()) == []
