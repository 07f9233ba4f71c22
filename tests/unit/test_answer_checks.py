"""The load worker's answer checks (pure): every validity code of the recommender's contract,
JSON Schema and validator functions, and property tests that a well-formed answer passes and any
single corruption of it is caught."""

from __future__ import annotations

import json
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.load.answers import AnswerCheck, Checker, CheckerError, recommender_problem
from harness.model.requestlog import ANSWER_CODES

K, CATALOGUE = 3, 100


def answer(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "items": [5, 7, 9],
        "scores": [0.9, 0.5, 0.5],
        "tier": "replica",
        "model_version": "tiny-abc",
        "cold_start": False,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not DROP}


DROP = object()


@pytest.mark.parametrize(
    "doc, code",
    [
        (answer(), "valid"),
        ([1, 2, 3], "not_an_object"),
        (answer(items=DROP), "no_items"),
        (answer(items="5,7,9"), "no_items"),
        (answer(items=[5, 7]), "wrong_length"),
        (answer(items=[5, 7], scores=[1.0, 0.5], cold_start=True), "valid"),  # shorter cold start
        (answer(items=[5, 7, 9, 11], cold_start=True), "wrong_length"),  # never longer
        (answer(items=[5, 7.0, 9]), "bad_item"),
        (answer(items=[5, True, 9]), "bad_item"),
        (answer(items=[5, 5, 9]), "duplicate_items"),
        (answer(items=[5, 7, 100]), "outside_catalogue"),
        (answer(items=[-1, 7, 9]), "outside_catalogue"),
        (answer(scores=DROP), "no_scores"),
        (answer(scores=[0.9, 0.5]), "no_scores"),
        (answer(scores=[0.9, "0.5", 0.1]), "no_scores"),
        (answer(scores=[0.9, False, 0.1]), "no_scores"),
        (answer(scores=[math.nan, 0.5, 0.1]), "non_finite_scores"),
        (answer(scores=[math.inf, 0.5, 0.1]), "non_finite_scores"),
        (answer(scores=[0.1, 0.5, 0.9]), "unsorted_scores"),
        (answer(tier=DROP), "no_tier"),
        (answer(tier="best"), "no_tier"),
        (answer(model_version=""), "no_model_version"),
        (answer(model_version=DROP), "no_model_version"),
    ],
)
def test_each_break_of_the_recommender_contract_has_its_code(doc, code):
    assert ANSWER_CODES[recommender_problem(doc, K, CATALOGUE)] == code


def test_the_catalogue_is_unchecked_when_unknown_but_negative_ids_never_pass():
    assert recommender_problem(answer(items=[5, 7, 10_000]), K, None) == 0
    assert ANSWER_CODES[recommender_problem(answer(items=[5, -7, 9]), K, None)] == (
        "outside_catalogue"
    )


def checker(**kw: object) -> Checker:
    return Checker(AnswerCheck(**{"format": "recommender", "width": 4, "catalogue": 100, **kw}))  # type: ignore[arg-type]


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_a_checker_returns_the_code_the_ids_and_the_cold_start_flag():
    c = checker()
    assert c.check(body(answer()), 1, K, 0) == (0, [5, 7, 9], False)
    code, ids, cold = c.check(body(answer(scores=[math.nan] * 3)), 1, K, 0)
    assert ANSWER_CODES[code] == "non_finite_scores" and ids == [5, 7, 9]  # kept: invalid too
    cold_doc = answer(items=[1, 2], scores=[2.0, 1.0], cold_start=True)
    assert c.check(body(cold_doc), 99, K, 0) == (0, [1, 2], True)
    assert ANSWER_CODES[c.check(b"<html>oops", 1, K, 0)[0]] == "not_json"
    assert ANSWER_CODES[c.check(b"\xff\xfe", 1, K, 0)[0]] == "not_json"


def test_json_format_checks_only_what_the_schema_and_validator_say(tmp_path, monkeypatch):
    schema = tmp_path / "answer.schema.json"
    schema.write_text(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "required": ["items", "model_version"],
                "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
            }
        )
    )
    (tmp_path / "my_checks.py").write_text(
        "def distinct(answer, request):\n"
        "    items = answer['items']\n"
        "    if request['k'] == 99:\n"
        "        raise RuntimeError('broken validator')\n"
        "    return [] if len(set(items)) == len(items) else ['repeated items']\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    c = checker(
        format="json",
        catalogue=None,
        schema=str(schema),
        validator="my_checks:distinct",
        validator_path=str(tmp_path),
    )
    assert c.check(body({"items": [1, 2], "model_version": "x"}), 1, 2, 0)[0] == 0
    assert ANSWER_CODES[c.check(body({"items": [1, 2]}), 1, 2, 0)[0]] == "schema"
    repeated = body({"items": [1, 1], "model_version": "x"})
    assert ANSWER_CODES[c.check(repeated, 1, 2, 0)[0]] == "validator"
    assert ANSWER_CODES[c.check(repeated, 1, 99, 0)[0]] == "validator_error"


def test_a_schema_or_validator_that_cannot_load_names_itself(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "no-such-type"}))
    with pytest.raises(CheckerError, match=r"answers.schema .*bad.json: not a valid JSON Schema"):
        checker(schema=str(bad))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(CheckerError, match=r"cannot import 'no_such_module_xyz'"):
        checker(validator="no_such_module_xyz:f", validator_path=str(tmp_path))
    (tmp_path / "has_no_f.py").write_text("x = 1\n")
    with pytest.raises(CheckerError, match=r"has_no_f has no function 'f'"):
        checker(validator="has_no_f:f", validator_path=str(tmp_path))


def test_an_answer_check_with_impossible_values_says_which():
    problems = AnswerCheck("xml", 0, catalogue=0, validator="nocolon").problems()
    assert [p[0] for p in problems] == [
        "answers.format",
        "answers.width",
        "answers.catalogue",
        "answers.validator",
    ]
    assert AnswerCheck.from_dict(AnswerCheck("json", 3).to_dict()) == AnswerCheck("json", 3)


well_formed = st.integers(1, 12).flatmap(
    lambda k: st.tuples(
        st.just(k),
        st.lists(st.integers(0, CATALOGUE - 1), min_size=k, max_size=k, unique=True),
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=k, max_size=k
        ).map(lambda s: sorted(s, reverse=True)),
        st.sampled_from(["primary", "retry", "replica", "degraded", "static"]),
    )
)


@given(well_formed)
@settings(max_examples=200, deadline=None)
def test_a_well_formed_answer_is_always_valid(case):
    k, items, scores, tier = case
    doc = {"items": items, "scores": scores, "tier": tier, "model_version": "v"}
    assert recommender_problem(json.loads(json.dumps(doc)), k, CATALOGUE) == 0


@given(well_formed, st.sampled_from(["nan", "dup", "out", "short", "unsort"]), st.data())
@settings(max_examples=300, deadline=None)
def test_any_single_corruption_is_caught(case, how, data):
    k, items, scores, tier = case
    items, scores = list(items), list(scores)
    i = data.draw(st.integers(0, k - 1))
    if how == "nan":
        scores[i] = math.nan
    elif how == "dup" and k > 1:
        items[i] = items[(i + 1) % k]
    elif how == "out":
        items[i] = CATALOGUE + i
    elif how == "short":
        items, scores = items[:-1], scores[:-1]
    elif how == "unsort" and k > 1 and scores[0] != scores[-1]:
        scores[0], scores[-1] = scores[-1], scores[0]
    else:
        return  # that corruption needs two distinct values
    doc = {"items": items, "scores": scores, "tier": tier, "model_version": "v"}
    assert recommender_problem(doc, k, CATALOGUE) != 0
