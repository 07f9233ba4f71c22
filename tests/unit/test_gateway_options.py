"""The gateway's request parsing, HTTP limit options, file plan and command line: pure checks of
what the server reads, without a server (tests/integration/test_gateway_http.py serves them)."""

from __future__ import annotations

import resource

import pytest

from system_under_test.gateway.api import parse_recommend
from system_under_test.gateway.listener import FILE_HEADROOM, plan_files
from system_under_test.gateway.settings import HttpLimits

GOOD_ARGS = [
    "--port",
    "0",
    "--preset",
    "tiny",
    "--shard-primary",
    "127.0.0.1:7001",
    "--shard-primary",
    "127.0.0.1:7002",
]


def test_allowed_values_are_stated():
    for body, field_, allowed in (
        ('{"user_id": 1, "k": 0}', "k", [1, 100]),
        ('{"user_id": -4}', "user_id", "integer >= 0"),
    ):
        with pytest.raises(Exception) as info:
            parse_recommend(body.encode())
        assert info.value.field == field_ and info.value.allowed == allowed
    assert parse_recommend(b'{"user_id": 9223372036854775807, "k": 100}') == (2**63 - 1, 100)


def test_http_limit_options_default_to_http_limits_and_are_validated(capsys):
    from system_under_test.gateway.settings import parse_settings

    s = parse_settings(GOOD_ARGS)
    assert s.limits == HttpLimits()
    s = parse_settings(GOOD_ARGS + ["--idle-timeout-s", "2.5", "--max-connections", "10"])
    assert s.limits.idle_timeout_s == 2.5 and s.limits.max_connections == 10
    for extra, message in (
        (["--max-connections", "0"], "--max-connections 0 must be positive"),
        (["--request-timeout-s", "nan"], "--request-timeout-s nan must be positive"),
        (["--max-head", "1000"], "--max-request-line 8192 must be at most --max-head 1000"),
    ):
        with pytest.raises(SystemExit) as info:
            parse_settings(GOOD_ARGS + extra)
        assert info.value.code == 2
        assert message in capsys.readouterr().err


def test_file_plan_raises_the_soft_limit_within_the_hard_one():
    plan = plan_files(asked=4096, in_use=40, soft=1024, hard=20_000)
    assert plan.soft == 4096 + 40 + FILE_HEADROOM and plan.max_connections == 4096
    assert "raised from 1024 to 4264 (hard 20000): 4096 connections" in plan.describe()
    plan = plan_files(asked=4096, in_use=40, soft=1024, hard=1024)
    assert plan.soft == 1024 and plan.max_connections == 1024 - 40 - FILE_HEADROOM
    assert "not the 4096 of --max-connections" in plan.describe()
    assert "ulimit -Hn" in plan.describe()
    plan = plan_files(asked=100, in_use=40, soft=50_000, hard=50_000)
    assert plan.soft == 50_000 and plan.max_connections == 100  # never lowered
    inf = resource.RLIM_INFINITY
    assert plan_files(4096, 40, 1024, inf).soft == 4096 + 40 + FILE_HEADROOM
    assert plan_files(100, 40, inf, inf).max_connections == 100
    with pytest.raises(ValueError, match="leaves no room for client connections"):
        plan_files(asked=100, in_use=40, soft=100, hard=100)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--shard-replica", "127.0.0.1:7003"], "1 --shard-replica for 2 --shard-primary"),
        (["--shard-primary", "localhost"], "--shard-primary 'localhost' is not HOST:PORT"),
        (["--region", "127.0.0.1:99999"], "--region '127.0.0.1:99999' is not HOST:PORT"),
        (["--redis", "127.0.0.1:6379"], "must be a URL like redis://"),
        (["--sla-ms", "0"], "--sla-ms 0.0 must be positive"),
        (["--deadline-margin-ms", "25"], "--deadline-margin-ms 25.0 must be in [0, --sla-ms 20.0)"),
        (["--l1-rows", "-1"], "--l1-rows -1 must be >= 0"),
        (["--preset", "huge"], "--preset 'huge' is unknown; allowed: default, tiny"),
    ],
)
def test_bad_command_line_values_exit_2_with_the_option_named(extra, message, capsys):
    from system_under_test.gateway.settings import parse_settings

    with pytest.raises(SystemExit) as info:
        parse_settings(GOOD_ARGS + extra)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_good_command_line_and_missing_primaries():
    from system_under_test.gateway.settings import build_parser, parse_settings, settings_from_args

    s = parse_settings(GOOD_ARGS + ["--shard-replica", "h:1", "--shard-replica", "h:2"])
    assert s.n_shards == 2 and str(s.replicas[1]) == "h:2" and s.region is None
    assert s.budget_s == pytest.approx(0.017)
    with pytest.raises(ValueError, match="no --shard-primary given"):
        settings_from_args(build_parser().parse_args(["--port", "1", "--preset", "tiny"]))
