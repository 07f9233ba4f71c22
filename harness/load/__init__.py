"""Open-loop load: the Locust-engine worker processes, their driver, and a calibration stub.

:class:`LoadJob` (:mod:`harness.load.spec`) says what to send; :func:`run_load`
(:mod:`harness.load.driver`) runs worker processes (``python -m harness.load.worker``) and merges
their request logs and histograms exactly. Nothing imported here imports locust or gevent:
``import locust`` monkey-patches the standard library, so it happens only inside the workers.
"""

from harness.load.driver import LoadError, LoadResult, merge_load, run_load
from harness.load.spec import RECOMMENDER_REQUEST, LoadJob, LoadJobError, worker_share

__all__ = [
    "RECOMMENDER_REQUEST",
    "LoadError",
    "LoadJob",
    "LoadJobError",
    "LoadResult",
    "merge_load",
    "run_load",
    "worker_share",
]
