"""The load job and the pure parts of the load worker: JSON round trip, validation messages,
exact splitting of the schedule over workers, request rendering, histograms and summaries
from a request log, and that importing the load package patches nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.load.driver import LoadResult
from harness.load.results import HISTOGRAMS, histograms, merge_summaries, summarize
from harness.load.spec import (
    RECOMMENDER_REQUEST,
    LoadJob,
    LoadJobError,
    connect_host,
    host_port,
    parse_master_address,
    render,
    worker_share,
)
from harness.metrics.histogram import LatencyHistogram
from harness.model.load import LoadPhase, RequestMix
from harness.model.requestlog import REQUEST_DTYPE, empty_log, error_code, tier_code
from harness.model.schedule import request_schedule
from harness.model.target import RequestTemplate

REPO = Path(__file__).resolve().parents[2]

phases_st = st.lists(
    st.builds(
        LoadPhase,
        name=st.sampled_from(["warm", "fault", "after"]),
        rate=st.floats(0, 800),
        duration_s=st.floats(0.05, 3),
        mix=st.builds(
            RequestMix,
            zipf_exponent=st.floats(0, 2),
            users=st.integers(1, 1000),
            k=st.integers(1, 50),
        ),
    ),
    min_size=1,
    max_size=3,
).map(tuple)


def job(**kw) -> LoadJob:
    base = dict(
        target="http://127.0.0.1:8080",
        phases=(LoadPhase("steady", 100, 2.0),),
        seed=7,
        output_dir="/tmp/out",
    )
    return LoadJob(**{**base, **kw})


@given(phases_st, st.integers(0, 2**63 - 1), st.integers(1, 4), st.data())
@settings(max_examples=60, deadline=None)
def test_json_round_trip(phases, seed, count, data):
    index = data.draw(st.integers(0, count - 1))
    j = job(
        phases=phases,
        seed=seed,
        worker_index=index,
        worker_count=count,
        max_in_flight=data.draw(st.integers(1, 4096)),
        timer=data.draw(st.sampled_from(["timerfd", "spin", "sleep"])),
        start_mono_ns=data.draw(st.none() | st.integers(1, 2**62)),
    )
    back = LoadJob.from_json(j.to_json())
    assert back == j
    assert json.loads(back.to_json()) == json.loads(j.to_json())


def test_generic_template_round_trip(tmp_path):
    tpl = RequestTemplate("GET", "/items/$user_id?k=$k", None, (("X-Trace", "run-$seed"),))
    j = job(request=tpl)
    assert LoadJob.read(j.write(tmp_path / "job.json")) == j
    assert render(tpl, 12, 5, 3, 99) == ("/items/12?k=5", None, (("X-Trace", "run-99"),))


def test_recommender_request_renders_the_gateway_body_and_request_id():
    path, body, headers = render(RECOMMENDER_REQUEST, 4321, 10, 17, 7)
    assert path == "/v1/recommend"
    assert json.loads(body) == {"user_id": 4321, "k": 10}
    assert dict(headers)["X-Request-Id"] == "17"


@given(phases_st, st.integers(0, 2**32), st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_workers_split_the_schedule_exactly(phases, seed, count):
    whole = request_schedule(phases, seed)
    shares = [worker_share(phases, seed, i, count) for i in range(count)]
    ids = np.concatenate([s.ids for s in shares])
    assert sorted(ids.tolist()) == list(range(len(whole)))  # disjoint and complete
    for s in shares:
        assert s.total == len(whole)
        assert np.array_equal(s.intended_ns, whole.intended_ns[s.ids])
        assert np.array_equal(s.user_ids, whole.user_ids[s.ids])
        assert np.all(np.diff(s.intended_ns) >= 0)


def test_same_seed_same_requests_other_seed_other_users():
    phases = (LoadPhase("p", 300, 2.0, RequestMix(1.1, 10_000, 10)),)
    a, b = worker_share(phases, 5, 0, 1), worker_share(phases, 5, 0, 1)
    assert np.array_equal(a.user_ids, b.user_ids)
    assert not np.array_equal(a.user_ids, worker_share(phases, 6, 0, 1).user_ids)


@pytest.mark.parametrize(
    ("kw", "field", "allowed"),
    [
        ({"target": "ftp://host"}, "target", "http:// base URL"),
        ({"seed": -1}, "seed", "integer >= 0"),
        ({"phases": ()}, "phases", "at least one LoadPhase"),
        ({"worker_index": 3, "worker_count": 2}, "worker_index", "[0, worker_count=2)"),
        ({"max_in_flight": 0}, "max_in_flight", "integer >= 1"),
        ({"timeout_s": 0}, "timeout_s", "seconds > 0"),
        ({"timer": "busy"}, "timer", "timerfd, spin, sleep"),
        ({"request": RequestTemplate("DELETE", "/")}, "request.method", "GET, POST, PUT"),
        ({"request": RequestTemplate("GET", "/$nope")}, "request", "$user_id"),
    ],
)
def test_bad_job_names_field_value_and_allowed(kw, field, allowed):
    with pytest.raises(LoadJobError) as err:
        job(**kw)
    text = str(err.value)
    assert f"{field}: got " in text and allowed in text


def test_bad_json_names_its_source(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(
        '{"target": "http://x:1", "phases": [], "seed": 1, "output_dir": "o", "colour": 3}'
    )
    with pytest.raises(LoadJobError, match=rf"{path}.*colour: got 3; allowed: one of "):
        LoadJob.read(path)


def test_pool_size_follows_the_rate_within_bounds():
    assert job(phases=(LoadPhase("p", 500, 1.0),)).pool_size() == 12
    assert job(phases=(LoadPhase("p", 500, 1.0),), worker_count=2).pool_size() == 7
    assert job(connections=50, max_in_flight=8).pool_size() == 8


def _log() -> np.ndarray:
    """Six requests: 3 answered (1, 2, 30 ms), a 503, a timeout, and one miss."""
    rows = empty_log(6)
    rows["intended_ns"] = np.arange(6) * 5_000_000
    lag = 200_000
    rows["send_ns"][:5] = rows["intended_ns"][:5] + lag
    rows["done_ns"][:5] = rows["send_ns"][:5] + np.array([1, 2, 30, 1, 2000]) * 1_000_000
    rows["status"][:4] = [200, 200, 200, 503]
    rows["error_kind"] = [
        0,
        0,
        0,
        error_code("http_status"),
        error_code("timeout"),
        error_code("not_sent"),
    ]
    rows["tier"][:3] = [tier_code("primary"), tier_code("replica"), tier_code("primary")]
    return rows


def test_histograms_of_a_log_count_failures_and_misses():
    h = histograms(_log())
    assert h["response"].count == 3 and h["response"].failures == 3
    assert h["response"].percentile(50) == pytest.approx(2.2, abs=0.01)
    assert h["service"].count == 3 and h["service"].failures == 2  # the miss was never sent
    assert h["lag"].count == 5 and h["lag"].percentile(99) == pytest.approx(0.2, abs=0.001)
    assert h["response"].percentile_with_errors(99) == float("inf")


def test_summary_accounts_for_every_intended_request():
    rows = _log()
    cpu = {"user_s": 0.01, "sys_s": 0.002, "wall_s": 1.0}
    s = summarize(job(), rows, histograms(rows), 6, 123, 0.03, cpu, False, None)
    assert (s["intended"], s["sent"], s["answered"], s["failed"], s["missed"]) == (6, 5, 3, 2, 1)
    assert s["errors"] == {"http_status": 1, "timeout": 1, "not_sent": 1}
    assert s["tiers"] == {"primary": 2, "replica": 1}
    assert s["cpu_ms_per_request"] == pytest.approx(12 / 5)


def test_merged_summary_and_histograms_equal_those_of_the_merged_log():
    a, b = _log(), _log()
    b["id"] += 6
    b["worker"] = 1
    cpu = {"user_s": 0.01, "sys_s": 0.0, "wall_s": 1.0}
    parts = [summarize(job(), r, histograms(r), 6, 1, 0.03, cpu, False, None) for r in (a, b)]
    hists = {n: histograms(a)[n].merge(histograms(b)[n]) for n in ("response", "service", "lag")}
    merged = merge_summaries(parts, hists)
    both = np.concatenate([a, b])
    assert hists == histograms(both)
    assert (merged["intended"], merged["missed"], merged["workers"]) == (12, 2, 2)
    res = LoadResult(
        Path("."), 1, both.astype(REQUEST_DTYPE), hists, {**merged, "scheduled": 12}, parts
    )
    assert res.unaccounted() == []
    res.summary["answered"] -= 1
    assert "intended 12 != answered 5" in res.unaccounted()[0]


def test_histogram_round_trip_through_worker_json():
    h = histograms(_log())["response"]
    assert LatencyHistogram.from_dict(json.loads(json.dumps(h.to_dict()))) == h


@pytest.mark.parametrize(
    ("text", "optional", "expected"),
    [("10.0.0.1:5557", False, ("10.0.0.1", 5557)), ("[::1]:5557", False, ("::1", 5557)),
     ("0.0.0.0:1", False, ("0.0.0.0", 1)), ("5557", True, ("127.0.0.1", 5557)),
     ("host.example:65535", True, ("host.example", 65535))],
)  # fmt: skip
def test_master_address_forms(text, optional, expected):
    assert parse_master_address(text, "--x", optional) == expected


@pytest.mark.parametrize("text", ["5557", ":5557", "h:0", "h:65536", "h:port", "h:", ""])
def test_bad_master_addresses_name_the_option_and_value(text):
    with pytest.raises(ValueError, match=rf"--locust-master {text!r} is not HOST:PORT"):
        parse_master_address(text, "--locust-master")


def test_master_connect_address():
    assert connect_host("0.0.0.0") == "127.0.0.1" and connect_host("::") == "::1"
    assert connect_host("10.1.2.3") == "10.1.2.3"
    assert host_port("::1", 5) == "[::1]:5" and host_port("10.0.0.1", 5) == "10.0.0.1:5"


def test_the_worker_cli_names_a_bad_master_address(capsys):
    from harness.load.worker import main

    for argv in (["--locust-master", "5557"], ["--locust-master-bind", "h:0"]):
        with pytest.raises(SystemExit) as info:
            main(["job.json", *argv])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert argv[0] in err and repr(argv[1]) in err and "PORT 1-65535" in err


def test_run_load_refuses_master_options_outside_locust_mode(tmp_path):
    from harness.load.driver import run_load

    with pytest.raises(ValueError, match="for mode='locust' only"):
        run_load(job(output_dir=str(tmp_path)), 1.0, master_bind="127.0.0.1:5557")
    with pytest.raises(ValueError, match="local_workers must be 0..2"):
        run_load(job(output_dir=str(tmp_path)), 1.0, workers=2, mode="locust", local_workers=3)
    with pytest.raises(ValueError, match="master_bind '5557' is not HOST:PORT"):
        run_load(job(output_dir=str(tmp_path)), 1.0, mode="locust", master_bind="5557")


def test_a_shed_request_is_its_own_outcome_not_a_failure():
    rows = _log()
    http_status = rows["error_kind"] == error_code("http_status")
    rows["error_kind"][http_status] = error_code("shed")  # the 503 came with Retry-After
    rows["status"][http_status] = 503
    cpu = {"user_s": 0.01, "sys_s": 0.0, "wall_s": 1.0}
    s = summarize(job(), rows, histograms(rows), 6, 1, 0.03, cpu, False, None)
    assert (s["answered"], s["failed"], s["missed"], s["shed"]) == (3, 1, 1, 1)
    assert s["errors"] == {"shed": 1, "timeout": 1, "not_sent": 1}
    merged = merge_summaries([s, {**s, "shed": 0}], {n: histograms(rows)[n] for n in HISTOGRAMS})
    assert merged["shed"] == 1
    res = LoadResult(Path("."), 1, rows, histograms(rows), {**s, "workers": 1}, [s])
    assert res.unaccounted() == []
