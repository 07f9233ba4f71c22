"""The unit tier's purity guard: a unit test that starts a process or opens a network socket fails.

``tests/unit`` is the fast tier (pure logic, fakes, files in ``tmp_path``), so every unit test
runs with process creation and network sockets replaced by functions that raise
:class:`ImpureUnitTest`, which names what the test tried and where the test belongs instead:

- a child process: ``subprocess.Popen`` (so ``subprocess.run``, ``check_output``, ``os.popen``),
  ``os.fork``, ``os.forkpty``, ``os.posix_spawn[p]``, ``os.system`` and the fork-exec primitive
  under ``multiprocessing``;
- a network socket: ``connect``, ``connect_ex``, ``bind`` or ``sendto`` on an ``AF_INET`` or
  ``AF_INET6`` socket, loopback included (a server on 127.0.0.1 is still a server; asyncio's own
  ``AF_UNIX`` socket pairs stay allowed).

The guard covers a test's setup and call, so a fixture that starts Redis fails too; teardown is
left alone, because a session-scoped fixture that an integration test started (in a run of the
whole ``tests`` tree) is finalized during the teardown of whichever test ran last.
Wall-clock assertions cannot be caught this way; tests/README.md states the rule for them.

Collection runs with the cyclic garbage collector off, and what it imported (torch, Hypothesis,
numpy, the whole project: about 236,000 objects) is then frozen out of every later collection:
full collections over those objects took 1.1 s of each worker's 4-5 s collection (14 of them),
another second during the tests, and 0.6 s for the five pytest runs at the end of a session.
Objects the tests create are collected as before.
"""

from __future__ import annotations

import _posixsubprocess
import gc
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

HOW_TO_FIX = (
    "tests/unit is pure: move this test to tests/integration (it may start processes and "
    "servers there), or replace the process/socket with a fake; a timing claim becomes a "
    "benchmark in benchmarks/ (see tests/README.md)"
)
INET = (socket.AF_INET, socket.AF_INET6)


class ImpureUnitTest(RuntimeError):
    """A unit test tried to start a process or open a network socket."""


def refuse(what: str) -> None:
    raise ImpureUnitTest(f"{what}: {HOW_TO_FIX}")


def _refusing(name: str, describe: Callable[..., str] | None = None) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        refuse(describe(*args, **kwargs) if describe else f"{name}() started a process")

    return refused


def _popen_init(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
    refuse(f"subprocess.Popen({args!r}) started a process")


def _socket_method(name: str) -> Callable[..., Any]:
    original = getattr(socket.socket, name)

    def guarded(self: socket.socket, *args: Any) -> Any:
        if self.family in INET:  # the address is the last argument of all four
            refuse(f"socket.{name}({args[-1]!r}) opened a network socket")
        return original(self, *args)

    return guarded


@contextmanager
def purity_guard() -> Iterator[None]:
    patches: list[tuple[Any, str, Any]] = [
        (subprocess.Popen, "__init__", _popen_init),
        (_posixsubprocess, "fork_exec", _refusing("_posixsubprocess.fork_exec")),
    ]
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            patches.append((os, name, _refusing(f"os.{name}")))
    for name in ("connect", "connect_ex", "bind", "sendto"):
        patches.append((socket.socket, name, _socket_method(name)))
    with ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for owner, name, replacement in patches:
            mp.setattr(owner, name, replacement)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Iterator[object]:
    gc.disable()
    try:
        return (yield)
    finally:
        gc.freeze()
        gc.enable()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with purity_guard():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with purity_guard():
        return (yield)


@pytest.fixture(autouse=True)
def preset_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation asks the recommender for a preset's population by command (a process, which
    the unit tier refuses); unit tests get the tiny preset's facts instead."""
    facts = {"population": 4000, "catalogue": 2000, "model_version": "tiny-test", "k_max": 100}
    monkeypatch.setattr(
        "harness.runner.answers._describe_preset", lambda preset: {**facts, "preset": preset}
    )
