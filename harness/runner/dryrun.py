"""``recchaos run --dry-run``: everything a run would do before its first fault, and nothing after.

The scenario is resolved with the run's options (profile, seed, rate, duration, SLA, backend),
exactly as :func:`harness.runner.run.run` would; then the target's manifest is read, either of a
target started for the check (as ``recchaos sut up`` would start it, under a watchdog, and
stopped again: no load, no fault) or of a running target named by ``--manifest`` (nothing is
started). Every fault target of the plan, listed or generated, must be a component of that
manifest; ``redis`` also counts when the manifest names the Redis the recommender uses. Printed:
the target, the load schedule's totals per phase, the fault plan and the guards. Returns 0, or
raises a :class:`~harness.model.errors.UsageError` (exit 2) naming each missing target, where the
scenario names it, and what the manifest has.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.model.errors import UsageError
from harness.model.fault_kinds import FAULT_KINDS
from harness.model.faults import FaultSpec
from harness.model.scenario import Scenario
from harness.model.schedule import phase_count
from harness.model.target import GenericTarget, RecommenderTarget
from harness.runner.settings import RunSettings, resolve_scenario

Log = Callable[[str], None]


@dataclass(frozen=True)
class Components:
    """The fault targets a target has, and where that list came from."""

    names: tuple[str, ...]
    source: str  # "the manifest PATH (a target started for this check)" or "... (--manifest)"


def dry_run(settings: RunSettings, manifest: Path | None = None, log: Log = print) -> int:
    """Resolve, read the target's manifest, check every fault target, print the plan: 0."""
    scenario = resolve_scenario(settings)
    if manifest is not None:
        found = read_components(manifest)
    else:
        log(f"starting the target to read its manifest ({_what(scenario)}; no load, no faults)")
        found = started_components(scenario, settings.redis_address)
    missing = missing_targets(scenario.fault_plan(), found)
    for line in describe(scenario, found):
        log(line)
    if missing:
        raise UsageError(
            f"{scenario.source}: {len(missing)} fault target"
            f"{'s' * (len(missing) != 1)} not in {found.source}: " + "; ".join(missing)
        )
    log(f"OK: every fault target is a component of the target ({len(found.names)} components)")
    return 0


def read_components(path: Path) -> Components:
    """The components a running target's manifest names (``--manifest``)."""
    where = f"--manifest {path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file; is the target up (`recchaos sut up`)?") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{where}: cannot read the manifest: {exc}") from None
    comps = data.get("components") if isinstance(data, dict) else None
    if not isinstance(comps, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in comps
    ):
        raise UsageError(
            f"{where}: not a target manifest (a JSON object whose 'components' is a list of "
            "objects with a 'name', as `recchaos sut up` writes)"
        )
    names = tuple(c["name"] for c in comps)
    if data.get("redis") and "redis" not in names:
        names += ("redis",)  # the Redis the recommender was started with (--redis URL)
    return Components(names, f"the manifest {path} (a running target, --manifest)")


def started_components(scenario: Scenario, redis_address: str | None = None) -> Components:
    """Start the scenario's target (no load, no fault), read its manifest, stop it."""
    from harness.runner.target import start_target, watched
    from harness.watchdog import start_watchdog

    with tempfile.TemporaryDirectory(prefix="recchaos-dry-run-") as tmp:
        work = Path(tmp)
        journal = work / "faults.journal"
        journal.touch()
        manifest = work / "cluster" / "manifest.json"
        with start_watchdog(journal, manifest, log_path=work / "watchdog.log") as watchdog:
            target = start_target(scenario, work, watchdog, lambda _line: None, redis_address)
            with watched(target, watchdog) as t:
                found = read_components(t.manifest_path)
                extra = tuple(
                    c["name"] for c in t.extra_components() if c["name"] not in found.names
                )
        return Components(found.names + extra, "the manifest of the target started for this check")


def missing_targets(plan: tuple[FaultSpec, ...], found: Components) -> list[str]:
    """``faults[0] names shard-9-primary (kill)``, one per fault whose target is not there."""
    have = ", ".join(found.names) or "no components"
    return [
        f"{spec.origin or 'a fault'} names {spec.target!r} ({spec.kind}); the target has: {have}"
        for spec in plan
        if spec.target not in found.names
    ]


def _what(scenario: Scenario) -> str:
    t = scenario.target
    if isinstance(t, RecommenderTarget):
        redis = ", redis" if t.redis else ""
        front = f"{t.gateways} gateways behind lb" if t.gateways > 1 else "1 gateway"
        return f"recommender, {t.shards} shards, {front}, preset {t.preset}, {t.backend}{redis}"
    assert isinstance(t, GenericTarget)
    return f"generic, {len(t.components)} components, {t.endpoint}"


def describe(scenario: Scenario, found: Components) -> list[str]:
    """The lines a dry run prints: scenario, target, load totals, fault plan, guards."""
    profile = f", profile {scenario.profile}" if scenario.profile else ""
    lines = [
        f"dry run: {scenario.source} ({scenario.name}, seed {scenario.seed}{profile}); "
        "nothing is loaded or injected",
        f"target: {_what(scenario)}; components from {found.source}",
    ]
    cap = scenario.capacity
    if cap is not None:
        rates = ", ".join(f"{r:g}" for r in cap.rates)
        lines.append(
            f"capacity: steps of {rates} requests/s, {cap.step_s:g} s each"
            f" ({cap.duration_s:g} s before the load)"
        )
    lines += load_lines(scenario)
    lines += plan_lines(scenario, found)
    lines.append(f"guards ({len(scenario.guards)}):" if scenario.guards else "guards: none")
    lines += [f"  {g.origin}: {g.describe()}" for g in scenario.guards]
    lines.append(f"slos: {len(scenario.slos)}, sla {scenario.sla_ms:g} ms")
    return lines


def load_lines(scenario: Scenario) -> list[str]:
    counts = [phase_count(p) for p in scenario.load]
    total, seconds = sum(counts), scenario.load_duration_s
    peak = max((p.rate for p in scenario.load), default=0.0)
    lines = [
        f"load: {len(scenario.load)} phase{'s' * (len(scenario.load) != 1)}, {seconds:g} s, "
        f"{total:,} requests (mean {total / seconds if seconds else 0:.1f}/s, peak {peak:g}/s), "
        f"warm-up {scenario.warmup_s:g} s, settle {scenario.settle_s:g} s"
    ]
    for phase, n in zip(scenario.load, counts, strict=True):
        mix = phase.mix
        lines.append(
            f"  {phase.name:<12} {phase.rate:g}/s for {phase.duration_s:g} s: {n:,} requests "
            f"(users {mix.users:,}, zipf {mix.zipf_exponent:g}, k {mix.k})"
        )
    return lines


def plan_lines(scenario: Scenario, found: Components) -> list[str]:
    plan = scenario.fault_plan()
    if not plan:
        return ["faults: none"]
    lines = [f"faults ({len(plan)}, in time order):"]
    root = os.geteuid() == 0
    end = scenario.load_duration_s
    for spec in plan:
        until = "the end of the load" if spec.duration_s is None else f"{spec.end_s(end):g} s"
        params = f" {json.dumps(dict(spec.params), sort_keys=True)}" if spec.params else ""
        notes = [] if spec.target in found.names else ["NOT IN THE TARGET"]
        if FAULT_KINDS[spec.kind].root and not root:
            notes.append("needs root: would be skipped and its windows INCONCLUSIVE")
        note = f"  [{'; '.join(notes)}]" if notes else ""
        lines.append(f"  {spec.at_s:g} s to {until}: {spec.label}{params} ({spec.origin}){note}")
    return lines


__all__ = ["Components", "dry_run", "missing_targets", "read_components"]
