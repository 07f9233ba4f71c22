"""``python -m system_under_test COMMAND ...``: the recommender's own command line.

Each command lives in its module and is imported only when chosen, so ``up`` and ``down`` never
pay for importing torch. Run as ``recchaos sut ...``, the harness sets ``RECCHAOS_SUT_PROG`` so
the usage line names the command the user typed.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "train": ("system_under_test.train", "main_train", "train the models and cache the artifacts"),
    "up": ("system_under_test.launcher", "main_up", "start the whole cluster and write a manifest"),
    "down": ("system_under_test.launcher", "main_down", "stop every process of a manifest"),
    "reference": ("system_under_test.reference", "main", "write each user's reference top-k"),
    "serve-shard": ("system_under_test.shard_server", "main", "run one shard copy (internal)"),
    "serve-region": (
        "system_under_test.region_server",
        "main",
        "run the degraded region (internal)",
    ),
    "serve-gateway": ("system_under_test.gateway", "main", "run the HTTP gateway (internal)"),
    "serve-lb": (
        "system_under_test.balancer",
        "main",
        "run HAProxy in front of the gateways (internal)",
    ),
    "probe": (
        "system_under_test.probe",
        "main",
        "check that one component answers (container health checks)",
    ),
}


# The Python servers whose start-up (imports, loading) runs under SCHED_IDLE. Not serve-lb: it
# becomes HAProxy, which would inherit the policy.
BACKGROUND_START_UP = frozenset({"serve-shard", "serve-region", "serve-gateway"})


def prog() -> str:
    return os.environ.get("RECCHAOS_SUT_PROG") or "python -m system_under_test"


def usage() -> str:
    lines = [f"usage: {prog()} COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", f"{prog()} COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, leave_quietly: bool = False) -> int:
    """Run one command; with ``leave_quietly`` (the ``python -m`` entry), a server that has
    stopped leaves in the background of the machine (:func:`runtime.leave_quietly`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"unknown command {name!r}; allowed: {', '.join(COMMANDS)}\n\n{usage()}",
            file=sys.stderr,
        )
        return 2
    module_name, func_name, _ = COMMANDS[name]
    if name in BACKGROUND_START_UP:
        # Imports and loading run under SCHED_IDLE; the server returns to normal priority
        # before its warm-up (system_under_test/runtime.py).
        from system_under_test.runtime import start_up_in_background

        start_up_in_background()
    func = getattr(importlib.import_module(module_name), func_name)
    code = int(func(rest) or 0)
    if leave_quietly and name in BACKGROUND_START_UP:
        from system_under_test.runtime import leave_quietly as leave

        leave(code)
    return code


if __name__ == "__main__":
    sys.exit(main(leave_quietly=True))
