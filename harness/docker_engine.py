"""The connection to a Docker engine, shared by the docker backend (:mod:`harness.sut.containers`,
which starts the containers) and its fault injectors (:mod:`harness.inject.containers`), so that
neither layer imports the other. The ``docker`` SDK is imported only when a client is made.
"""

from __future__ import annotations

import os
from typing import Any

from harness.model.errors import HarnessError

DOCKER_TIMEOUT_S = 60  # every engine API call is bounded by this


class EngineUnreachable(HarnessError):
    """No Docker engine answers at the address given (or DOCKER_HOST, or the local socket)."""


def docker_client(docker_host: str | None) -> Any:
    """A ``docker.DockerClient`` for ``docker_host`` (None: DOCKER_HOST or the local socket),
    API version negotiated, every call bounded by :data:`DOCKER_TIMEOUT_S`."""
    import docker

    try:
        if docker_host:
            return docker.DockerClient(
                base_url=docker_host, version="auto", timeout=DOCKER_TIMEOUT_S
            )
        return docker.from_env(version="auto", timeout=DOCKER_TIMEOUT_S)
    except docker.errors.DockerException as exc:
        where = docker_host or os.environ.get("DOCKER_HOST") or "the local socket"
        raise EngineUnreachable(
            f"cannot reach a Docker engine at {where} (DOCKER_HOST): {exc}; start one or point "
            "DOCKER_HOST at it"
        ) from None


def engine_is_local(docker_host: str | None) -> bool:
    """True when the engine's PIDs are this host's (a unix socket): /proc and nsenter work."""
    host = docker_host or os.environ.get("DOCKER_HOST") or "unix://"
    return host.startswith("unix://")
