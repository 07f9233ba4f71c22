"""Fault-schedule exploration: find the failure nobody scripted, shrunk to its smallest form.

``recchaos explore SCENARIO`` (and the pytest fixture ``chaos_explore``) let Hypothesis draw
fault schedules within the limits of the scenario's ``explore:`` section, run each one for real
against the target, and shrink a failing one to the minimal failing schedule, written as a
scenario file with its replay command. The parts, in the order a search uses them:

- :mod:`~harness.explore.space`: the search space of a scenario (kinds, targets, durations,
  times, parameters on a grid whose zero is the simplest value);
- :mod:`~harness.explore.strategies`: the Hypothesis strategies over that space;
- :mod:`~harness.explore.verdicts`: one example's verdict, and when a FAIL counts (confident, or
  reproduced in a re-run);
- :mod:`~harness.explore.cluster`: where examples run (one cluster, restored between them);
- :mod:`~harness.explore.search`: the search loop and the shrink path;
- :mod:`~harness.explore.record`: ``explore.json``, ``minimal.yaml``, the closing note;
- :mod:`~harness.explore.run`: one whole exploration; :mod:`~harness.explore.settings`: its
  settings and budgets.

The HTML summary is rendered by :mod:`reports.explore` from ``explore.json``.
"""
