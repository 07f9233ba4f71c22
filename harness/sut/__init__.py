"""Side effects: starting, supervising and stopping the system under test for a run.

Talks to the recommender only through its command line (``python -m system_under_test``), its
manifest, its ports and HTTP; never imports ``system_under_test``.
"""
