"""Fault injectors: side effects, one module per mechanism (signals, the userspace TCP fault
proxy, iptables, cgroups, fault points, dependency outages, docker) behind one protocol
(:class:`~harness.inject.base.Injector`: apply, verify, heal, heal_action), the stack that applies
and always heals them, and the journal the watchdog heals from. What each fault kind is, and which
injector applies it, is the fault registry's (:mod:`harness.model.fault_kinds`); mechanism modules
are imported only when a fault of theirs is made."""

from harness.inject.base import (
    KINDS,
    Component,
    FaultStack,
    FaultUnsupported,
    HealError,
    InjectContext,
    InjectError,
    Injector,
    StackedFault,
    complete_params,
    execute_heal_action,
    make_injector,
)
from harness.inject.journal import Journal, unhealed

__all__ = [
    "KINDS",
    "Component",
    "FaultStack",
    "FaultUnsupported",
    "HealError",
    "InjectContext",
    "InjectError",
    "Injector",
    "Journal",
    "StackedFault",
    "complete_params",
    "execute_heal_action",
    "make_injector",
    "unhealed",
]
