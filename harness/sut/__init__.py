"""Side effects: starting, supervising and stopping the system under test for a run.

One protocol, :class:`harness.sut.target.Target`, and its backends: the bundled recommender as
local processes (:mod:`harness.sut.recommender`, with Redis from :mod:`harness.sut.redis`) or as
containers (:mod:`harness.sut.containers`), and a generic target's commands
(:mod:`harness.sut.generic`). Talks to the recommender only through its command line
(``python -m system_under_test``), its manifest, its ports and HTTP; never imports
``system_under_test``.
"""
