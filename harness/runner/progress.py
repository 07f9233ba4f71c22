"""The live progress display of a run: one line per second with elapsed time, achieved rate,
p99 so far (error-inclusive, from the intended send time), tier shares, errors and the faults
active now. Plain lines, so it reads the same in a terminal, a CI log and a pytest capture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class ProgressDisplay:
    def __init__(self, enabled: bool = True, log: Callable[[str], None] = print) -> None:
        self.enabled = enabled
        self.log = log
        self.faults: Any = None  # a FaultPlanRun once the load starts
        self._lock = threading.Lock()

    def note(self, text: str) -> None:
        """A fault applied or healed: always shown."""
        with self._lock:
            self.log(f"  * {text}")

    def on_progress(self, line: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.log(format_progress(line, self.faults.active() if self.faults else []))

    def final(self, verdict: Any, record: Any) -> None:
        for check in record.record.checks:
            self.log(f"  {check['verdict']:<12} {check['message']}")
        self.log(f"verdict: {verdict.value}")


def format_progress(line: dict[str, Any], active: list[str]) -> str:
    tiers = line.get("tiers") or {}
    total = sum(tiers.values()) or 1
    shares = " ".join(f"{t} {100 * n / total:.0f}%" for t, n in sorted(tiers.items()) if n)
    errors = sum((line.get("errors") or {}).values())
    p99 = line.get("p99_ms")
    p99_text = f"{p99:7.1f} ms" if isinstance(p99, int | float) else "      - ms"
    faults = ", ".join(active) or "none"
    return (
        f"[{line.get('elapsed_s', 0):6.1f} s] rate {line.get('rate', 0):6.1f}/s  "
        f"p99 {p99_text}  tiers {shares or '-'}  errors {errors}  missed "
        f"{line.get('missed', 0)}  faults: {faults}"
    )
