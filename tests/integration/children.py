"""Processes an integration test starts itself: each a :class:`harness.process.ManagedProcess`,
all continued, killed and reaped at the end, whatever happened."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.process import ManagedProcess


class Children(list[ManagedProcess]):
    def spawn(self, argv: Sequence[str], log: Path | None = None, **kw: Any) -> ManagedProcess:
        """Start ``argv`` (output to ``log``, default discarded) and keep it for the clean-up."""
        proc = ManagedProcess(argv, log or Path(os.devnull), **kw).start()
        self.append(proc)
        return proc


@contextlib.contextmanager
def children() -> Iterator[Children]:
    procs = Children()
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop(grace_s=0.0)  # SIGCONT + SIGKILL at once: a test's leftovers need no grace


def exited(pid: int) -> bool:
    """True once ``pid`` has exited: gone, or a zombie until whoever adopted it reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def exited_within(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``pid`` to exit; one still running then is SIGKILLed (a test
    never leaves it behind, even when it fails) and the answer is False."""
    deadline = time.monotonic() + timeout_s
    while not exited(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if exited(pid):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False
