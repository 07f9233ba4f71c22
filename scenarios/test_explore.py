"""Fault-schedule exploration in the chaos suite: no schedule within the limits of
``scenarios/explore/shard_faults.yaml`` may break its SLOs. The profile sets the budget: the pr
profile tries a few schedules, the nightly one many (docs/explore.md); a failing schedule fails
the test with the minimal one, its scenario file and the replay lines."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.chaos
@pytest.mark.slow
def test_no_fault_schedule_breaks_the_tail_budget(chaos_explore) -> None:
    chaos_explore(HERE / "explore" / "shard_faults.yaml")
