"""Parsing and validation of the fault proxy's routes and fault specs, and what faults add up to.

Pure: no process, no socket. Covers :mod:`harness.proxy.config` and the proxy's pure
helpers (slice sizes, pieces).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.model.errors import UsageError
from harness.model.fault_kinds import DIRECTIONS
from harness.model.fault_kinds import FAULT_KINDS as SCENARIO_FAULT_KINDS
from harness.model.validate import REQUIRED, Bad
from harness.proxy.config import (
    FAULT_KINDS,
    Address,
    ProxyConfigError,
    ProxyFault,
    Route,
    Shaping,
    check_routes,
    parse_address,
    parse_fault,
    parse_route_arg,
    parse_routes_json,
    shaping_for,
)
from harness.proxy.server import _pieces, _slice_sizes

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
hosts = st.sampled_from(["127.0.0.1", "localhost", "::1", "10.0.0.7"])
ports = st.integers(1, 65535)


def problem_of(exc: pytest.ExceptionInfo[ProxyConfigError]) -> tuple[str, object]:
    first = exc.value.problems[0]
    return first.field, first.value


# -- routes --------------------------------------------------------------------------------------


@given(names, hosts, st.integers(0, 65535), hosts, ports)
def test_route_arg_round_trips(name: str, lhost: str, lport: int, uhost: str, uport: int) -> None:
    route = parse_route_arg(f"{name}={lhost}:{lport}={uhost}:{uport}")
    assert route == Route(name, Address(lhost, lport), Address(uhost, uport))
    assert parse_route_arg(f"{route.name}={route.listen}={route.upstream}") == route


@pytest.mark.parametrize(("text", "field"), [
    ("a=127.0.0.1:1", "--route"),
    ("a=127.0.0.1:1=127.0.0.1:2=x", "--route"),
    ("a=127.0.0.1=127.0.0.1:2", "--route.listen"),
    ("a=127.0.0.1:70000=127.0.0.1:2", "--route.listen"),
    ("a=127.0.0.1:1=127.0.0.1:0", "--route.upstream"),
    ("-bad=127.0.0.1:1=127.0.0.1:2", "--route.name"),
    ("a b=127.0.0.1:1=127.0.0.1:2", "--route.name"),
])  # fmt: skip
def test_bad_route_arg_names_the_part(text: str, field: str) -> None:
    with pytest.raises(ProxyConfigError) as exc:
        parse_route_arg(text)
    assert exc.value.problems[0].field == field
    assert isinstance(exc.value, UsageError)


def test_upstream_port_zero_says_why() -> None:
    with pytest.raises(Bad, match="only on the listen side"):
        parse_address("127.0.0.1:0", allow_zero=False)


def test_address_pairs_and_brackets() -> None:
    assert parse_address(("127.0.0.1", 80), allow_zero=False) == Address("127.0.0.1", 80)
    assert parse_address("[::1]:80", allow_zero=False) == Address("::1", 80)


def test_routes_json_reads_every_route_and_reports_every_problem() -> None:
    good = {
        "a": {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
        "b": {"listen": "127.0.0.1:5", "upstream": ["127.0.0.1", 10]},
    }
    assert [r.name for r in parse_routes_json({"routes": good})] == ["a", "b"]
    bad = {
        "a": {"listen": "x", "upstream": "127.0.0.1:9"},
        "b": {"listen": "127.0.0.1:5", "upstream": "127.0.0.1:9", "upstreem": 1},
        "c": "127.0.0.1:1",
    }
    with pytest.raises(ProxyConfigError) as exc:
        parse_routes_json(bad, "routes.json")
    fields = [p.field for p in exc.value.problems]
    assert fields == ["a.listen", "b.upstreem", "c"]
    assert "did you mean 'upstream'?" in str(exc.value)
    assert str(exc.value).startswith("routes.json: ")


@pytest.mark.parametrize("data", [[], {}, None, "x"])
def test_routes_json_must_be_a_mapping(data: object) -> None:
    with pytest.raises(ProxyConfigError, match="non-empty mapping"):
        parse_routes_json(data)


def test_check_routes_wants_unique_names_and_listeners() -> None:
    a = parse_route_arg("a=127.0.0.1:5=127.0.0.1:9")
    with pytest.raises(ProxyConfigError) as exc:
        check_routes([a, a, parse_route_arg("b=127.0.0.1:5=127.0.0.1:9")])
    assert [p.field for p in exc.value.problems] == ["a.name", "a.listen", "b.listen"]
    check_routes(
        [parse_route_arg("x=127.0.0.1:0=1.2.3.4:5"), parse_route_arg("y=127.0.0.1:0=1.2.3.4:5")]
    )  # port 0 may repeat
    with pytest.raises(ProxyConfigError, match="at least one"):
        check_routes([])


# -- fault specs ---------------------------------------------------------------------------------


def test_defaults_are_filled_in() -> None:
    assert parse_fault({"kind": "latency", "delay_ms": 5}) == ProxyFault(
        "latency", "downstream", {"delay_ms": 5.0, "jitter_ms": 0.0}
    )
    assert parse_fault({"kind": "reset"}) == ProxyFault("reset", "both", {})
    assert parse_fault({"kind": "blackhole"}).params == {"mode": "drop"}
    assert parse_fault({"kind": "slicer", "direction": "upstream"}) == ProxyFault(
        "slicer", "upstream", {"average_size": 64, "size_variation": 32, "delay_us": 100}
    )


def test_params_may_be_nested_as_get_routes_shows_them() -> None:
    shown = parse_fault({"kind": "latency", "delay_ms": 5}).to_dict()
    assert parse_fault(shown) == parse_fault({"kind": "latency", "delay_ms": 5})
    with pytest.raises(ProxyConfigError) as exc:
        parse_fault({"kind": "latency", "delay_ms": 5, "params": {"delay_ms": 6}})
    assert problem_of(exc) == ("delay_ms", 6)


@pytest.mark.parametrize(("spec", "field", "value", "allowed"), [
    ({}, "kind", "missing", "one of latency, bandwidth, blackhole, reset, slicer"),
    ({"kind": "lag"}, "kind", "lag", "one of latency"),
    ({"kind": "latency"}, "delay_ms", "missing", "a number > 0"),
    ({"kind": "latency", "delay_ms": True}, "delay_ms", True, "a number"),
    ({"kind": "latency", "delay_ms": "5"}, "delay_ms", "5", "a number"),
    ({"kind": "latency", "delay_ms": 5, "jitter_ms": -1}, "jitter_ms", -1, "a number >= 0"),
    ({"kind": "latency", "delay_ms": 5, "direction": "up"}, "direction", "up", "one of upstream"),
    ({"kind": "reset", "direction": "upstream"}, "direction", "upstream", "one of both"),
    ({"kind": "bandwidth"}, "rate_kbps", None, "exactly one of rate_kbps"),
    ({"kind": "bandwidth", "rate_kbps": 1, "bytes_per_s": 1}, "rate_kbps", None, "exactly one"),
    ({"kind": "bandwidth", "bytes_per_s": 0}, "bytes_per_s", 0, "a number > 0"),
    ({"kind": "blackhole", "mode": "eat"}, "mode", "eat", "one of drop, hold"),
    ({"kind": "slicer", "delay_us": 1.5}, "delay_us", 1.5, "an integer from 0 to 1000000"),
    ({"kind": "reset", "delay_ms": 1}, "delay_ms", 1, "the keys direction, kind"),
])  # fmt: skip
def test_bad_fault_names_field_value_and_rule(
    spec: dict, field: str, value: object, allowed: str
) -> None:
    with pytest.raises(ProxyConfigError) as exc:
        parse_fault(spec)
    problem = exc.value.problems[0]
    assert problem.field == field
    if value == "missing":
        assert "got missing" in str(exc.value)
    elif value is not None:
        assert problem.value == value
    assert allowed in problem.allowed
    body = exc.value.to_json()
    assert body["problems"][0]["field"] == field and field in body["error"]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ProxyConfigError) as exc:
        parse_fault({"kind": "slicer", "average_size": 0, "delay_us": -1, "sizes": 3})
    assert sorted(p.field for p in exc.value.problems) == ["average_size", "delay_us", "sizes"]


@pytest.mark.parametrize("body", [None, [], "latency", 5])
def test_fault_body_must_be_a_mapping(body: object) -> None:
    with pytest.raises(ProxyConfigError, match="a mapping"):
        parse_fault(body)


def test_scenario_fault_params_pass_through() -> None:
    """Every proxy-mechanism kind of the scenario table is accepted with its defaults."""
    proxy_kinds = {k: v for k, v in SCENARIO_FAULT_KINDS.items() if v.mechanism == "proxy"}
    assert set(proxy_kinds) <= set(FAULT_KINDS)
    samples = {"delay_ms": 5.0, "rate_kbps": 100.0}
    for kind, spec in proxy_kinds.items():
        params = {name: samples.get(name, p.default) for name, p in spec.params.items()}
        assert REQUIRED not in params.values(), (kind, params)
        assert parse_fault({"kind": kind, **params}).kind == kind


@given(st.sampled_from(DIRECTIONS), st.floats(0.001, 1000), st.floats(0, 1))
def test_latency_spec_round_trips(direction: str, delay: float, jitter_share: float) -> None:
    fault = parse_fault(
        {
            "kind": "latency",
            "direction": direction,
            "delay_ms": delay,
            "jitter_ms": delay * jitter_share,
        }
    )
    assert parse_fault({"kind": fault.kind, "direction": fault.direction, **fault.params}) == fault
    assert "kind=latency" in fault.describe()


# -- shaping -------------------------------------------------------------------------------------

latency_faults = st.builds(
    lambda d, ms: ProxyFault("latency", d, {"delay_ms": ms, "jitter_ms": 0.0}),
    st.sampled_from(DIRECTIONS),
    st.floats(0.1, 100),
)
rate_faults = st.builds(
    lambda d, r: ProxyFault("bandwidth", d, {"bytes_per_s": r}),
    st.sampled_from(DIRECTIONS),
    st.floats(1, 1e6),
)


@given(st.lists(latency_faults | rate_faults, max_size=6), st.sampled_from(DIRECTIONS[:2]))
def test_latencies_add_and_lowest_rate_wins(faults: list[ProxyFault], direction: str) -> None:
    s = shaping_for(faults, direction)
    mine = [f for f in faults if f.direction in (direction, "both")]
    if not mine:
        assert s is None
        return
    assert s is not None
    delays = [f.params["delay_ms"] for f in mine if f.kind == "latency"]
    rates = [f.params["bytes_per_s"] for f in mine if f.kind == "bandwidth"]
    assert s.delay_s == pytest.approx(sum(delays) / 1e3)
    assert s.rate_bps == (min(rates) if rates else None)


def test_blackhole_drop_beats_hold_and_reset_is_not_shaping() -> None:
    hold = ProxyFault("blackhole", "both", {"mode": "hold"})
    drop = ProxyFault("blackhole", "upstream", {"mode": "drop"})
    assert shaping_for([hold, drop], "upstream") == Shaping(blackhole="drop")
    assert shaping_for([drop, hold], "downstream") == Shaping(blackhole="hold")
    assert shaping_for([ProxyFault("reset", "both", {})], "upstream") is None
    assert not Shaping(blackhole="drop").shapes


# -- slices and pieces ---------------------------------------------------------------------------


@given(st.integers(0, 100_000), st.integers(1, 5000), st.integers(0, 5000), st.integers())
def test_slice_sizes_cover_the_data(total: int, average: int, variation: int, seed: int) -> None:
    sizes = _slice_sizes(total, average, variation, random.Random(seed))
    assert sum(sizes) == total
    assert all(1 <= size <= average + variation for size in sizes)


@given(st.binary(max_size=20_000), st.floats(1, 1e7), st.integers(0, 2**32))
def test_pieces_keep_bytes_and_order(data: bytes, rate: float, seed: int) -> None:
    rng = random.Random(seed)
    for shaping in (
        None,
        Shaping(rate_bps=rate),
        Shaping(slice_size=100, slice_variation=50),
        Shaping(delay_s=0.001),
    ):
        assert b"".join(_pieces(data, shaping, rng)) == data
