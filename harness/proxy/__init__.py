"""The userspace TCP fault proxy: its own subsystem, one process in front of the shard copies and
the region, with faults set at run time through a control API.

* :mod:`harness.proxy.server`: the proxy process (``python -m harness.proxy``);
* :mod:`harness.proxy.config`: routes and fault specs, pure parsing and validation;
* :mod:`harness.proxy.control`: the control API (HTTP/JSON on the proxy's event loop);
* :mod:`harness.proxy.client`: the harness's client of that API, and starting the process.

It knows nothing of injectors or of the cluster: the network injectors
(:mod:`harness.inject.network`) and the recommender launcher use it, never the other way round.
Importing this package imports nothing else.
"""
