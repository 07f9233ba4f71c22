"""``python -m system_under_test <command> ...``: the one entry point of the recommender's processes.

A table of commands, each naming the module and function that own it; the module is imported
only when its command runs, so ``train`` never pays for the servers and the servers never pay
for training.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function taking argv and returning an exit code)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("system_under_test.train", "main_train"),
    "up": ("system_under_test.launcher", "main_up"),
    "down": ("system_under_test.launcher", "main_down"),
    "serve-shard": ("system_under_test.shard_server", "main"),
    "serve-region": ("system_under_test.region_server", "main"),
    "serve-gateway": ("system_under_test.gateway.server", "main"),
}


def _usage() -> str:
    return "usage: python -m system_under_test {" + ",".join(COMMANDS) + "} [options]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}; {_usage()}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[command]
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
