"""The history of runs: the SQLite store (:mod:`.store`), importing run directories into it, and
the trend across it (:mod:`.trend`, :mod:`.changepoints`).

``append_run`` is the store's entry point for the runner (every finished run is appended)."""

from reports.history.store import append_run

__all__ = ["append_run"]
