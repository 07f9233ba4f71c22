"""Comparing a baseline set of runs with a current one: statistics (:mod:`.stats`), the sides
and their rows (:mod:`.sides`), component benchmarks (:mod:`.bench`), rendering (:mod:`.render`)."""
