"""Shared fixtures: a real Redis server on a free loopback port, and the cached tiny artifacts.

Every server a test needs is started here or by the test itself and always stopped again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.process import free_port
from harness.sut.redis import RedisServer, redis_available

__all__ = ["free_port"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it as root)")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_artifacts() -> Path:
    """The tiny preset's artifacts, trained once and cached (RECCHAOS_ARTIFACTS or ~/.cache)."""
    from system_under_test.artifacts import ensure_artifacts

    return ensure_artifacts("tiny")
