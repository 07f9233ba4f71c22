"""Answer quality, pure: agreement and NDCG per answer against a reference, window and tier
statistics, the quality SLOs' verdicts and messages, the ``answers:`` section's rules, the
population warning, the reference file format, and quality in compare and the history store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.checks import evaluate
from harness.checks.quality import value_text
from harness.metrics import Window, window_stats
from harness.metrics.quality import answer_quality, expected_quality, window_quality
from harness.model.answers import beyond_population
from harness.model.errors import ScenarioError, UsageError
from harness.model.reference import (
    FORMAT,
    Reference,
    ReferenceError,
    read_reference,
    write_reference,
)
from harness.model.requestlog import TIERS, answer_code, empty_log, error_code
from harness.model.scenario import scenario_from_dict
from harness.runner.answers import prepare_answers, score_answers
from reports.compare.quality import judge_quality
from reports.compare.quality import window_quality as record_quality
from reports.compare.sides import compare_sides, load_side
from reports.effect import MinEffect
from reports.history import store as history
from reports.report.series import per_second
from reports.synthetic import Synth, write_run

META = {"format": FORMAT, "format_version": 1, "k": 4}


def reference() -> Reference:
    return Reference(
        users=np.array([0, 1, 2], dtype=np.int64),
        items=np.array([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, -1]], dtype=np.int32),
        held_out=np.array([11, 99, 30], dtype=np.int64),
        meta=dict(META),
        lists={"popular": np.array([[1, 2, 3, 4]] * 3, dtype=np.int32)},
    )


def answered(users, answers, code=0, cold=False):
    rows = empty_log(len(users))
    rows["user_id"] = users
    rows["answer"] = code
    rows["cold_start"] = cold
    rows["status"], rows["done_ns"], rows["send_ns"] = 200, 1_000_000, 0
    return rows, np.array(answers, dtype=np.int32)


def test_agreement_is_the_overlap_with_the_reference_whatever_the_order():
    rows, ans = answered(
        [0, 0, 1, 2],
        [[13, 12, 11, 10], [10, 11, 50, 51], [20, 99, 98, 97], [31, 30, 32, -1]],
    )
    agreement, ndcg = answer_quality(rows, ans, reference(), np.full(4, 4))
    assert agreement.tolist() == [1.0, 0.5, 0.25, 1.0]  # user 2's reference has 3 items
    # held-out 11 at rank 3 -> 1/log2(4), then at rank 2; 99 at rank 2 (not in the reference:
    # NDCG judges against the ground truth, not the model); 30 at rank 2
    third = 1 / math.log2(3)
    assert ndcg.tolist() == pytest.approx([0.5, third, third, third])


def test_only_the_first_k_of_an_answer_and_of_the_reference_count():
    rows, ans = answered([0], [[10, 99, 11, 12]])
    agreement, ndcg = answer_quality(rows, ans, reference(), np.array([2]))
    assert agreement.tolist() == [0.5]  # {10, 99} against {10, 11}
    assert ndcg.tolist() == [0.0]  # the held-out 11 is third: outside k = 2


def test_invalid_cold_start_and_unknown_users_are_not_measured():
    rows, ans = answered([0, 0, 7], [[10, 11, 12, 13]] * 3)
    rows["answer"][0] = answer_code("non_finite_scores")
    rows["cold_start"][1] = True
    agreement, ndcg = answer_quality(rows, ans, reference(), np.full(3, 4))
    assert np.isnan(agreement).all() and np.isnan(ndcg).all()


def test_expected_quality_weighs_the_users_as_the_stream_does():
    exp = expected_quality(reference(), np.array([0, 0, 0, 2, 5]), 4)
    assert exp["requests"] == 4  # user 5 is not covered
    assert exp["full"]["agreement_at_k"] == 1.0 and exp["popular"]["agreement_at_k"] == 0.0
    assert exp["full"]["hit_rate"] == 1.0  # 11 for user 0, 30 for user 2
    assert exp["full"]["ndcg_at_k"] == pytest.approx((3 * 1 / math.log2(3) + 1.0) / 4, abs=1e-4)


def quality_log():
    """200 answers: the first half primary (agreement 1), the second static (0.3) with 10
    invalid ones and 5 cold starts."""
    n = 200
    rows = empty_log(n)
    rows["intended_ns"] = np.arange(n) * 50_000_000  # 20 per second, 10 s
    rows["send_ns"], rows["done_ns"], rows["status"] = (
        rows["intended_ns"],
        rows["intended_ns"] + 10**6,
        200,
    )
    rows["answer"] = 0
    rows["tier"] = np.where(np.arange(n) < 100, TIERS.index("primary"), TIERS.index("static"))
    rows["agreement"] = np.where(np.arange(n) < 100, 1.0, 0.3)
    rows["ndcg"] = 0.25
    bad = np.arange(150, 160)
    rows["answer"][bad] = answer_code("non_finite_scores")
    rows["error_kind"][bad] = error_code("bad_answer")
    rows["agreement"][bad] = rows["ndcg"][bad] = np.nan
    cold = np.arange(190, 195)
    rows["cold_start"][cold] = True
    rows["agreement"][cold] = rows["ndcg"][cold] = np.nan
    return rows


def test_window_quality_counts_and_means_per_tier():
    q = window_quality(quality_log())
    assert q.cold_start == 5 and q.codes == {"non_finite_scores": 10}
    assert q.tier("primary").agreement == 1.0 and q.tier("primary").valid_share == 1.0
    static = q.tier("static")
    assert (static.checked, static.valid, static.measured) == (100, 90, 85)
    assert static.agreement == pytest.approx(0.3) and static.valid_share == 0.9
    assert q.tier(None).measured == 185 and q.tier("replica").checked == 0
    assert math.isnan(q.tier("replica").agreement)


def test_window_stats_carry_quality_and_count_a_bad_answer_as_a_failure():
    s = window_stats(quality_log(), Window("steady", 0.0, 10.0, "steady"), 20.0)
    assert s.error_kinds == {"bad_answer": 10} and s.errors == 10
    assert s.latency_all.p99 == math.inf  # 10 of 200 failed: 5% are infinitely slow
    assert s.metric("valid_share") == 0.95 and s.metric("cold_start_share") == 0.025
    assert s.metric("agreement_at_k", tier="static") == pytest.approx(0.3)
    d = s.to_dict()
    assert d["valid_share"] == 0.95 and d["answers"]["by_tier"]["static"]["measured"] == 85


def quality_scenario(slos, **extra):
    data = {
        "name": "quality",
        "seed": 1,
        "target": {"kind": "recommender", "preset": "tiny"},
        "warmup_s": 0,
        "load": [{"name": "main", "rate": 20, "duration_s": 10}],
        "slos": slos,
        "evidence": {"min_samples": 50},
        **extra,
    }
    return scenario_from_dict(data, "quality.yaml")


def test_a_constant_list_fails_agreement_with_a_message_naming_window_value_and_limit():
    s = quality_scenario([{"metric": "agreement_at_k", "at_least": 0.99}])
    ev = evaluate(s, quality_log(), [], 10.0)
    [check] = ev.checks
    assert check.verdict.value == "FAIL" and check.metric == "agreement_at_k"
    assert check.message == (
        "agreement_at_k 0.6784 steady window [0.0 s, 10.0 s] is below the SLO of at least"
        " 0.99 (quality.yaml, slos[0]); 185 answers measured in the window"
    )


def test_invalid_answers_fail_valid_share_naming_what_was_wrong():
    s = quality_scenario([{"metric": "valid_share", "at_least": 1}])
    [check] = evaluate(s, quality_log(), [], 10.0).checks
    assert check.verdict.value == "FAIL"
    assert check.message == (
        "valid_share 0.95 steady window [0.0 s, 10.0 s] is below the SLO of at least 1"
        " (quality.yaml, slos[0]); 190 of 200 answers valid (invalid: non_finite_scores 10)"
    )


def test_a_tier_that_served_nothing_cannot_be_judged():
    s = quality_scenario(
        [
            {"metric": "agreement_at_k", "tier": "replica", "at_least": 0.99},
            {"metric": "agreement_at_k", "tier": "primary", "at_least": 0.99},
            {"metric": "ndcg_at_k", "tier": "static", "at_least": 0.2},
        ]
    )
    replica, primary, static = evaluate(s, quality_log(), [], 10.0).checks
    assert replica.verdict.value == "INCONCLUSIVE"
    assert "no answer served at tier replica was checked in the window" in replica.message
    assert primary.verdict.value == "PASS" and "(primary answers) 1 steady" in primary.message
    assert static.verdict.value == "PASS" and static.value == pytest.approx(0.25)


def test_a_miss_within_sampling_noise_is_inconclusive_and_a_clear_one_fails():
    rows = quality_log()
    rows["agreement"][100:150] = np.where(np.arange(50) % 2 == 0, 0.0, 0.6)  # mean 0.3, sd 0.3
    rows["agreement"][160:190] = 0.3
    rows["agreement"][195:] = 0.3
    s = quality_scenario(
        [
            {"metric": "agreement_at_k", "tier": "static", "at_least": 0.35},  # 0.3 + 3 se > 0.35
            {"metric": "agreement_at_k", "tier": "static", "at_least": 0.5},
        ]
    )
    close, clear = evaluate(s, rows, [], 10.0).checks
    assert close.verdict.value == "INCONCLUSIVE"
    assert close.message.endswith(
        "85 answers measured in the window, but within sampling noise: sd 0.2301 over 85 answers,"
        " mean + 3 standard errors = 0.3749; more answers would decide"
    )
    assert clear.verdict.value == "FAIL"


def test_min_samples_counts_the_answers_a_quality_slo_measures():
    s = quality_scenario(
        [
            {"metric": "agreement_at_k", "tier": "static", "at_least": 0.2, "min_samples": 86},
            {"metric": "agreement_at_k", "tier": "static", "at_least": 0.2, "min_samples": 85},
        ]
    )
    few, enough = evaluate(s, quality_log(), [], 10.0).checks
    assert few.verdict.value == "INCONCLUSIVE"
    assert (
        "only 85 static answers measured, fewer than the 86 needed to judge a mean" in few.message
    )
    assert enough.verdict.value == "PASS"


def test_values_print_to_four_decimals_but_never_as_the_limit_they_miss():
    assert value_text(0.98887) == "0.9889" and value_text(1.0) == "1"
    assert value_text(0.99996, 1.0) == "0.99996" and value_text(math.nan) == "n/a"


def test_quality_slos_read_with_tiers_and_need_answers_and_a_reference(tmp_path):
    s = quality_scenario([{"metric": "ndcg_at_k", "tier": "degraded", "at_least": 0.1}])
    assert s.slos[0].tier == "degraded" and s.answers.resolved_reference("recommender") == "auto"
    with pytest.raises(ScenarioError) as bad:
        quality_scenario(
            [{"metric": "agreement_at_k", "at_least": 1.5}], answers={"reference": "none"}
        )
    text = str(bad.value)
    assert "slos[0].at_least: got 1.5; allowed: a number >= 0 and <= 1" in text
    with pytest.raises(ScenarioError, match=r"slos\[0\].metric: got 'agreement_at_k'.*reference"):
        quality_scenario(
            [{"metric": "agreement_at_k", "at_least": 0.5}], answers={"reference": "none"}
        )
    with pytest.raises(ScenarioError, match=r"answers.schema: got 'nope.json'.*no such file"):
        quality_scenario([], answers={"schema": "nope.json"})
    with pytest.raises(ScenarioError, match=r"answers.validator: got 'no colon'"):
        quality_scenario([], answers={"validator": "no colon"})
    with pytest.raises(ScenarioError, match=r"tier only with metric: tier_share, valid_share"):
        quality_scenario([{"metric": "p99", "tier": "primary", "at_most": 20}])


def test_a_generic_target_checks_answers_only_when_told(tmp_path):
    generic = {"kind": "generic", "components": {"api": "srv"}, "endpoint": "http://h:1"}
    with pytest.raises(ScenarioError, match=r"answers are not checked for this target"):
        quality_scenario([{"metric": "valid_share", "at_least": 1}], target=generic)
    with pytest.raises(ScenarioError, match=r"answers.reference: got 'auto'"):
        quality_scenario([], target=generic, answers={"format": "json", "reference": "auto"})
    schema = tmp_path / "s.json"
    schema.write_text("{}")
    s = scenario_from_dict(
        {
            "seed": 1,
            "target": generic,
            "load": [{"name": "main", "rate": 1, "duration_s": 9}],
            "answers": {"schema": "s.json", "catalogue": 50},
            "slos": [{"metric": "valid_share", "at_least": 1}],
        },
        str(tmp_path / "generic.yaml"),
    )
    assert s.answers.resolved_format("generic") == "json" and s.answers.catalogue == 50
    assert s.to_dict()["answers"] == {"schema": "s.json", "catalogue": 50}


def test_a_mix_beyond_the_population_is_warned_about_with_the_share_it_wastes():
    s = quality_scenario([], mix={"users": 100_000, "zipf_exponent": 1.1})
    users = s.request_schedule().user_ids
    [warning] = beyond_population(s.load, users, 4000, s.source)
    unknown = int((users >= 4000).sum())
    assert warning.startswith("quality.yaml: load[0] (main) draws users from a mix of 100,000")
    assert f"{unknown:,} of its 200 requests" in warning and "at most 4,000" in warning
    assert beyond_population(s.load, users, 100_000, s.source) == []


def test_reference_files_round_trip_and_bad_ones_say_what_is_wrong(tmp_path):
    path = tmp_path / "ref.npz"
    write_reference(path, reference())
    back = read_reference(path)
    assert back.k == 4 and back.items.tolist() == reference().items.tolist()
    assert back.rows_of(np.array([2, 5]))[1].tolist() == [True, False]
    np.savez(tmp_path / "other.npz", users=np.arange(2))
    with pytest.raises(ReferenceError, match=r"other.npz: not a recchaos reference file"):
        read_reference(tmp_path / "other.npz")
    unsorted = Reference(np.array([2, 1]), np.zeros((2, 3), np.int32), np.zeros(2), dict(META))
    write_reference(tmp_path / "unsorted.npz", unsorted)
    with pytest.raises(ReferenceError, match="users are not ascending and distinct"):
        read_reference(tmp_path / "unsorted.npz")
    newer = Reference(
        np.arange(1), np.zeros((1, 1), np.int32), np.zeros(1), {**META, "format_version": 9}
    )
    write_reference(tmp_path / "newer.npz", newer)
    with pytest.raises(ReferenceError, match="format_version 9; this recchaos reads 1"):
        read_reference(tmp_path / "newer.npz")


def test_per_second_quality_series():
    s = per_second(quality_log(), 10.0)
    assert s.checked.tolist() == [20] * 10
    assert s.valid_share[7] == 0.5 and s.valid_share[0] == 1.0  # 150-159 are invalid
    assert s.agreement[0] == 1.0 and s.agreement[9] == pytest.approx(0.3)


def test_a_quality_drop_is_a_regression_with_enough_runs_and_information_below():
    base = [(0.99, 2000, 0.05)] * 3
    worse = [(0.90, 2000, 0.2)] * 3
    j = judge_quality("agreement_at_k", base, worse)
    assert j.status == "regression" and j.delta == pytest.approx(-0.09)
    assert judge_quality("agreement_at_k", base, base).status == "no change"
    one = judge_quality("agreement_at_k", base[:1], worse[:1])
    assert one.status == "not tested" and one.p_value < 1e-6 and "for information" in one.method
    assert judge_quality("agreement_at_k", base[:1], worse[:1], min_runs=1).status == "regression"
    tiny = judge_quality("agreement_at_k", base, [(0.985, 2000, 0.05)] * 3)
    assert tiny.status == "no change"  # below the minimum effect of 0.01


def test_compare_and_history_carry_quality(tmp_path):
    db = tmp_path / "h.sqlite"
    for i in range(3):
        history.append_run(write_run(tmp_path / f"b{i}", Synth(seed=i)), db, batch="base")
        history.append_run(
            write_run(tmp_path / f"c{i}", Synth(seed=10 + i, agreement=0.6)), db, batch="cur"
        )
    [first, *_] = history.select_runs(db, "base")
    steady = next(iter(first.windows.values()))
    assert steady.quality["agreement_at_k"][0] == 1.0 and steady.quality["valid_share"][0] == 1.0
    c = compare_sides(load_side("history:base", db), load_side("history:cur", db), MinEffect())
    assert c.regressed and {r.metric for r in c.quality_regressions} == {"agreement_at_k"}
    run = json.loads((tmp_path / "c0" / "run.json").read_text())
    stats = record_quality(run["windows"][0])
    assert set(stats) == {"valid_share", "agreement_at_k", "ndcg_at_k"}
    dirs = compare_sides(
        load_side(str(tmp_path / "b0"), db), load_side(str(tmp_path / "c0"), db), MinEffect()
    )
    assert not dirs.regressed and dirs.quality and dirs.quality[0].judgement.status == "not tested"


class Target:
    def __init__(self, manifest_path):
        self.manifest_path = manifest_path


def test_a_run_prepares_its_checks_reference_and_warnings_from_the_manifest(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"model_version": "tiny-x", "population": 3, "catalogue": 90}))
    asked = []

    def compute(preset, version, users, k, out, log):
        asked.append((preset, version, users.tolist(), k))
        out.parent.mkdir(parents=True, exist_ok=True)
        write_reference(out, reference())
        return out

    s = quality_scenario([], mix={"users": 3, "k": 4})
    setup = prepare_answers(s, Target(manifest), tmp_path, compute_reference=compute)
    assert asked == [("tiny", "tiny-x", [0, 1, 2], 4)]  # every user the mix can draw
    assert setup.check is not None and setup.check.catalogue == 90 and setup.check.width == 4
    assert setup.reference is not None and setup.warnings == ()
    assert setup.reference_path == tmp_path / "answers" / "reference.npz"
    rows, ans = answered([0, 1], [[10, 11, 12, 13], [20, 0, 0, 0]])
    rows["id"] = [0, 1]
    expected = score_answers(s, setup, rows, ans, None)
    assert rows["agreement"].tolist() == [1.0, 0.25]
    assert expected["full"]["agreement_at_k"] == 1.0


def test_a_mix_beyond_the_population_warns_and_fails_with_strict(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"model_version": "tiny-x", "n_users": 3, "n_items": 90}))
    s = quality_scenario([], mix={"users": 50}, answers={"reference": "none"})
    lines: list[str] = []
    setup = prepare_answers(s, Target(manifest), tmp_path, log=lines.append)
    assert setup.population == 3 and setup.catalogue == 90  # the older key names
    assert len(setup.warnings) == 1 and lines == [f"warning: {setup.warnings[0]}"]
    with pytest.raises(UsageError, match=r"--strict: quality.yaml: load\[0\] \(main\) draws"):
        prepare_answers(s, Target(manifest), tmp_path, strict=True, log=lines.append)


def test_a_manifest_that_does_not_say_is_completed_from_the_preset(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"backend": "docker", "preset": "tiny"}))
    facts = {"population": 4000, "catalogue": 2000, "model_version": "tiny-y"}
    s = quality_scenario([], answers={"reference": "none"})
    setup = prepare_answers(s, Target(manifest), tmp_path, describe=lambda preset: facts)
    assert (setup.population, setup.catalogue, setup.reference) == (4000, 2000, None)
