"""Checking answers on the load worker: what a job asks for (:class:`AnswerCheck`) and the
:class:`Checker` that turns one HTTP body into a validity code, the answered item ids and the
cold-start flag.

The codes are :data:`harness.model.requestlog.ANSWER_CODES`; 0 is valid, any other makes the
request a ``bad_answer`` (a failure). Formats:

* ``recommender``, the bundled recommender's API: a JSON object whose ``items`` are exactly k
  distinct integer ids within the catalogue (a cold start may answer a shorter list), whose
  ``scores`` are one finite number per item in descending order, with a known ``tier`` and a
  non-empty ``model_version``; ``"cold_start": true`` marks an unknown user;
* ``json``: any JSON document.

Then, for either, the scenario's JSON Schema (``jsonschema``, the validator class the schema's
``$schema`` names) and its ``module:function`` validator, called as ``function(answer,
request)`` with the parsed answer and ``{"user_id", "k", "request_id"}``, returning a list of
problems (empty: valid). Item ids are recorded whenever ``items`` is a list of integers, valid
or not (a constant list is valid JSON but shows in the recorded ids). Bodies are parsed with
orjson (1.7 us for a recommender answer where the standard library took 11 us), and with the
standard library when orjson refuses one, so that ``NaN`` and ``Infinity``, which Python servers
write although JSON has no such literals, are reported as non-finite scores. Pure: no gevent,
no clock; ``jsonschema`` and the validator's module are imported when a :class:`Checker` is
built.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from harness.model.answers import validator_parts
from harness.model.requestlog import TIERS, answer_code

CHECK_FORMATS = ("recommender", "json")
MAX_WIDTH = 1000  # item ids recorded per answer; longer answers are checked in full

VALID = 0
NOT_JSON = answer_code("not_json")
NOT_AN_OBJECT = answer_code("not_an_object")
NO_ITEMS = answer_code("no_items")
WRONG_LENGTH = answer_code("wrong_length")
BAD_ITEM = answer_code("bad_item")
DUPLICATE_ITEMS = answer_code("duplicate_items")
OUTSIDE_CATALOGUE = answer_code("outside_catalogue")
NO_SCORES = answer_code("no_scores")
NON_FINITE_SCORES = answer_code("non_finite_scores")
UNSORTED_SCORES = answer_code("unsorted_scores")
NO_TIER = answer_code("no_tier")
NO_MODEL_VERSION = answer_code("no_model_version")
SCHEMA = answer_code("schema")
VALIDATOR = answer_code("validator")
VALIDATOR_ERROR = answer_code("validator_error")

_TIERS = frozenset(TIERS)
_isfinite = math.isfinite
_loads = orjson.loads


@dataclass(frozen=True)
class AnswerCheck:
    """A load job's answer checking: format, recorded width, catalogue, schema, validator.

    ``schema`` is an absolute path; ``validator_path`` a directory put first on ``sys.path``
    before the validator's module is imported (the scenario's own directory).
    """

    format: str
    width: int
    catalogue: int | None = None
    schema: str | None = None
    validator: str | None = None
    validator_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> AnswerCheck:
        if isinstance(d, AnswerCheck):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"answers must be a JSON object, got {type(d).__name__}")
        return cls(**d)

    def problems(self) -> list[tuple[str, Any, str]]:
        """``(field, value, allowed)`` for every value that cannot work."""
        out: list[tuple[str, Any, str]] = []
        if self.format not in CHECK_FORMATS:
            out.append(("answers.format", self.format, "one of " + ", ".join(CHECK_FORMATS)))
        if not isinstance(self.width, int) or not 1 <= self.width <= MAX_WIDTH:
            out.append(("answers.width", self.width, f"an integer from 1 to {MAX_WIDTH}"))
        if self.catalogue is not None and (
            not isinstance(self.catalogue, int) or self.catalogue < 1
        ):
            out.append(("answers.catalogue", self.catalogue, "None or an integer >= 1"))
        if self.validator is not None:
            try:
                validator_parts(self.validator)
            except ValueError:
                out.append(("answers.validator", self.validator, "module:function"))
        return out


class CheckerError(Exception):
    """The job's schema or validator cannot be loaded; names which and why."""


Validator = Callable[[Any, dict[str, Any]], Any]


class Checker:
    """One job's answer checks, loaded once: ``check(body, user_id, k, request_id)``."""

    def __init__(self, spec: AnswerCheck) -> None:
        self.spec = spec
        self.width = spec.width
        self.recommender = spec.format == "recommender"
        self.catalogue = spec.catalogue
        self.schema = load_schema(spec.schema) if spec.schema else None
        self.validator = load_validator(spec.validator, spec.validator_path)

    def check(
        self, body: bytes, user_id: int, k: int, request_id: int
    ) -> tuple[int, list[int] | None, bool]:
        """``(code, item ids or None, cold start)`` of one answer body."""
        try:
            doc = _loads(body)
        except ValueError:  # orjson.JSONDecodeError
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError
                return NOT_JSON, None, False
        items = doc.get("items") if type(doc) is dict else None
        ids = items if type(items) is list and _all_ints(items) else None
        cold = type(doc) is dict and doc.get("cold_start") is True
        code = recommender_problem(doc, k, self.catalogue) if self.recommender else VALID
        if code == VALID and self.schema is not None and not self.schema.is_valid(doc):
            code = SCHEMA
        if code == VALID and self.validator is not None:
            code = self._validate(doc, user_id, k, request_id)
        return code, ids, cold

    def _validate(self, doc: Any, user_id: int, k: int, request_id: int) -> int:
        assert self.validator is not None
        try:
            found = self.validator(doc, {"user_id": user_id, "k": k, "request_id": request_id})
        except Exception:  # noqa: BLE001 - a broken validator marks the answer, not the run
            return VALIDATOR_ERROR
        return VALIDATOR if found else VALID


def recommender_problem(doc: Any, k: int, catalogue: int | None) -> int:
    """The first way ``doc`` breaks the recommender's answer contract, or VALID."""
    if type(doc) is not dict:
        return NOT_AN_OBJECT
    items = doc.get("items")
    if type(items) is not list:
        return NO_ITEMS
    n = len(items)
    if n != k and not (doc.get("cold_start") is True and 0 < n < k):
        return WRONG_LENGTH
    if not _all_ints(items):
        return BAD_ITEM
    if len(set(items)) != n:
        return DUPLICATE_ITEMS
    if n and (min(items) < 0 or (catalogue is not None and max(items) >= catalogue)):
        return OUTSIDE_CATALOGUE
    scores = doc.get("scores")
    if type(scores) is not list or len(scores) != n:
        return NO_SCORES
    for s in scores:
        t = type(s)
        if t is not float and t is not int:
            return NO_SCORES
        if not _isfinite(s):
            return NON_FINITE_SCORES
    for i in range(n - 1):
        if scores[i] < scores[i + 1]:
            return UNSORTED_SCORES
    if doc.get("tier") not in _TIERS:
        return NO_TIER
    version = doc.get("model_version")
    if type(version) is not str or not version:
        return NO_MODEL_VERSION
    return VALID


def _all_ints(values: list[Any]) -> bool:
    for v in values:
        if type(v) is not int:  # bool is an int subclass, and not an item id
            return False
    return True


def load_schema(path: str) -> Any:
    """A compiled JSON Schema validator for the file; CheckerError naming the file."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckerError(f"answers.schema {path}: cannot be read as JSON: {exc}") from None
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise CheckerError(
            f"answers.schema {path}: not a valid JSON Schema ({cls.__name__}): {exc.message}"
        ) from None
    return cls(schema)


def load_validator(text: str | None, path: str | None) -> Validator | None:
    """The ``module:function`` callable, imported with ``path`` first on ``sys.path``."""
    if text is None:
        return None
    module_name, func_name = validator_parts(text)
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the scenario's to fix
        raise CheckerError(
            f"answers.validator {text}: cannot import {module_name!r}"
            f" ({type(exc).__name__}: {exc}); searched {path or 'sys.path'} first"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise CheckerError(f"answers.validator {text}: {module_name} has no function {func_name!r}")
    return func  # type: ignore[no-any-return]


__all__ = [
    "CHECK_FORMATS",
    "MAX_WIDTH",
    "AnswerCheck",
    "Checker",
    "CheckerError",
    "load_schema",
    "load_validator",
    "recommender_problem",
]
