"""The injector protocol without side effects: making injectors (and the error texts), healing
in reverse order with failures recorded, the journal and what it says is unhealed, the refusal
of unsupported faults, and the pure parts of the mechanisms (rules, mounts, frames)."""

from __future__ import annotations

import json
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.inject import appfaults, cgroups, netfilter
from harness.inject.base import (
    KINDS,
    Component,
    FaultEvent,
    FaultStack,
    FaultUnsupported,
    HealError,
    InjectContext,
    InjectError,
    apply_and_record,
    execute_heal_action,
    heal_all,
    make_injector,
    normalize_params,
)
from harness.inject.journal import Journal, read_journal, unhealed
from harness.model.errors import UsageError


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


def test_aliases_are_translated_to_the_scenario_names():
    assert normalize_params("latency", "x", {"ms": 5})["delay_ms"] == 5.0
    assert normalize_params("bandwidth", "x", {"bytes_per_s": 2048})["rate_kbps"] == 2.0
    assert normalize_params("cpu_throttle", "x", {"percent": 25})["cpu_fraction"] == 0.25
    assert normalize_params("app_error", "x", {"error_rate": 0.5})["rate"] == 0.5
    assert normalize_params("cgroup_freeze", "x", {}) == {}
    with pytest.raises(UsageError, match="both 'ms' and 'delay_ms'"):
        normalize_params("latency", "x", {"ms": 5, "delay_ms": 5})


def test_defaults_are_filled_and_modes_checked():
    assert normalize_params("latency", "x", {"delay_ms": 5}) == {
        "delay_ms": 5.0,
        "jitter_ms": 0.0,
        "direction": "downstream",
    }
    assert normalize_params("region_down", "region", {}) == {"mode": "kill"}
    assert normalize_params("redis_down", "redis", {"mode": "stop"}) == {"mode": "stop"}
    with pytest.raises(
        UsageError, match=r"params.mode: got 'nuke'; allowed: one of kill, blackhole"
    ):
        normalize_params("region_down", "region", {"mode": "nuke"})


def test_every_kind_makes_an_injector_with_the_protocol():
    params: dict[str, dict[str, Any]] = {
        "latency": {"delay_ms": 5},
        "bandwidth": {"rate_kbps": 10},
        "packet_loss": {"probability": 0.5},
        "cpu_throttle": {"cpu_fraction": 0.2},
        "app_delay": {"delay_ms": 3},
    }
    for kind in KINDS:
        target = {"redis_down": "redis", "region_down": "region"}.get(kind, "shard-0-primary")
        inj = make_injector(kind, target, params.get(kind, {}), ctx())
        assert inj.kind == kind and inj.target == target
        assert isinstance(inj.heal_action(), dict) and "action" in inj.heal_action()
        inj.heal()  # never applied: healing is harmless


def test_network_faults_need_a_proxy():
    no_proxy = InjectContext(components=ctx().components)
    with pytest.raises(UsageError, match="no fault proxy"):
        make_injector("latency", "shard-0-primary", {"delay_ms": 5}, no_proxy)


# -- apply, verify, heal ----------------------------------------------------------------------


def test_heal_all_runs_in_reverse_order_and_a_failing_heal_does_not_stop_the_others():
    log: list[str] = []
    fakes = [Fake("a", log), Fake("b", log, fail_heal=True), Fake("c", log)]
    events = [apply_and_record(f) for f in fakes]
    errors = heal_all(fakes, events)
    assert log == ["apply a", "apply b", "apply c", "heal c", "heal b", "heal a"]
    assert errors == ["fake(b): OSError: cannot heal b"]
    assert events[1].heal_error == "OSError: cannot heal b" and not events[1].healed
    assert events[0].healed and events[2].healed and all(e.verified for e in events)


def test_double_heal_is_harmless_and_keeps_the_first_heal_time():
    log: list[str] = []
    stack = FaultStack()
    fake = Fake("a", log)
    event = stack.apply(fake)
    stack.heal(fake)
    first = event.heal_mono_ns
    assert stack.heal_all() == []
    assert event.heal_mono_ns == first and log == ["apply a", "heal a"]


def test_a_half_applied_fault_is_healed_at_once_and_reported():
    log: list[str] = []
    stack = FaultStack()
    with pytest.raises(InjectError, match=r"applying fake\(b\) failed: RuntimeError: half-applied"):
        stack.apply(Fake("b", log, fail_apply=True))
    assert log == ["apply b", "heal b"]
    assert stack.heal_all() == [] and log == ["apply b", "heal b"]
    assert stack.events[0].apply_error.startswith("RuntimeError")


def test_unsupported_faults_pass_through_untouched(monkeypatch):
    monkeypatch.setattr(netfilter.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    netfilter.unsupported_reason.cache_clear()
    try:
        for kind, params in (("partition", {}), ("cpu_throttle", {"cpu_fraction": 0.5})):
            inj = make_injector(kind, "shard-0-primary", params, ctx())
            with pytest.raises(FaultUnsupported, match=rf"{kind}\(shard-0-primary\).*root.*1000"):
                apply_and_record(inj)
    finally:
        netfilter.unsupported_reason.cache_clear()


def test_fault_event_becomes_a_timeline_entry():
    event = FaultEvent("freeze", "shard-0-primary", {}, "faults[0]", "1-1")
    event.inject_mono_ns, event.inject_wall = 5_000_000_000, 1700.0
    event.heal_mono_ns, event.heal_wall = 7_000_000_000, 1702.0
    event.verified, event.verify_note, event.heal_error = True, "state T", "boom"
    rec = event.to_record(origin_mono_ns=1_000_000_000)
    assert (rec.inject_s, rec.heal_s, rec.verified) == (4.0, 6.0, True)
    assert rec.note == "state T; heal failed: boom" and rec.origin == "faults[0]"


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
    assert sorted(u["uid"] for u in unhealed(fh.name)) == sorted(expected)


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
    assert a.chain != b.chain and a.chain.startswith("RECCHAOS-ab12cd34-")  # type: ignore[attr-defined]
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
