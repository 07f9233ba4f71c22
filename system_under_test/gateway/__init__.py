"""The HTTP gateway: the recommender's front door, and where the fallback path is decided.

``python -m system_under_test serve-gateway --port P --preset NAME --shard-primary H:P ...
--shard-replica H:P ... --region H:P [--redis URL]`` (see ``settings.py``; started by ``up``).

Modules, pure first: ``fallback`` (tiers, breaker, retry budget, hedge delay, the per-call plan),
``metrics`` (Prometheus text), ``cache`` (L1 rows, Redis L2), ``features`` (feature store),
``settings`` (command line), ``model`` (what is loaded), ``calls`` (runs a plan over protocol
clients), ``service`` (the request pipeline), ``api`` (routes and validation), ``http`` (the
HTTP/1.1 server), ``server`` (the process: ``main`` wires them). Nothing is imported or started
at import time.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from system_under_test.gateway.server import main as server_main

    return server_main(argv)
