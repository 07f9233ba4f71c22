"""Fault injectors: side effects, one module per mechanism (signals, the userspace TCP fault
proxy, iptables, cgroups, fault points, dependency outages) behind one protocol
(:class:`~harness.inject.base.Injector`: apply, verify, heal, heal_action), and the journal the
watchdog heals from. Mechanism modules are imported only when a fault of theirs is made."""

from harness.inject.base import (
    KINDS,
    Component,
    FaultEvent,
    FaultStack,
    FaultUnsupported,
    HealError,
    InjectContext,
    InjectError,
    Injector,
    apply_and_record,
    execute_heal_action,
    heal_all,
    heal_and_record,
    make_injector,
)
from harness.inject.journal import Journal, unhealed

__all__ = [
    "KINDS",
    "Component",
    "FaultEvent",
    "FaultStack",
    "FaultUnsupported",
    "HealError",
    "InjectContext",
    "InjectError",
    "Injector",
    "Journal",
    "apply_and_record",
    "execute_heal_action",
    "heal_all",
    "heal_and_record",
    "make_injector",
    "unhealed",
]
