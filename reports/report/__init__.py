"""One run's report: ``report.html`` (verdict, SLOs, latency over time with fault windows, tiers,
spectrum, per-stage budget, generator health, faults, replay) and ``report.md``."""
