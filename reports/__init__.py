"""Reports from saved run directories, by product: :mod:`reports.report` (one run's HTML and
markdown report), :mod:`reports.compare` (two sets of runs, regression or not) and
:mod:`reports.history` (the SQLite history, its import and the trend). Shared below them:
:mod:`reports.rundir` (reading and validating a run directory), :mod:`reports.effect`,
:mod:`reports.page` and :mod:`reports.svg`. Reads saved files only: never imports the runner,
the injectors, pytest or torch."""
