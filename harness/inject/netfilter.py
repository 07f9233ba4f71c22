"""Packet faults with iptables (root only): ``partition`` (DROP every TCP packet to and from the
target's port on loopback) and ``packet_loss`` (DROP each such packet with ``probability``,
``-m statistic --mode random``).

Each fault gets a chain of its own, ``RECCHAOS-<short run id>-<n>``, holding its rules and
jumped to from ``OUTPUT -o lo`` and ``INPUT -i lo``; nothing else in the tables is touched. The
heal (also the watchdog's ``iptables_drop_chain`` action) deletes every jump to the chain,
flushes it and deletes it; it is idempotent and only ever touches chains named ``RECCHAOS-*``.

Evidence: the packet counters of the chain's rules (``iptables -nvxL CHAIN``).
On machines where this cannot work (not root, no ``iptables``, no netfilter) ``apply`` raises
:class:`~harness.inject.base.FaultUnsupported` before changing anything.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from harness.inject.base import (
    BaseInjector,
    FaultUnsupported,
    HealError,
    InjectContext,
    InjectError,
)

CHAIN_PREFIX = "RECCHAOS-"
HOOKS = (("OUTPUT", "-o"), ("INPUT", "-i"))
TIMEOUT_S = 10.0


class IptablesError(InjectError):
    pass


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``iptables -w ARGS`` (waiting for the xtables lock), bounded by a timeout."""
    try:
        proc = subprocess.run(
            ["iptables", "-w", "5", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IptablesError(f"iptables {' '.join(args)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise IptablesError(
            f"iptables {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


@functools.lru_cache(maxsize=1)
def unsupported_reason() -> str | None:
    """Why iptables faults cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return f"iptables needs root (running as uid {os.geteuid()})"
    if shutil.which("iptables") is None:
        return "the iptables command is not installed (apt-get install iptables)"
    try:
        proc = iptables("-S", "OUTPUT", check=False)
    except IptablesError as exc:
        return str(exc)
    if proc.returncode != 0:
        return f"iptables -S OUTPUT failed: {proc.stderr.strip()}"
    return None


def check_chain_name(chain: str) -> str:
    if not chain.startswith(CHAIN_PREFIX) or len(chain) > 28 or " " in chain:
        raise HealError(f"refusing to touch chain {chain!r}: only {CHAIN_PREFIX}* chains are ours")
    return chain


def chain_exists(chain: str) -> bool:
    return iptables("-S", chain, check=False).returncode == 0


def jumps_to(chain: str) -> list[tuple[str, list[str]]]:
    """Every rule in OUTPUT and INPUT that jumps to ``chain``, as (hook, rule spec)."""
    found = []
    for hook, _ in HOOKS:
        for line in iptables("-S", hook).stdout.splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0] == "-A" and parts[-2:] == ["-j", chain]:
                found.append((hook, parts[2:]))
    return found


def drop_chain(chain: str) -> str:
    """Delete every jump to ``chain``, flush and delete it. Idempotent."""
    check_chain_name(chain)
    removed = 0
    for hook, spec in jumps_to(chain):
        iptables("-D", hook, *spec)
        removed += 1
    if not chain_exists(chain):
        return f"chain {chain} is gone ({removed} jump(s) removed)"
    iptables("-F", chain)
    iptables("-X", chain)
    return f"chain {chain} flushed and deleted ({removed} jump(s) removed)"


def execute_drop_chain(action: Mapping[str, Any]) -> str:
    """Heal action ``iptables_drop_chain``."""
    return drop_chain(str(action["chain"]))


def chain_packets(chain: str) -> int:
    """Packets matched by the rules of ``chain`` so far."""
    out = iptables("-n", "-v", "-x", "-L", chain).stdout.splitlines()
    total = 0
    for line in out[2:]:
        parts = line.split()
        if parts and parts[0].isdigit():
            total += int(parts[0])
    return total


def rule_specs(port: int, probability: float | None) -> list[list[str]]:
    """The chain's rules: TCP to and from ``port``, dropped always or with ``probability``."""
    loss = [] if probability is None else ["-m", "statistic", "--mode", "random"]
    loss += [] if probability is None else ["--probability", f"{probability:.6f}"]
    return [["-p", "tcp", flag, str(port), *loss, "-j", "DROP"] for flag in ("--dport", "--sport")]


class NetfilterInjector(BaseInjector):
    """``partition`` and ``packet_loss`` on the target's TCP port on loopback."""

    def __init__(self, kind: str, target: str, params: Mapping[str, Any], ctx: InjectContext):
        super().__init__(kind, target, params, ctx)
        self.port = ctx.component(target).port
        self.chain = check_chain_name(f"{CHAIN_PREFIX}{ctx.short_run_id()}-{ctx.next_seq()}")
        self._attempted = False

    def apply(self) -> None:
        reason = unsupported_reason()
        if reason:
            raise FaultUnsupported(self.kind, self.target, reason)
        probability = self.params["probability"] if self.kind == "packet_loss" else None
        self._attempted = True
        iptables("-N", self.chain)
        for spec in rule_specs(self.port, probability):
            iptables("-A", self.chain, *spec)
        for hook, flag in HOOKS:
            iptables("-I", hook, "1", flag, "lo", "-j", self.chain)

    def verify(self) -> tuple[bool, str]:
        if not self._attempted:
            return False, "not applied"
        hooks = sorted({hook for hook, _ in jumps_to(self.chain)})
        if len(hooks) != len(HOOKS):
            return (
                False,
                f"chain {self.chain} is hooked into {hooks or 'nothing'}, not OUTPUT+INPUT",
            )
        packets = chain_packets(self.chain)
        note = f"chain {self.chain} (port {self.port}): {packets} packet(s) dropped"
        return packets > 0, note if packets else note + "; no packet matched yet"

    def heal(self) -> None:
        if self._attempted:
            drop_chain(self.chain)

    def heal_action(self) -> dict[str, Any]:
        return {"action": "iptables_drop_chain", "chain": self.chain}
