"""The run record and the request log: JSON round-trips, atomic incremental writes, schema
checks, and merging request logs from several load processes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.model.errors import UsageError
from harness.model.record import (
    SCHEMA_VERSION,
    FaultEvent,
    RecordFile,
    RunRecord,
    json_safe,
    read_record,
    write_record,
)
from harness.model.requestlog import (
    ANSWER_CODES,
    NOT_CHECKED,
    REQUEST_DTYPE,
    V1_DTYPE,
    answer_code,
    empty_answers,
    empty_log,
    error_code,
    merge_answers,
    merge_logs,
    read_answers,
    read_log,
    succeeded,
    tier_code,
    write_answers,
    write_log,
)
from harness.model.scenario import load_scenario

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)

events = st.builds(
    FaultEvent,
    kind=st.sampled_from(["kill", "freeze", "latency"]),
    target=st.sampled_from(["shard-0-primary", "gateway"]),
    params=st.dictionaries(st.sampled_from(["delay_ms", "rate"]), st.floats(0, 100)),
    origin=st.sampled_from(["faults[0]", "fault_schedule[3]"]),
    inject_ns=st.integers(0, 10**13),
    inject_wall=st.floats(0, 2e9),
    heal_ns=st.none() | st.integers(0, 10**13),
    heal_wall=st.none() | st.floats(0, 2e9),
    verified=st.booleans(),
    note=st.text(max_size=20),
)
records = st.builds(
    RunRecord,
    scenario=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    seed=st.integers(0, 2**63 - 1),
    status=st.sampled_from(["running", "complete", "incomplete"]),
    timeline=st.lists(events, max_size=3).map(tuple),
    windows=st.lists(st.dictionaries(st.text(max_size=4), json_values, max_size=3), max_size=2).map(
        tuple
    ),
    verdict=st.sampled_from([None, "PASS", "FAIL", "INCONCLUSIVE"]),
    errors=st.lists(st.text(max_size=10), max_size=2).map(tuple),
)


@given(records)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_record_round_trip(tmp_path, record):
    path = tmp_path / "run.json"
    write_record(path, record)
    assert read_record(path) == record
    assert RunRecord.from_dict(json.loads(path.read_text())) == record


def test_record_file_is_incremental_and_atomic(tmp_path):
    s = load_scenario("scenarios/primary_kill.yaml")
    path = tmp_path / "run.json"
    rf = RecordFile(
        path,
        RunRecord(
            scenario=s.to_dict(),
            seed=s.seed,
            replay="recchaos run scenarios/primary_kill.yaml --seed 7",
        ),
    )
    assert read_record(path).status == "running"
    i = rf.add_fault(FaultEvent("kill", "shard-1-primary", {}, "faults[0]", 12 * 10**9, 1.0))
    rf.replace_fault(i, heal_ns=22 * 10**9, heal_wall=11.0, verified=True)
    rf.add_error("heal of freeze(gateway) failed: no such process")
    rf.finish("complete", verdict="PASS", windows=({"p99": math.inf},))
    back = read_record(path)
    assert back.status == "complete" and back.timeline[0].heal_s == 22.0
    assert back.errors == ("heal of freeze(gateway) failed: no such process",)
    assert back.windows == ({"p99": "inf"},)  # strict JSON: infinities become text
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind
    with pytest.raises(ValueError, match="status"):
        rf.update(status="done")


def test_schema_version_checked(tmp_path):
    path = tmp_path / "run.json"
    d = RunRecord(scenario={}, seed=1).to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    d["added_later"] = 1
    path.write_text(json.dumps(d))
    with pytest.raises(UsageError, match="schema_version 2 is not supported"):
        read_record(path)
    d["schema_version"] = SCHEMA_VERSION
    path.write_text(json.dumps(d))
    assert read_record(path).seed == 1  # unknown keys of the same schema are ignored
    path.write_text("[1]")
    with pytest.raises(UsageError, match="not a run record"):
        read_record(path)


def test_json_safe():
    assert json_safe({"a": (1.0, math.inf, -math.inf, math.nan)}) == {
        "a": [1.0, "inf", "-inf", None]
    }


def test_request_log_codes_merge_and_files(tmp_path):
    a, b = empty_log(3), empty_log(2)
    a["intended_ns"], b["intended_ns"] = [0, 20, 40], [10, 30]
    b["id"] = [3, 4]
    a["status"][:], a["done_ns"][:], a["tier"][:] = 200, 5, tier_code("replica")
    b["error_kind"][:] = error_code("timeout")
    merged = merge_logs([a, b])
    assert merged["intended_ns"].tolist() == [0, 10, 20, 30, 40]
    assert succeeded(merged).tolist() == [True, False, True, False, True]
    assert tier_code("nonsense") == -1
    with pytest.raises(ValueError, match="allowed"):
        error_code("boom")
    path = tmp_path / "requests.npy"
    write_log(path, merged)
    back = read_log(path)
    assert back.dtype == REQUEST_DTYPE and back.tobytes() == merged.tobytes()  # NaN quality
    np.save(tmp_path / "other.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not a recchaos request log"):
        read_log(tmp_path / "other.npy")
    assert merge_logs([]).shape == (0,)


def test_request_logs_written_before_answers_were_recorded_still_read(tmp_path):
    old = np.zeros(2, dtype=V1_DTYPE)
    old["id"], old["status"], old["done_ns"] = [0, 1], 200, [5, 6]
    np.save(tmp_path / "requests.npy", old)
    back = read_log(tmp_path / "requests.npy")
    assert back.dtype == REQUEST_DTYPE and back["done_ns"].tolist() == [5, 6]
    assert (back["answer"] == NOT_CHECKED).all() and np.isnan(back["agreement"]).all()


def test_answers_follow_their_rows_through_a_merge(tmp_path):
    a, b = empty_log(2), empty_log(2)
    a["id"], b["id"] = [0, 2], [1, 3]
    a["intended_ns"], b["intended_ns"] = [0, 20], [10, 30]
    ans_a = np.array([[0, 0, 0], [2, 2, 2]], dtype=np.int32)
    ans_b = np.array([[1, 1], [3, 3]], dtype=np.int32)  # a narrower worker: padded with -1
    merged = merge_answers([a, b], [ans_a, ans_b])
    assert merged.tolist() == [[0, 0, 0], [1, 1, -1], [2, 2, 2], [3, 3, -1]]
    write_answers(tmp_path / "answers.npy", merged)
    assert np.array_equal(read_answers(tmp_path / "answers.npy", 4), merged)
    with pytest.raises(ValueError, match="not the answers of a 5-row request log"):
        read_answers(tmp_path / "answers.npy", 5)
    assert empty_answers(2, 3).tolist() == [[-1] * 3] * 2
    assert answer_code("non_finite_scores") == ANSWER_CODES.index("non_finite_scores")
    with pytest.raises(ValueError, match="unknown answer code 'nope'"):
        answer_code("nope")
