"""The injector protocol without side effects: making injectors (and the error texts), healing
in reverse order with failures recorded, the journal and what it says is unhealed, the refusal
of unsupported faults, and the pure parts of the mechanisms (rules, mounts, frames)."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.inject import appfaults, cgroups, netfilter
from harness.inject.base import (
    Component,
    FaultStack,
    FaultUnsupported,
    HealError,
    InjectContext,
    InjectError,
    complete_params,
    execute_heal_action,
    make_injector,
)
from harness.inject.journal import Journal, read_journal, unhealed
from harness.model.errors import UsageError
from harness.model.record import FaultEvent


def ctx(**kw: Any) -> InjectContext:
    comps = {
        "shard-0-primary": Component("shard-0-primary", "primary", 999_999, "127.0.0.1:7001"),
        "region": Component("region", "region", 999_998, "127.0.0.1:7002"),
        "redis": Component("redis", "redis", 999_997, "127.0.0.1:7003"),
    }
    return InjectContext(
        components=comps, proxy_url="http://127.0.0.1:1", run_id="20261128-AB12cd34", **kw
    )


class Fake:
    """An injector that logs what happens to it; heal fails when told to."""

    def __init__(
        self, name: str, log: list[str], fail_heal: bool = False, fail_apply: bool = False
    ):
        self.kind, self.target, self.params = "fake", name, {"n": 1}
        self.log, self.fail_heal, self.fail_apply = log, fail_heal, fail_apply

    def apply(self) -> None:
        self.log.append(f"apply {self.target}")
        if self.fail_apply:
            raise RuntimeError(f"half-applied {self.target}")

    def verify(self) -> tuple[bool, str]:
        return True, f"{self.target} took effect"

    def heal(self) -> None:
        self.log.append(f"heal {self.target}")
        if self.fail_heal:
            raise OSError(f"cannot heal {self.target}")

    def heal_action(self) -> dict[str, Any]:
        return {"action": "none", "who": self.target}


# -- making injectors -----------------------------------------------------------------------


def test_unknown_kind_names_kind_target_and_allowed_values():
    with pytest.raises(UsageError) as exc:
        make_injector("explode", "shard-0-primary", {}, ctx())
    text = str(exc.value)
    assert "'explode'" in text and "shard-0-primary" in text
    assert "freeze" in text and "partition" in text and "app_wrong_shape" in text


def test_unknown_target_names_the_known_components():
    with pytest.raises(UsageError, match=r"freeze\(shard-9-primary\).*known: shard-0-primary"):
        make_injector("freeze", "shard-9-primary", {}, ctx())


def test_bad_params_name_fault_parameter_value_and_rule():
    with pytest.raises(UsageError) as exc:
        make_injector("latency", "shard-0-primary", {"delay_ms": -5}, ctx())
    text = str(exc.value)
    assert "latency(shard-0-primary)" in text and "params.delay_ms" in text and "-5" in text
    assert "a number > 0" in text
    with pytest.raises(UsageError, match=r"unknown key.*did you mean 'delay_ms'"):
        make_injector("latency", "shard-0-primary", {"delay_mss": 5}, ctx())
    with pytest.raises(UsageError, match=r"params.jitter_ms: got 9.*<= delay_ms \(5\)"):
        make_injector("latency", "shard-0-primary", {"delay_ms": 5, "jitter_ms": 9}, ctx())


@pytest.mark.parametrize(
    ("kind", "params", "name"),
    [
        ("latency", {"ms": 5}, "ms"),
        ("bandwidth", {"bytes_per_s": 2048}, "bytes_per_s"),
        ("cpu_throttle", {"percent": 25}, "percent"),
        ("app_error", {"error_rate": 0.5}, "error_rate"),
    ],
)
def test_only_the_registry_parameter_names_are_accepted(kind, params, name):
    with pytest.raises(UsageError, match=rf"params.{name}: got .*unknown key"):
        complete_params(kind, "x", params)


def test_only_the_registry_kind_names_are_accepted():
    with pytest.raises(UsageError, match="unknown fault kind 'cgroup_freeze'"):
        make_injector("cgroup_freeze", "shard-0-primary", {}, ctx())


def test_defaults_are_filled_and_modes_checked():
    assert complete_params("latency", "x", {"delay_ms": 5}) == {
        "delay_ms": 5.0,
        "jitter_ms": 0.0,
        "direction": "downstream",
    }
    assert complete_params("region_down", "region", {}) == {"mode": "kill"}
    assert complete_params("redis_down", "redis", {"mode": "stop"}) == {"mode": "stop"}
    with pytest.raises(
        UsageError, match=r"params.mode: got 'nuke'; allowed: one of kill, blackhole"
    ):
        complete_params("region_down", "region", {"mode": "nuke"})


def test_network_faults_need_a_proxy():
    no_proxy = InjectContext(components=ctx().components)
    with pytest.raises(UsageError, match="no fault proxy"):
        make_injector("latency", "shard-0-primary", {"delay_ms": 5}, no_proxy)


def test_a_backend_without_the_kind_gives_an_injector_that_refuses():
    docker = ctx(backend="docker")
    inj = make_injector("latency", "shard-0-primary", {"delay_ms": 5}, docker)
    assert inj.heal_action() == {"action": "none"}
    with pytest.raises(FaultUnsupported, match="latency needs the process backend"):
        inj.apply()
    inj = make_injector("disconnect", "shard-0-primary", {}, ctx())
    with pytest.raises(FaultUnsupported, match="needs the docker backend.*no docker network"):
        inj.apply()


# -- apply, verify, heal ----------------------------------------------------------------------


def test_heal_all_runs_in_reverse_order_and_a_failing_heal_does_not_stop_the_others():
    log: list[str] = []
    stack = FaultStack()
    fakes = [Fake("a", log), Fake("b", log, fail_heal=True), Fake("c", log)]
    faults = [stack.apply(f) for f in fakes]
    errors = stack.heal_all()
    assert log == ["apply a", "apply b", "apply c", "heal c", "heal b", "heal a"]
    assert errors == ["fake(b): OSError: cannot heal b"]
    assert faults[1].heal_error == "OSError: cannot heal b" and not faults[1].healed
    assert faults[0].healed and faults[2].healed
    assert all(e.verified for e in stack.events)


def test_double_heal_is_harmless_and_keeps_the_first_heal_time():
    log: list[str] = []
    stack = FaultStack()
    fake = Fake("a", log)
    fault = stack.apply(fake)
    stack.heal(fake)
    assert fault.event is not None
    first = fault.event.heal_ns
    assert stack.heal_all() == []
    assert fault.event.heal_ns == first and log == ["apply a", "heal a"]


def test_a_failed_heal_is_tried_again_and_noted_once():
    log: list[str] = []
    stack = FaultStack()
    fake = Fake("a", log, fail_heal=True)
    fault = stack.apply(fake)
    stack.heal(fake)
    assert stack.heal_all() == ["fake(a): OSError: cannot heal a"]
    assert log == ["apply a", "heal a", "heal a"]
    assert stack.events[0].note == "a took effect; heal failed: OSError: cannot heal a"
    fake.fail_heal = False
    assert stack.heal_all() == [] and fault.healed and stack.events[0].note == "a took effect"


def test_a_half_applied_fault_is_healed_at_once_and_reported():
    log: list[str] = []
    stack = FaultStack()
    with pytest.raises(InjectError, match=r"applying fake\(b\) failed: RuntimeError: half-applied"):
        stack.apply(Fake("b", log, fail_apply=True))
    assert log == ["apply b", "heal b"]
    assert stack.heal_all() == [] and log == ["apply b", "heal b"]
    assert stack.entries[0].apply_error.startswith("RuntimeError")
    assert stack.events == []  # it never took effect: no timeline entry


def test_unsupported_faults_pass_through_untouched(monkeypatch):
    monkeypatch.setattr(netfilter.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    netfilter.unsupported_reason.cache_clear()
    try:
        for kind, params in (("partition", {}), ("cpu_throttle", {"cpu_fraction": 0.5})):
            inj = make_injector(kind, "shard-0-primary", params, ctx())
            with pytest.raises(FaultUnsupported, match=rf"{kind}\(shard-0-primary\).*root.*1000"):
                FaultStack().apply(inj)
    finally:
        netfilter.unsupported_reason.cache_clear()


def test_the_timeline_entry_is_relative_to_the_stack_origin(monkeypatch):
    clock = iter([5_000_000_000, 7_000_000_000])
    monkeypatch.setattr("harness.inject.base.time.monotonic_ns", lambda: next(clock))
    stack = FaultStack(origin_ns=1_000_000_000)
    fake = Fake("a", [])
    stack.apply(fake, origin="faults[0]")
    stack.heal(fake)
    (event,) = stack.events
    assert isinstance(event, FaultEvent)
    assert (event.inject_s, event.heal_s, event.verified) == (4.0, 6.0, True)
    assert event.note == "a took effect" and event.origin == "faults[0]"
    assert (event.kind, event.target, event.params) == ("fake", "a", {"n": 1})


def test_a_fault_is_timed_from_when_applying_began_not_when_the_call_returned(monkeypatch):
    """A `docker kill` returns a quarter of a second after its container died: the requests
    sent meanwhile belong to the fault's window, not to the steady state before it."""
    now = [5_000_000_000]
    monkeypatch.setattr("harness.inject.base.time.monotonic_ns", lambda: now[0])

    class SlowApply(Fake):
        def apply(self) -> None:
            super().apply()
            now[0] += 250_000_000  # the engine's round trip, after the fault took effect

    stack = FaultStack(origin_ns=1_000_000_000)
    stack.apply(SlowApply("a", []))
    (event,) = stack.events
    assert event.inject_s == 4.0


def test_heal_actions_are_checked():
    assert execute_heal_action({"action": "none"}) == "nothing to do"
    with pytest.raises(HealError, match="unknown heal action 'explode'"):
        execute_heal_action({"action": "explode"})
    with pytest.raises(HealError, match="only RECCHAOS-"):
        execute_heal_action({"action": "iptables_drop_chain", "chain": "INPUT"})
    with pytest.raises(HealError, match="only recchaos-"):
        execute_heal_action(
            {"action": "cgroup_remove", "path": "/sys/fs/cgroup/cpu", "controller": "cpu"}
        )


# -- the journal ------------------------------------------------------------------------------


def test_journal_lists_unhealed_faults_and_retries_failed_heals(tmp_path):
    path = tmp_path / "faults.jsonl"
    log: list[str] = []
    with Journal(path, run_id="r1") as journal:
        stack = FaultStack(journal)
        a, b, c = Fake("a", log), Fake("b", log, fail_heal=True), Fake("c", log)
        for fake in (a, b, c):
            stack.apply(fake)
        assert [u["target"] for u in unhealed(path)] == ["a", "b", "c"]
        stack.heal(a)
        assert [u["target"] for u in unhealed(path)] == ["b", "c"]
        stack.heal_all()
    left = unhealed(path)
    assert [u["target"] for u in left] == ["b"]
    assert left[0]["heal_action"] == {"action": "none", "who": "b"}
    types = [e["type"] for e in read_journal(path)]
    assert types[0] == "open" and types.count("apply") == 3 and types.count("applied") == 3


def test_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "faults.jsonl"
    line = {"type": "apply", "uid": "1", "kind": "freeze", "target": "x", "heal_action": {}}
    path.write_text(json.dumps(line) + '\n{"type": "heal", "uid": "1", "o')
    assert [u["uid"] for u in unhealed(path)] == ["1"]
    assert unhealed(tmp_path / "missing.jsonl") == []


@given(st.lists(st.tuples(st.sampled_from(["apply", "applied", "heal"]), st.integers(0, 4),
                          st.booleans()), max_size=30))  # fmt: skip
def test_unhealed_is_what_was_applied_and_not_healed_ok(ops):
    entries: list[dict[str, Any]] = []
    expected: dict[str, bool] = {}
    for kind, uid, ok in ops:
        entries.append({"type": kind, "uid": str(uid), "ok": ok, "heal_action": {"n": uid}})
        if kind in ("apply", "applied"):
            expected.setdefault(str(uid), True)
        elif ok:
            expected.pop(str(uid), None)
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write("".join(json.dumps(e) + "\n" for e in entries))
    try:  # one file per example: removed, or every unit run leaves a hundred behind
        assert sorted(u["uid"] for u in unhealed(fh.name)) == sorted(expected)
    finally:
        os.unlink(fh.name)


# -- pure parts of the mechanisms --------------------------------------------------------------


def test_partition_rules_drop_both_directions_of_the_port():
    assert netfilter.rule_specs(7001, None) == [
        ["-p", "tcp", "--dport", "7001", "-j", "DROP"],
        ["-p", "tcp", "--sport", "7001", "-j", "DROP"],
    ]
    loss = netfilter.rule_specs(7001, 0.25)[0]
    assert loss[4:-2] == ["-m", "statistic", "--mode", "random", "--probability", "0.250000"]


def test_chain_names_are_short_and_per_fault():
    c = ctx()
    a = make_injector("partition", "shard-0-primary", {}, c)
    b = make_injector("partition", "region", {}, c)
    assert a.chain != b.chain and a.chain.startswith(f"RECCHAOS-{c.short_run_id()}-")  # type: ignore[attr-defined]
    assert len(a.chain) <= 28  # type: ignore[attr-defined]
    assert a.heal_action() == {"action": "iptables_drop_chain", "chain": a.chain}  # type: ignore[attr-defined]


def test_cgroup_v1_mounts_are_found_by_controller():
    mounts = (
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n"
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
    )
    assert str(cgroups.v1_mount("cpu", mounts)) == "/sys/fs/cgroup/cpu,cpuacct"
    assert cgroups.v1_mount("freezer", mounts) is None


def test_control_frame_follows_the_protocol():
    frame = appfaults.encode_request("control", {"faults": {"error_rate": 0.5, "seed": 7}})
    length, head_len = struct.unpack(">II", frame[:8])
    assert length == len(frame) - 4 and head_len == len(frame) - 8
    header = msgpack.unpackb(frame[8:])
    assert header == {
        "id": 1,
        "op": "control",
        "deadline": 0,
        "t": [],
        "faults": {"error_rate": 0.5, "seed": 7},
    }


def test_app_faults_on_one_server_are_merged():
    fields = {1: appfaults.fault_fields("app_error", {"rate": 0.1})}
    fields[2] = appfaults.fault_fields("app_delay", {"delay_ms": 5.0, "rate": 1.0})
    assert appfaults.merged_faults(fields, seed=42) == {
        "seed": 42,
        "error_rate": 0.1,
        "delay_ms": 5.0,
        "delay_rate": 1.0,
    }


def test_app_faults_need_a_server_with_fault_points():
    c = InjectContext(components={"gateway": Component("gateway", "gateway", 1, "127.0.0.1:8080")})
    with pytest.raises(UsageError, match=r"app_nan\(gateway\).*role 'gateway'.*primary"):
        make_injector("app_nan", "gateway", {}, c)


# -- layers ----------------------------------------------------------------------------------


def _imports(package: str) -> dict[str, set[str]]:
    """Every module each file of ``package`` imports (at the top or inside a function)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out: dict[str, set[str]] = {}
    for path in sorted((root / package.replace(".", "/")).glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        out[path.name] = names
    return out


def test_injectors_never_import_the_cluster_code():
    found = {f: sorted(m for m in ms if m.startswith("harness.sut")) for f, ms in
             _imports("harness.inject").items()}  # fmt: skip
    assert {f: ms for f, ms in found.items() if ms} == {}


def test_the_proxy_imports_neither_injectors_nor_the_cluster_code():
    imports = _imports("harness.proxy")
    assert {"server.py", "config.py", "control.py", "client.py"} <= set(imports)
    bad = {
        f: sorted(m for m in ms if m.startswith(("harness.inject", "harness.sut")))
        for f, ms in imports.items()
    }  # fmt: skip
    assert {f: ms for f, ms in bad.items() if ms} == {}


def test_chain_and_cgroup_names_differ_between_runs_of_one_scenario_and_seed(monkeypatch):
    """Two harnesses running one scenario with one seed at once share a run id's tail; the
    names of their iptables chains and cgroups must not collide (one would heal the other's)."""
    import harness.inject.base as base

    one = InjectContext(components={}, run_id="20261206-101551-cold_start-s91")
    name = one.short_run_id()
    assert len(name) == 8 and all(c in "0123456789abcdef" for c in name)
    assert name == one.short_run_id()  # stable within a run: heals find what applies made
    monkeypatch.setattr(base.os, "getpid", lambda: 4242)
    assert InjectContext(components={}, run_id=one.run_id).short_run_id() != name
    assert InjectContext(components={}, run_id="x-s91").short_run_id() != name
