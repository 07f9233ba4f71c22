"""Named profiles (``pr``, ``nightly``, ...) that override a scenario's durations and rates.

A profile is a partial scenario: top-level numbers (seed, warmup_s, settle_s, sla_ms), phases by
name, faults by index, and keys of evidence, fault_schedule and capacity. ``skip: REASON`` marks a profile
the scenario is not meant to run in (the pytest plugin skips it with that reason). :func:`apply_profile` merges one
into the parsed YAML and returns, beside the merged dict, where each overridden field came from,
so a problem in an overridden value is reported at the profile's field path.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from harness.model.errors import Problem
from harness.model.validate import Fields, did_you_mean, join_path, string

PROFILE_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"
SCALARS = ("seed", "warmup_s", "settle_s", "sla_ms")
PHASE_KEYS = ("rate", "duration_s", "mix")
FAULT_KEYS = ("at_s", "duration_s", "heal", "params")
SCHEDULE_KEYS = ("every_s", "duration_s", "kinds", "targets", "start_s", "end_s", "seed", "params")
EVIDENCE_KEYS = ("min_samples", "max_lag_p99_ms", "min_sent_ratio", "max_host_stall_ms")
CAPACITY_KEYS = ("rates", "step_s")


def read_profiles(raw: Any, problems: list[Problem]) -> dict[str, dict[str, Any]]:
    """The profiles mapping, checked for shape (values are checked once merged)."""
    if raw is None:
        return {}
    f = Fields(raw, "profiles", problems)
    out = {}
    for name, body in f.data.items():
        if not isinstance(name, str) or not re.fullmatch(PROFILE_NAME, name):
            f.add(str(name), name, f"a profile name matching {PROFILE_NAME}")
            continue
        g = Fields(body, f.at(name), problems)
        for key in SCALARS + ("phases", "faults", "evidence", "fault_schedule", "capacity"):
            g.raw(key)
        g.get("skip", string(what="the reason this profile is skipped (a non-empty string)"), None)
        g.finish()
        if g.ok:
            out[name] = _normalised(body)
    return out


def _normalised(body: dict[str, Any]) -> dict[str, Any]:
    """A copy with fault indices as integers (JSON turns the keys ``0``, ``1`` into text)."""
    out = copy.deepcopy(dict(body))
    if isinstance(out.get("faults"), dict):
        out["faults"] = {
            int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in out["faults"].items()
        }
    return out


def apply_profile(
    raw: dict[str, Any], name: str, overrides: dict[str, Any], problems: list[Problem]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``raw`` with profile ``name`` applied, and {merged field path: profile field path}."""
    merged = copy.deepcopy(raw)
    origins: dict[str, str] = {}
    base = f"profiles.{name}"
    for key in SCALARS:
        if key in overrides:
            merged[key] = overrides[key]
            origins[key] = join_path(base, key)
    for key, allowed in (
        ("evidence", EVIDENCE_KEYS),
        ("fault_schedule", SCHEDULE_KEYS),
        ("capacity", CAPACITY_KEYS),
    ):
        if key in overrides:
            _merge_into(
                merged, key, key, overrides[key], join_path(base, key), allowed, problems, origins
            )
    _apply_phases(merged, overrides.get("phases"), join_path(base, "phases"), problems, origins)
    _apply_faults(merged, overrides.get("faults"), join_path(base, "faults"), problems, origins)
    return merged, origins


def _merge_into(
    parent: Any,
    key: str | int,
    merged_path: str,
    partial: Any,
    path: str,
    allowed: tuple[str, ...],
    problems: list[Problem],
    origins: dict[str, str],
) -> None:
    f = Fields(partial, path, problems)
    for k in allowed:
        f.raw(k)
    f.finish()
    if not f.ok or not isinstance(parent, dict | list):
        return
    target = parent[key] if _has(parent, key) else None  # type: ignore[index]
    if not isinstance(target, dict):
        target = {}
        parent[key] = target  # type: ignore[index]
    for k, v in partial.items():
        if k not in allowed:
            continue
        if k == "duration_s":
            target.pop("heal", None)
        if k == "heal":
            target.pop("duration_s", None)
        old = target.get(k)
        value = {**old, **v} if isinstance(old, dict) and isinstance(v, dict) else v
        target[k] = copy.deepcopy(value)
        origins[join_path(merged_path, k)] = join_path(path, k)


def _has(parent: dict[str, Any] | list[Any], key: str | int) -> bool:
    if isinstance(parent, list):
        return isinstance(key, int) and 0 <= key < len(parent)
    return key in parent


def _apply_phases(
    merged: dict[str, Any], phases: Any, path: str, problems: list[Problem], origins: dict[str, str]
) -> None:
    if phases is None:
        return
    f = Fields(phases, path, problems)
    load = merged.get("load")
    names = [p.get("name") for p in load if isinstance(p, dict)] if isinstance(load, list) else []
    for name, partial in f.data.items():
        if name not in names or not isinstance(load, list):
            f.add(
                str(name),
                partial,
                "the name of a phase in load: " + ", ".join(map(str, names)),
                did_you_mean(str(name), [str(n) for n in names]),
            )
            continue
        i = names.index(name)
        _merge_into(load, i, f"load[{i}]", partial, f.at(str(name)), PHASE_KEYS, problems, origins)


def _apply_faults(
    merged: dict[str, Any], faults: Any, path: str, problems: list[Problem], origins: dict[str, str]
) -> None:
    if faults is None:
        return
    f = Fields(faults, path, problems)
    listed = merged.get("faults")
    count = len(listed) if isinstance(listed, list) else 0
    for index, partial in f.data.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            f.add(
                str(index),
                partial,
                f"an index into faults, from 0 to {count - 1}"
                if count
                else "no faults: the scenario lists none",
            )
            continue
        _merge_into(
            listed,
            index,
            f"faults[{index}]",
            partial,
            f"{path}[{index}]",
            FAULT_KEYS,
            problems,
            origins,
        )


def relocate(problem: Problem, profile: str, origins: dict[str, str]) -> Problem:
    """Report ``problem`` at the profile's field when the profile set that value."""
    for merged_path in sorted(origins, key=len, reverse=True):
        field = problem.field
        if field == merged_path or field.startswith((merged_path + ".", merged_path + "[")):
            moved = origins[merged_path] + field[len(merged_path) :]
            hint = f"profile {profile!r} sets {field}"
            return Problem(
                moved, problem.value, problem.allowed, "; ".join(filter(None, [problem.hint, hint]))
            )
    if problem.field.startswith(f"profiles.{profile}"):
        return problem
    hint = f"with profile {profile!r} applied"
    return Problem(
        problem.field, problem.value, problem.allowed, "; ".join(filter(None, [problem.hint, hint]))
    )
