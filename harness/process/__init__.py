"""Processes the harness starts: one managed-process helper, process identity, bounded waits.

Every child process the harness starts (the watchdog, load workers, the fault proxy, Redis, the
recommender's launcher and restarted components, a generic target's commands) goes through
:class:`ManagedProcess`: started with its log file, waited for with a bounded wait that shows
the log tail on failure, identified by PID plus start time, stopped with SIGTERM then SIGKILL
(SIGCONT first, for a stopped one) and always reaped. A :class:`Registry` (the run's watchdog)
hears of each process the moment it exists. The recommender keeps its own copy of this helper
(``system_under_test/process.py``; it never imports the harness), held to the same behaviour
by ``tests/integration/test_process_helpers.py``.
"""

from harness.process.identity import ProcessRef, stop_processes
from harness.process.managed import ManagedProcess, Registry
from harness.process.readiness import (
    StartError,
    free_port,
    free_ports,
    listens,
    log_tail,
    tcp_open,
    wait_until,
)

__all__ = [
    "ManagedProcess",
    "ProcessRef",
    "Registry",
    "StartError",
    "free_port",
    "free_ports",
    "listens",
    "log_tail",
    "stop_processes",
    "tcp_open",
    "wait_until",
]
