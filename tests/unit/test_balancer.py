"""The redundant entry point, without starting anything: the HAProxy config generated for the
gateways (system_under_test/balancer.py), the request-start header the gateway reads back, and
the scenario target's ``gateways`` (harness/model/target.py)."""

from __future__ import annotations

import json
import re
import time

import pytest

from harness.model.errors import ScenarioError
from harness.model.scenario import scenario_from_dict
from harness.model.target import RecommenderTarget
from system_under_test.balancer import (
    GATEWAY_MAXCONN,
    QUEUE_TIMEOUT_MS,
    BalancerSettings,
    check_limits,
    parse_request_start,
    render_config,
    shed_body,
)
from system_under_test.gateway.api import MAX_CARRIED_S, arrival_of
from system_under_test.gateway.http import Request
from system_under_test.gateway.settings import HttpLimits

GATEWAYS = ("127.0.0.1:7001", "127.0.0.1:7002")


def config(**kw) -> str:
    return render_config(BalancerSettings("127.0.0.1", 7000, GATEWAYS, **kw))


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_listens_on_loopback_only_and_names_each_gateway_once():
    text = config()
    assert re.findall(r"^\s*bind (\S+)$", text, re.M) == ["127.0.0.1:7000"]
    for i, address in enumerate(GATEWAYS):
        assert len(re.findall(rf"server gateway-{i} {address} .*check ", text)) == 1


def test_one_backend_checked_on_healthz_so_a_retry_always_has_every_live_gateway():
    """Two backends (``ready`` on /readyz, ``live`` on /healthz) let a request already sent to
    ``ready`` end in HAProxy's 503 <NOSRV> when every primary died at once: the backend is
    picked once, and /readyz turned 503 on every gateway together."""
    text = config()
    assert re.findall(r"^backend (\S+)$", text, re.M) == ["gateways"]
    assert "default_backend gateways" in lines(text)
    assert "option httpchk GET /healthz" in lines(text)
    assert "/readyz" not in text and "use_backend" not in text
    assert "fall 2 rise 2" in text and "inter 100ms" in text


def test_retries_go_to_another_gateway_on_refusal_drop_and_timeout():
    got = lines(config())
    servers = [x for x in got if x.startswith("server gateway-")]
    # A refused connection marks the gateway down at once: the retries of the request that
    # found it dead cannot be sent back to it while the live gateway is full.
    assert all(" observe layer4 error-limit 1 on-error mark-down " in x for x in servers)
    assert "retry-on conn-failure empty-response response-timeout" in got
    assert "option redispatch 1" in got
    assert "retries 3" in got


def test_server_timeout_is_below_the_gateway_deadline_and_connect_timeout_a_few_ms():
    got = lines(config())
    server = int(next(x for x in got if x.startswith("timeout server")).split()[-1][:-2])
    connect = int(next(x for x in got if x.startswith("timeout connect")).split()[-1][:-2])
    assert server < 17 and connect <= 5
    assert "timeout server 8ms" in lines(config(server_timeout_ms=8))


def test_each_gateway_takes_a_bounded_number_of_requests_and_the_rest_wait_briefly():
    got = lines(config(gateway_maxconn=3, queue_timeout_ms=2))
    servers = [x for x in got if x.startswith("server gateway-")]
    assert len(servers) == 2 and all(" maxconn 3 " in x for x in servers)
    assert "timeout queue 2ms" in got
    # Short enough that a queued request can still be served inside the 20 ms SLA.
    assert QUEUE_TIMEOUT_MS < 10 and GATEWAY_MAXCONN >= 2


def test_without_a_limit_asked_for_no_gateway_has_one_and_nothing_is_turned_away():
    """Off by default: a fixed limit also sheds while requests wait on dying dependencies."""
    default = lines(config())
    servers = [x for x in default if x.startswith("server gateway-")]
    assert len(servers) == 2 and not any(" maxconn " in x for x in servers)
    assert not any(x.startswith("http-request return status 503") for x in default)
    body = json.loads(shed_body(BalancerSettings("h", 1, GATEWAYS)))
    assert body["field"] == "load" and "no gateway was up" in body["error"]
    assert "None" not in json.dumps(body)


def test_a_queue_timeout_is_answered_503_with_retry_after_and_the_gateways_shed_body():
    """Only the balancer's own 503 while some gateway is up is shed (Retry-After); a 503 with
    no gateway up is an outage, and a gateway's own 503 (/readyz) passes unchanged."""
    text = config(gateway_maxconn=3, queue_timeout_ms=2)
    error = next(x for x in lines(text) if x.startswith("http-error status 503"))
    assert "content-type application/json string " in error
    quoted = error.split(" string ", 1)[1]
    body = json.loads(quoted[1:-1].replace('\\"', '"'))
    assert body == json.loads(
        shed_body(BalancerSettings("h", 1, GATEWAYS, gateway_maxconn=3, queue_timeout_ms=2))
    )
    assert body["field"] == "load" and "2 ms" in body["error"] and "at most 3" in body["allowed"]
    assert (
        "http-after-response set-header Retry-After 1 "
        "if { status 503 } !{ srv_id -m found } { nbsrv(gateways) gt 0 }"
    ) in lines(text)


def test_a_request_that_finds_the_queue_full_is_answered_at_once_with_retry_after():
    got = lines(config(gateway_maxconn=2, max_queue=3))
    fast = next(x for x in got if x.startswith("http-request return status 503"))
    assert fast.endswith(" hdr Retry-After 1 if { queue(gateways) ge 3 }")
    assert "content-type application/json string " in fast
    # After X-Request-Start is set, in the frontend: it answers before any backend is chosen.
    assert got.index(fast) > got.index("http-request set-header X-Request-Start t=%[date(0,us)]")
    assert got.index(fast) < got.index("backend gateways")


def test_by_default_a_request_that_finds_every_gateway_full_is_answered_at_once():
    """No queue (max_queue 0): nothing waits out the queue timeout but a retry; with no gateway
    up the rule does not apply, so that 503 stays HAProxy's outage answer (no Retry-After)."""
    assert BalancerSettings("h", 1, GATEWAYS).max_queue == 0
    got = lines(config(gateway_maxconn=2))
    fast = next(x for x in got if x.startswith("http-request return status 503"))
    assert fast.endswith(
        " hdr Retry-After 1 if { be_conn_free(gateways) le 0 } { nbsrv(gateways) gt 0 }"
    )
    assert got.index(fast) < got.index("backend gateways")
    assert "timeout queue 5ms" in got  # a retry still waits for room, at most this long
    body = json.loads(shed_body(BalancerSettings("h", 1, GATEWAYS, gateway_maxconn=2)))
    assert "only a retry waits for one, at most 5 ms" in body["error"], body
    assert body["field"] == "load" and "at most 2" in body["allowed"]


@pytest.fixture
def serve_lb(monkeypatch) -> list[int]:
    """``balancer.main`` up to the exec of HAProxy (found on PATH, never run: the exec exits 0);
    the autogroup nice values it asks for are returned."""
    from system_under_test import balancer, runtime

    asked: list[int] = []
    monkeypatch.setattr(runtime, "raise_session_share", lambda nice: asked.append(nice) or True)
    monkeypatch.setattr(balancer.shutil, "which", lambda name: "/usr/sbin/haproxy")

    def no_exec(path, argv):
        raise SystemExit(0)

    monkeypatch.setattr(balancer.os, "execv", no_exec)
    return asked


def test_serve_lb_raises_its_share_of_the_cpu_only_with_the_limit(tmp_path, serve_lb, capsys):
    """With --gateway-maxconn the balancer's session gets autogroup nice -10 before it becomes
    HAProxy (its rejections must not wait behind the gateways for a core); without, nothing
    about its scheduling changes."""
    from system_under_test import balancer

    asked = serve_lb
    argv = ["--port", "7000", "--gateway", "127.0.0.1:7001", "--config", str(tmp_path / "c")]
    with pytest.raises(SystemExit):
        balancer.main(argv)
    assert asked == []
    with pytest.raises(SystemExit):
        balancer.main([*argv, "--gateway-maxconn", "2"])
    assert asked == [balancer.BALANCER_AUTOGROUP_NICE] == [-10]
    assert "balancer autogroup nice -10: set" in capsys.readouterr().err


def test_with_the_limit_the_server_timeout_is_the_sla_unless_given(tmp_path, serve_lb):
    """Past capacity a 10 ms retry only moved a busy gateway's request to the other, just as
    busy; with the limit a frozen gateway holds at most its maxconn requests, so the default
    server timeout is then the SLA. One given on the command line always wins."""
    from system_under_test import balancer

    assert balancer.server_timeout_for(None, None) == balancer.SERVER_TIMEOUT_MS == 10
    assert balancer.server_timeout_for(None, 2) == balancer.LIMITED_SERVER_TIMEOUT_MS == 20
    assert balancer.server_timeout_for(7, 2) == 7 and balancer.server_timeout_for(7, None) == 7
    cfg = tmp_path / "c"
    argv = ["--port", "7000", "--gateway", "127.0.0.1:7001", "--gateway", "127.0.0.1:7002"]
    for extra, want in (
        ([], "timeout server 10ms"),
        (["--gateway-maxconn", "2"], "timeout server 20ms"),
        (["--gateway-maxconn", "2", "--server-timeout-ms", "12"], "timeout server 12ms"),
    ):
        with pytest.raises(SystemExit):
            balancer.main([*argv, "--config", str(cfg), *extra])
        assert want in lines(cfg.read_text()), extra


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, None, None), "--server-timeout-ms 0 (x) is out of range; allowed: 1 to 60000"),
        ((None, 0, None), "--gateway-maxconn 0 (x) is out of range; allowed: 1 to 4096"),
        ((None, 5000, None), "--gateway-maxconn 5000 (x) is out of range; allowed: 1 to 4096"),
        ((None, None, 0), "--queue-timeout-ms 0 (x) is out of range; allowed: 1 to 1000"),
        ((None, None, 1001), "--queue-timeout-ms 1001 (x) is out of range; allowed: 1 to 1000"),
        (
            (None, None, None, -1),
            "--max-queue -1 (x) is out of range; allowed: 0 (no queue) to 4096",
        ),
        ((None, None, None, 4097), "--max-queue 4097 (x) is out of range; allowed: 0 (no"),
    ],
)
def test_balancer_limits_out_of_range_are_named_with_what_is_allowed(args, expected):
    assert (check_limits(*args, source="x") or "").startswith(expected)
    assert check_limits(10, 8, 5, 4) is None and check_limits(None, None, None) is None
    assert check_limits(None, 2, 5, 0) is None


def test_client_limits_come_from_the_gateways_own():
    limits = HttpLimits(max_head=32 * 1024, request_timeout_s=2.5, idle_timeout_s=30.0)
    got = lines(config(limits=limits.__class__(**{**limits.__dict__, "max_connections": 100})))
    assert "maxconn 100" in got
    assert "tune.bufsize 33792" in got  # max_head + tune.maxrewrite
    assert "timeout http-keep-alive 30000ms" in got


def test_a_pooled_connection_waits_the_idle_timeout_for_its_first_request_not_the_request_timeout():
    """HAProxy times the wait for a connection's first request with ``timeout http-request``:
    at the request timeout (10 s) an unused pooled connection got a 408 that its client then
    read as the answer to its next request. It waits the idle timeout, and closes silently."""
    limits = HttpLimits(request_timeout_s=2.5, idle_timeout_s=30.0)
    got = lines(config(limits=limits))
    assert "timeout http-request 30000ms" in got
    assert "option http-ignore-probes" in got


def test_the_balancer_holds_the_whole_request_so_that_it_can_retry_it():
    # HAProxy retries only a request it holds in full; urllib sends the head and the body apart.
    assert "option http-buffer-request" in lines(config())


def test_request_start_header_is_set_by_the_balancer_and_parsed_back():
    assert "http-request set-header X-Request-Start t=%[date(0,us)]" in lines(config())
    assert parse_request_start("t=1733469553123456") == pytest.approx(1733469553.123456)
    for bad in (None, "", "1733469553123456", "t=", "t=12a", "t=" + "9" * 20):
        assert parse_request_start(bad) is None


def request(header: str | None, received_at: float) -> Request:
    headers = {} if header is None else {"x-request-start": header}
    return Request("POST", "/v1/recommend", "", headers, b"{}", received_at)


def test_gateway_deadline_counts_the_time_spent_in_the_balancer():
    now = time.monotonic()
    started = time.time() - 0.004  # the balancer had it 4 ms ago
    arrival = arrival_of(request(f"t={round(started * 1e6)}", now))
    assert arrival is not None and now - arrival == pytest.approx(0.004, abs=0.001)
    assert arrival_of(request(None, now)) == now


def test_gateway_ignores_a_request_start_from_the_future_or_too_long_ago():
    now = time.monotonic()
    future = f"t={round((time.time() + 5) * 1e6)}"
    old = f"t={round((time.time() - MAX_CARRIED_S - 1) * 1e6)}"
    assert arrival_of(request(future, now)) == now
    assert arrival_of(request(old, now)) == now


BASE = {
    "name": "t",
    "seed": 1,
    "load": [{"name": "main", "rate": 100, "duration_s": 30}],
    "slos": [{"metric": "p99", "at_most": 20}],
}


def scenario(target, faults=()):
    return scenario_from_dict({**BASE, "target": target, "faults": list(faults)}, "s.yaml")


def test_target_with_two_gateways_names_each_gateway_and_the_balancer():
    s = scenario(
        {"kind": "recommender", "shards": 2, "gateways": 2},
        [{"kind": "restart", "target": "gateway-0", "at_s": 5, "duration_s": 5}],
    )
    t = s.target
    assert isinstance(t, RecommenderTarget) and t.gateways == 2
    assert {"gateway-0", "gateway-1", "lb"} <= set(t.component_names())
    assert "gateway" not in t.component_names()
    assert "gateways" not in t.to_dict()  # the default layout, as `up` starts it
    for kind in ("kill", "freeze"):
        scenario(
            {"kind": "recommender", "gateways": 2},
            [{"kind": kind, "target": "lb", "at_s": 5, "duration_s": 5}],
        )
    three = scenario({"kind": "recommender", "gateways": 3}).target
    assert three.to_dict()["gateways"] == 3
    assert scenario(three.to_dict()).target == three


def test_target_default_is_two_gateways_behind_the_balancer():
    t = scenario({"kind": "recommender"}).target
    assert isinstance(t, RecommenderTarget) and t.gateways == 2
    assert {"gateway-0", "gateway-1", "lb"} <= set(t.component_names())
    assert "gateway" not in t.component_names()
    assert t == RecommenderTarget()


def test_target_with_one_gateway_is_the_gateway_alone_and_says_so():
    t = scenario({"kind": "recommender", "gateways": 1}).target
    assert isinstance(t, RecommenderTarget) and t.gateways == 1
    assert "gateway" in t.component_names() and "lb" not in t.component_names()
    assert t.to_dict()["gateways"] == 1
    assert scenario(t.to_dict()).target == t


def test_docker_backend_default_is_the_single_gateway():
    t = scenario({"kind": "recommender", "backend": "docker"}).target
    assert isinstance(t, RecommenderTarget) and t.gateways == 1
    assert "gateway" in t.containers() and "lb" not in t.component_names()
    assert "gateways" not in t.to_dict()
    assert RecommenderTarget(backend="docker") == t


@pytest.mark.parametrize("bad", [0, 9, "two", 1.5, True])
def test_target_gateways_out_of_range_is_named_with_what_is_allowed(bad):
    with pytest.raises(ScenarioError) as info:
        scenario({"kind": "recommender", "gateways": bad})
    text = str(info.value)
    assert "target.gateways" in text and "an integer from 1 to 8" in text


def test_target_gateways_with_docker_backend_is_refused():
    with pytest.raises(ScenarioError, match=r"target\.gateways.*process backend only"):
        scenario({"kind": "recommender", "gateways": 2, "backend": "docker"})


def test_fault_on_gateway_of_a_single_gateway_target_names_the_known_ones():
    with pytest.raises(ScenarioError, match="gateway-0"):
        scenario(
            {"kind": "recommender", "gateways": 1},
            [{"kind": "kill", "target": "gateway-0", "at_s": 5, "duration_s": 5}],
        )


def up_args(*argv: str):
    import argparse

    from system_under_test.launcher import add_up_arguments

    parser = argparse.ArgumentParser()
    add_up_arguments(parser)
    return parser.parse_args(list(argv))


def test_up_passes_its_server_timeout_to_the_balancer_and_checks_it(tmp_path):
    from system_under_test.launcher import plan_cluster, validate_up

    def lb_cmd(*argv: str) -> list[str]:
        args = up_args("--gateways", "2", "--shards", "1", *argv)
        names = ["shard-0-primary", "shard-0-replica", "region", "gateway-0", "gateway-1", "lb"]
        args.port_plan = {name: 20000 + i for i, name in enumerate(names)}  # no sockets here
        comps = plan_cluster(args, tmp_path)
        return next(c for c in comps if c.name == "lb").command

    assert "--server-timeout-ms" not in lb_cmd()  # serve-lb's own default
    cmd = lb_cmd("--server-timeout-ms", "8")
    assert cmd[cmd.index("--server-timeout-ms") + 1] == "8"
    assert "out of range; allowed: 1 to 60000" in (
        validate_up(up_args("--gateways", "2", "--server-timeout-ms", "0")) or ""
    )
    assert "allowed with --gateways 2 or more" in (
        validate_up(up_args("--gateways", "1", "--server-timeout-ms", "8")) or ""
    )


def test_up_passes_keep_warm_to_the_shards_and_the_region_only(tmp_path):
    from system_under_test.launcher import plan_cluster, validate_up

    args = up_args("--gateways", "2", "--shards", "1", "--keep-warm-ms", "250")
    names = ["shard-0-primary", "shard-0-replica", "region", "gateway-0", "gateway-1", "lb"]
    args.port_plan = {name: 20000 + i for i, name in enumerate(names)}  # no sockets here
    for comp in plan_cluster(args, tmp_path):
        given = "--keep-warm-ms" in comp.command
        assert given == (comp.role in ("primary", "replica", "region")), comp.name
        if given:
            assert comp.command[comp.command.index("--keep-warm-ms") + 1] == "250"
    assert "--keep-warm-ms 5 is out of range" in (validate_up(up_args("--keep-warm-ms", "5")) or "")


def plan_names(tmp_path, *argv: str) -> list[str]:
    from system_under_test.launcher import plan_cluster

    args = up_args("--shards", "1", *argv)
    names = ["shard-0-primary", "shard-0-replica", "region", "gateway", "gateway-0", "gateway-1"]
    args.port_plan = {name: 20000 + i for i, name in enumerate([*names, "lb"])}  # no sockets
    return [c.name for c in plan_cluster(args, tmp_path)]


def test_up_starts_two_gateways_behind_the_balancer_by_default(tmp_path):
    names = plan_names(tmp_path)
    assert names[-3:] == ["gateway-0", "gateway-1", "lb"] and "gateway" not in names
    assert up_args().gateways == 2


def test_up_with_one_gateway_starts_the_gateway_alone(tmp_path):
    names = plan_names(tmp_path, "--gateways", "1")
    assert names == ["shard-0-primary", "shard-0-replica", "region", "gateway"]


def test_backend_docker_on_a_default_layout_scenario_runs_the_gateway_alone():
    """``--backend docker`` on a scenario that does not name a gateway: the docker backend's
    own default (one gateway), not the refused "2 with docker"."""
    from harness.runner.settings import RunSettings, apply_overrides

    s = scenario({"kind": "recommender", "shards": 2})
    out = apply_overrides(s, RunSettings("<test>", backend="docker")).target
    assert isinstance(out, RecommenderTarget)
    assert (out.backend, out.gateways) == ("docker", 1)


def test_up_passes_the_gateway_limit_and_queue_timeout_to_the_balancer_and_checks_them(tmp_path):
    from system_under_test.launcher import plan_cluster, validate_up

    args = up_args(
        "--gateways", "2", "--shards", "1", "--gateway-maxconn", "4", "--queue-timeout-ms", "3",
        "--max-queue", "6",
    )  # fmt: skip
    names = ["shard-0-primary", "shard-0-replica", "region", "gateway-0", "gateway-1", "lb"]
    args.port_plan = {name: 20000 + i for i, name in enumerate(names)}  # no sockets here
    cmd = next(c for c in plan_cluster(args, tmp_path) if c.name == "lb").command
    assert cmd[cmd.index("--gateway-maxconn") + 1] == "4"
    assert cmd[cmd.index("--queue-timeout-ms") + 1] == "3"
    assert cmd[cmd.index("--max-queue") + 1] == "6"
    assert "--gateway-maxconn 0 is out of range" in (
        validate_up(up_args("--gateways", "2", "--gateway-maxconn", "0")) or ""
    )
    assert "--queue-timeout-ms 3 is HAProxy's, and --gateways 1 starts none" in (
        validate_up(up_args("--gateways", "1", "--queue-timeout-ms", "3")) or ""
    )


def test_serve_lb_refuses_a_bad_limit_before_writing_anything(tmp_path, capsys):
    from system_under_test.balancer import main

    cfg = tmp_path / "haproxy.cfg"
    argv = ["--port", "7000", "--gateway", "127.0.0.1:7001", "--config", str(cfg)]
    assert main([*argv, "--queue-timeout-ms", "0"]) == 2
    assert "--queue-timeout-ms 0 is out of range; allowed: 1 to 1000" in capsys.readouterr().err
    assert not cfg.exists()
