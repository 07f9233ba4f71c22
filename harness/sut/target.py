"""The running target as the runner sees it: one protocol, three backends.

:class:`Target` is what a run needs from the system under test once it is up: the URL to load,
the manifest the injectors read, a component's entry, a restart hook for the faults that bring a
component back, ``stop()``, and the processes the watchdog must stop beside the manifest's. The
backends:

* :class:`harness.sut.recommender.RecommenderCluster`: the bundled recommender as local
  processes, with a fault proxy in front of every shard copy and the region (and Redis);
* :class:`harness.sut.containers.DockerCluster`: the bundled recommender as containers;
* :class:`harness.sut.generic.GenericCluster`: any HTTP service a scenario describes by its
  commands and endpoint.

Each takes a :class:`harness.process.Registry` (the run's watchdog) and registers every process
or container as it starts it, so a harness that dies half-way through ``start()`` leaves nothing
the watchdog does not know. ``start()`` stops whatever it started if it fails; ``stop()`` is
idempotent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from harness.process import ProcessRef
from harness.sut.recommender import RecommenderOptions


class Target(Protocol):
    """A system under test that a run starts (or shares), faults, and stops."""

    @property
    def base_url(self) -> str:
        """Where the load goes (``http://HOST:PORT``, no trailing slash)."""
        ...

    @property
    def manifest_path(self) -> Path:
        """The manifest file the injectors and the watchdog read."""
        ...

    @property
    def proxy_url(self) -> str | None:
        """The fault proxy's control URL (None: no proxy in this backend)."""
        ...

    @property
    def options(self) -> RecommenderOptions | None:
        """How the bundled recommender was asked to run (None for a generic target)."""
        ...

    def start(self) -> Target: ...

    def manifest(self) -> dict[str, Any]:
        """The manifest as last written (name, role, shard, pid, address, command per component)."""
        ...

    def component(self, name: str) -> dict[str, Any]:
        """One component's manifest entry (also those outside the manifest file, such as a Redis
        the harness started); KeyError naming the known ones."""
        ...

    def extra_components(self) -> list[dict[str, Any]]:
        """Entries of components the manifest file does not list, read afresh (a restart
        changes a PID)."""
        ...

    def restart(self, name: str) -> int:
        """Start ``name`` again; return its new PID once it listens."""
        ...

    def extra_pids(self) -> list[tuple[str, ProcessRef]]:
        """Processes the watchdog must stop beside the manifest's (the proxy, Redis)."""
        ...

    def stop(self) -> None: ...
