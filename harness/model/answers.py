"""How a scenario checks its target's answers: the ``answers:`` section, as frozen data.

Every answered request is checked by the load worker (:mod:`harness.load.answers`): its body is
parsed and validated by the target's *format* (the bundled recommender's API, or any JSON), an
optional JSON Schema file and an optional ``module:function`` validator; an answer that fails is
recorded as the error kind ``bad_answer``. A *reference* (one top-k list per user, written by
``recchaos sut reference``) lets the run measure agreement and NDCG of every answer
(:mod:`harness.metrics.quality`). Paths are relative to the scenario file's directory. Nothing
here reads the files beyond checking that they exist and parse.

Defaults follow the target: the recommender's answers are checked against its API and its
reference is computed at the start of the run (``reference: auto``); a generic target's answers
are checked only when a schema or validator is given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.model.errors import Problem
from harness.model.schedule import phase_count
from harness.model.validate import Bad, Conv, Fields, any_invalid, choice, integer, string

FORMATS = ("recommender", "json", "none")
VALIDATOR_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
MAX_POPULATION = 10_000_000


@dataclass(frozen=True)
class AnswerSpec:
    """What the scenario says about answers; None fields take the target's defaults."""

    format: str | None = None  # FORMATS; None: recommender for kind recommender, else json/none
    schema: str | None = None  # a JSON Schema file, relative to the scenario's directory
    validator: str | None = None  # module:function returning a list of problems
    reference: str | None = None  # auto, none, or a reference file; None: the target's default
    catalogue: int | None = None  # item ids lie in [0, catalogue); the recommender's: its manifest
    population: int | None = None  # users the target knows; the recommender's: its manifest

    def resolved_format(self, target_kind: str) -> str:
        if self.format is not None:
            return self.format
        if target_kind == "recommender":
            return "recommender"
        return "json" if self.schema or self.validator else "none"

    def resolved_reference(self, target_kind: str) -> str:
        """``auto``, ``none`` or the path as written."""
        if self.reference is not None:
            return self.reference
        return "auto" if target_kind == "recommender" else "none"

    def checked(self, target_kind: str) -> bool:
        return self.resolved_format(target_kind) != "none"

    def to_dict(self) -> dict[str, Any]:
        fields = (
            ("format", self.format),
            ("schema", self.schema),
            ("validator", self.validator),
            ("reference", self.reference),
            ("catalogue", self.catalogue),
            ("population", self.population),
        )
        return {k: v for k, v in fields if v is not None}


def beyond_population(phases: Any, user_ids: Any, population: int, source: str) -> list[str]:
    """Warnings for load phases whose mix draws users the target does not know.

    ``user_ids`` is the seeded schedule's user per request (in phase order). Such requests get
    the cold-start answer, which touches no shard: faults cannot reach them, so a run that asks
    mostly for unknown users tests little. Empty when every phase stays within ``population``.
    """
    out = []
    start = 0
    for i, phase in enumerate(phases):
        n = phase_count(phase)
        users = user_ids[start : start + n]
        start += n
        if phase.mix.users <= population or not n:
            continue
        unknown = int((users >= population).sum())
        out.append(
            f"{source}: load[{i}] ({phase.name}) draws users from a mix of"
            f" {phase.mix.users:,} but the target knows {population:,}: {unknown:,} of its"
            f" {n:,} requests ({unknown / n:.1%}) ask for unknown users, which get the"
            " cold-start answer without touching a shard, so no fault can reach them; set"
            f" mix.users to at most {population:,}"
        )
    return out


def resolve_path(source: str, path: str) -> Path:
    """``path`` as written in the scenario ``source``: relative to the file's directory."""
    p = Path(path).expanduser()
    if p.is_absolute() or source.startswith("<"):
        return p
    return Path(source).parent / p


def read_answers(data: Any, path: str, problems: list[Problem], source: str) -> AnswerSpec | None:
    f = Fields(data, path, problems)
    fmt = f.get("format", choice(FORMATS), None)
    schema = f.get("schema", _schema_file(source), None)
    validator = f.get(
        "validator",
        string(VALIDATOR_PATTERN, "module:function, such as mypkg.checks:answer_problems"),
        None,
    )
    reference = f.get("reference", _reference(source), None)
    catalogue = f.get("catalogue", integer(1, 2**31 - 1), None)
    population = f.get("population", integer(1, MAX_POPULATION), None)
    f.finish()
    values = (fmt, schema, validator, reference, catalogue, population)
    if not f.ok or any_invalid(*values):
        return None
    if fmt == "none" and (schema or validator):
        f.add("format", fmt, "recommender or json when a schema or validator is given")
        return None
    return AnswerSpec(*values)


def cross_check_answers(spec: AnswerSpec, target_kind: str, problems: list[Problem]) -> None:
    """Parts of ``answers`` that do not fit the target."""
    ref = spec.resolved_reference(target_kind)
    if ref == "auto" and target_kind != "recommender":
        problems.append(
            Problem(
                "answers.reference",
                ref,
                "none or a reference file for a generic target",
                "auto computes the bundled recommender's reference; write one with "
                "`recchaos sut reference` or give your service's own in the same format",
            )
        )
    if ref != "none" and not spec.checked(target_kind):
        problems.append(
            Problem(
                "answers.reference",
                ref,
                "none while answers are not checked (format: none)",
                "agreement is measured on checked answers only",
            )
        )


def _schema_file(source: str) -> Conv:
    allowed = "a JSON Schema file (a path relative to the scenario's directory)"

    def check(v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise Bad()
        p = resolve_path(source, v)
        if not p.is_file():
            raise Bad(f"no such file: {p}")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise Bad(f"{p} is not JSON: {exc}") from None
        if not isinstance(doc, dict | bool):
            raise Bad(f"{p} holds {type(doc).__name__}, not a JSON Schema object")
        return v

    return Conv(allowed, check)


def _reference(source: str) -> Conv:
    allowed = "auto, none, or a reference file written by `recchaos sut reference`"

    def check(v: Any) -> str:
        if v in ("auto", "none"):
            return str(v)
        if not isinstance(v, str) or not v.strip():
            raise Bad()
        p = resolve_path(source, v)
        if not p.is_file():
            raise Bad(f"no such file: {p}")
        return v

    return Conv(allowed, check)


def validator_parts(text: str) -> tuple[str, str]:
    """``("module", "function")`` of a validator written ``module:function``."""
    if not re.fullmatch(VALIDATOR_PATTERN, text):
        raise ValueError(f"validator {text!r} is not module:function")
    module, _, func = text.partition(":")
    return module, func


__all__ = [
    "FORMATS",
    "AnswerSpec",
    "beyond_population",
    "cross_check_answers",
    "read_answers",
    "resolve_path",
    "validator_parts",
]
