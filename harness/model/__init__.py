"""Pure, frozen, validated data: scenarios, the fault registry and fault specs, schedules, SLOs,
run records, errors.

The bottom layer of the harness. Nothing here starts a process, opens a socket or reads a clock
(the run record's writer only writes the file it is given).
"""
