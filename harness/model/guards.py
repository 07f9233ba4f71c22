"""Guards: a scenario's safety limits, past which the harness halts the experiment.

A :class:`GuardSpec` names a condition on the system under test and how long it must hold
before the guard trips: ``error_ratio`` (the share of completed requests that failed, from the
load generator's progress, above a limit) or ``health`` (a GET on the target's URL, by default
``/healthz``, not answering 2xx within a timeout). When one trips, the runner heals every active
fault at once, applies no further fault, records the halt and the verdict is FAIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.model.errors import MISSING, Problem
from harness.model.validate import INVALID, Fields, any_invalid, choice, integer, number, string

GUARD_KINDS = ("error_ratio", "health")
MAX_FOR_S = 3600.0
PATH_PATTERN = r"/[^\s#]*"


@dataclass(frozen=True)
class GuardSpec:
    """One guard. ``for_s``: how long the condition must hold without a break (0: the first
    sample past the limit trips it). ``error_ratio`` uses ``above`` and ``min_requests`` (a
    progress interval with fewer completed requests is no evidence either way); ``health`` uses
    ``path``, ``timeout_ms`` (default 500, or ``every_s`` if shorter) and ``every_s`` (the
    probe interval)."""

    kind: str
    for_s: float = 0.0
    above: float | None = None
    min_requests: int = 10
    path: str = "/healthz"
    timeout_ms: float = 500.0
    every_s: float = 0.5
    origin: str = field(default="", compare=False)

    def describe(self) -> str:
        """``error ratio above 0.5 for 3 s``, ``GET /healthz failing for 2 s``."""
        span = f" for {self.for_s:g} s" if self.for_s else ""
        if self.kind == "error_ratio":
            return f"error ratio above {self.above:g}{span}"
        return f"GET {self.path} failing (not 2xx within {self.timeout_ms:g} ms){span}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "for_s": self.for_s}
        if self.kind == "error_ratio":
            d.update(above=self.above, min_requests=self.min_requests)
        else:
            d.update(path=self.path, timeout_ms=self.timeout_ms, every_s=self.every_s)
        return d


_ONLY = {
    "error_ratio": ("above", "min_requests"),
    "health": ("path", "timeout_ms", "every_s"),
}


def read_guard(data: Any, path: str, problems: list[Problem], origin: str) -> GuardSpec | None:
    f = Fields(data, path, problems)
    kind = f.get("kind", choice(GUARD_KINDS))
    for_s = f.get("for_s", number(0, MAX_FOR_S, unit="seconds"), 0.0)
    above = f.get("above", number(0, 1, unit="share of completed requests"), None)
    min_requests = f.get("min_requests", integer(1, 1_000_000), 10)
    probe_path = f.get("path", string(PATH_PATTERN, "a URL path starting with /"), "/healthz")
    every_s = f.get("every_s", number(0.05, 60, unit="seconds"), 0.5)
    default_timeout = min(500.0, every_s * 1000) if isinstance(every_s, float) else 500.0
    timeout_ms = f.get("timeout_ms", number(0, 60_000, lo_open=True, unit="ms"), default_timeout)
    _check_kind_keys(f, kind)
    if kind == "error_ratio" and above is None:
        above = f.add("above", MISSING, "a share from 0 to below 1 (error_ratio needs a limit)")
    elif isinstance(above, float) and not above < 1:
        above = f.add("above", f.data["above"], "a share from 0 to below 1 (none is above 1)")
    if f.has("timeout_ms") and isinstance(timeout_ms, float) and isinstance(every_s, float):
        if timeout_ms > every_s * 1000:
            timeout_ms = f.add(
                "timeout_ms",
                f.data["timeout_ms"],
                f"at most every_s ({every_s * 1000:g} ms)",
                "a probe must finish before the next one is due",
            )
    f.finish()
    values = (kind, for_s, above, min_requests, probe_path, timeout_ms, every_s)
    if not f.ok or any_invalid(*values):
        return None
    return GuardSpec(
        kind,
        for_s,
        above,
        min_requests,
        probe_path,
        timeout_ms,
        every_s,
        origin=origin,
    )


def _check_kind_keys(f: Fields, kind: Any) -> None:
    """A key of the other kind (``path`` on an error_ratio guard) is a mistake, not ignored."""
    if kind is INVALID:
        return
    for other, keys in _ONLY.items():
        if other == kind:
            continue
        for key in keys:
            if f.has(key):
                f.add(key, f.data[key], f"no {key} on a {kind} guard", f"{key} is for {other}")


__all__ = ["GUARD_KINDS", "GuardSpec", "read_guard"]
