"""A run's answer checking, before and after the load: what the load worker checks, the
reference answers, the population warning, and the quality of every answer afterwards.

Before the load (:func:`prepare_answers`, once the target is up): the target's population and
catalogue come from the scenario's ``answers`` section, else the recommender's manifest
(``population``, ``catalogue``), else its preset (``recchaos sut reference --describe``, for a
manifest that does not say, such as the docker backend's); a mix that draws users beyond the
population is warned about (``--strict``: a usage error, exit 2); the schema and validator are
loaded once here, so a bad one is a usage error before anything is sent; the reference is
computed (``reference: auto``, by the recommender's ``reference`` command, cached) or read from
the scenario's file, and copied into the run directory (``answers/reference.npz``).

After the load (:func:`score_answers`): each answer's agreement and NDCG are filled into the
request log (:mod:`harness.metrics.quality`), which is written again, and the quality each
serving model would have reached on this run's own stream of users is kept for the report.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harness.load.answers import MAX_WIDTH, AnswerCheck, Checker, CheckerError
from harness.metrics.quality import answer_quality, expected_quality
from harness.model.answers import beyond_population, resolve_path
from harness.model.errors import HarnessError, UsageError
from harness.model.reference import Reference, ReferenceError, read_reference
from harness.model.requestlog import write_log
from harness.model.scenario import Scenario
from harness.model.target import RecommenderTarget

REFERENCE_ALL_LIMIT = 20_000  # ask for every user a mix can draw up to this many (shared cache)
REFERENCE_FILE = "answers/reference.npz"

Log = Callable[[str], None]


class HasManifest(Protocol):
    @property
    def manifest_path(self) -> Path: ...


@dataclass(frozen=True)
class AnswerSetup:
    """What the run checks and measures: the load job's check, the reference, the sizes."""

    check: AnswerCheck | None = None
    reference_path: Path | None = None
    population: int | None = None
    catalogue: int | None = None
    warnings: tuple[str, ...] = ()
    reference: Reference | None = field(default=None, compare=False)


ReferenceFn = Callable[[str, str, np.ndarray, int, Path, Log], Path]


def _recommender_reference(
    preset: str, version: str, users: np.ndarray, k: int, out: Path, log: Log
) -> Path:
    from harness.sut.reference import recommender_reference

    return recommender_reference(preset, version, users, k, out, log)


def _describe_preset(preset: str) -> dict[str, Any]:
    from harness.sut.reference import describe_preset

    return describe_preset(preset)


def prepare_answers(
    scenario: Scenario,
    target: HasManifest,
    run_dir: Path,
    strict: bool = False,
    log: Log = print,
    compute_reference: ReferenceFn = _recommender_reference,
    describe: Callable[[str], dict[str, Any]] | None = None,
) -> AnswerSetup:
    """Everything the run needs to check answers (see the module doc); UsageError for a
    scenario that cannot be checked as written, or a mix beyond the population with ``strict``."""
    manifest = recommender_facts(scenario, read_manifest(target.manifest_path), describe)
    spec = scenario.answers
    population = spec.population or _positive(manifest.get("population"))
    catalogue = spec.catalogue or _positive(manifest.get("catalogue"))
    warnings = population_warnings(scenario, population)
    for w in warnings:
        log(f"warning: {w}")
    if warnings and strict:
        raise UsageError("--strict: " + "; ".join(warnings))
    kind = scenario.target.kind
    if not spec.checked(kind):
        return AnswerSetup(population=population, catalogue=catalogue, warnings=warnings)
    check = answer_check(scenario, catalogue)
    try:
        Checker(check)
    except CheckerError as exc:
        raise UsageError(f"{scenario.source}: {exc}") from None
    ref_path = _reference(scenario, manifest, population, run_dir, log, compute_reference)
    reference = _read(ref_path, scenario) if ref_path else None
    return AnswerSetup(check, ref_path, population, catalogue, warnings, reference)


def recommender_facts(
    scenario: Scenario,
    manifest: dict[str, Any],
    describe: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest with ``population``, ``catalogue`` and ``model_version`` filled in for the
    bundled recommender: from older key names, else from its preset (by command)."""
    out = dict(manifest)
    out.setdefault("population", manifest.get("n_users"))
    out.setdefault("catalogue", manifest.get("n_items"))
    target = scenario.target
    missing = [k for k in ("population", "catalogue", "model_version") if out.get(k) is None]
    if isinstance(target, RecommenderTarget) and missing:
        facts = (describe or _describe_preset)(target.preset)
        for key in missing:
            out[key] = facts.get(key)
    return out


def answer_check(scenario: Scenario, catalogue: int | None) -> AnswerCheck:
    spec = scenario.answers
    source_dir = resolve_path(scenario.source, ".")
    return AnswerCheck(
        format=spec.resolved_format(scenario.target.kind),
        width=min(max(p.mix.k for p in scenario.load), MAX_WIDTH),
        catalogue=catalogue,
        schema=str(resolve_path(scenario.source, spec.schema).resolve()) if spec.schema else None,
        validator=spec.validator,
        validator_path=str(source_dir.resolve()) if spec.validator else None,
    )


def scenario_warnings(
    scenario: Scenario, describe: Callable[[str], dict[str, Any]] | None = None
) -> tuple[str, ...]:
    """What a run of this scenario could not test as asked, before any target is up: a mix
    beyond the population (the recommender's preset says its population, asked by command; a
    generic target's ``answers.population``)."""
    population = scenario.answers.population
    if population is None and isinstance(scenario.target, RecommenderTarget):
        try:
            population = (describe or _describe_preset)(scenario.target.preset)["population"]
        except HarnessError as exc:
            return (f"{scenario.source}: population not checked: {exc}",)
    return population_warnings(scenario, population)


def population_warnings(scenario: Scenario, population: int | None) -> tuple[str, ...]:
    if population is None:
        return ()
    users = scenario.request_schedule().user_ids
    return tuple(beyond_population(scenario.load, users, population, scenario.source))


def reference_users(scenario: Scenario, population: int | None) -> np.ndarray:
    """Every known user the mix can draw when that is at most REFERENCE_ALL_LIMIT (runs with the
    same mix then share one cached reference), else the distinct users its schedule holds."""
    limit = population if population is not None else np.iinfo(np.int64).max
    drawable = min(max(p.mix.users for p in scenario.load), limit)
    if drawable <= REFERENCE_ALL_LIMIT:
        return np.arange(drawable, dtype=np.int64)
    users = np.unique(scenario.request_schedule().user_ids)
    return users[users < limit]


def _reference(
    scenario: Scenario,
    manifest: dict[str, Any],
    population: int | None,
    run_dir: Path,
    log: Log,
    compute: ReferenceFn,
) -> Path | None:
    target = scenario.target
    ref = scenario.answers.resolved_reference(target.kind)
    out = run_dir / REFERENCE_FILE
    if ref == "none":
        return None
    if ref != "auto":
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resolve_path(scenario.source, ref), out)
        return out
    assert isinstance(target, RecommenderTarget)  # validation allows auto for it only
    version = manifest.get("model_version")
    if not isinstance(version, str):
        raise UsageError(
            f"{scenario.source}: answers.reference auto needs the recommender's model version"
            f" in its manifest ({manifest.get('_path')}); none was found"
        )
    k = max(p.mix.k for p in scenario.load)
    return compute(target.preset, version, reference_users(scenario, population), k, out, log)


def _read(path: Path, scenario: Scenario) -> Reference:
    try:
        return read_reference(path)
    except ReferenceError as exc:
        raise UsageError(f"{scenario.source}: answers.reference: {exc}") from None


def read_manifest(path: Path) -> dict[str, Any]:
    """The target's manifest as a mapping (empty when it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"_path": str(path)}
    return {**data, "_path": str(path)} if isinstance(data, dict) else {"_path": str(path)}


def _positive(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def score_answers(
    scenario: Scenario,
    setup: AnswerSetup,
    log: np.ndarray,
    answers: np.ndarray | None,
    requests_path: Path | None,
) -> dict[str, Any]:
    """Fill each answer's agreement and NDCG into ``log`` (in place; rewritten at
    ``requests_path``); returns what each serving model would score on this run's users."""
    ref = setup.reference
    if ref is None or answers is None or not log.size:
        return {}
    k = scenario.request_schedule().k
    per_row = k[np.clip(log["id"], 0, max(k.size - 1, 0))] if k.size else np.zeros(0)
    log["agreement"], log["ndcg"] = answer_quality(log, answers, ref, per_row)
    if requests_path is not None:
        write_log(requests_path, log)
    users = scenario.request_schedule().user_ids
    return expected_quality(ref, users, int(max(p.mix.k for p in scenario.load)))
