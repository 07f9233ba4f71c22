"""Processes a finished test tier left running: find them by an environment tag, stop them, say so.

``scripts/test.sh`` exports ``RECCHAOS_TEST_RUN`` with a value of its own before the first tier;
every process a test starts inherits it (the harness starts its children with its own
environment plus extras, and they start theirs the same way). After each tier::

    python -m harness.process.leftovers RECCHAOS_TEST_RUN=VALUE --after unit

lists every live process still carrying that tag, stops it (SIGCONT and SIGTERM, SIGKILL after
the grace) and exits 1 when there was any: a test left something running, which is a bug, and
left alone it would take the CPU, ports or memory from the tiers after it. Exit 0 when none.
Only processes of this tag are touched: another run of the harness on the same machine carries
another value, or none.
"""

from __future__ import annotations

import argparse
import os
import sys

import psutil

from harness.process.identity import stop_processes, tagged_processes


def _ancestors() -> set[int]:
    out = set()
    try:
        proc: psutil.Process | None = psutil.Process(os.getpid())
        while proc is not None:
            out.add(proc.pid)
            proc = proc.parent()
    except psutil.Error:
        pass
    return out


def _tag(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not VARIABLE=VALUE (both non-empty), e.g. RECCHAOS_TEST_RUN=abc123"
        )
    return name, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.process.leftovers",
        description="Stop every process still carrying an environment tag; exit 1 if any did.",
    )
    p.add_argument("tag", type=_tag, help="VARIABLE=VALUE the processes carry")
    p.add_argument("--after", default="the tests", help="what ran before (for the messages)")
    p.add_argument("--grace-s", type=float, default=5.0, help="SIGTERM to SIGKILL (default 5)")
    args = p.parse_args(argv)
    variable, value = args.tag
    mine = _ancestors()
    found = [(name, ref) for name, ref in tagged_processes(variable, value) if ref.pid not in mine]
    if not found:
        return 0
    listing = ", ".join(f"{name} (PID {ref.pid})" for name, ref in found)
    print(f"leftovers: {args.after} left {len(found)} process(es) running: {listing}", flush=True)
    stopped = stop_processes(found, grace_s=args.grace_s, log=lambda line: print(f"  {line}"))
    if stopped.left:
        print(f"leftovers: still running after SIGKILL: {', '.join(stopped.left)}", flush=True)
    else:
        print(f"leftovers: stopped all {len(found)}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
