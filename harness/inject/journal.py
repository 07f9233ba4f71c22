"""The fault journal: an append-only JSON-lines file of every fault applied and healed in a run.

Each line is written and fsynced before the call returns, so when the harness dies (even by
SIGKILL) the watchdog (:mod:`harness.watchdog`) reads from it which faults are still in effect
and how to heal them: an ``apply`` line is written *before* a fault is applied (with the heal
action known then, so a half-applied fault is healed too), an ``applied`` line after it (with
the final heal action, e.g. the proxy's fault id), and a ``heal`` line after each heal::

    {"type": "open", "run_id": "...", "pid": 123, "wall": ...}
    {"type": "apply", "uid": "123-1", "kind": "freeze", "target": "shard-0-primary",
     "params": {}, "heal_action": {"action": "sigcont", "pid": 4567, "starttime": 8910}, ...}
    {"type": "applied", "uid": "123-1", ...}
    {"type": "heal", "uid": "123-1", "ok": true, "error": "", ...}

:func:`unhealed` lists what still needs healing, in apply order.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class Journal:
    """Appends fsynced JSON lines to ``path`` (created with its parent directory)."""

    def __init__(self, path: str | os.PathLike[str], run_id: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.write({"type": "open", "run_id": run_id, "pid": os.getpid()})

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps({**entry, "wall": time.time()}, default=repr, separators=(",", ":"))
        data = (line + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"journal {self.path} is closed")
            os.write(self._fd, data)  # one write on an O_APPEND file: never interleaved
            os.fsync(self._fd)

    def record_apply(self, uid: str, injector: Any, stage: str = "apply") -> None:
        """``stage`` is ``apply`` (before applying) or ``applied`` (after it succeeded)."""
        try:
            action = dict(injector.heal_action())
        except Exception as exc:  # a heal action must never stop the fault being journaled
            action = {"action": "none", "error": f"heal_action failed: {exc}"}
        self.write(
            {
                "type": stage,
                "uid": uid,
                "kind": injector.kind,
                "target": injector.target,
                "params": dict(injector.params),
                "heal_action": action,
            }
        )

    def record_heal(self, uid: str, ok: bool, error: str = "") -> None:
        self.write({"type": "heal", "uid": uid, "ok": ok, "error": error})

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete entry; a torn last line (the writer died mid-write) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def unhealed(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Faults applied (or being applied) and not healed successfully, in apply order.

    Each item: ``uid``, ``kind``, ``target``, ``params`` and the latest ``heal_action``.
    A fault whose heal failed is listed again: heals are idempotent and worth another try.
    """
    pending: dict[str, dict[str, Any]] = {}
    for entry in read_journal(path):
        uid = entry.get("uid")
        kind = entry.get("type")
        if not isinstance(uid, str):
            continue
        if kind in ("apply", "applied"):
            item = pending.setdefault(uid, {"uid": uid})
            item.update({k: entry.get(k) for k in ("kind", "target", "params", "heal_action")})
        elif kind == "heal" and entry.get("ok"):
            pending.pop(uid, None)
    return list(pending.values())
